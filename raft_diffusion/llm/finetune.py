"""LoRA SFT on prompt + kept response; optimizer and LR schedule persist across rounds.

The loss of a micro-batch is the mean next-token negative log-likelihood over its label tokens:
the response tokens (plus eos when the response ended on its own), and the prompt tokens too when
``train.mask_prompt`` is false (as the authors' code did). Micro-batch order comes from a private
seeded generator that is checkpointed, so a resumed run trains on the same batches.

Several processes (``train(..., shard=TrainShard, label_counts=...)``): every process draws the same
batch order for the whole global kept set (generators in lock-step), runs the model only on the
rows of each micro-batch it owns, and divides their summed NLL by the label-token count of the
whole global micro-batch (``label_counts``, shared by the backend beforehand); the LoRA gradients
are then summed across processes (:meth:`~raft_diffusion.core.distributed.Distributed.all_reduce_grads_`)
before clipping and the optimizer step, so the update equals the one-process update up to float
rounding and the LoRA stays identical on every process. A failure on one process (the forward,
the optimizer step, an injected fault) rides on the next exchange, plus one final flag after the
last step (:class:`~raft_diffusion.core.distributed.FailureFlag`), so every process stops together.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from raft_diffusion.core import distributed
from raft_diffusion.core.distributed import FailureFlag, TrainShard
from raft_diffusion.errors import RunError
from raft_diffusion.llm.logprob import response_labels, token_logprobs
from raft_diffusion.training import LoraTrainerBase, exchange_gradients

log = logging.getLogger(__name__)


def add_lora(model: Any, rank: int, alpha: float | None, dropout: float, targets: Sequence[str], init: str = "default",
             seed: int = 0) -> Any:
    """Wrap ``model`` in a peft ``PeftModel`` with a trainable LoRA (base frozen, adapter float32).

    The adapter's random init is drawn from ``seed`` without touching the global RNG.
    """
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM, r=rank, lora_alpha=alpha if alpha is not None else rank, lora_dropout=dropout,
        target_modules=list(targets), init_lora_weights="gaussian" if init == "gaussian" else True,
    )
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)  # peft 0.21 on transformers 5
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, config)
    for p in peft_model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return peft_model


def sft_nll(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed NLL over the label tokens, their count) of one micro-batch; (B, L) int64 tensors on the model's device."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    lp, valid = token_logprobs(logits, labels)
    return -lp.sum(), valid.sum()


def sft_loss(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean NLL over label tokens of one micro-batch; all (B, L) int64 tensors on the model's device."""
    total, count = sft_nll(model, input_ids, attention_mask, labels)
    return total / count.clamp(min=1)


