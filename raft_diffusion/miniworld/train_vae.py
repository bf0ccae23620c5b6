"""Train the tiny ``AutoencoderKL`` (4 latent channels, 4x downsampling: 32x32 images -> 4x8x8
latents) on world renders, set ``scaling_factor`` = 1 / std of its latents (as SD does) and save it
with ``save_pretrained`` to ``<out>/vae``.

Loss: MSE on images in [-1, 1] plus a KL term of weight 1e-6 (SD's VAE used the same KL weight).

:func:`finetune_decoder` then teaches the decoder the other sizes it must serve (SD's VAE, trained
on 256 px crops, decodes 512 px and 256 px images alike), with the encoder frozen so the latent
space the UNet was trained on does not move.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from raft_diffusion.miniworld import ADAPTATION_RESOLUTION, common, world

log = logging.getLogger(__name__)

KL_WEIGHT = 1e-6


def make_vae(quick: bool = False, blocks: int = 3, latent_channels: int = 4):
    """The miniworld VAE: ``blocks`` encoder/decoder blocks, a 2 ** (blocks - 1) downsampling, and
    ``latent_channels`` (the committed one: 3 blocks, 4x, 4 channels, as SD 1.x; SD3 and FLUX use 16)."""
    from diffusers import AutoencoderKL

    ch = ((8, 16, 16) if quick else (16, 32, 64))[:blocks]
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=ch,
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=world.NATIVE_RESOLUTION,
    )


@torch.no_grad()
def latent_std(vae, seed: int, n: int = 1024) -> float:
    """Std of posterior samples of ``n`` training-stream renders."""
    data = world.stream(seed, 256)
    zs = []
    for _ in range(max(1, n // 256)):
        images, _, _ = next(data)
        zs.append(vae.encode(images * 2 - 1).latent_dist.sample())
    return float(torch.cat(zs).std())


@torch.no_grad()
def psnr(vae, images: torch.Tensor, batch: int = 256) -> float:
    """Mean reconstruction PSNR (dB) of images in [0, 1], through the posterior mean."""
    vals = []
    for i in range(0, len(images), batch):
        x = images[i : i + batch]
        rec = (vae.decode(vae.encode(x * 2 - 1).latent_dist.mode()).sample / 2 + 0.5).clamp(0, 1)
        mse = ((rec - x) ** 2).flatten(1).mean(1).clamp_min(1e-10)
        vals.append(10 * torch.log10(1.0 / mse))
    return float(torch.cat(vals).mean())


def reconstruction_loss(vae, images: torch.Tensor, sizes: tuple[int, ...], train_encoder: bool) -> torch.Tensor:
    """Sum over ``sizes`` of the decoded sample's MSE against ``images`` (B, 3, H, W) float in [0, 1]
    area-resized to each size (area at the same size is the identity); with ``train_encoder`` the
    posterior's KL is added, without it the encoder runs without gradients."""
    loss = torch.zeros(())
    for size in sizes:
        x = F.interpolate(images, size=(size, size), mode="area") * 2 - 1
        with torch.set_grad_enabled(train_encoder):
            post = vae.encode(x).latent_dist
            z = post.sample()
        loss = loss + F.mse_loss(vae.decode(z).sample, x) + (KL_WEIGHT * post.kl().mean() if train_encoder else 0.0)
    return loss


