"""``raft-diffusion miniworld build|evaluate``: train the miniworld models, or print their figures.

A plugin command: :mod:`raft_diffusion.miniworld.plugin` registers it with
:func:`raft_diffusion.plugins.register_command`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from typing import Any

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add the ``miniworld`` parser with its ``build`` and ``evaluate`` actions."""
    parser = subparsers.add_parser(
        "miniworld",
        help="build or evaluate the miniworld (miniature SD, CLIP and aesthetic predictor)",
        description="The miniworld: a procedural world of shapes with miniature models trained on the CPU.",
    )
    sub = parser.add_subparsers(dest="miniworld_command", metavar="ACTION")
    b = sub.add_parser("build", help="train every miniworld model (seeded) and write the assets and figures")
    b.add_argument("--out", default=None, help="output folder (default: the package's assets folder)")
    b.add_argument("--seed", type=int, default=0, help="seed of every training stream (default 0)")
    b.add_argument("--quick", action="store_true", help="tiny models and a few steps: a smoke test in seconds")
    b.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    b.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    b.add_argument("--vae-blocks", type=int, default=3,
                   help="VAE encoder/decoder blocks: downsampling 2 ** (blocks - 1) (default 3: 4x, the committed)")
    b.add_argument("--latent-channels", type=int, default=4, help="VAE latent channels (default 4, the committed)")
    b.add_argument("--vae-train-sizes", default="32",
                   help="sizes the VAE trains at, comma-separated (default 32, the committed; "
                        "32,16 trains the encoder at 16 px too)")
    b.add_argument("--reuse", default="",
                   help="models copied from --reuse-from instead of trained, comma-separated: clip, aesthetic "
                        "(they read pixels, so a new latent space needs only the VAE and UNet trained)")
    b.add_argument("--reuse-from", default=None,
                   help="miniworld assets folder to reuse from (default: the committed one)")
    e = sub.add_parser("evaluate", help="print the figures of a miniworld assets folder")
    e.add_argument("--assets", default=None, help="assets folder (default: the committed one)")
    e.add_argument("--recompute", action="store_true", help="measure again instead of reading figures.json")
    e.add_argument("--quick", action="store_true", help="with --recompute: small held-out sets, 2 sampling steps")
    e.add_argument("--write", action="store_true",
                   help="with --recompute: store the figures in figures.json (training records kept) and rebuild FIGURES.md")
    parser.set_defaults(func=run, parser=parser)


def run(args: argparse.Namespace) -> int:
    """Run ``build`` or ``evaluate``; no action prints the help (exit 2)."""
    from pathlib import Path

    from raft_diffusion.errors import ConfigError, ModelError
    from raft_diffusion.miniworld import assets_dir

    action = getattr(args, "miniworld_command", None)
    if action is None:
        args.parser.print_help()
        return 2
    if action == "build":
        import torch

        from raft_diffusion.miniworld.build import BuildSettings, build
        from raft_diffusion.miniworld.figures import write_markdown

        if args.threads is not None:
            if args.threads < 1:
                raise ConfigError(f"--threads must be >= 1, got {args.threads}")
            torch.set_num_threads(args.threads)
        if args.vae_blocks not in (1, 2, 3):
            raise ConfigError(f"--vae-blocks must be 1, 2 or 3 (downsampling 1x, 2x, 4x), got {args.vae_blocks}")
        if args.latent_channels < 1:
            raise ConfigError(f"--latent-channels must be >= 1, got {args.latent_channels}")
        try:
            sizes = tuple(int(x) for x in args.vae_train_sizes.split(","))
        except ValueError:
            sizes = ()
        if not sizes or any(x < 8 or x % 8 for x in sizes):
            raise ConfigError(f"--vae-train-sizes {args.vae_train_sizes!r} must be sizes in pixels, multiples of 8, "
                              "comma-separated, e.g. 32,16")
        out = Path(args.out) if args.out else assets_dir()
        base = BuildSettings.quick() if args.quick else BuildSettings()
        settings = dataclasses.replace(
            base, vae_blocks=args.vae_blocks, vae_latent_channels=args.latent_channels, vae_sizes=sizes,
            reuse=tuple(x.strip() for x in args.reuse.split(",") if x.strip()), reuse_from=args.reuse_from)
        figures = build(out, seed=args.seed, quick=args.quick, settings=settings, evaluate=not args.no_eval)
        write_markdown(out, figures)
        print(json.dumps(figures.get("figures", {}), indent=2))
        print(f"train wall time {figures['train_wall_s']} s, total {figures['total_wall_s']} s; assets in {out}")
        return 0
    if action == "evaluate":
        folder = Path(args.assets) if args.assets else assets_dir()
        if not (folder / "pipeline").is_dir() or not (folder / "clip").is_dir():
            raise ModelError(f"{folder} is not a miniworld assets folder (needs pipeline/ and clip/); "
                             "run `raft-diffusion miniworld build --out DIR` first")
        if args.recompute or not (folder / "figures.json").is_file():
            from raft_diffusion.miniworld.evaluate import evaluate_all

            figures = evaluate_all(folder, quick=args.quick)
            if args.write:
                from raft_diffusion.miniworld.build import write_figures
                from raft_diffusion.miniworld.figures import write_markdown

                path = folder / "figures.json"
                record = json.loads(path.read_text()) if path.is_file() else {}
                record["figures"] = figures
                write_figures(folder, record)
                write_markdown(folder, record)
        else:
            figures = json.loads((folder / "figures.json").read_text()).get("figures", {})
        print(json.dumps(figures, indent=2))
        return 0
    raise ConfigError(f"unknown miniworld action {action!r}; use build or evaluate")
