"""Teacher-forced token log-probabilities: response log p(y|x), KL log-ratios, perplexity.

A sequence is ``prompt ids + response ids`` (the response with its eos token when it finished,
exactly what fine-tuning trains on). Batches are right-padded, so position ids are plain aranges.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F


def with_eos(response_ids: Sequence[int], finished: bool, eos_id: int | None) -> list[int]:
    """The response as trained and scored: its ids plus eos when it ended on its own."""
    ids = list(response_ids)
    if finished and eos_id is not None:
        ids.append(int(eos_id))
    return ids


def right_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids (B, L) int64, attention_mask (B, L) int64), padded on the right."""
    width = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, :len(r)] = torch.tensor(list(r), dtype=torch.long)
            mask[i, :len(r)] = 1
    return ids, mask


def response_labels(
    prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], pad_id: int, mask_prompt: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, labels), each (B, L) int64, for prompt + response rows.

    labels equal input_ids on response tokens (and on prompt tokens when ``mask_prompt`` is False)
    and -100 elsewhere (padding; prompt tokens when masked). The first token never has a target.
    """
    rows = [list(p) + list(r) for p, r in zip(prompt_ids, response_ids)]
    ids, mask = right_pad(rows, pad_id)
    labels = torch.full_like(ids, -100)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        start = len(p) if mask_prompt else 0
        labels[i, start:len(p) + len(r)] = ids[i, start:len(p) + len(r)]
    return ids, mask, labels


def label_counts(prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], mask_prompt: bool = True) -> list[int]:
    """Label tokens (next-token targets) of each prompt + response row, as :func:`response_labels` marks them."""
    out = []
    for p, r in zip(prompt_ids, response_ids):
        start = len(p) if mask_prompt else 0
        out.append(max(0, len(p) + len(r) - max(start, 1)))  # position 0 never has a target
    return out


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p of each next-token label (B, L-1) float32, mask (B, L-1) bool of positions with a label).

    logits (B, L, V) predict token t+1 at position t; labels (B, L) with -100 for "no target".
    """
    targets = labels[:, 1:]
    valid = targets != -100
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked * valid, valid


def sequence_logprobs(
    model: Any, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], pad_id: int,
    batch_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log p(response | prompt) (N,) float64, response token counts (N,) int64), no grad."""
    device = next(model.parameters()).device
    sums, counts = [], []
    with torch.inference_mode():
        for s in range(0, len(prompt_ids), batch_size):
            ids, mask, labels = response_labels(prompt_ids[s:s + batch_size], response_ids[s:s + batch_size], pad_id)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            lp, valid = token_logprobs(logits, labels.to(device))
            sums.append(lp.double().sum(-1).cpu())
            counts.append(valid.sum(-1).cpu())
    return torch.cat(sums), torch.cat(counts)


def log_ratio(
    model: Any, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], pad_id: int,
    batch_size: int = 16,
) -> list[float]:
    """log p_model(y|x) - log p_initial(y|x) per sample, p_initial = ``model`` with its adapter disabled.

    ``model`` is a peft model; no second copy of the base model is held.
    """
    current, _ = sequence_logprobs(model, prompt_ids, response_ids, pad_id, batch_size)
    with model.disable_adapter():
        initial, _ = sequence_logprobs(model, prompt_ids, response_ids, pad_id, batch_size)
    return (current - initial).tolist()


def perplexity(
    model: Any, prompt_ids: Sequence[Sequence[int]], reference_ids: Sequence[Sequence[int]], pad_id: int,
    batch_size: int = 16,
) -> float:
    """exp(total NLL / total tokens) of reference responses given their prompts (token-weighted)."""
    sums, counts = sequence_logprobs(model, prompt_ids, reference_ids, pad_id, batch_size)
    total = int(counts.sum())
    return math.exp(-float(sums.sum()) / total) if total else float("nan")
