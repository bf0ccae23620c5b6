"""HPSv2 / HPSv2.1 (Wu et al. 2023): OpenCLIP ViT-H-14 fine-tuned on the HPDv2 preference data.

reward = cosine similarity of the L2-normalised image and prompt embeddings (no temperature, as in
the original ``score.py``): values around 0.2-0.35. Scores compare only within one prompt.
Checkpoints ``HPS_v2_compressed.pt`` (v2) and ``HPS_v2.1_compressed.pt`` (v2.1) in hub repo
``xswu/HPSv2``; a state dict under ``"state_dict"`` for open_clip ``ViT-H-14``. Preprocessing is
HPSv2's eval transform: longest side to 224 (bicubic), pad to 224x224 with black, CLIP mean/std
(for the square images of SD this is a plain resize).
"""

from __future__ import annotations

from typing import Any

from raft_diffusion.errors import ScorerError
from scorers.backbones import shared_backbone
from scorers.clip_score import ClipSimilarityScorer
from scorers.weights import resolve_file

HPS_REPO = "xswu/HPSv2"
HPS_FILES = {"v2": "HPS_v2_compressed.pt", "v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}


def hpsv2(version: str = "v2.1", checkpoint: str = HPS_REPO, *, filename: str | None = None,
          model_name: str = "ViT-H-14", device: Any = None, dtype: Any = None, batch_size: int = 16
          ) -> ClipSimilarityScorer:
    """HPSv2 scorer. ``checkpoint``: hub id (default ``xswu/HPSv2``), a local folder, or a local
    checkpoint file; ``version`` picks the file name (``v2`` or ``v2.1``) unless ``filename`` is
    given. The checkpoint is located at construction; the model loads on first use."""
    if filename is None:
        if version not in HPS_FILES:
            raise ScorerError(f"hpsv2: version {version!r} must be one of {sorted(HPS_FILES)}")
        filename = HPS_FILES[version]
    name = "hpsv2" if version in ("v2", "v2.0") else "hpsv2.1"
    path = resolve_file(checkpoint, filename, what=name, arg="checkpoint")
    bb = shared_backbone("open_clip", model_name, str(path), device=device, dtype=dtype,
                         preprocess_overrides={"resize_mode": "longest"})
    return ClipSimilarityScorer(bb, name=name, scale=1.0, floor=None, batch_size=batch_size)
