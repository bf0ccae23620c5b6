"""PickScore (Kirstain et al. 2023): CLIP-H fine-tuned on Pick-a-Pic human preferences.

reward = ``logit_scale.exp() * cos(image, prompt)`` (about 100 x cosine; typical values 18-24).
The original turns the scores of the candidates of one prompt into preference probabilities with a
softmax: scores compare within one prompt, not across prompts. Model ``yuvalkirstain/PickScore_v1``
(a transformers CLIPModel); processor ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (image processor and
tokenizer: resize shortest side 224 bicubic, centre crop 224, OpenAI CLIP mean/std).
"""

from __future__ import annotations

from typing import Any

from scorers.backbones import shared_backbone
from scorers.clip_score import ClipSimilarityScorer

PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


def pickscore(model: str = PICKSCORE_MODEL, processor: str | None = PICKSCORE_PROCESSOR, *, device: Any = None,
              dtype: Any = None, batch_size: int = 16) -> ClipSimilarityScorer:
    """PickScore from hub ids or local folders (``model``: CLIPModel, ``processor``: image processor +
    tokenizer)."""
    bb = shared_backbone("transformers", str(model), processor, device=device, dtype=dtype)
    return ClipSimilarityScorer(bb, name="pickscore", scale="logit_scale", floor=None, batch_size=batch_size)
