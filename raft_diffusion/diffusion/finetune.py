"""Training of the denoiser (its LoRA, or every weight) on kept latents, generic over model families.

Each micro-batch draws its noise and timesteps (or sigmas) from the family
(:meth:`~raft_diffusion.diffusion.families.base.ModelFamily.draw_training_noise`), forms the noisy
input and the target (:meth:`training_pair`: epsilon, v-prediction or flow) and regresses the
denoiser's output on it, weighted per row where the family says so (:meth:`loss_weights`). With
``train.kl_weight`` > 0 the loss adds that weight times the squared distance between the LoRA
model's output and the base model's (the same denoiser, adapters disabled, or with full fine-tuning a
frozen copy of the base; no gradient) at the
same input: for two diffusion models the per-step KL of their reverse processes is proportional
to it, so it pulls the fine-tuned model back toward the base round after round. With
``train.kl_anchor: round`` the reference is the LoRA as it was when the round's training began (its
weights swapped in for the reference forward), so each round may move only so far but the rounds
add up. ``train.caption_dropout`` trains a share of the rows against the empty prompt's
conditioning. The loop itself (accelerate, 1..N processes, failure sync) is
:class:`~raft_diffusion.training.LoraTrainerBase`.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from raft_diffusion.diffusion.families.base import Cond, ModelFamily, cond_to, index_cond, where_cond
from raft_diffusion.errors import ConfigError
from raft_diffusion.training import LoraTrainerBase, own_rows

log = logging.getLogger(__name__)


class LoraTrainer(LoraTrainerBase):
    """Trains the family's denoiser LoRA on (latents, conditioning) pairs.

    family: the model family (its denoiser carries the LoRA adapter). size: the training images'
    (height, width) in pixels. total_steps: optimizer steps over the whole run (LR schedule).
    uncond: the empty prompt's conditioning (one row), for ``train.caption_dropout``. reference: the
    KL term's frozen base model when the denoiser has no adapters to switch off (full fine-tuning).
    """

    def __init__(self, family: ModelFamily, cfg: Any, total_steps: int, seed: int, size: tuple[int, int],
                 uncond: Cond | None = None, reference: torch.nn.Module | None = None) -> None:
        from diffusers.optimization import get_scheduler

        denoiser = family.denoiser
        if cfg.gradient_checkpointing:
            denoiser.enable_gradient_checkpointing()
        super().__init__(denoiser, cfg, total_steps, seed, get_scheduler, type(denoiser).__name__)
        self.family = family
        self.reference = reference
        self.size = size
        self.uncond = uncond
        self.kl_weight = float(getattr(cfg, "kl_weight", 0.0))
        self.kl_anchor = getattr(cfg, "kl_anchor", "base")
        #: LoRA weights at the start of the round's training (kl_anchor "round")
        self._anchor: list[torch.Tensor] | None = None
        if getattr(cfg, "caption_dropout", 0.0) and uncond is None:
            raise ConfigError("train.caption_dropout needs the empty prompt's conditioning (pass uncond=)")
        self._latents = torch.empty(0)
        self._cond: Cond = {}

    def train(self, latents: torch.Tensor, cond: Cond, progress: bool = True) -> dict[str, float]:
        """One round of training on the M kept samples: latents (M, ...) in the family's training
        space, conditioning name -> (M, ...). The same on every process. Returns loss, lr, steps."""
        self.use_raw_weights()  # the round's start is the raw weights, not their EMA
        if self.kl_weight and self.kl_anchor == "round":
            self._anchor = [p.detach().clone() for p in self.params]
        self._latents, self._cond = latents, cond
        try:
            return self.run_steps(latents.shape[0], progress)
        finally:
            self._latents, self._cond = torch.empty(0), {}

    def micro_batch_loss(self, idx: torch.Tensor, rows: slice) -> tuple[torch.Tensor, float]:
        """Draws (noise and timesteps, then the caption-dropout mask) for the whole micro-batch,
        then the loss of this process's ``rows`` (row 0 at zero weight when it owns none)."""
        x0 = self._latents[idx]
        draws = self.family.draw_training_noise(x0.shape, self.generator)
        drop = self._drop_mask(len(idx))
        own = rows if rows.stop > rows.start else slice(0, 1)
        cond = index_cond(self._cond, idx[own])
        if drop is not None:
            cond = where_cond(drop[own], self.uncond, cond)
        loss = self.loss(x0[own], {k: v[own] for k, v in draws.items()}, cond)
        return own_rows(loss, rows, len(idx))

    def _drop_mask(self, n: int) -> torch.Tensor | None:
        """(n,) booleans: the rows trained against the empty prompt (``train.caption_dropout``); None when off."""
        p = getattr(self.cfg, "caption_dropout", 0.0)
        return (torch.rand(n, generator=self.generator) < p) if p else None

    def loss(self, x0: torch.Tensor, draws: dict[str, torch.Tensor], cond: Cond) -> torch.Tensor:
        """The weighted regression loss of one micro-batch (plus the KL term): a scalar float32."""
        pred, target, base = self.prediction(x0, draws, cond)
        weights = self.family.loss_weights(draws)
        if weights is None:
            loss = F.mse_loss(pred, target)
        else:
            loss = (weights.to(pred.device).float() * (pred - target).pow(2).flatten(1).mean(dim=1)).mean()
        return loss if base is None else loss + self.kl_weight * F.mse_loss(pred, base)

    def prediction(self, x0: torch.Tensor, draws: dict[str, torch.Tensor], cond: Cond
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(denoiser output, its regression target, the reference model's output or None), float32:
        the reference output is computed only when ``train.kl_weight`` > 0."""
        device = self.device
        draws = {k: v.to(device) for k, v in draws.items()}
        noisy, target = self.family.training_pair(x0.to(device), draws)
        noisy, cond = noisy.to(self.dtype), cond_to(cond, device, self.dtype)
        base = None
        if self.kl_weight:
            with torch.no_grad(), self._reference() as ref, self.autocast():
                base = self.family.predict(ref, noisy, draws, cond, self.size).float()
        with self.autocast():
            pred = self.family.predict(self.model, noisy, draws, cond, self.size)
        return pred.float(), target.float(), base

    @contextlib.contextmanager
    def _reference(self) -> Iterator[torch.nn.Module]:
        """The KL term's reference model: the trained weights of the round's start swapped in
        (``kl_anchor: round``), the frozen base copy (``base``, full fine-tuning), or the denoiser with
        its adapters off (``base``, LoRA); the trained weights are restored on exit."""
        if self.kl_anchor == "round" and self._anchor is not None:
            current = [p.data for p in self.params]  # swap the storage in and out: no copies per micro-batch
            try:
                for p, a in zip(self.params, self._anchor):
                    p.data = a
                yield self.raw_model
            finally:
                for p, c in zip(self.params, current):
                    p.data = c
            return
        if self.reference is not None:
            yield self.reference
            return
        self.raw_model.disable_adapters()
        try:
            yield self.raw_model
        finally:
            self.raw_model.enable_adapters()
