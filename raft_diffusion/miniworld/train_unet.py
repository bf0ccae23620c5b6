"""Train the tiny ``UNet2DConditionModel`` on VAE latents of world renders, conditioned on the frozen
tiny-CLIP text tower, and save a standard ``StableDiffusionPipeline`` folder to ``<out>/pipeline``.

Recipe (SD's, scaled down): latents = posterior sample x ``vae.config.scaling_factor``; timesteps
uniform in [0, 1000); DDPM forward process with SD's scaled_linear betas (0.00085 .. 0.012);
epsilon prediction, MSE; caption dropout (10% empty caption) so classifier-free guidance works;
an EMA of the weights (what is saved). Native resolution 32x32 pixels = 4x8x8 latents.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from raft_diffusion.miniworld import common, world

log = logging.getLogger(__name__)

BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
CAPTION_DROPOUT = 0.1


def make_unet(cross_attention_dim: int, quick: bool = False, addition_embed: bool = True, latent_channels: int = 4,
              downsampling: int = 4):
    """The miniworld UNet for a VAE with ``latent_channels`` and ``downsampling`` (the committed: 4, 4x)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=world.NATIVE_RESOLUTION // downsampling,
        in_channels=latent_channels,
        out_channels=latent_channels,
        layers_per_block=1,
        block_out_channels=(8, 16, 16) if quick else (32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=8,
        # a pooled-text embedding added to the time embedding (diffusers' "text" addition embedding,
        # computed inside the UNet from encoder_hidden_states, so StableDiffusionPipeline needs nothing
        # extra): a global conditioning path that the tiny model picks up much faster than cross-attention
        addition_embed_type="text" if addition_embed else None,
        addition_embed_type_num_heads=4,
    )


def text_encoder_from_clip(clip_dir: str | Path):
    """A ``CLIPTextModel`` carrying the tiny CLIP's text weights (what the pipeline saves)."""
    from transformers import CLIPModel, CLIPTextModel

    clip = CLIPModel.from_pretrained(clip_dir)
    te = CLIPTextModel(clip.config.text_config)
    # transformers 5 dropped the ``text_model`` wrapper of CLIPTextModel; 4.x still has it
    getattr(te, "text_model", te).load_state_dict(clip.text_model.state_dict(), strict=True)
    return te.eval()


def make_scheduler():
    from diffusers import DPMSolverMultistepScheduler

    scheduler = DPMSolverMultistepScheduler(**BETAS, steps_offset=1, prediction_type="epsilon")
    # kept in the saved config for the samplers a user swaps in with ``from_config``: DDIM's and DDPM's
    # own default, clip_sample=True, clips the predicted latents to [-1, 1] at every step, which erases
    # what a LoRA adds (the aesthetic preset's gain under DDIM: 7.40 -> 5.69, the base's 5.51)
    scheduler.register_to_config(clip_sample=False)
    return scheduler


@torch.no_grad()
def encode_dataset(vae, n: int, seed: int, batch: int = 256):
    """Render ``n`` stream scenes and encode them: (mean, std) of the posterior, and the scenes."""
    rng = random.Random(seed)
    scenes = [world.sample_scene(rng) for _ in range(n)]
    means, stds = [], []
    for i in tqdm(range(0, n, batch), desc="encode", mininterval=10, disable=n < 4096):
        d = vae.encode(world.render_batch(scenes[i : i + batch]) * 2 - 1).latent_dist
        means.append(d.mean)
        stds.append(d.std)
    return torch.cat(means), torch.cat(stds), scenes


def save_pipeline(unet, vae, text_encoder, tokenizer, out_dir: Path) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=make_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    pipe.save_pretrained(tmp, safe_serialization=True)
    common.halve_embeddings(tmp / "text_encoder" / "model.safetensors")
    from raft_diffusion.diffusion.tokenizers import slim_tokenizer_folder

    slim_tokenizer_folder(tmp / "tokenizer")
    for sub in ("unet", "vae"):  # float16 storage keeps the assets small; loaded back as float32
        common.halve_embeddings(tmp / sub / "diffusion_pytorch_model.safetensors", min_numel=0)
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    tmp.rename(out_dir)