def _step(opt, sched, params: list, loss: torch.Tensor, ema: float | None) -> float:
    """One clipped optimiser and scheduler step on ``loss``; returns the loss's running mean."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    return loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()


def train_vae(out: str | Path, *, seed: int = 0, steps: int = 3000, batch_size: int = 32, lr: float = 1e-3,
              quick: bool = False, max_seconds: float | None = None, blocks: int = 3, latent_channels: int = 4,
              sizes: tuple[int, ...] = (world.NATIVE_RESOLUTION,)) -> dict:
    """Train and save; returns {"steps", "wall_s", "scaling_factor", "path"}. ``max_seconds``: stop
    early at this wall time (the learning-rate schedule follows whichever of steps and time runs out
    first); ``blocks``, ``latent_channels``: see :func:`make_vae`; ``sizes``: the renders are
    area-resized to each (one loss per size, summed; the committed VAE: 32 px alone)."""
    t0 = time.time()
    vae_dir = Path(out) / "vae"
    common.seed_all(seed)
    vae = make_vae(quick, blocks, latent_channels)
    params = list(vae.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warm = max(1, steps // 50)
    progress = common.Progress(steps, max_seconds)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warm) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress.fraction(i))))
    )
    data = world.stream(seed + 2, batch_size)
    vae.train()
    ema = None
    bar = tqdm(range(steps), desc="vae", mininterval=10, disable=steps < 20)
    for step in bar:
        if progress.done(step):
            log.info("vae: time budget reached at step %d", step)
            steps = step
            break
        images, _, _ = next(data)
        loss = reconstruction_loss(vae, images, sizes, train_encoder=True)
        ema = _step(opt, sched, params, loss, ema)
        if step % 100 == 0 or step == steps - 1:
            log.info("vae step %d/%d loss %.5f", step, steps, ema)
        bar.set_postfix(loss=f"{ema:.4f}", refresh=False)
    vae.eval()
    std = latent_std(vae, seed + 3)
    vae.register_to_config(scaling_factor=1.0 / std)
    vae.save_pretrained(vae_dir)
    wall = time.time() - t0
    log.info("vae: %d steps in %.1f s, latent std %.4f -> scaling_factor %.4f", steps, wall, std, 1 / std)
    return {"steps": steps, "wall_s": round(wall, 1), "scaling_factor": round(1.0 / std, 5), "path": str(vae_dir)}


def finetune_decoder(vae_dir: str | Path, out: str | Path, *, seed: int = 0, steps: int = 1500, batch_size: int = 32,
                     lr: float = 3e-4, sizes: tuple[int, ...] = (world.NATIVE_RESOLUTION, ADAPTATION_RESOLUTION),
                     max_seconds: float | None = None) -> dict:
    """Fine-tune the decoder of the VAE in ``vae_dir`` on renders area-resized to each of ``sizes``
    (one batch per size per step, losses summed), encoder and ``scaling_factor`` frozen; save to
    ``<out>/vae``. Returns {"steps", "wall_s", "psnr_db": {size: dB}, "path"}."""
    from diffusers import AutoencoderKL

    t0 = time.time()
    common.seed_all(seed)
    vae = AutoencoderKL.from_pretrained(vae_dir, torch_dtype=torch.float32)
    vae.requires_grad_(False)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    progress = common.Progress(steps, max_seconds)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress.fraction(i))))
    data = world.stream(seed + 5, batch_size)
    vae.train()
    ema = None
    for step in tqdm(range(steps), desc="vae decoder", mininterval=10, disable=steps < 20):
        if progress.done(step):
            log.info("vae decoder: time budget reached at step %d", step)
            steps = step
            break
        images, _, _ = next(data)
        loss = reconstruction_loss(vae, images, sizes, train_encoder=False)
        ema = _step(opt, sched, params, loss, ema)
        if step % 100 == 0 or step == steps - 1:
            log.info("vae decoder step %d/%d loss %.5f", step, steps, ema)
    vae.eval()
    held = world.render_batch(world.heldout_scenes(300))
    scores = {size: round(psnr(vae, F.interpolate(held, size=(size, size), mode="area")), 3) for size in sizes}
    vae_out = Path(out) / "vae"
    vae.save_pretrained(vae_out)
    wall = time.time() - t0
    log.info("vae decoder: %d steps in %.1f s, PSNR %s", steps, wall, scores)
    return {"steps": steps, "wall_s": round(wall, 1), "psnr_db": scores, "path": str(vae_out)}
