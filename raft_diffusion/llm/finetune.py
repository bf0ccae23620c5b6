"""LoRA SFT on prompt + kept response; optimizer and LR schedule persist across rounds.

The loss of a micro-batch is the mean next-token negative log-likelihood over its label tokens:
the response tokens (plus eos when the response ended on its own), and the prompt tokens too when
``train.mask_prompt`` is false (as the authors' code did). Micro-batch order comes from a private
seeded generator that is checkpointed, so a resumed run trains on the same batches.

Several processes: every process holds the whole kept set and draws the same batch order; each
runs the model on its block of rows of each micro-batch and divides their summed NLL by the
label-token count of the whole micro-batch, so the update equals the one-process update up to
float rounding (the loop: :class:`~raft_diffusion.training.LoraTrainerBase`).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Sequence

import torch

from raft_diffusion.llm.logprob import label_counts, response_labels, token_logprobs
from raft_diffusion.training import LoraTrainerBase, own_rows

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
    The loop (accelerate, 1..N processes, failure sync) is :class:`~raft_diffusion.training.LoraTrainerBase`.
    """

    full_batches = False

    def __init__(self, model: Any, cfg: Any, total_steps: int, seed: int, pad_id: int) -> None:
        from transformers import get_scheduler

        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.enable_input_require_grads()
        super().__init__(model, cfg, total_steps, seed, get_scheduler, "model")
        self.pad_id = pad_id
        self._pairs: tuple[Sequence[Sequence[int]], Sequence[Sequence[int]]] = ((), ())

    def train(self, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], progress: bool = True
              ) -> dict[str, float]:
        """One round of SFT on the M kept pairs (responses already carry eos where due; the same on
        every process); returns loss, lr, steps."""
        self._pairs = (prompt_ids, response_ids)
        try:
            return self.run_steps(len(prompt_ids), progress)
        finally:
            self._pairs = ((), ())

    def micro_batch_loss(self, idx: torch.Tensor, rows: slice) -> tuple[torch.Tensor, float]:
        """The micro-batch's NLL summed over this process's ``rows`` divided by the label-token count
        of the whole micro-batch (row 0 at zero weight when this process owns none)."""
        prompts, responses = self._pairs
        mask_prompt = self.cfg.mask_prompt
        ids_all = idx.tolist()
        own = ids_all[rows] if rows.stop > rows.start else ids_all[:1]
        ids, mask, labels = response_labels([prompts[i] for i in own], [responses[i] for i in own], self.pad_id, mask_prompt)
        device = self.device
        with self.autocast():
            nll, count = sft_nll(self.model, ids.to(device), mask.to(device), labels.to(device))
        if len(own) == len(ids_all):
            loss = nll / count.clamp(min=1)
        else:
            total = sum(label_counts([prompts[i] for i in ids_all], [responses[i] for i in ids_all], mask_prompt))
            loss = nll / max(1, total) * len(ids_all) / max(1, len(own))  # own_rows scales back by rows / batch
        return own_rows(loss, rows, len(ids_all))
