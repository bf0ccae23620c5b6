"""The miniworld figures: CLIP zero-shot accuracy, VAE PSNR, generation fidelity at the native and the
adaptation resolution, and the aesthetic predictor's Spearman correlation with the rating.

All on fixed held-out sets (:data:`world.HELDOUT_SEED`), never on training data.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from raft_diffusion.miniworld import common, rating, world

log = logging.getLogger(__name__)

from raft_diffusion.miniworld import ADAPTATION_RESOLUTION, clip_path  # noqa: E402
GUIDANCE_SCALE = 5.0
INFERENCE_STEPS = 20


def load_clip(clip_dir: str | Path):
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    clip = CLIPModel.from_pretrained(clip_dir).eval()
    return clip, CLIPTokenizer.from_pretrained(clip_dir), CLIPImageProcessor.from_pretrained(clip_dir)


def clip_zero_shot(clip_dir: str | Path, n: int = 600) -> dict:
    """Zero-shot shape / colour accuracy on held-out single-object renders, in- and out-of-domain."""
    zs = common.ZeroShot(*load_clip(clip_dir))
    res = {}
    for name, ood in (("", False), ("ood_", True)):
        scenes = world.heldout_scenes(n, ood=ood)
        shape, colour = zs.accuracy(
            world.render_batch(scenes), [s.objects[0].colour for s in scenes], [s.objects[0].shape for s in scenes]
        )
        res[f"{name}shape_acc"], res[f"{name}colour_acc"] = round(shape, 4), round(colour, 4)
    return res


def evaluator_heldout(n: int = 600) -> dict[str, float]:
    """The committed independent evaluator on held-out renders: shape / colour accuracy at 32 and 16 px
    (in- and out-of-domain) and the agreement of its gold rating with the rule."""
    from raft_diffusion.miniworld import evaluator

    ev = evaluator.default_evaluator()
    res: dict[str, float] = {}
    for px in (world.NATIVE_RESOLUTION, ADAPTATION_RESOLUTION):
        for tag, ood in (("", False), ("ood_", True)):
            shape, colour = evaluator.heldout_accuracy(ev, n, ood=ood, resolution=px)
            res[f"{tag}shape_acc@{px}"], res[f"{tag}colour_acc@{px}"] = round(shape, 4), round(colour, 4)
        res[f"rating_spearman@{px}"] = evaluator.heldout_rating_agreement(ev, n, resolution=px)["spearman"]
    return res


def vae_psnr(vae_dir: str | Path, n: int = 512) -> float:
    from diffusers import AutoencoderKL

    from raft_diffusion.miniworld.train_vae import psnr

    vae = AutoencoderKL.from_pretrained(vae_dir).eval()
    return round(psnr(vae, world.render_batch(world.heldout_scenes(n, single=False))), 3)


def aesthetic_spearman(assets: str | Path, n: int = 1000) -> dict:
    """Spearman correlation (and MSE) of the head's prediction with the rating on held-out renders."""
    from raft_diffusion.miniworld.train_aesthetic import embed, load_head, spearman

    assets = Path(assets)
    scenes = world.heldout_scenes(n, single=False)
    y = torch.tensor([rating.rating(s) for s in scenes])
    with torch.no_grad():
        pred = load_head(assets / "aesthetic")(embed(assets / "clip", world.render_batch(scenes)))[:, 0]
    return {"spearman": round(spearman(pred, y), 4), "mse": round(float(((pred - y) ** 2).mean()), 4),
            "rating_std": round(float(y.std()), 4)}


@torch.no_grad()
def generate(pipe, prompts: Sequence[str], per_prompt: int, resolution: int, *, seed: int = 0,
             guidance_scale: float = GUIDANCE_SCALE, steps: int = INFERENCE_STEPS, batch: int = 64) -> torch.Tensor:
    """NCHW [0, 1] images, ``per_prompt`` for each prompt in order, seeded."""
    expanded = [p for p in prompts for _ in range(per_prompt)]
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, len(expanded), batch):
        out.append(pipe(expanded[i : i + batch], height=resolution, width=resolution, num_inference_steps=steps,
                        guidance_scale=guidance_scale, generator=gen, output_type="pt").images)
    return torch.cat(out).float().clamp(0, 1)