class SFTTrainer(LoraTrainerBase):
    """Trains the LoRA of a peft causal LM on (prompt ids, response ids) pairs.

    cfg: the run's TrainConfig. total_steps: optimizer steps over the whole run (LR schedule length).
    """

    def __init__(self, model: Any, cfg: Any, total_steps: int, seed: int, pad_id: int) -> None:
        from transformers import get_scheduler

        super().__init__([p for p in model.parameters() if p.requires_grad], cfg, total_steps, seed, get_scheduler, "model")
        self.model, self.pad_id = model, pad_id
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.enable_input_require_grads()

    def _autocast(self) -> contextlib.AbstractContextManager:
        p = next(self.model.parameters())
        base = next((q.dtype for q in self.model.parameters() if not q.requires_grad), p.dtype)
        if base == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(p.device.type, dtype=base)

    def train(self, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], progress: bool = True,
              shard: TrainShard | None = None, label_counts: Sequence[int] | None = None) -> dict[str, float]:
        """One round of SFT on M pairs (responses already carry eos where due); returns loss, lr, steps.

        With ``shard`` the pairs are this process's kept samples and ``label_counts`` holds the
        label-token count of every global kept sample (M of them; see the module doc).
        """
        if shard is not None:
            if label_counts is None:
                raise ValueError("SFTTrainer.train(shard=...) needs label_counts of the global kept set")
            return self._train_sharded(prompt_ids, response_ids, shard, list(label_counts), progress)
        c = self.cfg
        m = len(prompt_ids)
        steps = self.steps_for(m)
        device = next(self.model.parameters()).device
        self.model.train()
        losses: list[float] = []
        order = torch.randperm(m, generator=self.generator)
        cursor = 0
        try:
            for _ in tqdm(range(steps), desc="training", unit="step", disable=not progress, leave=False):
                self.optimizer.zero_grad(set_to_none=True)
                for _ in range(c.gradient_accumulation_steps):
                    if cursor >= m:
                        order, cursor = torch.randperm(m, generator=self.generator), 0
                    idx = order[cursor:cursor + c.batch_size].tolist()
                    cursor += c.batch_size
                    ids, mask, labels = response_labels(
                        [prompt_ids[i] for i in idx], [response_ids[i] for i in idx], self.pad_id, c.mask_prompt)
                    with self._autocast():
                        loss = sft_loss(self.model, ids.to(device), mask.to(device), labels.to(device))
                    if not torch.isfinite(loss):
                        raise RunError(f"training loss is {loss.item()} at step {self.step + 1}; lower train.learning_rate or check the data")
                    (loss / c.gradient_accumulation_steps).backward()
                    losses.append(loss.item())
                self._optimizer_step()
        finally:
            self.model.eval()
        return self._stats(losses, steps)

    def _train_sharded(self, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], shard: TrainShard,
                       label_counts: list[int], progress: bool) -> dict[str, float]:
        """:meth:`train` on this process's share; every process runs the same exchanges in the same order."""
        dist = distributed.get()
        c = self.cfg
        m = shard.total
        steps = self.steps_for(m)
        device = next(self.model.parameters()).device
        flag = FailureFlag(dist)  # a local failure is never raised at once: the others would wait in an exchange
        local_of = [-1] * m
        with flag.capture():
            if len(shard.positions) != len(prompt_ids) or len(label_counts) != m:
                raise RunError(f"training shard has {len(shard.positions)} positions for {len(prompt_ids)} samples "
                               f"and {len(label_counts)} label counts for {m} kept samples")
            for j, pos in enumerate(shard.positions):
                local_of[pos] = j
        self.model.train()
        losses: list[float] = []
        order = torch.randperm(m, generator=self.generator)
        cursor = 0
        try:
            for _ in tqdm(range(steps), desc="training", unit="step", disable=not progress, leave=False):
                self.optimizer.zero_grad(set_to_none=True)
                sums: list[float] = []
                tokens: list[int] = []
                for _ in range(c.gradient_accumulation_steps):
                    if cursor >= m:
                        order, cursor = torch.randperm(m, generator=self.generator), 0
                    idx = order[cursor:cursor + c.batch_size].tolist()
                    cursor += c.batch_size
                    n_tokens = max(1, sum(label_counts[i] for i in idx)) if not flag.failed else 1
                    mine = [local_of[i] for i in idx if local_of[i] >= 0]
                    total = 0.0
                    if not flag.failed and mine:
                        with flag.capture():
                            ids, mask, labels = response_labels(
                                [prompt_ids[j] for j in mine], [response_ids[j] for j in mine], self.pad_id, c.mask_prompt)
                            with self._autocast():
                                nll, _ = sft_nll(self.model, ids.to(device), mask.to(device), labels.to(device))
                            (nll / (n_tokens * c.gradient_accumulation_steps)).backward()
                            total = nll.item()
                    sums.append(total)
                    tokens.append(n_tokens)
                losses += exchange_gradients(dist, self.params, flag, sums, tokens, self.step)
                with flag.capture():  # reported at the next exchange
                    self._optimizer_step()
            flag.final_check(f"after training step {self.step}")
        finally:
            self.model.eval()
        return self._stats(losses, steps)
