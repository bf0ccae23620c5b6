"""LoRA noise-prediction training on kept latents; optimizer and LR schedule persist across rounds.

The kept samples' final latents are already VAE-scaled, so no VAE encode is needed: each step
draws timesteps t ~ U[0, T), noise eps, forms x_t = add_noise(x0, eps, t) and regresses the
UNet's output on eps (epsilon prediction) or on the velocity (v-prediction), as the scheduler
config says. Training noise comes from a private seeded generator that is checkpointed.

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
import math
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from raft_diffusion.core import distributed, faults
from raft_diffusion.core.distributed import FailureFlag, TrainShard
from raft_diffusion.diffusion.lora import lora_parameters
from raft_diffusion.training import exchange_gradients, make_optimizer
from raft_diffusion.errors import ConfigError, RunError

log = logging.getLogger(__name__)


class LoraTrainer:
    """Trains the UNet's LoRA on (latents, prompt embeddings) pairs.

    unet: a UNet2DConditionModel with a LoRA adapter. noise_scheduler: a DDPMScheduler built
    from the pipeline's scheduler config. total_steps: optimizer steps over the whole run (for
    the LR schedule).
    """

    def __init__(self, unet: Any, noise_scheduler: Any, cfg: Any, total_steps: int, seed: int,
                 uncond: torch.Tensor | None = None) -> None:
        from diffusers.optimization import get_scheduler

        self.unet = unet
        self.noise_scheduler = noise_scheduler
        self.cfg = cfg
        self.params = lora_parameters(unet)
        if not self.params:
            raise ConfigError("the UNet has no trainable LoRA parameters; check lora.target_modules")
        self.optimizer = make_optimizer(self.params, cfg)
        self.lr_scheduler = get_scheduler(
            cfg.lr_scheduler, self.optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=max(1, total_steps),
        )
        self.generator = torch.Generator("cpu").manual_seed(seed)
        #: (1, L, D) embedding of the empty prompt, for train.caption_dropout
        self.uncond = uncond
        if getattr(cfg, "caption_dropout", 0.0) and uncond is None:
            raise ConfigError("train.caption_dropout needs the empty prompt's embedding (pass uncond=)")
        self.step = 0
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
        sched = self.noise_scheduler
        device = self.device
        noise = torch.randn(latents.shape, generator=self.generator).to(device)
        t = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],), generator=self.generator).to(device)
        embeds = self._drop_captions(embeds, latents.shape[0])
        x0 = latents.to(device)
        noisy = sched.add_noise(x0, noise, t)
        kind = sched.config.prediction_type
        if kind == "epsilon":
            target = noise
        elif kind == "v_prediction":
            target = sched.get_velocity(x0, noise, t)
        else:
            raise ConfigError(f"scheduler prediction_type {kind!r} is not supported; use epsilon or v_prediction")
        with self._autocast():
            pred = self.unet(noisy.to(self.dtype), t, encoder_hidden_states=embeds.to(device, self.dtype), return_dict=False)[0]
        return F.mse_loss(pred.float(), target.float())

    def steps_for(self, n: int) -> int:
        """Optimizer steps in a round with ``n`` kept samples."""
        c = self.cfg
        if c.steps_per_round is not None:
            return c.steps_per_round
        per_epoch = math.ceil(n / (c.batch_size * c.gradient_accumulation_steps))
        return per_epoch * c.epochs_per_round

    def train(
        self, latents: torch.Tensor, embeds: torch.Tensor, progress: bool = True, shard: TrainShard | None = None,
    ) -> dict[str, float]:
        """Run one round of training on M kept samples; returns mean loss, last lr and step count.

        With ``shard``, ``latents``/``embeds`` are this process's kept samples only (see the module doc).
        """
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

    def _optimizer_step(self) -> None:
        """Clip, step the optimizer and the LR schedule, count the step."""
        if self.cfg.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.step += 1
        faults.point("train")

    def _stats(self, losses: list[float], steps: int) -> dict[str, float]:
        return {
            "loss": sum(losses) / len(losses) if losses else float("nan"),
            "lr": self.lr_scheduler.get_last_lr()[0],
            "steps": steps,
            "global_step": self.step,
        }

    def per_row_loss(self, x0: torch.Tensor, embeds: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Noise-prediction MSE of each row (B,), given the noise and timesteps."""
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
        with self._autocast():
            pred = self.unet(noisy.to(self.dtype), t, encoder_hidden_states=embeds.to(device, self.dtype), return_dict=False)[0]
        return (pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)

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

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "step": self.step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.generator.set_state(state["generator"])
        self.step = int(state["step"])
