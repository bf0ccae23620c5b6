"""How much latent room a 16 px shape needs: trains a miniworld VAE with ``--blocks`` encoder/decoder
blocks (3, the committed one: 4x downsampling, 4x4x4 latents at 16 px; 2: 2x, 8x8x4) and
``--latent-channels`` (4, the committed one; 16: 4x4x16 at 16 px, as SD3 and FLUX) on the world's
renders, with its decoder fine-tuned at 32 and 16 px as the build does, and prints the round trip of
held-out renders at 16 and 32 px (shape and colour named right by the independent evaluator and the
miniworld CLIP) beside the committed VAE's.

    python benchmarks/miniworld_vae_room.py --blocks 2 [--latent-channels 4] [--train-sizes 32,16] [--seconds 900]
        [--out /tmp/vae-room]

A reference for the resolution experiment: a decoded image cannot show much more shape than this
round trip does, and the committed VAE's 16 px round trip is below 90% of the shape drop. Figures
(shape named right by the evaluator at 16 px; the committed VAE: 65.0%): ``--blocks 2`` 78.3%;
``--latent-channels 8`` 68.0%, ``16`` 64.3% (encoder trained at 32 px only); ``--train-sizes 32,16``
(the encoder trained at 16 px too): 76.7% with 4 channels, 82.0% with ``--latent-channels 16``
(28 minutes each). Without the decoder stage (3,000 steps at both sizes, a script) the same two
read 71.0% and 66.3%. The whole miniworld rebuilt on the last (``raft-diffusion miniworld build
--latent-channels 16 --vae-train-sizes 32,16``) round-trips 80.3%, yet RAFT and a supervised adapter
recover less of the 16 px shape drop on it: ``benchmarks/results/miniworld_latent16.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    from diffusers import AutoencoderKL

    from raft_diffusion.miniworld import pipeline_path
    from raft_diffusion.miniworld.evaluate import vae_round_trip
    from raft_diffusion.miniworld.train_vae import finetune_decoder, train_vae

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=2, help="encoder/decoder blocks (downsampling 2 ** (blocks - 1))")
    ap.add_argument("--latent-channels", type=int, default=4, help="latent channels (the committed VAE: 4)")
    ap.add_argument("--train-sizes", default="32", help="sizes the VAE itself trains at, comma-separated (committed: 32)")
    ap.add_argument("--seconds", type=float, default=900, help="wall-time budget of each of the two trainings")
    ap.add_argument("--out", default="/tmp/vae-room", help="where the trained VAE goes")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    trained = train_vae(args.out, steps=2500, max_seconds=args.seconds, blocks=args.blocks,
                        latent_channels=args.latent_channels, sizes=tuple(int(x) for x in args.train_sizes.split(",")))
    tuned = finetune_decoder(trained["path"], f"{args.out}/tuned", steps=3000, max_seconds=args.seconds)
    figures = {"trained": trained, "decoder": tuned}
    trial = f"{args.blocks} blocks, {args.latent_channels} channels, trained at {args.train_sizes} px"
    for name, path in (("committed", pipeline_path() / "vae"), (trial, tuned["path"])):
        vae = AutoencoderKL.from_pretrained(path)
        figures[name] = {size: vae_round_trip(vae, size) for size in (16, 32)}
        for size, r in figures[name].items():
            print(f"{name}: round trip at {size} px: shape {r['shape_acc']:.1%} (CLIP {r['clip_shape_acc']:.1%}), "
                  f"colour {r['colour_acc']:.1%}")
    print(json.dumps(figures, default=str))


if __name__ == "__main__":
    main()
