"""Helpers shared by the miniworld trainers: seeding, CLIP preprocessing of tensors, zero-shot naming."""

from __future__ import annotations

import logging
import random
from typing import Sequence

import torch
import torch.nn.functional as F

from raft_diffusion.miniworld import world

log = logging.getLogger(__name__)

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def seed_all(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def make_image_processor(resolution: int = world.NATIVE_RESOLUTION):
    """The ``CLIPImageProcessor`` saved beside the tiny CLIP: bicubic shortest-edge resize and centre
    crop to ``resolution``, OpenAI CLIP mean/std."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": resolution},
        resample=3,
        do_center_crop=True,
        crop_size={"height": resolution, "width": resolution},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
        do_convert_rgb=True,
    )


def preprocess(images: torch.Tensor, processor) -> torch.Tensor:
    """Tensor version of the processor: NCHW [0, 1] -> normalised pixel_values (no PIL round trip)."""
    size = processor.size.get("shortest_edge") or processor.size["height"]
    crop = processor.crop_size
    x = images.float()
    h, w = x.shape[-2:]
    if processor.do_resize and min(h, w) != size:
        scale = size / min(h, w)
        x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bicubic", antialias=True, align_corners=False)
        x = x.clamp(0, 1)
    if processor.do_center_crop:
        h, w = x.shape[-2:]
        top, left = (h - crop["height"]) // 2, (w - crop["width"]) // 2
        x = x[..., top : top + crop["height"], left : left + crop["width"]]
    mean = torch.tensor(processor.image_mean, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def tokenize(tokenizer, texts: Sequence[str]) -> torch.Tensor:
    """Pad to the tokenizer's model_max_length exactly as StableDiffusionPipeline does."""
    return tokenizer(
        list(texts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def features(out) -> torch.Tensor:
    """``get_image_features``/``get_text_features`` return a tensor in transformers 4 and an output
    object (projected embeddings in ``pooler_output``) in transformers 5."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ZeroShot:
    """Names the shape and colour of single-object images with a CLIP: softmax over the texts
    "a {colour} {shape}" of every pair (out-of-domain ones included), then marginalised."""

    def __init__(self, clip, tokenizer, processor) -> None:
        self.clip, self.processor = clip, processor
        self.pairs = [(c, s) for c in world.COLOURS for s in world.SHAPES]
        texts = [f"{world.article(c)} {c} {s}" for c, s in self.pairs]
        with torch.no_grad():
            t = features(clip.get_text_features(input_ids=tokenize(tokenizer, texts)))
        self.text = F.normalize(t, dim=-1)
        self.scale = float(clip.logit_scale.detach().exp().clamp(max=100))

    @torch.no_grad()
    def image_embeds(self, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
        out = []
        for i in range(0, len(images), batch):
            out.append(features(self.clip.get_image_features(pixel_values=preprocess(images[i : i + batch], self.processor))))
        return F.normalize(torch.cat(out), dim=-1)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[list[str], list[str]]:
        probs = (self.scale * self.image_embeds(images) @ self.text.T).softmax(-1)
        colours, shapes = list(world.COLOURS), list(world.SHAPES)
        p = probs.view(-1, len(colours), len(shapes))
        return [colours[i] for i in p.sum(2).argmax(1)], [shapes[i] for i in p.sum(1).argmax(1)]

    def accuracy(self, images: torch.Tensor, colours: Sequence[str], shapes: Sequence[str]) -> tuple[float, float]:
        """(shape accuracy, colour accuracy) in [0, 1]."""
        pc, ps = self.predict(images)
        n = len(images)
        return (sum(a == b for a, b in zip(ps, shapes)) / n, sum(a == b for a, b in zip(pc, colours)) / n)


def halve_embeddings(path, min_numel: int = 500_000) -> None:
    """Rewrite a safetensors file with its large tables (the 49,408-token embedding) in float16,
    keeping the metadata; ``from_pretrained`` casts them back to the model's float32."""
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    tensors = {k: (v.half() if v.numel() >= min_numel and v.is_floating_point() else v) for k, v in tensors.items()}
    save_file(tensors, str(path), metadata=meta)


class Progress:
    """Training progress in [0, 1] by steps or by wall time, whichever runs out first."""

    def __init__(self, steps: int, max_seconds: float | None = None) -> None:
        import time

        self.steps, self.max_seconds, self._time, self.start = steps, max_seconds, time.time, time.time()

    def fraction(self, step: int) -> float:
        f = step / max(1, self.steps)
        if self.max_seconds:
            f = max(f, (self._time() - self.start) / self.max_seconds)
        return min(1.0, f)

    def done(self, step: int) -> bool:
        return step >= self.steps or bool(self.max_seconds and self._time() - self.start >= self.max_seconds)
