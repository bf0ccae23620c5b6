"""LoRA noise-prediction training on kept latents; optimizer and LR schedule persist across rounds.

The kept samples' final latents are already VAE-scaled, so no VAE encode is needed: each step
draws timesteps t ~ U[0, T), noise eps, forms x_t = add_noise(x0, eps, t) and regresses the
UNet's output on eps (epsilon prediction) or on the velocity (v-prediction), as the scheduler
config says. With ``train.kl_weight`` > 0 the loss adds that weight times the squared distance
between the LoRA model's output and the base model's (the same UNet, adapters disabled, no
gradient) at the same x_t: for two diffusion models the per-step KL of their reverse processes is
proportional to it, so it pulls the fine-tuned model back toward the base round after round.
With ``train.kl_anchor: round`` the reference is the LoRA as it was when the round's training
began (its weights swapped in for the reference forward), so each round may move only so far but
the rounds add up. Training noise comes from a private seeded generator that is checkpointed.

Several processes (``train(..., shard=TrainShard)``): every process draws the same batch order,
noise and timesteps for the whole global micro-batch from its generator (kept in lock-step),
computes the loss only on the rows it owns (sum over owned rows / global micro-batch size),
and the LoRA gradients are all-reduced (summed) before clipping and the optimizer step, so the
update equals the one-process update up to float rounding and the weights stay equal everywhere.
A failure on one process (the forward/backward, the optimizer step, an injected fault) rides on
the next exchange, plus one final flag after the last step
(:class:`~raft_diffusion.core.distributed.FailureFlag`), so every process stops together with the
failing process's message.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from raft_diffusion.core import distributed
from raft_diffusion.core.distributed import FailureFlag, TrainShard
from raft_diffusion.diffusion.lora import lora_parameters
from raft_diffusion.training import LoraTrainerBase, exchange_gradients
from raft_diffusion.errors import ConfigError, RunError

log = logging.getLogger(__name__)


class LoraTrainer(LoraTrainerBase):
    """Trains the UNet's LoRA on (latents, prompt embeddings) pairs.

    unet: a UNet2DConditionModel with a LoRA adapter. noise_scheduler: a DDPMScheduler built
    from the pipeline's scheduler config. total_steps: optimizer steps over the whole run (for
    the LR schedule).
    """

    def __init__(self, unet: Any, noise_scheduler: Any, cfg: Any, total_steps: int, seed: int,
                 uncond: torch.Tensor | None = None) -> None:
        from diffusers.optimization import get_scheduler

        super().__init__(lora_parameters(unet), cfg, total_steps, seed, get_scheduler, "UNet")
        self.unet = unet
        self.noise_scheduler = noise_scheduler
        #: (1, L, D) embedding of the empty prompt, for train.caption_dropout
        self.uncond = uncond
        self.kl_weight = float(getattr(cfg, "kl_weight", 0.0))
        self.kl_anchor = getattr(cfg, "kl_anchor", "base")
        #: LoRA weights at the start of the round's training (kl_anchor "round")
        self._anchor: list[torch.Tensor] | None = None
        if getattr(cfg, "caption_dropout", 0.0) and uncond is None:
            raise ConfigError("train.caption_dropout needs the empty prompt's embedding (pass uncond=)")
        # diffusers' ModelMixin.dtype/.device walk every module: read them once
        self.dtype = unet.dtype
        self.device = unet.device
        if cfg.gradient_checkpointing:
            unet.enable_gradient_checkpointing()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _drop_captions(self, embeds: torch.Tensor, n: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Replace a ``train.caption_dropout`` share of ``embeds`` (B, L, D) by the empty prompt's.

        The mask is drawn for the whole micro-batch of ``n`` rows (after its noise and timesteps);
        ``rows`` picks this process's rows of it. Off (0): draws nothing, returns ``embeds``."""
        p = getattr(self.cfg, "caption_dropout", 0.0)
        if not p:
            return embeds
        drop = torch.rand(n, generator=self.generator) < p
        if rows is not None:
            drop = drop[rows]
        return torch.where(drop[:, None, None], self.uncond.to(embeds.dtype).expand_as(embeds), embeds)

    def loss(self, latents: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        """Noise-prediction MSE of one micro-batch. latents (B, C, h, w), embeds (B, L, D)."""
        noise = torch.randn(latents.shape, generator=self.generator)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=self.generator)
        embeds = self._drop_captions(embeds, latents.shape[0])
        pred, target, base = self._prediction(latents, embeds, noise, t)
        loss = F.mse_loss(pred, target)
        return loss if base is None else loss + self.kl_weight * F.mse_loss(pred, base)

    def train(
        self, latents: torch.Tensor, embeds: torch.Tensor, progress: bool = True, shard: TrainShard | None = None,
    ) -> dict[str, float]:
        """Run one round of training on M kept samples; returns mean loss, last lr and step count.

        With ``shard``, ``latents``/``embeds`` are this process's kept samples only (see the module doc).
        """
        if self.kl_weight and self.kl_anchor == "round":
            self._anchor = [p.detach().clone() for p in self.params]
        if shard is not None:
            return self._train_sharded(latents, embeds, shard, progress)
        c = self.cfg
        m = latents.shape[0]
        steps = self.steps_for(m)
        self.unet.train()
        losses: list[float] = []
        order = torch.randperm(m, generator=self.generator)
        cursor = 0
        for _ in tqdm(range(steps), desc="training", unit="step", disable=not progress, leave=False):
            self.optimizer.zero_grad(set_to_none=True)
            for _ in range(c.gradient_accumulation_steps):
                if cursor + c.batch_size > m and cursor > 0:
                    order, cursor = torch.randperm(m, generator=self.generator), 0
                idx = order[cursor:cursor + c.batch_size]
                cursor += c.batch_size
                loss = self.loss(latents[idx], embeds[idx])
                if not torch.isfinite(loss):
                    raise RunError(f"training loss is {loss.item()} at step {self.step + 1}; lower train.learning_rate or check the data")
                (loss / c.gradient_accumulation_steps).backward()
                losses.append(loss.item())
            self._optimizer_step()
        self.unet.eval()
        return self._stats(losses, steps)

    def per_row_loss(self, x0: torch.Tensor, embeds: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Noise-prediction MSE of each row (B,), given the noise and timesteps."""
        pred, target, base = self._prediction(x0, embeds, noise, t)
        loss = (pred - target).pow(2).flatten(1).mean(dim=1)
        return loss if base is None else loss + self.kl_weight * (pred - base).pow(2).flatten(1).mean(dim=1)

    def _prediction(self, x0: torch.Tensor, embeds: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(UNet output, its regression target, the base model's output or None), float32 (B, C, h, w):
        noise x0 to step t and predict; the target is the noise (epsilon) or the velocity, as the
        scheduler config says; the base output is computed only when ``train.kl_weight`` > 0."""
        sched = self.noise_scheduler
        device = self.device
        noise, t, x0 = noise.to(device), t.to(device), x0.to(device)
        noisy = sched.add_noise(x0, noise, t)
        kind = sched.config.prediction_type
        if kind == "epsilon":
            target = noise
        elif kind == "v_prediction":
            target = sched.get_velocity(x0, noise, t)
        else:
            raise ConfigError(f"scheduler prediction_type {kind!r} is not supported; use epsilon or v_prediction")
        noisy, embeds = noisy.to(self.dtype), embeds.to(device, self.dtype)
        base = None
        if self.kl_weight:
            with torch.no_grad(), self._reference(), self._autocast():
                base = self.unet(noisy, t, encoder_hidden_states=embeds, return_dict=False)[0].float()
        with self._autocast():
            pred = self.unet(noisy, t, encoder_hidden_states=embeds, return_dict=False)[0]
        return pred.float(), target.float(), base

    @contextlib.contextmanager
    def _reference(self) -> Iterator[None]:
        """The UNet as the KL term's reference model: adapters off (``kl_anchor: base``), or the
        LoRA weights of the round's start swapped in (``round``); restored on exit."""
        if self.kl_anchor == "round" and self._anchor is not None:
            current = [p.data for p in self.params]  # swap the storage in and out: no copies per micro-batch
            try:
                for p, a in zip(self.params, self._anchor):
                    p.data = a
                yield
            finally:
                for p, c in zip(self.params, current):
                    p.data = c
            return
        self.unet.disable_adapters()
        try:
            yield
        finally:
            self.unet.enable_adapters()

    def _train_sharded(self, latents: torch.Tensor, embeds: torch.Tensor, shard: TrainShard, progress: bool) -> dict[str, float]:
        """:meth:`train` on this process's share; every process runs the same exchanges in the same order."""
        dist = distributed.get()
        c = self.cfg
        m = shard.total
        steps = self.steps_for(m)
        flag = FailureFlag(dist)  # a local failure is never raised at once: the others would wait in an exchange
        local_of = torch.full((m,), -1, dtype=torch.long)
        with flag.capture():
            if len(shard.positions) != latents.shape[0]:
                raise RunError(f"training shard has {len(shard.positions)} positions for {latents.shape[0]} latents")
            if shard.positions:
                local_of[torch.tensor(shard.positions, dtype=torch.long)] = torch.arange(len(shard.positions))
        self.unet.train()
        losses: list[float] = []
        order = torch.randperm(m, generator=self.generator)
        cursor = 0
        n_timesteps = self.noise_scheduler.config.num_train_timesteps
        try:
            for _ in tqdm(range(steps), desc="training", unit="step", disable=not progress, leave=False):
                self.optimizer.zero_grad(set_to_none=True)
                sums: list[float] = []
                sizes: list[int] = []
                for _ in range(c.gradient_accumulation_steps):
                    if cursor + c.batch_size > m and cursor > 0:
                        order, cursor = torch.randperm(m, generator=self.generator), 0
                    idx = order[cursor:cursor + c.batch_size]
                    cursor += c.batch_size
                    bsz = int(idx.shape[0])
                    # the whole global micro-batch's draws, in the one-process order: noise, then timesteps
                    noise = torch.randn((bsz, *latents.shape[1:]), generator=self.generator)
                    t = torch.randint(0, n_timesteps, (bsz,), generator=self.generator)
                    rows = local_of[idx]
                    own = rows >= 0
                    mine = embeds[rows[own]] if bool(own.any()) else embeds[:0]
                    mine = self._drop_captions(mine, bsz, own)
                    total = 0.0
                    if not flag.failed and bool(own.any()):
                        with flag.capture():
                            sel = rows[own]
                            loss_sum = self.per_row_loss(latents[sel], mine, noise[own], t[own]).sum()
                            (loss_sum / (bsz * c.gradient_accumulation_steps)).backward()
                            total = loss_sum.item()
                    sums.append(total)
                    sizes.append(bsz)
                losses += exchange_gradients(dist, self.params, flag, sums, sizes, self.step)
                with flag.capture():  # reported at the next exchange
                    self._optimizer_step()
            flag.final_check(f"after training step {self.step}")
        finally:
            self.unet.eval()
        return self._stats(losses, steps)
