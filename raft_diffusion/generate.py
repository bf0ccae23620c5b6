"""``generate``: images from a pipeline plus an optional LoRA (or a fully fine-tuned denoiser), or from a
run folder with its own settings.

Given a run folder as ``lora``, every setting left unset comes from the run's ``config.yaml``: the
model, family, dtype, scheduler, steps, guidance, size, negative prompt, and by default the run's
eval prompts with the run's eval seeds, so ``generate(lora=RUN_DIR)`` redraws the run's fixed-seed
eval images with the final LoRA, or with the run's fine-tuned denoiser (``train.adapter: full``). Files in the output folder are never overwritten: new images take
the next free numbers and ``prompts.txt`` grows.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any, Sequence

from raft_diffusion.errors import ConfigError

log = logging.getLogger(__name__)

#: what ``generate`` uses when neither the caller nor a run's config says
DEFAULTS: dict[str, Any] = {"pretrained": "tiny", "family": None, "scheduler": None, "steps": 20, "eta": 0.0, "guidance_scale": 7.5,
                            "height": None, "width": None, "dtype": "float32", "negative_prompt": None, "seed": 0,
                            "num_images": 1}
#: the run's eval seeds are sample_seed(raft.seed + EVAL_SEED_OFFSET, 0, i), as the round loop draws them
EVAL_SEED_OFFSET = 7919


def run_settings(run_dir: Path) -> tuple[dict[str, Any], list[str]]:
    """(generate's settings from a run folder's config (the newest ``config.resume-N.yaml`` when a resume
    changed it, else ``config.yaml``), the run's eval prompt texts)."""
    import prompts as prompt_sets

    from raft_diffusion.config import load_config
    from raft_diffusion.resume_check import latest_config

    cfg = load_config(latest_config(run_dir))
    m, s, p = cfg.model, cfg.sampling, cfg.prompts
    settings = {"pretrained": m.pretrained, "family": m.family, "scheduler": s.scheduler, "steps": s.steps, "eta": s.eta,
                "guidance_scale": s.guidance_scale, "height": s.height, "width": s.width, "dtype": m.dtype,
                "negative_prompt": s.negative_prompt, "seed": cfg.raft.seed + EVAL_SEED_OFFSET,
                "num_images": cfg.raft.eval_samples_per_prompt}
    texts: list[str] = []
    if p.eval:
        texts = [x.text for x in prompt_sets.load(p.eval, template=p.eval_template or p.template, limit=p.eval_limit)]
    return settings, texts


def _next_index(out: Path) -> int:
    """The first image number after every ``NNNN.png`` already in ``out``."""
    taken = [int(m.group(1)) for f in out.glob("*.png") if (m := re.fullmatch(r"(\d+)\.png", f.name))]
    return max(taken) + 1 if taken else 0


def generate(
    pretrained: str | None,
    prompts: Sequence[str] | str | None,
    out_dir: str | Path,
    *,
    lora: str | Path | None = None,
    seed: int | None = None,
    num_images: int | None = None,
    scheduler: str | None = None,
    steps: int | None = None,
    eta: float | None = None,
    guidance_scale: float | None = None,
    height: int | None = None,
    width: int | None = None,
    dtype: str | None = None,
    device: str = "auto",
    batch_size: int = 8,
    family: str | None = None,
    negative_prompt: str | None = None,
) -> list[Path]:
    """Images into ``out_dir/NNNN.png`` (the next free numbers); returns their paths.

    ``prompts``: a list of texts (a single string is one prompt); None or empty with a run folder as
    ``lora``: the run's eval prompts. Unset arguments come from the run's config when ``lora`` is a
    run folder, else from :data:`DEFAULTS`."""
    from raft_diffusion.core.rng import sample_seed
    from raft_diffusion.diffusion import sampling
    from raft_diffusion.diffusion.weights import load_trained_weights
    from raft_diffusion.diffusion.pipeline import load_family
    from raft_diffusion.report import to_pil

    if isinstance(prompts, str):
        prompts = [prompts]
    given = {"pretrained": pretrained, "family": family, "scheduler": scheduler, "steps": steps, "eta": eta,
             "guidance_scale": guidance_scale, "height": height, "width": width, "dtype": dtype,
             "negative_prompt": negative_prompt, "seed": seed, "num_images": num_images}
    settings, run_prompts = dict(DEFAULTS), []
    if lora is not None and (Path(lora) / "config.yaml").is_file():
        from_run, run_prompts = run_settings(Path(lora))
        settings.update(from_run)
    settings.update({k: v for k, v in given.items() if v is not None})
    texts = list(prompts or run_prompts)
    st = settings
    for name in ("height", "width"):
        v = st[name]
        if v is not None and (v <= 0 or v % 8):
            raise ConfigError(f"--{name} {v} is not a positive multiple of 8")
    for name, flag in (("num_images", "--num-images"), ("steps", "--steps")):
        if st[name] < 1:
            raise ConfigError(f"{flag} must be >= 1, got {st[name]}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if not math.isfinite(st["eta"]) or not 0 <= st["eta"] <= 1:
        raise ConfigError(f"--eta must be a number in [0, 1] (0 deterministic DDIM, 1 ancestral), got {st['eta']}")
    if not math.isfinite(st["guidance_scale"]) or st["guidance_scale"] < 0:
        raise ConfigError(f"--guidance-scale must be a finite number >= 0, got {st['guidance_scale']}")
    if not texts:
        raise ConfigError("no prompts given; pass --prompt TEXT or --prompts FILE (or --lora RUN_DIR of a run with eval prompts)")
    fam = load_family(st["pretrained"], family=st["family"], dtype=st["dtype"], device=device, scheduler=st["scheduler"])
    if lora:
        load_trained_weights(fam, lora)
    size = fam.native_size()
    fam.size = (st["height"] or size, st["width"] or size)
    all_texts = [p for p in texts for _ in range(st["num_images"])]
    seeds = [sample_seed(st["seed"], 0, i) for i in range(len(all_texts))]
    result = sampling.generate(
        fam, sampling.PromptEncoder(fam, st["negative_prompt"]), all_texts, seeds, steps=st["steps"], eta=st["eta"],
        guidance_scale=st["guidance_scale"], height=fam.size[0], width=fam.size[1], batch_size=batch_size,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = _next_index(out)
    paths = []
    for i, img in enumerate(result.images):
        path = out / f"{start + i:04d}.png"
        to_pil(img).save(path)
        paths.append(path)
    with open(out / "prompts.txt", "a", encoding="utf-8") as fh:
        fh.writelines(f"{p.name}\t{t}\t{s}\n" for p, t, s in zip(paths, all_texts, seeds))
    log.info("wrote %d images to %s (%s)", len(paths), out, st["pretrained"])
    return paths