def train_unet(out: str | Path, *, seed: int = 0, steps: int = 20000, batch_size: int = 64, lr: float = 1e-3,
               n_data: int = 40000, quick: bool = False, max_seconds: float | None = None,
               checkpoint_every: int = 1500, ema_decay: float = 0.999, init_from: str | Path | None = None,
               addition_embed: bool = True) -> dict:
    """Train and save ``<out>/pipeline`` (needs ``<out>/clip`` and ``<out>/vae``). ``max_seconds``
    stops early; a pipeline with the EMA weights is saved every ``checkpoint_every`` steps.
    ``init_from``: a pipeline folder whose UNet weights this one starts from (tensors it lacks, such
    as a newly added ``addition_embed``, keep their fresh init)."""
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import CLIPTokenizer

    t0 = time.time()
    out = Path(out)
    common.seed_all(seed)
    vae = AutoencoderKL.from_pretrained(out / "vae").eval()
    text_encoder = text_encoder_from_clip(out / "clip")
    tokenizer = CLIPTokenizer.from_pretrained(out / "clip")
    sf = vae.config.scaling_factor
    means, stds, scenes = encode_dataset(vae, n_data, seed + 4)
    log.info("unet: encoded %d latents in %.1f s", n_data, time.time() - t0)
    unet = make_unet(text_encoder.config.hidden_size, quick, addition_embed, vae.config.latent_channels,
                     2 ** (len(vae.config.block_out_channels) - 1))
    if init_from is not None:  # continue from a saved pipeline's UNet (new modules keep their init)
        from diffusers import UNet2DConditionModel

        prev = UNet2DConditionModel.from_pretrained(Path(init_from) / "unet")
        missing, unexpected = unet.load_state_dict(prev.state_dict(), strict=False)
        if unexpected:
            raise ValueError(f"init_from UNet has keys this UNet lacks: {unexpected[:5]}")
        log.info("unet: initialised from %s (%d new tensors)", init_from, len(missing))
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    noise_sched = DDPMScheduler(**BETAS)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.01)
    progress = common.Progress(steps, max_seconds)
    warm = max(1, min(500, steps // 20))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress.fraction(i))))
    )
    rng = random.Random(seed + 5)
    gen = torch.Generator().manual_seed(seed + 6)
    uncond_ids = common.tokenize(tokenizer, [""])
    ema_loss = None
    unet.train()
    bar = tqdm(range(steps), desc="unet", mininterval=10, disable=steps < 20)
    done = 0
    for step in bar:
        if progress.done(step):
            log.info("unet: time budget reached at step %d", step)
            break
        idx = torch.randint(0, n_data, (batch_size,), generator=gen)
        z = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)) * sf
        caps = ["" if rng.random() < CAPTION_DROPOUT else world.caption(scenes[i], rng) for i in idx.tolist()]
        with torch.no_grad():
            cond = text_encoder(common.tokenize(tokenizer, caps))[0]
        noise = torch.randn(z.shape, generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (batch_size,), generator=gen)
        pred = unet(noise_sched.add_noise(z, noise, t), t, cond).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        d = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - d)
        done = step + 1
        ema_loss = loss.item() if ema_loss is None else 0.99 * ema_loss + 0.01 * loss.item()
        if step % 100 == 0:
            log.info("unet step %d loss %.4f lr %.2e (%.0f s)", step, ema_loss, sched.get_last_lr()[0], time.time() - t0)
        bar.set_postfix(loss=f"{ema_loss:.4f}", refresh=False)
        if checkpoint_every and done % checkpoint_every == 0:
            save_pipeline(ema, vae, text_encoder, tokenizer, out / "pipeline")
            log.info("unet: checkpoint at step %d", done)
    del uncond_ids
    save_pipeline(ema, vae, text_encoder, tokenizer, out / "pipeline")
    wall = time.time() - t0
    log.info("unet: %d steps in %.1f s", done, wall)
    return {"steps": done, "wall_s": round(wall, 1), "final_loss": round(float(ema_loss or 0.0), 4),
            "path": str(out / "pipeline")}
