"""Pieces both backends' trainers share: the accelerate training loop, the optimizer, the LR-schedule
length, cached test models."""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from raft_diffusion.core import distributed, faults
from raft_diffusion.core.distributed import FailureFlag, shard_range
from raft_diffusion.errors import ConfigError, RunError

log = logging.getLogger(__name__)


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


MIXED_PRECISION = ("no", "fp16", "bf16")


def make_accelerator(cfg: Any, device: torch.device) -> Any:
    """accelerate's ``Accelerator`` for a LoRA trainer.

    Mixed precision comes from ``train.mixed_precision``, else from the launcher
    (``accelerate launch --mixed_precision``, i.e. ``ACCELERATE_MIXED_PRECISION``), else "no".
    ``split_batches``: the trainers split one global micro-batch across the processes, so the LR
    schedule steps once per optimizer step whatever the process count. The trainers place their
    models themselves (``device_placement=False``). A second trainer in one Python process with
    other settings (tests, notebooks) resets accelerate's process-wide state first.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs

    mp = getattr(cfg, "mixed_precision", None) or os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if mp not in MIXED_PRECISION:
        raise ConfigError(f"train.mixed_precision {mp!r} is not one of {', '.join(MIXED_PRECISION)}")
    if mp == "fp16" and device.type == "cpu":
        raise ConfigError("train.mixed_precision fp16 needs a GPU; use bf16 on the CPU, or 'no'")
    state = AcceleratorState._shared_state
    if state and (state.get("_mixed_precision") != mp or (device.type == "cpu") != (state["device"].type == "cpu")):
        AcceleratorState._reset_state(reset_partial_state=False)
    try:
        acc = Accelerator(
            mixed_precision=mp, cpu=device.type == "cpu", gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            device_placement=False, dataloader_config=DataLoaderConfiguration(split_batches=True),
            # the frozen buffers are equal everywhere: no broadcast in every forward
            kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
        )
    except ImportError as exc:  # e.g. a DeepSpeed config without deepspeed installed
        raise ConfigError(f"the accelerate config cannot be applied: {exc}") from None
    _check_distributed_type(acc, cfg)
    return acc


def _check_distributed_type(acc: Any, cfg: Any) -> None:
    """DeepSpeed: fill the "auto" fields that accelerate fills from a dataloader (the trainers have
    none): the per-process micro-batch (a global micro-batch split over the processes) and gradient
    clipping. FSDP: refused, since it shards the denoiser's weights between forwards, and
    generation runs the pipeline on the whole module between training steps."""
    kind = str(acc.distributed_type)
    if "FSDP" in kind:
        raise ConfigError(
            "the accelerate config asks for FSDP, which shards the model's weights between forwards; RAFT generates "
            "with the whole model between training steps. Use DeepSpeed ZeRO-2 (shards gradients and optimizer "
            "state) or plain multi-GPU (DDP) in `accelerate config`"
        )
    if "DEEPSPEED" in kind:
        ds = acc.state.deepspeed_plugin.deepspeed_config
        if ds.get("train_micro_batch_size_per_gpu", "auto") == "auto":
            ds["train_micro_batch_size_per_gpu"] = math.ceil(cfg.batch_size / acc.num_processes)
        if ds.get("gradient_clipping", "auto") == "auto":
            ds["gradient_clipping"] = float(cfg.max_grad_norm or 0.0)


class LoraTrainerBase:
    """One training loop for both backends' LoRA trainers, for 1..N processes, through accelerate.

    The trainable model, the optimizer (AdamW over the LoRA parameters) and the LR schedule go
    through ``Accelerator.prepare`` (DDP / DeepSpeed under ``accelerate launch``, autocast from the
    mixed precision); micro-batches run under ``accelerate.accumulate`` with ``backward`` and
    ``clip_grad_norm_``. Every process holds the whole kept set and draws the same batch order
    and noise from its private seeded generator (checkpointed); each global micro-batch is split
    into contiguous row blocks, one per process (:func:`~raft_diffusion.core.distributed.shard_range`),
    so the update equals the one-process update up to float rounding. Before each backward the
    processes exchange one small tensor (the micro-batch's loss and a failure flag): a failure on any
    process ends every process with that process's message instead of a hang in the gradient
    all-reduce (:class:`~raft_diffusion.core.distributed.FailureFlag`); a failure in a backward or
    an optimizer step is exchanged before the next forward.

    With ``train.ema_decay`` an exponential moving average of the trained parameters (diffusers'
    ``EMAModel``) follows every optimizer step. Between rounds the model holds the average (the next
    round generates from it, checkpoints and the run's weights are it) while the raw weights the
    optimizer trains wait in the EMA's store on the CPU; each round's training starts from them.

    Subclasses implement :meth:`micro_batch_loss`. ``model``: the trainable module (the LoRA'd
    denoiser or peft LM). cfg: the run's TrainConfig. total_steps: optimizer steps over the run.
    """

    #: ``True``: a micro-batch that would run past the kept set starts a new pass (the diffusion
    #: trainer's rule); ``False``: the last micro-batch of a pass may be short (the LLM trainer's).
    full_batches = True

    def __init__(self, model: Any, cfg: Any, total_steps: int, seed: int, get_scheduler: Callable[..., Any],
                 what: str) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ConfigError(f"the {what} has no trainable LoRA parameters; check lora.target_modules")
        self.cfg = cfg
        self.params = params
        self.raw_model = model
        device = params[0].device
        self.accelerator = make_accelerator(cfg, device)
        optimizer = make_optimizer(params, cfg)
        lr_scheduler = get_scheduler(
            cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=max(1, total_steps),
        )
        self.model, self.optimizer, self.lr_scheduler = self.accelerator.prepare(model, optimizer, lr_scheduler)
        self.generator = torch.Generator("cpu").manual_seed(seed)
        self.step = 0
        self.ema = make_ema(params, cfg)
        self.dtype = next((p.dtype for p in model.parameters() if not p.requires_grad), params[0].dtype)
        self.device = device

    def autocast(self) -> contextlib.AbstractContextManager:
        """The training forward's autocast: accelerate's for mixed precision, else the frozen weights'
        dtype when they are not float32 (the float32 LoRA then runs in it), else none."""
        if self.accelerator.mixed_precision != "no":
            return self.accelerator.autocast()
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def steps_for(self, n: int) -> int:
        """Optimizer steps in a round with ``n`` kept samples."""
        c = self.cfg
        if c.steps_per_round is not None:
            return c.steps_per_round
        return math.ceil(n / (c.batch_size * c.gradient_accumulation_steps)) * c.epochs_per_round

    def micro_batch_loss(self, idx: torch.Tensor, rows: slice) -> tuple[torch.Tensor, float]:
        """(the loss to back-propagate on this process, this process's share of the micro-batch's
        mean loss) for the global micro-batch ``idx`` (kept-set indices) of which this process owns
        ``rows``; every process must draw the whole micro-batch's random numbers, in the same order."""
        raise NotImplementedError

    def _next_batch(self, order: torch.Tensor, cursor: int, m: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        b = self.cfg.batch_size
        if (cursor + b > m and cursor > 0) if self.full_batches else cursor >= m:
            order, cursor = torch.randperm(m, generator=self.generator), 0
        return order[cursor:cursor + b], order, cursor + b

    def run_steps(self, m: int, progress: bool = True) -> dict[str, float]:
        """One round of training over a kept set of ``m`` samples (the same on every process)."""
        dist = distributed.get()
        acc = self.accelerator
        flag = FailureFlag(dist)
        steps = self.steps_for(m)
        losses: list[float] = []
        order = torch.randperm(m, generator=self.generator)
        cursor = 0
        self.use_raw_weights()
        self.model.train()
        try:
            for _ in tqdm(range(steps), desc="training", unit="step", disable=not progress, leave=False):
                for _ in range(self.cfg.gradient_accumulation_steps):
                    idx, order, cursor = self._next_batch(order, cursor, m)
                    lo, hi = shard_range(len(idx), dist.rank, dist.world_size)
                    with acc.accumulate(self.model):
                        # a failure since the last exchange (backward, optimizer step) stops everyone
                        # before a forward, whose DDP bookkeeping may itself talk to the others
                        flag.final_check(f"training step {self.step + 1}")
                        loss, share = None, 0.0
                        if not flag.failed:
                            with flag.capture():
                                loss, share = self.micro_batch_loss(idx, slice(lo, hi))
                        total, failed = dist.all_reduce_(torch.tensor([share, flag.value], dtype=torch.float64))
                        flag.check(float(failed), f"training step {self.step + 1}")
                        if not math.isfinite(total):
                            raise RunError(f"training loss is {total} at step {self.step + 1}; lower train.learning_rate or check the data")
                        losses.append(float(total))
                        with flag.capture():  # reported at the next exchange
                            acc.backward(loss)
                            if acc.sync_gradients and self.cfg.max_grad_norm is not None:
                                acc.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
                            self.optimizer.step()
                            self.lr_scheduler.step()
                            self.optimizer.zero_grad(set_to_none=True)
                            if self.ema is not None and acc.sync_gradients:
                                self.ema.step(self.params)
                self.step += 1
                with flag.capture():
                    faults.point("train")
            flag.final_check(f"after training step {self.step}")
        finally:
            self.model.eval()
        if self.ema is not None:  # the average generates and is saved; the raw weights wait for the next round
            self.ema.store(self.params)
            self.ema.copy_to(self.params)
        return self._stats(losses, steps)

    def use_raw_weights(self) -> None:
        """Put the raw trained weights back in place of the EMA (``train.ema_decay``) before training;
        a no-op without an EMA or when they are already in place."""
        if self.ema is not None and self.ema.temp_stored_params is not None:
            self.ema.restore(self.params)

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
            **({"ema": {**self.ema.state_dict(), "raw": self.ema.temp_stored_params}} if self.ema is not None else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))  # never share tensors with the source
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.generator.set_state(state["generator"])
        self.step = int(state["step"])
        if self.ema is not None:
            self._load_ema(state.get("ema"))

    def _load_ema(self, state: dict[str, Any] | None) -> None:
        """Restore the EMA and the raw weights; a checkpoint written without one (the setting turned
        on at resume) starts the average from the weights it holds."""
        if state is None:
            log.warning("the checkpoint holds no EMA (train.ema_decay was off): the average starts from its weights")
            self.ema = make_ema(self.params, self.cfg)
            return
        state = dict(state)
        raw = state.pop("raw")
        self.ema.load_state_dict(state)  # deep-copies
        self.ema.to(device=self.device)
        self.ema.temp_stored_params = None if raw is None else [t.detach().cpu().clone() for t in raw]


def make_ema(params: list[torch.nn.Parameter], cfg: Any) -> Any | None:
    """diffusers' ``EMAModel`` over ``params`` when ``train.ema_decay`` is set (its decay per
    optimizer step, warmed up as (1 + n) / (10 + n) over the first steps), else None."""
    decay = getattr(cfg, "ema_decay", None)
    if not decay:
        return None
    from diffusers.training_utils import EMAModel

    return EMAModel(params, decay=float(decay))


def own_rows(loss: torch.Tensor, rows: slice, batch: int) -> tuple[torch.Tensor, float]:
    """Scale the mean ``loss`` over this process's ``rows`` of a ``batch``-row micro-batch for
    :meth:`LoraTrainerBase.micro_batch_loss`: (rows / batch) x world size, since DDP averages the
    gradients over processes (x 1 exactly on one process owning every row)."""
    world = distributed.get().world_size
    n = rows.stop - rows.start
    share = loss.item() * n / batch
    factor = n / batch * world
    return (loss if factor == 1 else loss * factor), share


def expected_kept_per_round(cfg: Any) -> int:
    """How many samples a round keeps under the configured strategy (for the LR schedule length):
    the strategy's own count, from the registry in :mod:`raft_diffusion.core.ranking`."""
    from raft_diffusion.core.ranking import expected_kept_per_round as from_registry

    return from_registry(cfg)


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
