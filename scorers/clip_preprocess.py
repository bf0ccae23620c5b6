"""CLIP image preprocessing on float tensors, shared by the CLIP backbones (:mod:`scorers.backbones`).

:class:`ImagePreprocess` takes images as float tensors (N, 3, H, W) in [0, 1] on any device and
preprocesses them as float tensors on the model's device (no PIL round trip).
:func:`preprocess_from_image_processor` builds the one that matches a transformers
``CLIPImageProcessor``'s saved config.

Preprocessing matches the PIL pipelines of the originals up to the uint8 quantisation: resize
(bicubic, antialiased), then clamp to [0, 1] (PIL cannot overshoot), centre crop (or pad for the
``longest`` mode), normalise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from raft_diffusion.errors import ScorerError

_INTERP = {0: "nearest", 1: "bicubic", 2: "bilinear", 3: "bicubic", 4: "nearest", 5: "bicubic"}
# PIL resample codes: 0 NEAREST, 1 LANCZOS (-> bicubic, the closest torch kernel), 2 BILINEAR, 3 BICUBIC


@dataclass
class ImagePreprocess:
    """CLIP image preprocessing on float tensors.

    ``resize_mode``: ``"shortest"`` (shortest side to ``size``, keep ratio, then centre crop
    ``crop``), ``"squash"`` (resize to ``crop`` ignoring ratio), ``"longest"`` (longest side to
    ``size``, keep ratio, pad with ``fill`` to ``crop``; HPSv2's eval transform).
    ``crop_rounding``: offset of the centre crop, ``"round"`` (torchvision / open_clip) or
    ``"floor"`` (transformers' image processors).
    """

    size: int = 224
    crop: tuple[int, int] | None = (224, 224)
    mean: tuple[float, ...] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, ...] = (0.26862954, 0.26130258, 0.27577711)
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    crop_rounding: str = "round"
    do_resize: bool = True
    fill: float = 0.0
    clamp: bool = True
    _cache: dict[Any, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.resize_mode not in ("shortest", "squash", "longest"):
            raise ScorerError(f"resize_mode {self.resize_mode!r} must be shortest, squash or longest")
        if self.interpolation not in ("bicubic", "bilinear", "nearest"):
            raise ScorerError(f"interpolation {self.interpolation!r} must be bicubic, bilinear or nearest")
        if self.crop is not None:
            self.crop = (int(self.crop[0]), int(self.crop[1]))
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)

    def resized_size(self, h: int, w: int) -> tuple[int, int]:
        """Output (h, w) of the resize step for an (h, w) input."""
        if not self.do_resize:
            return h, w
        if self.resize_mode == "squash":
            return self.crop if self.crop is not None else (self.size, self.size)
        if self.resize_mode == "longest":
            scale = self.size / max(h, w)
            return round(h * scale), round(w * scale)
        # torchvision Resize(int) / transformers shortest_edge: short side -> size, long side truncated
        if h <= w:
            return self.size, int(self.size * w / h)
        return int(self.size * h / w), self.size

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        oh, ow = self.resized_size(h, w)
        if (oh, ow) == (h, w):
            return x
        if self.interpolation == "nearest":
            return F.interpolate(x, size=(oh, ow), mode="nearest")
        return F.interpolate(x, size=(oh, ow), mode=self.interpolation, align_corners=False, antialias=True)

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        if self.crop is None:
            return x
        ch, cw = self.crop
        h, w = x.shape[-2:]
        if ch > h or cw > w:  # pad (centred, extra pixel right/bottom) as open_clip / transformers do
            pl, pt = (cw - w) // 2 if cw > w else 0, (ch - h) // 2 if ch > h else 0
            pr, pb = (cw - w + 1) // 2 if cw > w else 0, (ch - h + 1) // 2 if ch > h else 0
            x = F.pad(x, (pl, pr, pt, pb), value=self.fill)
            h, w = x.shape[-2:]
        if self.crop_rounding == "round":
            top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
        else:
            top, left = int((h - ch) / 2.0), int((w - cw) / 2.0)
        return x[..., top:top + ch, left:left + cw]

    def _stats(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (device, dtype)
        if key not in self._cache:
            mean = torch.tensor(self.mean, device=device, dtype=dtype).view(1, -1, 1, 1)
            std = torch.tensor(self.std, device=device, dtype=dtype).view(1, -1, 1, 1)
            self._cache[key] = (mean, std)
        return self._cache[key]

    def __call__(self, images: torch.Tensor, device: torch.device | None = None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> normalised (N, 3, crop_h, crop_w) on ``device`` in ``dtype``.

        Resizing runs in float32 (bicubic in half precision is not supported everywhere)."""
        x = images.to(device=device or images.device, dtype=torch.float32)
        x = self._resize(x)
        if self.clamp:
            x = x.clamp(0.0, 1.0)
        x = self._crop(x)
        mean, std = self._stats(x.device, torch.float32)
        return ((x - mean) / std).to(dtype)


def preprocess_from_image_processor(proc: Any) -> ImagePreprocess:
    """:class:`ImagePreprocess` equivalent to a transformers ``CLIPImageProcessor``."""

    def get(name: str, default: Any) -> Any:
        value = getattr(proc, name, default)
        return default if value is None else value

    size = get("size", {"shortest_edge": 224})
    size = dict(size) if not isinstance(size, int) else {"shortest_edge": size}
    crop = get("crop_size", {"height": 224, "width": 224})
    crop = dict(crop) if not isinstance(crop, int) else {"height": crop, "width": crop}
    if size.get("shortest_edge") is not None:
        mode, edge = "shortest", int(size["shortest_edge"])
    elif size.get("height") is not None:
        mode, edge = "squash", int(size["height"])
    else:
        raise ScorerError(f"image processor size {size} is not supported; use shortest_edge or height/width")
    do_crop = bool(get("do_center_crop", True))
    crop_hw = (int(crop["height"]), int(crop["width"])) if do_crop else None
    if mode == "squash":
        squash_hw = (int(size["height"]), int(size["width"]))
        if crop_hw is None:
            crop_hw = squash_hw
        elif crop_hw != squash_hw:
            raise ScorerError("image processors that resize to height/width and then crop are not supported")
    resample = get("resample", 3)
    resample = int(getattr(resample, "value", resample))
    if not bool(get("do_normalize", True)):
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    else:
        mean, std = tuple(get("image_mean", ImagePreprocess.mean)), tuple(get("image_std", ImagePreprocess.std))
    return ImagePreprocess(
        size=edge, crop=crop_hw, mean=mean, std=std, interpolation=_INTERP.get(resample, "bicubic"),
        resize_mode=mode, crop_rounding="floor", do_resize=bool(get("do_resize", True)),
    )
