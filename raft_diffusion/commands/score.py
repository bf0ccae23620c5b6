"""``raft-diffusion score DIR --scorer NAME``: score a folder of images (or a text file of responses).

Prints a table (file, reward) and writes a CSV (default ``DIR/scores-NAME.csv``). Prompts: one
``--prompt`` for every image, or ``--prompts FILE`` with one line per image (in sorted file order),
or a ``prompts.txt`` / ``prompts.json`` ({"file name": "prompt"}) in DIR. ``--scorer-arg key=value``
passes factory arguments (values parsed as JSON when they parse, else kept as strings).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("score", help="score a folder of images with a registered scorer",
                              description=__doc__.split("\n\n", 1)[1] if __doc__ else None)
    p.add_argument("dir", help="folder of images (png/jpg/webp/bmp), read in sorted order")
    p.add_argument("--scorer", required=True, help="registered scorer name (see `raft-diffusion scorers`)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--prompt", help="one prompt for every image")
    g.add_argument("--prompts", help="text file with one prompt per image, in sorted file order")
    p.add_argument("--scorer-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="argument for the scorer factory (repeatable), e.g. weights=/path/head.pth")
    p.add_argument("--csv", help="output CSV path (default DIR/scores-SCORER.csv)")
    p.add_argument("--batch-size", type=int, default=16, help="images read and scored per call")
    p.set_defaults(func=run)


def parse_scorer_args(items: list[str]) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}`` (JSON values where they parse)."""
    from raft_diffusion.errors import ConfigError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--scorer-arg {item!r} must look like key=value")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def list_images(folder: Path) -> list[Path]:
    from raft_diffusion.errors import ConfigError

    if not folder.is_dir():
        raise ConfigError(f"score: {folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"score: no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def read_prompts(args: argparse.Namespace, files: list[Path]) -> list[str]:
    from raft_diffusion.errors import ConfigError

    folder = Path(args.dir)
    if args.prompt is not None:
        return [args.prompt] * len(files)
    path = Path(args.prompts) if args.prompts else None
    if path is None and (folder / "prompts.json").is_file():
        mapping = json.loads((folder / "prompts.json").read_text())
        missing = [f.name for f in files if f.name not in mapping]
        if missing:
            raise ConfigError(f"score: {folder / 'prompts.json'} has no prompt for {missing[0]}")
        return [str(mapping[f.name]) for f in files]
    if path is None and (folder / "prompts.txt").is_file():
        path = folder / "prompts.txt"
        rows = [line.split("\t") for line in path.read_text().splitlines() if line.strip()]
        if rows and all(len(r) >= 2 and r[0].lower().endswith(IMAGE_SUFFIXES) for r in rows):
            mapping = {r[0]: r[1] for r in rows}  # `generate` writes "file<TAB>prompt<TAB>seed"
            missing = [f.name for f in files if f.name not in mapping]
            if missing:
                raise ConfigError(f"score: {path} has no prompt for {missing[0]}; pass --prompt or --prompts")
            return [mapping[f.name] for f in files]
    if path is None:
        return [""] * len(files)
    if not path.is_file():
        raise ConfigError(f"score: prompts file {path} not found")
    lines = [line.rstrip("\n") for line in path.read_text().splitlines() if line.strip()]
    if len(lines) == 1:
        return lines * len(files)
    if len(lines) != len(files):
        raise ConfigError(f"score: {path} has {len(lines)} prompts for {len(files)} images; give one per image")
    return lines


def load_images(files: list[Path]):
    import numpy as np
    import torch
    from PIL import Image

    from raft_diffusion.errors import ConfigError

    arrays = []
    for f in files:
        try:
            with Image.open(f) as im:
                arrays.append(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)
        except (OSError, ValueError, SyntaxError) as exc:  # truncated, not an image, unreadable
            raise ConfigError(f"score: cannot read image {str(f)!r} ({exc}); remove or replace it") from None
    shapes = {a.shape for a in arrays}
    if len(shapes) == 1:
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return [torch.from_numpy(a).permute(2, 0, 1)[None] for a in arrays]


def run(args: argparse.Namespace) -> int:
    import csv

    import torch

    import scorers

    from raft_diffusion.errors import ConfigError

    if args.batch_size < 1:
        raise ConfigError(f"score: --batch-size must be >= 1, got {args.batch_size}")
    files = list_images(Path(args.dir))
    prompts = read_prompts(args, files)
    scorer = scorers.build(args.scorer, **parse_scorer_args(args.scorer_arg))
    if getattr(scorer, "needs_prompts", False) and not any(prompts):
        raise ConfigError(f"score: scorer {args.scorer!r} reads the prompt and no prompt was given; pass --prompt TEXT, "
                          "--prompts FILE, or a prompts.txt / prompts.json in the folder")
    from scorers.common import validated

    scorer = validated(scorer, args.scorer)
    rewards: list[float] = []
    step = int(args.batch_size)
    for i in range(0, len(files), step):
        batch_files = files[i:i + step]
        images = load_images(batch_files)
        chunks = images if isinstance(images, list) else [images]
        offset = i
        for chunk in chunks:
            n = chunk.shape[0]
            r = scorer(chunk, prompts[offset:offset + n], [{"file": f.name} for f in files[offset:offset + n]])
            rewards.extend(float(x) for x in torch.as_tensor(r).flatten())
            offset += n
    out = Path(args.csv) if args.csv else Path(args.dir) / f"scores-{args.scorer.replace(':', '_').replace('/', '_')}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "prompt", "reward"])
        for f, p, r in zip(files, prompts, rewards):
            w.writerow([f.name, p, f"{r:.6g}"])
    width = max(len("file"), *(len(f.name) for f in files))
    print(f"{'file':<{width}}  reward")
    for f, r in zip(files, rewards):
        print(f"{f.name:<{width}}  {r:.4f}")
    mean = sum(rewards) / len(rewards)
    print(f"{'mean':<{width}}  {mean:.4f}   ({len(rewards)} images, scorer {args.scorer}; csv: {out})")
    return 0
