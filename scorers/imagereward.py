"""ImageReward (Xu et al. 2023): a BLIP-based reward model trained on human rankings of prompt-image pairs.

Needs the optional package ``image-reward`` (``pip install raft-diffusion[imagereward]``, imported
as ``ImageReward``). reward = the model's output normalised by its training mean and std, so scores
are roughly standard normal (about -2 .. 2). It was trained on within-prompt comparisons: rank
within a prompt; across prompts the values are only loosely comparable.

Weights: ``ImageReward-v1.0`` (the package fetches ``THUDM/ImageReward`` into its download root) or
a local ``ImageReward.pt`` path. Images are preprocessed as tensors like the package's own transform
(resize 224 bicubic, centre crop 224, CLIP mean/std) and fed to ``model.score_gard`` (the tensor
path the package uses for ReFL); prompts are tokenized as in ``model.score`` (max_length 35).
"""

from __future__ import annotations

from typing import Any

import torch

from raft_diffusion.errors import ScorerError
from scorers.backbones import ImagePreprocess
from scorers.common import BaseScorer, resolve_device


class ImageRewardScorer(BaseScorer):
    kind = "image"
    needs_prompts = True

    def __init__(self, model: str = "ImageReward-v1.0", *, device: Any = None, download_root: str | None = None,
                 med_config: str | None = None, batch_size: int = 16) -> None:
        super().__init__("imagereward", batch_size)
        self.model_name = model
        self.device = resolve_device(device)
        self.download_root = download_root
        self.med_config = med_config
        self.model: Any = None
        self.preprocess = ImagePreprocess(size=224, crop=(224, 224), resize_mode="shortest", crop_rounding="round")

    def _load(self) -> None:
        try:
            import ImageReward as RM  # noqa: N813 - the package's module name
        except ImportError:
            raise ScorerError(
                "scorer 'imagereward' needs the optional package image-reward: pip install image-reward "
                "(or pip install 'raft-diffusion[imagereward]')"
            ) from None
        kwargs: dict[str, Any] = {"device": str(self.device)}
        if self.download_root is not None:
            kwargs["download_root"] = self.download_root
        if self.med_config is not None:
            kwargs["med_config"] = self.med_config
        try:
            model = RM.load(self.model_name, **kwargs)
        except Exception as exc:
            raise ScorerError(
                f"imagereward: cannot load {self.model_name!r} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                "offline, pass model=/path/to/ImageReward.pt and med_config=/path/to/med_config.json"
            ) from None
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model

    def score_batch(self, outputs: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> torch.Tensor:
        model = self.model
        pixels = self.preprocess(outputs, self.device, torch.float32)
        tok = model.blip.tokenizer(prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
        rewards = model.score_gard(tok.input_ids.to(self.device), tok.attention_mask.to(self.device), pixels)
        return torch.as_tensor(rewards).reshape(-1).float()


def imagereward(model: str = "ImageReward-v1.0", *, device: Any = None, download_root: str | None = None,
                med_config: str | None = None, batch_size: int = 16) -> ImageRewardScorer:
    """ImageReward scorer (optional extra ``image-reward``); loads on first use."""
    return ImageRewardScorer(model, device=device, download_root=download_root, med_config=med_config,
                             batch_size=batch_size)
