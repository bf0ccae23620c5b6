"""K responses per prompt from a causal LM: batched, left-padded, per-sample seeds, stop strings.

Reproducibility: each sample owns a ``torch.Generator`` seeded with its seed, and the token of
every step is drawn from that generator by inverse-CDF sampling inside a logits processor
(:class:`SeededSampler`); ``generate`` itself then runs greedy on the one-hot result, so the
global RNG plays no part. A sample's response therefore depends on its seed, its prompt and the
model only -- not on the batch size or on the other samples of the batch -- up to float rounding
of batched (padded) matmuls, which could flip a draw lying within ~1e-6 of a CDF boundary.
Across machines, devices or torch thread counts the logits round differently, so the same seed
gives the same response there only up to such flips (and a run that trains on them can drift).

The response is cut from the prompt by token position (the generated ids after the padded prompt
length), then at the first eos token, then at the first stop string.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


@dataclass
class Generation:
    """N responses. prompt_ids / response_ids: unpadded token ids per sample (response without eos).

    finished: the response ended on its own (eos or a stop string) rather than at max_new_tokens.
    """

    responses: list[str]
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    finished: list[bool]


# ------------------------------------------------------------------ prompts
def format_prompt(tokenizer: Any, text: str, use_chat_template: bool) -> str:
    """The prompt as the model sees it: wrapped in the chat template when asked and available."""
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)
    return text


def encode_prompts(
    tokenizer: Any, texts: Sequence[str], use_chat_template: bool, max_prompt_tokens: int | None = None
) -> tuple[list[list[int]], int]:
    """(token ids per prompt, how many were longer than ``max_prompt_tokens`` and left-truncated).

    A chat-templated prompt is tokenized without extra special tokens (the template holds them).
    Truncation keeps the end of the prompt (where the assistant turn starts).
    """
    templated = bool(use_chat_template and getattr(tokenizer, "chat_template", None))
    out: list[list[int]] = []
    truncated = 0
    for text in texts:
        ids = tokenizer(format_prompt(tokenizer, text, use_chat_template), add_special_tokens=not templated).input_ids
        if max_prompt_tokens and len(ids) > max_prompt_tokens:
            ids = ids[-max_prompt_tokens:]
            truncated += 1
        out.append(list(ids))
    return out, truncated


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids (B, L) int64, attention_mask (B, L) int64), padded on the left."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(list(r), dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids, mask


# ------------------------------------------------------------------ sampling processors
class SeededSampler:
    """Logits processor that samples one token per row from that row's own generator.

    Applies temperature, top-k and top-p (transformers' warpers), takes the step's u ~ U[0, 1) from
    the row's generator (seeded with the sample's seed) and picks the token by inverse CDF; returns logits that are 0 at the chosen token and
    -inf elsewhere, so a greedy ``generate`` emits exactly the sampled tokens. It must be the last
    processor: pass it with ``do_sample=False`` (transformers then adds no warpers after it).
    """

    def __init__(self, seeds: Sequence[int], temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 max_steps: int = 256) -> None:
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        # u[i, t]: the t-th draw of sample i's own generator (drawn up front: one call per sample)
        self.uniforms = torch.stack([torch.rand(max_steps, generator=torch.Generator("cpu").manual_seed(int(s) % 2**64))
                                     for s in seeds])
        self.t = 0
        warpers: list[Any] = []
        if temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(temperature))
        if top_k:
            warpers.append(TopKLogitsWarper(top_k=top_k))
        if top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p=top_p))
        self.warpers = LogitsProcessorList(warpers)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = self.warpers(input_ids, scores.float())
        probs = torch.softmax(scores, dim=-1)
        if self.t >= self.uniforms.shape[1]:
            raise ValueError(f"SeededSampler drew all its {self.uniforms.shape[1]} steps; pass max_steps >= max_new_tokens")
        u = self.uniforms[:, self.t].to(probs.device)
        self.t += 1
        cdf = probs.cumsum(-1)
        picked = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1), right=True).clamp_(max=probs.shape[1] - 1)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, picked, 0.0)


class StopOnStrings:
    """Stopping criterion: a row is done once its new text contains any of ``stops``."""

    def __init__(self, tokenizer: Any, stops: Sequence[str], prompt_len: int) -> None:
        self.tokenizer, self.stops, self.prompt_len = tokenizer, list(stops), prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len:], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stops) for t in texts], dtype=torch.bool, device=input_ids.device)


# ------------------------------------------------------------------ cutting responses
def cut_response(
    new_ids: Sequence[int], eos_ids: Sequence[int], tokenizer: Any, stops: Sequence[str] = ()
) -> tuple[str, list[int], bool]:
    """(text, ids, finished) of one response from the ids generated after the prompt.

    Cut at the first eos token (excluded), decode without special tokens, then cut the text at the
    earliest stop string (excluded); a stop-cut response's ids are the cut text re-encoded.
    """
    ids = list(new_ids)
    finished = False
    eos = set(eos_ids)
    for j, t in enumerate(ids):
        if t in eos:
            ids, finished = ids[:j], True
            break
    text = tokenizer.decode(ids, skip_special_tokens=True)
    hits = [text.find(s) for s in stops if s and s in text]
    if hits:
        text = text[: min(hits)]
        ids = list(tokenizer(text, add_special_tokens=False).input_ids) if text else []
        finished = True
    return text, ids, finished


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every id that ends a response: the tokenizer's eos plus the model's generation eos ids."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if gen_eos is not None:
        ids.update(int(i) for i in (gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos]))
    return sorted(ids)


# ------------------------------------------------------------------ generation
@torch.inference_mode()
def generate(
    model: Any,
    tokenizer: Any,
    prompt_ids: Sequence[Sequence[int]],
    seeds: Sequence[int],
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    min_new_tokens: int = 0,
    max_new_tokens: int = 32,
    stop: Sequence[str] = (),
    batch_size: int = 16,
    progress: bool = False,
) -> Generation:
    """One response per entry of ``prompt_ids`` (token ids, unpadded), sample i drawn from ``seeds[i]``."""
    from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

    assert len(prompt_ids) == len(seeds), f"{len(prompt_ids)} prompts but {len(seeds)} seeds"
    eos = eos_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    gen_cfg = GenerationConfig(
        do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens or None,
        eos_token_id=eos or None, pad_token_id=pad, temperature=None, top_p=None, top_k=None,
    )
    device = next(model.parameters()).device
    out = Generation([], [], [], [])
    starts = range(0, len(prompt_ids), batch_size)
    for start in tqdm(starts, desc="generating", unit="batch", disable=not progress, leave=False):
        rows = [list(r) for r in prompt_ids[start:start + batch_size]]
        ids, mask = left_pad(rows, pad)
        sampler = SeededSampler(seeds[start:start + batch_size], temperature, top_k, top_p, max_steps=max_new_tokens)
        criteria = StoppingCriteriaList([StopOnStrings(tokenizer, stop, ids.shape[1])] if stop else [])
        seq = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen_cfg,
            logits_processor=LogitsProcessorList([sampler]), stopping_criteria=criteria,
        )
        new = seq[:, ids.shape[1]:].cpu()
        for row, prompt in zip(new.tolist(), rows):
            text, resp, finished = cut_response(row, eos, tokenizer, stop)
            out.responses.append(text)
            out.prompt_ids.append(prompt)
            out.response_ids.append(resp)
            out.finished.append(finished)
    return out
