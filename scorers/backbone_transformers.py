"""The transformers CLIP backbone (:class:`TransformersClipBackbone`): a ``CLIPModel`` from a hub id
or a local folder; preprocessing from its saved ``CLIPImageProcessor`` config (size, crop, mean, std,
resample). transformers is imported when the model loads.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from scorers.backbone_base import ClipBackbone
from scorers.clip_preprocess import preprocess_from_image_processor
from scorers.weights import from_pretrained


class TransformersClipBackbone(ClipBackbone):
    """A transformers ``CLIPModel`` from ``model`` (hub id or local folder); image processor and
    tokenizer from ``processor`` (defaults to ``model``; PickScore keeps them in another repo).

    The image processor's saved config gives the preprocessing: ``size`` (``shortest_edge`` or
    ``height``/``width``), ``crop_size``, ``do_resize``, ``do_center_crop``, ``image_mean``,
    ``image_std``, ``resample``. Texts are tokenized with padding and truncation to the tokenizer's
    ``model_max_length`` (77 for CLIP).
    """

    def __init__(self, model: str = "openai/clip-vit-large-patch14", processor: str | None = None, *,
                 device: str | torch.device | None = None, dtype: str | torch.dtype | None = None) -> None:
        super().__init__(device, dtype)
        self.model_id = str(model)
        self.processor_id = str(processor) if processor else str(model)
        self.model: Any = None
        self.tokenizer: Any = None

    def describe(self) -> str:
        extra = "" if self.processor_id == self.model_id else f" (processor {self.processor_id})"
        return f"transformers CLIPModel {self.model_id}{extra}"

    def _load(self) -> None:
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        what = f"CLIP model {self.model_id}"
        model = from_pretrained(CLIPModel.from_pretrained, self.model_id, what=what)
        model = model.to(device=self.device, dtype=self.dtype).eval()
        model.requires_grad_(False)
        proc = from_pretrained(CLIPImageProcessor.from_pretrained, self.processor_id, what=what)
        self.tokenizer = from_pretrained(AutoTokenizer.from_pretrained, self.processor_id, what=what)
        self.model = model
        self.preprocess = preprocess_from_image_processor(proc)

    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.model.vision_model(pixel_values=pixels)
        return self.model.visual_projection(out.pooler_output)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        self.load()
        max_len = getattr(self.tokenizer, "model_max_length", 77)
        if not isinstance(max_len, int) or max_len > 10_000:
            max_len = self.model.config.text_config.max_position_embeddings
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        out = self.model.text_model(input_ids=enc["input_ids"].to(self.device),
                                    attention_mask=enc["attention_mask"].to(self.device))
        return self.model.text_projection(out.pooler_output).float()

    @property
    def logit_scale(self) -> float:
        self.load()
        return float(self.model.logit_scale.exp().item())
