"""Pieces both backends' trainers share: the optimizer, the LR-schedule length, the sharded
gradient exchange, cached test models."""

from __future__ import annotations

import copy
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from raft_diffusion.core import faults
from raft_diffusion.errors import ConfigError, RunError


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else as given (validated)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"model.device {device!r} is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"model.device {device!r} asks for CUDA but none is available; use 'cpu' or 'auto'")
    return dev


def make_optimizer(params: list[torch.nn.Parameter], cfg: Any) -> torch.optim.Optimizer:
    """AdamW (or bitsandbytes 8-bit AdamW) over the LoRA parameters, from a TrainConfig."""
    kwargs = dict(lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ConfigError("train.optimizer 'adamw8bit' needs bitsandbytes; pip install bitsandbytes or use 'adamw'") from None
        return bnb.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


class LoraTrainerBase:
    """What both backends' LoRA trainers share: the optimizer and LR schedule over the trainable
    parameters (persisting across rounds), the private seeded generator of batch order and noise,
    the step count, the per-round step budget, the optimizer step and the checkpoint state.

    params: the trainable LoRA parameters. cfg: the run's TrainConfig. total_steps: optimizer
    steps over the whole run (LR schedule length). get_scheduler: diffusers' or transformers'
    ``get_scheduler`` (same names and arguments). what: the model, named in the error when
    ``params`` is empty.
    """

    def __init__(self, params: list[torch.nn.Parameter], cfg: Any, total_steps: int, seed: int,
                 get_scheduler: Callable[..., Any], what: str) -> None:
        if not params:
            raise ConfigError(f"the {what} has no trainable LoRA parameters; check lora.target_modules")
        self.cfg = cfg
        self.params = params
        self.optimizer = make_optimizer(params, cfg)
        self.lr_scheduler = get_scheduler(
            cfg.lr_scheduler, self.optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=max(1, total_steps),
        )
        self.generator = torch.Generator("cpu").manual_seed(seed)
        self.step = 0

    def steps_for(self, n: int) -> int:
        """Optimizer steps in a round with ``n`` kept samples."""
        c = self.cfg
        if c.steps_per_round is not None:
            return c.steps_per_round
        return math.ceil(n / (c.batch_size * c.gradient_accumulation_steps)) * c.epochs_per_round

    def _optimizer_step(self) -> None:
        """Clip, step the optimizer and the LR schedule, count the step."""
        if self.cfg.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.step += 1
        faults.point("train")

    def _stats(self, losses: list[float], steps: int) -> dict[str, float]:
        """The round's training figures: mean micro-batch loss, last LR, steps this round and in all."""
        return {
            "loss": sum(losses) / len(losses) if losses else float("nan"),
            "lr": self.lr_scheduler.get_last_lr()[0],
            "steps": steps,
            "global_step": self.step,
        }

    def state_dict(self) -> dict[str, Any]:
        """Optimizer, schedule, generator and step. The optimizer tensors are the live ones: serialize
        the state (as checkpoints do) before training further."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "step": self.step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))  # never share tensors with the source
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.generator.set_state(state["generator"])
        self.step = int(state["step"])


def expected_kept_per_round(cfg: Any) -> int:
    """How many samples a round keeps under the configured strategy (for the LR schedule length)."""
    b, r = cfg.raft.prompts_per_round, cfg.ranking
    if r.strategy == "per_prompt":
        return b * r.top_n
    if r.strategy == "global":
        return b
    return min(b, r.top_k or b)


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else ``$RAFT_DIFFUSION_CACHE``, else ``~/.cache/raft_diffusion``."""
    return Path(cache_dir) if cache_dir else Path(os.environ.get("RAFT_DIFFUSION_CACHE", Path.home() / ".cache" / "raft_diffusion"))


def cached_folder(name: str, marker: str, build: Callable[[Path], Any], cache_dir: str | Path | None = None) -> Path:
    """``cache_root/name``, built once by ``build(tmp_dir)`` into a temp folder and renamed into place
    (so a killed build or a concurrent one never leaves a half-written model behind)."""
    root = cache_root(cache_dir)
    path = root / name
    if not (path / marker).is_file():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}-"))
        build(tmp)
        try:
            tmp.rename(path)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another process won the race
    return path


def exchange_gradients(dist: Any, params: list[torch.nn.Parameter], flag: Any, sums: list[float], sizes: list[int],
                       step: int) -> list[float]:
    """One optimizer step's exchange in sharded training: sum the LoRA gradients, the micro-batches'
    loss sums and the failure flag over every process; raise everywhere if any process failed or
    a loss is not finite. Returns each micro-batch's mean loss (``sums[i] / sizes[i]`` over all
    processes). ``dist``: a :class:`~raft_diffusion.core.distributed.Distributed`; ``flag``: its
    :class:`~raft_diffusion.core.distributed.FailureFlag`."""
    reduced = dist.all_reduce_grads_(params, "sum", [*sums, flag.value])
    flag.check(reduced[-1], f"training step {step + 1}")
    losses = []
    for total, size in zip(reduced[:-1], sizes):
        loss = total / size
        if not math.isfinite(loss):
            raise RunError(f"training loss is {loss} at step {step + 1}; lower train.learning_rate or check the data")
        losses.append(loss)
    return losses
