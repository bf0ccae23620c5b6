"""The open_clip CLIP backbone (:class:`OpenClipBackbone`): an open_clip architecture name plus a
``pretrained`` tag (``"openai"``) or a local checkpoint file. Preprocessing comes from the model's own
config (``open_clip.get_model_preprocess_cfg``): size, resize mode, interpolation, mean, std.
open_clip is imported when the model loads.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch

from raft_diffusion.errors import ScorerError
from scorers.backbone_base import ClipBackbone
from scorers.clip_preprocess import ImagePreprocess


class OpenClipBackbone(ClipBackbone):
    """An open_clip model: ``model_name`` (e.g. ``"ViT-L-14"``) with ``pretrained`` a tag known to
    open_clip (``"openai"``, downloaded by open_clip into the HF cache), a local checkpoint file
    (state dict, ``.pt``/``.pth``/``.bin``/``.safetensors``, loaded strictly with
    ``weights_only=True``), or ``None`` (random weights, for tests). ``model_name`` may also be
    ``"hf-hub:org/repo"`` or ``"local-dir:/path"`` (open_clip's schemas; ``pretrained`` ignored).

    QuickGELU: when the tag was trained with QuickGELU (OpenAI's weights) the model is built with it
    (open_clip only warns otherwise, and the embeddings would be wrong). ``quick_gelu`` forces it.
    ``preprocess_overrides`` replaces fields of the model's preprocessing config (e.g.
    ``{"resize_mode": "longest"}`` for HPSv2).
    """

    def __init__(self, model_name: str = "ViT-L-14", pretrained: str | None = "openai", *,
                 device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                 quick_gelu: bool | None = None, cache_dir: str | None = None,
                 preprocess_overrides: dict[str, Any] | None = None) -> None:
        super().__init__(device, dtype)
        self.model_name = model_name
        self.pretrained = pretrained or None
        self.quick_gelu = quick_gelu
        self.cache_dir = cache_dir
        self.preprocess_overrides = dict(preprocess_overrides or {})
        self.model: Any = None
        self.tokenizer: Any = None

    def describe(self) -> str:
        return f"open_clip {self.model_name} / {self.pretrained}"

    def _load(self) -> None:
        import open_clip

        what = f"open_clip {self.model_name}"
        schema = self.model_name.startswith(("hf-hub:", "local-dir:"))  # config + weights from the source
        if not schema and open_clip.get_model_config(self.model_name) is None:
            raise ScorerError(
                f"{what}: unknown open_clip architecture; known: {', '.join(open_clip.list_models())}"
            )
        pretrained = self.pretrained
        tag_cfg = {}
        if schema:
            pretrained = None
        elif pretrained is not None:
            tag_cfg = open_clip.get_pretrained_cfg(self.model_name, pretrained) or {}
            if not tag_cfg:
                path = os.path.expanduser(pretrained)
                if not os.path.isfile(path):
                    tags = ", ".join(open_clip.list_pretrained_tags_by_model(self.model_name)) or "(none)"
                    raise ScorerError(
                        f"{what}: pretrained {pretrained!r} is neither a checkpoint file nor a known tag "
                        f"(tags: {tags})"
                    )
                pretrained = path
        quick = self.quick_gelu
        if quick is None:
            quick = bool(tag_cfg.get("quick_gelu", False))
        try:
            model = open_clip.create_model(
                self.model_name, pretrained=pretrained, device=self.device, force_quick_gelu=bool(quick),
                cache_dir=self.cache_dir, weights_only=True,
            )
        except (RuntimeError, OSError, ValueError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if tag_cfg:
                hub = str(tag_cfg.get("hf_hub", "")).rstrip("/") or str(tag_cfg.get("url", ""))
                raise ScorerError(
                    f"{what}: pretrained weights {pretrained!r} (hub repo {hub}) are not available; without "
                    f"network, run `hf download {hub}` on a connected machine to fill the Hugging Face cache, "
                    f"or pass pretrained=/path/to/checkpoint"
                ) from None
            raise ScorerError(f"{what}: cannot load checkpoint {pretrained}: {msg}") from None
        model = model.to(device=self.device, dtype=self.dtype).eval()
        model.requires_grad_(False)
        self.model = model
        self.tokenizer = open_clip.get_tokenizer(self.model_name)
        cfg = dict(open_clip.get_model_preprocess_cfg(model))
        cfg.update(self.preprocess_overrides)
        size = cfg.get("size", 224)
        size_hw = (size, size) if isinstance(size, int) else tuple(size)
        self.preprocess = ImagePreprocess(
            size=int(min(size_hw)) if cfg.get("resize_mode", "shortest") != "longest" else int(max(size_hw)),
            crop=size_hw,
            mean=tuple(cfg.get("mean", ImagePreprocess.mean)),
            std=tuple(cfg.get("std", ImagePreprocess.std)),
            interpolation=str(cfg.get("interpolation", "bicubic")),
            resize_mode=str(cfg.get("resize_mode", "shortest")),
            crop_rounding="round",
            fill=float(cfg.get("fill_color", 0) or 0) / 255.0,  # a PIL fill colour, 0..255
        )

    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        self.load()
        tokens = self.tokenizer(list(texts)).to(self.device)
        return self.model.encode_text(tokens).float()

    @property
    def logit_scale(self) -> float:
        self.load()
        return float(self.model.logit_scale.exp().item())