def generation_fidelity(assets: str | Path, resolution: int, prompts: Sequence[str], *, per_prompt: int = 8,
                        seed: int = 0, guidance_scale: float = GUIDANCE_SCALE, steps: int = INFERENCE_STEPS,
                        pipe=None, zs=None) -> dict:
    """Fraction of generated images whose shape / colour are named as prompted, by the independent
    evaluator (``shape_acc``, ``colour_acc``) and by the tiny CLIP (``clip_shape_acc``, ``clip_colour_acc``)."""
    from diffusers import StableDiffusionPipeline

    assets = Path(assets)
    pipe = pipe or StableDiffusionPipeline.from_pretrained(assets / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    zs = zs or common.ZeroShot(*load_clip(assets / "clip"))
    images = generate(pipe, prompts, per_prompt, resolution, seed=seed, guidance_scale=guidance_scale, steps=steps)
    texts = [p for p in prompts for _ in range(per_prompt)]
    return {**both_readings(images, texts, zs), "n": len(images)}


def both_readings(images: torch.Tensor, texts: Sequence[str], zs: "common.ZeroShot") -> dict[str, float]:
    """Shape / colour named as prompted by the independent evaluator and by the CLIP ``zs``, rounded."""
    from raft_diffusion.miniworld import evaluator

    want = [world.parse_prompt(t) for t in texts]
    shape, colour = evaluator.accuracy(images, texts)
    clip_shape, clip_colour = zs.accuracy(images, [c for c, _ in want], [s for _, s in want])
    return {"shape_acc": round(shape, 4), "colour_acc": round(colour, 4),
            "clip_shape_acc": round(clip_shape, 4), "clip_colour_acc": round(clip_colour, 4)}


@torch.no_grad()
def vae_round_trip(vae: Any, resolution: int, n: int = 300, zs: "common.ZeroShot | None" = None) -> dict[str, float]:
    """Shape / colour accuracy of held-out renders resized to ``resolution`` and passed through the
    VAE (encode, decode): how much of the prompt survives the VAE at that size. A reference, not a
    bound: a UNet's latents need not be the encoder's. Judged by the independent evaluator and by
    ``zs`` (default: the committed miniworld CLIP), as in :func:`both_readings`."""
    import torch.nn.functional as F

    scenes = world.heldout_scenes(n)
    x = F.interpolate(world.render_batch(scenes), size=(resolution, resolution), mode="area")
    z = vae.encode((x * 2 - 1).to(vae.device, vae.dtype)).latent_dist.mean
    y = (vae.decode(z).sample.float().cpu() / 2 + 0.5).clamp(0, 1)
    if zs is None:
        zs = common.ZeroShot(*load_clip(clip_path()))
    return both_readings(y, [world.caption(s) for s in scenes], zs)


def evaluate_all(assets: str | Path, *, adaptation_resolution: int = ADAPTATION_RESOLUTION, quick: bool = False,
                 per_prompt: int = 8, extra_resolutions: Sequence[int] = ()) -> dict:
    """Every figure of the miniworld, as a JSON-able dict."""
    from diffusers import StableDiffusionPipeline

    t0 = time.time()
    assets = Path(assets)
    n = 64 if quick else 600
    figs: dict = {"clip_zero_shot": clip_zero_shot(assets / "clip", n=n), "evaluator": evaluator_heldout(n)}
    figs["vae_psnr_db"] = vae_psnr(assets / "pipeline" / "vae", n=n)
    figs["aesthetic"] = aesthetic_spearman(assets, n=n)
    pipe = StableDiffusionPipeline.from_pretrained(assets / "pipeline")
    zs = common.ZeroShot(*load_clip(assets / "clip"))
    steps = 2 if quick else INFERENCE_STEPS
    pp = 1 if quick else per_prompt
    gen = {}
    for split, prompts in (("in_domain", world.in_domain_prompts()), ("out_of_domain", world.out_of_domain_prompts())):
        for res in dict.fromkeys((world.NATIVE_RESOLUTION, adaptation_resolution, *extra_resolutions)):
            gen[f"{split}@{res}"] = generation_fidelity(assets, res, prompts, per_prompt=pp, steps=steps, pipe=pipe, zs=zs)
    figs["generation"] = gen
    figs["vae_round_trip"] = {str(res): vae_round_trip(pipe.vae, res, n=64 if quick else 300, zs=zs)
                           for res in dict.fromkeys((world.NATIVE_RESOLUTION, adaptation_resolution))}
    figs["generation_settings"] = {"guidance_scale": GUIDANCE_SCALE, "inference_steps": steps,
                                   "scheduler": type(pipe.scheduler).__name__, "per_prompt": pp,
                                   "native_resolution": world.NATIVE_RESOLUTION,
                                   "adaptation_resolution": adaptation_resolution}
    figs["eval_wall_s"] = round(time.time() - t0, 1)
    return figs
