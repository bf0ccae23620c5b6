"""Overhead of one RAFT round against bare diffusers + a bare LoRA loop doing the same work.

Prints, on the same pipeline and settings: the wall time of one RAFT round as ``loop.run()``
runs it (generate, score, rank, train, write records and checkpoint), the time of a bare ``StableDiffusionPipeline``
call generating the same images plus a bare peft LoRA training loop of the same steps, their
ratio (target <= 1.10), and the peak RSS of each. Each variant runs alone in its own process (its
peak RSS and a timing); the ratio comes from a third process in which RAFT rounds and bare rounds
alternate, so both see the same allocator, caches and CPU state.

    python benchmarks/round_overhead.py [--model tiny|PATH] [--k 4] [--prompts 4] [--steps 10] [--train-steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def settings(args):
    return {
        "model.pretrained": args.model, "raft.rounds": args.rounds + 1, "raft.k": args.k, "raft.prompts_per_round": args.prompts,
        "sampling.steps": args.steps, "sampling.batch_size": args.k * args.prompts, "sampling.guidance_scale": 7.5,
        "train.steps_per_round": args.train_steps, "train.batch_size": args.prompts, "lora.rank": 4,
        "reward.scorer": "jpeg-compressibility", "output.save_kept": False,
        # what the bare round does (the embedded default's miniworld prompts, sampler and eval differ)
        "prompts.train": "cifar10", "prompts.template": "a photo of a {}", "prompts.eval": None,
        "reward.eval_scorers": {}, "sampling.scheduler": "ddim", "train.learning_rate": 1e-4,
        "lora.target_modules": [], "train.caption_dropout": 0.0,
        "train.kl_weight": 0.0, "train.latents": "sampled", "ranking.filter": None, "raft.early_stop": None,
    }


def make_raft(args, run_dir: str) -> Callable[[], None]:
    """One RAFT round per call, run by ``loop.run()`` itself (generate, score, rank, train, samples
    table, grid, checkpoint, metrics, the run's LoRA file, the callbacks)."""
    from raft_diffusion.api import build_loop
    from raft_diffusion.config import RaftConfig

    cfg = RaftConfig().replace({**settings(args), "output.dir": run_dir, "raft.rounds": 10**6})
    loop = build_loop(cfg, progress=False)
    loop.settings.rounds = 0

    def one_round() -> None:
        loop.settings.rounds += 1
        loop.run()

    return one_round


def make_bare(args) -> Callable[[int], None]:
    """A bare diffusers + peft round (generate, decode, score, pick the best per prompt, train), as a function of a seed."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from peft import LoraConfig

    import prompts
    from raft_diffusion.diffusion.pipeline import load_pipeline
    from scorers.jpeg import jpeg_size_kb

    pipe = load_pipeline(args.model, scheduler="ddim")
    pipe.unet.requires_grad_(False)
    pipe.vae.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    params = [p for p in pipe.unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
    texts = [p.text for p in prompts.load("cifar10", template="a photo of a {}")[: args.prompts]]

    def one_round(seed: int) -> None:
        gens = [torch.Generator().manual_seed(seed * 1000 + i) for i in range(args.k * len(texts))]
        with torch.inference_mode():
            out = pipe(texts, num_images_per_prompt=args.k, num_inference_steps=args.steps, guidance_scale=7.5,
                       generator=gens, output_type="latent", return_dict=False)[0]
            images = (pipe.vae.decode(out / pipe.vae.config.scaling_factor, return_dict=False)[0] / 2 + 0.5).clamp(0, 1)
            rewards = -jpeg_size_kb(images)
            embeds = pipe.encode_prompt(texts, pipe.device, 1, False)[0]
        best = rewards.view(len(texts), args.k).argmax(1) + torch.arange(len(texts)) * args.k
        x0, emb = out[best].clone(), embeds.clone()
        for _ in range(args.train_steps):
            noise = torch.randn_like(x0)
            t = torch.randint(0, noise_sched.config.num_train_timesteps, (x0.shape[0],))
            pred = pipe.unet(noise_sched.add_noise(x0, noise, t), t, encoder_hidden_states=emb, return_dict=False)[0]
            loss = F.mse_loss(pred, noise)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()

    return one_round


def fastest(fn: Callable[[], None], rounds: int) -> float:
    """Seconds of the fastest of ``rounds`` calls, after one warm-up call (first calls allocate)."""
    fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def run_variant(args) -> dict:
    """One variant alone in this process (for its peak RSS)."""
    with tempfile.TemporaryDirectory() as tmp:
        if args.variant == "raft":
            seconds = fastest(make_raft(args, f"{tmp}/run"), args.rounds)
        else:
            bare, seed = make_bare(args), iter(range(10**6))
            seconds = fastest(lambda: bare(next(seed)), args.rounds)
    return {"seconds": seconds}


def run_interleaved(args) -> dict:
    """Both variants in this process, their rounds alternating: the timing the ratio is taken from
    (separate processes differ by up to ~10% on a small CPU model for reasons of their own)."""
    with tempfile.TemporaryDirectory() as tmp:
        raft, bare, seed = make_raft(args, f"{tmp}/run"), make_bare(args), iter(range(10**6))
        raft(), bare(next(seed))  # warm-up
        t_raft, t_bare = [], []
        for _ in range(args.rounds):
            for fn, times in ((raft, t_raft), (lambda: bare(next(seed)), t_bare)):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
    return {"raft": min(t_raft), "bare": min(t_bare)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds (the fastest is reported)")
    ap.add_argument("--variant", choices=["raft", "bare", "interleaved"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        import logging

        logging.disable(logging.WARNING)
        result = run_interleaved(args) if args.variant == "interleaved" else run_variant(args)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("RESULT " + json.dumps(result))
        return
    results = {}
    for variant in ("raft", "bare", "interleaved"):
        cmd = [sys.executable, __file__, "--variant", variant] + sys.argv[1:]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results[variant] = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    raft, bare, both = results["raft"], results["bare"], results["interleaved"]
    print(f"model {args.model}: {args.prompts} prompts x K={args.k}, {args.steps} sampling steps, {args.train_steps} LoRA steps")
    print(f"RAFT round          {both['raft']:.3f} s   (alone in its process {raft['seconds']:.3f} s)   peak RSS {raft['peak_rss_mb']:.0f} MB")
    print(f"bare diffusers+LoRA {both['bare']:.3f} s   (alone in its process {bare['seconds']:.3f} s)   peak RSS {bare['peak_rss_mb']:.0f} MB")
    print(f"ratio {both['raft'] / both['bare']:.3f} (target <= 1.10; rounds interleaved in one process)")


if __name__ == "__main__":
    main()
