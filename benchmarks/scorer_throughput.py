"""Throughput of the aesthetic scorer against bare open_clip ``encode_image`` + head, in one run.

Both paths use the same random-weight open_clip model, the same head and the same batch of images
(N, 3, size, size) in [0, 1]. The bare path is the minimum work: bicubic resize + normalise with
torch ops, ``model.encode_image``, L2-normalise, head, under ``torch.inference_mode``. The scorer
path is ``AestheticScorer.__call__`` (input checks, internal batching, preprocessing, validation).
Timings are interleaved (scorer, bare, bare, scorer, ...); the median and the best call are reported; the ratio
scorer/bare is the overhead (target <= 1.05).

    python benchmarks/scorer_throughput.py                      # ViT-B-32, CPU, about 30 s
    python benchmarks/scorer_throughput.py --arch ViT-L-14 --device cuda --batch 64 --size 512
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="ViT-B-32", help="open_clip architecture (random weights), e.g. ViT-L-14")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--batch", type=int, default=8, help="images per call")
    p.add_argument("--size", type=int, default=256, help="input image side (SD outputs: 512)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per path")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per path")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    return p.parse_args(argv)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from scorers.aesthetic import AestheticScorer
    from scorers.aesthetic_head import AestheticMLP
    from scorers.backbones import OpenClipBackbone

    device = torch.device(args.device)
    torch.manual_seed(0)
    backbone = OpenClipBackbone(args.arch, None, device=device, dtype=args.dtype).load()
    model = backbone.model
    embed_dim = int(model.visual.output_dim)
    head = AestheticMLP(embed_dim).eval()
    scorer = AestheticScorer(backbone, head, name="aesthetic-bench", batch_size=args.batch).load()
    head = scorer.head  # moved to the device by load()
    pre = backbone.preprocess
    mean = torch.tensor(pre.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, device=device).view(1, 3, 1, 1)
    crop = pre.crop[0]
    dtype = backbone.dtype

    images = torch.rand(args.batch, 3, args.size, args.size, device=device)
    prompts = ["a photo"] * args.batch
    metadata = [{} for _ in range(args.batch)]

    def bare() -> torch.Tensor:
        with torch.inference_mode():
            x = F.interpolate(images, size=(crop, crop), mode="bicubic", align_corners=False, antialias=True)
            x = ((x.clamp(0, 1) - mean) / std).to(dtype)
            emb = model.encode_image(x).float()
            emb = emb / emb.norm(dim=-1, keepdim=True)
            return head(emb).squeeze(-1)

    def scored() -> torch.Tensor:
        return scorer(images, prompts, metadata)

    for _ in range(args.warmup):
        scored(), bare()
    sync(device)
    times: dict[str, list[float]] = {"scorer": [], "bare": []}
    pair = [("scorer", scored), ("bare", bare)]
    for i in range(args.repeats):
        for name, fn in (pair if i % 2 == 0 else pair[::-1]):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    diff = (scored() - bare().float().cpu()).abs().max().item()
    t_s, t_b = statistics.median(times["scorer"]), statistics.median(times["bare"])
    print(f"arch {args.arch} (random weights), device {device}, dtype {args.dtype}, batch {args.batch}, "
          f"input {args.size}x{args.size} -> {crop}x{crop}, {args.repeats} timed calls each (median)")
    print(f"  aesthetic scorer : {args.batch / t_s:9.2f} images/s  ({t_s * 1000:8.1f} ms/batch)")
    print(f"  bare encode+head : {args.batch / t_b:9.2f} images/s  ({t_b * 1000:8.1f} ms/batch)")
    m_s, m_b = min(times["scorer"]), min(times["bare"])
    print(f"  ratio scorer/bare time: {t_s / t_b:.3f} median, {m_s / m_b:.3f} best-of-{args.repeats}  "
          f"(target <= 1.05); max |reward diff| {diff:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
