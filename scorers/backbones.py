"""CLIP embedding backbones shared by the CLIP-based scorers.

Two implementations of one small interface (:class:`ClipBackbone`, in :mod:`scorers.backbone_base`):

- :class:`OpenClipBackbone` (:mod:`scorers.backbone_open_clip`): an open_clip architecture name plus a
  ``pretrained`` tag (``"openai"``) or a local checkpoint file. Preprocessing comes from the model's
  own config (``open_clip.get_model_preprocess_cfg``): size, resize mode, interpolation, mean, std.
- :class:`TransformersClipBackbone` (:mod:`scorers.backbone_transformers`): a transformers
  ``CLIPModel`` from a hub id or a local folder; preprocessing from its saved ``CLIPImageProcessor``
  config (size, crop, mean, std, resample).

Both take images as float tensors (N, 3, H, W) in [0, 1] on any device, preprocess them as float
tensors on the model's device (no PIL round trip; :class:`ImagePreprocess`, in
:mod:`scorers.clip_preprocess`) and return *un-normalised* embeddings (N, D) float32; scorers
L2-normalise. Models load lazily, once.

This module picks and shares them: :func:`shared_backbone` lets several scorers share one loaded
model, :func:`backbone_from_spec` builds one from a string. It re-exports the names above, so
``from scorers.backbones import ...`` works for all of them.
"""

from __future__ import annotations

import os
from typing import Any

from raft_diffusion.errors import ScorerError
from scorers.backbone_base import BackboneScorer, ClipBackbone  # noqa: F401
from scorers.backbone_open_clip import OpenClipBackbone
from scorers.backbone_transformers import TransformersClipBackbone
from scorers.clip_preprocess import _INTERP, ImagePreprocess, preprocess_from_image_processor  # noqa: F401
from scorers.common import resolve_device, resolve_dtype
from scorers.weights import is_hub_id

_SHARED: dict[tuple[Any, ...], ClipBackbone] = {}


def shared_backbone(kind: str, name: str, pretrained: str | None = None, *, device: Any = None, dtype: Any = None,
                    **kwargs: Any) -> ClipBackbone:
    """One backbone per (kind, name, pretrained, device, dtype, kwargs), shared by the scorers of a
    process (an aesthetic scorer and a CLIP score on ViT-L-14 load the model once).

    ``kind``: ``"open_clip"`` (``name`` = architecture, ``pretrained`` = tag or file) or
    ``"transformers"`` (``name`` = hub id or folder, ``pretrained`` = processor id or ``None``)."""
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    key = (kind, name, pretrained, str(dev), str(dt), tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
    if key not in _SHARED:
        if kind == "open_clip":
            _SHARED[key] = OpenClipBackbone(name, pretrained, device=dev, dtype=dt, **kwargs)
        elif kind == "transformers":
            _SHARED[key] = TransformersClipBackbone(name, pretrained, device=dev, dtype=dt, **kwargs)
        else:
            raise ScorerError(f"unknown backbone kind {kind!r}; use open_clip or transformers")
    return _SHARED[key]


def clear_shared_backbones() -> None:
    """Forget the shared backbones (frees their memory once no scorer holds them)."""
    _SHARED.clear()


def backbone_from_spec(spec: "ClipBackbone | str", *, device: Any = None, dtype: Any = None) -> ClipBackbone:
    """A backbone from an object or a string: ``"open_clip:ViT-L-14:openai"``,
    ``"open_clip:ViT-B-32:/path/ckpt.pt"``, ``"transformers:openai/clip-vit-large-patch14"`` or
    ``"transformers:/path/to/folder"``. A bare hub id or existing folder means transformers."""
    if isinstance(spec, ClipBackbone):
        return spec
    if not isinstance(spec, str):
        raise ScorerError(f"backbone must be a ClipBackbone or a string like 'open_clip:ViT-L-14:openai', got {spec!r}")
    if spec.startswith("open_clip:"):
        rest = spec[len("open_clip:"):]
        name, _, pretrained = rest.partition(":")
        return shared_backbone("open_clip", name, pretrained or None, device=device, dtype=dtype)
    if spec.startswith("transformers:"):
        return shared_backbone("transformers", spec[len("transformers:"):], None, device=device, dtype=dtype)
    if os.path.isdir(os.path.expanduser(spec)) or is_hub_id(spec):
        return shared_backbone("transformers", spec, None, device=device, dtype=dtype)
    raise ScorerError(
        f"backbone {spec!r}: use 'open_clip:ARCH:TAG_OR_FILE' or 'transformers:HUB_ID_OR_FOLDER'"
    )
