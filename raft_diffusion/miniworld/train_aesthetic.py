"""Fit the miniworld aesthetic predictor: ``scorers.aesthetic_head.AestheticMLP`` on the tiny CLIP's
L2-normalised image embeddings, regressed (MSE) on :func:`rating.rating` of each rendered scene —
the way LAION's predictor was fitted to AVA ratings. Saves ``<out>/aesthetic/head.safetensors`` and
``<out>/aesthetic/config.json`` ({"embed_dim", "hidden", "kind": "mlp"}).
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from raft_diffusion.miniworld import common, rating, world

log = logging.getLogger(__name__)

HIDDEN = (128, 32, 16, 8)


@torch.no_grad()
def embed(clip_dir: str | Path, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """L2-normalised image embeddings of NCHW [0, 1] images through the saved CLIP and its processor."""
    from transformers import CLIPImageProcessor, CLIPModel

    clip = CLIPModel.from_pretrained(clip_dir).eval()
    processor = CLIPImageProcessor.from_pretrained(clip_dir)
    out = [common.features(clip.get_image_features(pixel_values=common.preprocess(images[i : i + batch], processor)))
           for i in range(0, len(images), batch)]
    return F.normalize(torch.cat(out), dim=-1)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    def ranks(x: torch.Tensor) -> torch.Tensor:
        x = x.double().flatten()
        order = x.argsort()
        r = torch.empty_like(x)
        r[order] = torch.arange(len(x), dtype=torch.float64)
        # average tied ranks
        uniq, inv = torch.unique(x, return_inverse=True)
        sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inv, r)
        counts = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inv, torch.ones_like(r))
        return (sums / counts)[inv]

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp_min(1e-12))


def train_aesthetic(out: str | Path, *, seed: int = 0, n_train: int = 12000, steps: int = 3000, lr: float = 3e-3,
                    quick: bool = False) -> dict:
    """Fit and save the head (needs ``<out>/clip``); returns {"n_train", "steps", "wall_s", "path"}."""
    from safetensors.torch import save_file

    from scorers.aesthetic_head import AestheticMLP

    t0 = time.time()
    out = Path(out)
    common.seed_all(seed)
    rng = random.Random(seed + 7)
    scenes = [world.sample_scene(rng) for _ in range(n_train)]
    y = torch.tensor([rating.rating(s) for s in scenes], dtype=torch.float32)[:, None]
    x = embed(out / "clip", world.render_batch(scenes))
    log.info("aesthetic: embedded %d renders in %.1f s", n_train, time.time() - t0)
    head = AestheticMLP(x.shape[1], HIDDEN)
    with torch.no_grad():
        head.layers[-1].bias.fill_(float(y.mean()))
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    head.train()
    gen = torch.Generator().manual_seed(seed + 8)
    for step in tqdm(range(steps), desc="aesthetic", mininterval=10, disable=steps < 20):
        idx = torch.randint(0, n_train, (min(1024, n_train),), generator=gen)
        loss = F.mse_loss(head(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 500 == 0:
            log.info("aesthetic step %d mse %.4f", step, loss.item())
    head.eval()
    adir = out / "aesthetic"
    adir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(adir / "head.safetensors"))
    (adir / "config.json").write_text(
        json.dumps({"embed_dim": int(x.shape[1]), "hidden": list(HIDDEN), "kind": "mlp",
                    "clip": "../clip", "scale": "1-10", "rule": "raft_diffusion.miniworld.rating"}, indent=2) + "\n"
    )
    wall = time.time() - t0
    log.info("aesthetic: fitted in %.1f s", wall)
    return {"n_train": n_train, "steps": steps, "wall_s": round(wall, 1), "path": str(adir)}


def load_head(aesthetic_dir: str | Path):
    """The saved head, loaded with strict key matching."""
    from safetensors.torch import load_file

    from scorers.aesthetic_head import AestheticMLP

    cfg = json.loads((Path(aesthetic_dir) / "config.json").read_text())
    head = AestheticMLP(cfg["embed_dim"], cfg["hidden"])
    head.load_state_dict(load_file(str(Path(aesthetic_dir) / "head.safetensors")), strict=True)
    return head.eval()
