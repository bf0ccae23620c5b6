"""What an adapter can learn at a new size when the data is perfect: fine-tune the miniworld UNet
on ground-truth renders at 16 px (not RAFT samples) and print the shape / colour accuracy of its
generations as it trains, read by the independent evaluator and by the miniworld CLIP.

    python benchmarks/miniworld_supervised.py [--adapter lora|full] [--rank 8]
        [--targets to_q,to_k,to_v,to_out.0] [--lr 1e-4] [--steps 1000] [--every 200] [--resolution 16] [--vae DIR]

It separates the two things RAFT needs at a new size: good kept samples, and an adapter able to
learn from them. Figures read by the independent evaluator / the miniworld CLIP (one thread, 8
images per in-domain prompt), for a rank-16 adapter on the layers the ``miniworld-resolution`` preset's LoRA had (``--rank 16
--targets to_q,to_k,to_v,to_out.0,conv1,conv2,proj_in,proj_out,ff.net.0.proj,ff.net.2 --lr 3e-4``):
shape 1.6% / 21.9% (the base at 16 px), 24.2% / 43.0% after 250 steps, 37.5% / 47.7% after 500,
41.4% / 45.3% after 750, 47.7% / 44.5% after 1,000; colour 22.7% -> 90.6% (CLIP 95.3%); the base at
its native 32 px: 75.0% shape. The VAE round trip of held-out renders at 16 px reads 65% shape, so
perfect data and this adapter recover about 60% of the 16 px shape drop in 1,000 steps. At rank 32
(a former preset's) it levels off: 38.3% / 44.5% after 500 steps, 47.7% / 51.6% after 1,000, 46.9% /
46.9% after 1,500, 53.1% / 48.4% after 2,000, 49.2% / 47.7% after 2,500, 53.1% / 53.1% after 3,000
(colour 97%): perfect data stops near 70% of the drop, below the round trip. At rank 64 (the
last LoRA preset's, ``--rank 64 --lr 2e-4``): 38.3% after 500 steps, 50.8% after 1,000, 47.7% after 1,500,
50.0% after 2,000 (colour 91-97%); RAFT with native candidates and the same micro-batches of 32
(``--batch-size``, default 32, as in every figure here unless said) reads 57.3% on three seeds after
its 1,000 steps, trained on the evaluation's own prompts. On the miniworld
rebuilt with a 16-channel VAE (round trip 80%; ``benchmarks/results/miniworld_latent16.md``) the
same adapter is slower: 26.6% after 500 steps, 39.1% after 1,000, 50.0% after 2,000, 46.1% after
3,000 (about 60% of its drop). The whole committed UNet (``--adapter full``): 57.0% after 1,000 and
2,000 steps at lr 1e-4; 51.6%, 54.7%, 59.4% after 1,000, 2,000, 3,000 at lr 3e-4; 53.9%, 58.6%,
64.8%, 57.8% after 1,000 to 4,000 at lr 1e-4 with ``--batch-size 64`` (colour 94-99%): 75-87% of
the drop, short of 90% (67%); RAFT training the whole UNet on its own kept images (the preset now) reads
more on the evaluation's prompts (``benchmarks/results/miniworld_resolution.md``). (Earlier
CLIP-only figures: attention-only rank-8 LoRA at lr 1e-4 33-45%, the whole UNet at lr 1e-4 48-54%.)
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    from raft_diffusion.diffusion.lora import add_lora
    from raft_diffusion.diffusion.pipeline import load_family
    from raft_diffusion.diffusion.sampling import PromptEncoder, encode_images
    from raft_diffusion.miniworld import assets_dir, common, evaluate, world

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapter", choices=["lora", "full"], default="lora")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--targets", default="to_q,to_k,to_v,to_out.0", help="LoRA target modules, comma-separated")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--every", type=int, default=200, help="evaluate every N steps")
    ap.add_argument("--resolution", type=int, default=16)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--vae", default=None, help="a separate VAE folder (model.vae), e.g. one adapted to 16 px")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(args.seed)

    assets = assets_dir()
    family = load_family(str(assets / "pipeline"), device="cpu", options={"vae": args.vae} if args.vae else None)
    pipe = family.pipe
    pipe.set_progress_bar_config(disable=True)
    zs = common.ZeroShot(*evaluate.load_clip(assets / "clip"))
    unet, prompts = pipe.unet, PromptEncoder(family)
    if args.adapter == "lora":
        add_lora(unet, args.rank, None, 0.0, args.targets.split(","), seed=args.seed)
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)

    rng = random.Random(args.seed)
    start = time.time()
    for step in range(args.steps + 1):
        if step % args.every == 0 or step == args.steps:
            unet.eval()
            fid = evaluate.generation_fidelity(assets, args.resolution, world.in_domain_prompts(), pipe=pipe, zs=zs)
            print(f"step {step:5d}  {time.time() - start:6.0f} s  independent evaluator: shape {fid['shape_acc']:.1%} "
                  f"colour {fid['colour_acc']:.1%}  miniworld CLIP: shape {fid['clip_shape_acc']:.1%} "
                  f"colour {fid['clip_colour_acc']:.1%}", flush=True)
            unet.train()
        if step == args.steps:
            break
        scenes = [world.sample_scene(rng, two_object_prob=0.0) for _ in range(args.batch_size)]
        with torch.no_grad():
            latents = encode_images(family, world.render_batch(scenes, args.resolution))
            emb = prompts([world.caption(s, rng) for s in scenes])["prompt_embeds"]
            emb[torch.rand(len(scenes)) < 0.1] = prompts.negative(1)["prompt_embeds"][0]  # caption dropout, as in pretraining
        noise = torch.randn_like(latents)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(latents),))
        loss = F.mse_loss(unet(noise_scheduler.add_noise(latents, noise, t), t, emb).sample, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()


if __name__ == "__main__":
    main()
