"""CLIP score: image-prompt cosine similarity of CLIP embeddings, x100, floored at 0.

The usual convention (Hessel et al., CLIPScore; torchmetrics' ``clip_score``): ``max(100 * cos, 0)``
with both embeddings L2-normalised. Range 0-100, typically 15-35 for matching image/text pairs on
ViT-L/14. The scale is that of one CLIP model, so scores compare across prompts only loosely
(different prompts have different typical similarities); rank within a prompt for RAFT.

:class:`ClipSimilarityScorer` also serves PickScore (scale = the model's ``logit_scale.exp()``,
no floor) and HPSv2 (scale 1, no floor). Text embeddings are cached per distinct prompt.
"""

from __future__ import annotations

from typing import Any

import torch

from scorers.backbones import BackboneScorer, ClipBackbone, backbone_from_spec, shared_backbone


class ClipSimilarityScorer(BackboneScorer):
    """reward = scale * cos(image, prompt), then ``max(., floor)`` when ``floor`` is not None.

    ``scale``: a number, or ``"logit_scale"`` for the model's learned temperature ``logit_scale.exp()``."""

    kind = "image"
    needs_prompts = True

    def __init__(self, backbone: ClipBackbone, *, name: str = "clip-score", scale: float | str = 100.0,
                 floor: float | None = 0.0, batch_size: int = 32, cache_size: int = 4096) -> None:
        super().__init__(name, batch_size)
        self.backbone = backbone
        self.scale = scale
        self.floor = floor
        self.cache_size = int(cache_size)
        self._text_cache: dict[str, torch.Tensor] = {}
        self._scale_value: float | None = None

    def to(self, device: str | torch.device) -> "ClipSimilarityScorer":
        """Move the backbone and the cached text embeddings to ``device``; returns self."""
        self.backbone.to(device)
        dev = self.backbone.device
        self._text_cache = {p: e.to(dev) for p, e in self._text_cache.items()}
        return self

    def _load(self) -> None:
        self.backbone.load()
        self._scale_value = self.backbone.logit_scale if self.scale == "logit_scale" else float(self.scale)

    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings (N, D), encoding each distinct prompt once."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            if len(self._text_cache) + len(missing) > self.cache_size:
                self._text_cache.clear()
            emb = self.backbone.encode_texts(missing)
            emb = emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            self._text_cache.update(zip(missing, emb))
        return torch.stack([self._text_cache[p] for p in prompts])

    def score_batch(self, outputs: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> torch.Tensor:
        img = self.backbone.encode_images(outputs)
        img = img / img.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        txt = self.text_embeddings(prompts).to(img.device)
        reward = self._scale_value * (img * txt).sum(-1)
        if self.floor is not None:
            reward = reward.clamp_min(float(self.floor))
        return reward


def clip_score(model_name: str = "ViT-L-14", pretrained: str | None = "openai", *, backbone: Any = None,
               device: Any = None, dtype: Any = None, batch_size: int = 32) -> ClipSimilarityScorer:
    """CLIP score on an open_clip model (any architecture and pretrained tag or checkpoint file):
    ``max(100 * cos, 0)``, 0-100. ``backbone`` (an object or spec string) overrides the model."""
    bb = (backbone_from_spec(backbone, device=device, dtype=dtype) if backbone is not None
          else shared_backbone("open_clip", model_name, pretrained, device=device, dtype=dtype))
    return ClipSimilarityScorer(bb, name="clip-score", batch_size=batch_size)


def clip_score_transformers(path: str = "openai/clip-vit-large-patch14", processor: str | None = None, *,
                            name: str = "clip-score-hf", device: Any = None, dtype: Any = None,
                            batch_size: int = 32) -> ClipSimilarityScorer:
    """CLIP score on a transformers ``CLIPModel`` (hub id or local folder with its
    CLIPImageProcessor and tokenizer): ``max(100 * cos, 0)``, 0-100."""
    bb = shared_backbone("transformers", str(path), processor, device=device, dtype=dtype)
    return ClipSimilarityScorer(bb, name=name, batch_size=batch_size)
