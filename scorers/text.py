"""Text rewards for the LLM backend. Same argument order as image scorers:
``scorer(responses, prompts, metadata) -> (N,) float32``.

- ``text-reward-model`` (:class:`SequenceClassificationReward`): an
  ``AutoModelForSequenceClassification`` reward model (Bradley-Terry style); reward = its logit
  (``label_index``, default 0). With a chat template the input is the template applied to
  ``[user: prompt, assistant: response]``; otherwise the tokenizer's text-pair encoding of
  (prompt, response). Scale: that of the model's logits; trained on within-prompt comparisons.
- ``text-pipeline`` (:class:`PipelineReward`): a transformers ``pipeline`` (e.g.
  ``sentiment-analysis``); reward = the score (probability, 0-1) of ``label``.
- ``text-function`` (:func:`text_function`): a plain Python function, called once per sample.
- ``text-length`` / ``text-contains``: weight-free rewards for tests and smoke runs.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import torch

from raft_diffusion.errors import ScorerError
from scorers.common import BaseScorer, ValidatedScorer, resolve_device, resolve_dtype
from scorers.custom import CallableScorer, import_object
from scorers.weights import from_pretrained


class SequenceClassificationReward(BaseScorer):
    """reward = logits[:, label_index] of a sequence-classification model on (prompt, response)."""

    kind = "text"

    def __init__(self, model: str, tokenizer: str | None = None, *, label_index: int = 0,
                 chat_template: bool | None = None, max_length: int | None = None, device: Any = None,
                 dtype: Any = None, batch_size: int = 8, name: str = "text-reward-model") -> None:
        super().__init__(name, batch_size)
        self.model_id = str(model)
        self.tokenizer_id = str(tokenizer or model)
        self.label_index = int(label_index)
        self.chat_template = chat_template
        self.max_length = max_length
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        self.model: Any = None
        self.tokenizer: Any = None

    def _load(self) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        what = f"reward model {self.model_id}"
        tok = from_pretrained(AutoTokenizer.from_pretrained, self.tokenizer_id, what=what)
        model = from_pretrained(AutoModelForSequenceClassification.from_pretrained, self.model_id, what=what)
        if tok.pad_token is None:
            if tok.eos_token is None:
                raise ScorerError(f"{what}: the tokenizer has neither a pad nor an eos token")
            tok.pad_token = tok.eos_token
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tok.pad_token_id
        n_labels = int(getattr(model.config, "num_labels", 1))
        if not -n_labels <= self.label_index < n_labels:
            raise ScorerError(f"{what}: label_index {self.label_index} out of range for {n_labels} labels")
        if self.chat_template is None:
            self.chat_template = bool(getattr(tok, "chat_template", None))
        elif self.chat_template and not getattr(tok, "chat_template", None):
            raise ScorerError(f"{what}: chat_template=True but the tokenizer has no chat template")
        self.tokenizer = tok
        self.model = model.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)

    def encode(self, responses: list[str], prompts: list[str]) -> dict[str, torch.Tensor]:
        """Tokenized model inputs for (prompt, response) pairs."""
        tok = self.tokenizer
        kw: dict[str, Any] = {"padding": True, "truncation": True, "return_tensors": "pt"}
        if self.max_length is not None:
            kw["max_length"] = int(self.max_length)
        if self.chat_template:
            texts = [
                tok.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                                        tokenize=False)
                for p, r in zip(prompts, responses)
            ]
            return tok(texts, add_special_tokens=False, **kw)
        return tok(list(prompts), list(responses), **kw)

    def score_batch(self, outputs: list[str], prompts: list[str], metadata: list[dict[str, Any]]) -> torch.Tensor:
        enc = {k: v.to(self.device) for k, v in self.encode(list(outputs), prompts).items()}
        logits = self.model(**enc).logits
        return logits[:, self.label_index].float()


class PipelineReward(BaseScorer):
    """reward = score of ``label`` from a transformers pipeline (e.g. sentiment-analysis) run on the
    response (``on="response"``) or on prompt + response (``on="prompt+response"``)."""

    kind = "text"

    def __init__(self, model: str, task: str = "sentiment-analysis", label: str = "POSITIVE", *,
                 on: str = "response", device: Any = None, batch_size: int = 8, truncation: bool = True,
                 name: str = "text-pipeline") -> None:
        super().__init__(name, batch_size)
        if on not in ("response", "prompt+response"):
            raise ScorerError(f"scorer {name!r}: on={on!r} must be 'response' or 'prompt+response'")
        self.model_id, self.task, self.label, self.on = str(model), task, label, on
        self.device = resolve_device(device)
        self.truncation = truncation
        self.pipe: Any = None

    def _load(self) -> None:
        from transformers import pipeline

        what = f"pipeline {self.task} {self.model_id}"
        self.pipe = from_pretrained(lambda m, **kw: pipeline(self.task, model=m, **kw), self.model_id, what=what,
                                    device=self.device, top_k=None)

    def score_batch(self, outputs: list[str], prompts: list[str], metadata: list[dict[str, Any]]) -> torch.Tensor:
        texts = list(outputs) if self.on == "response" else [p + r for p, r in zip(prompts, outputs)]
        results = self.pipe(texts, batch_size=self.batch_size, truncation=self.truncation)
        rewards = []
        for res in results:
            res = res if isinstance(res, list) else [res]
            scores = {d["label"]: float(d["score"]) for d in res}
            if self.label not in scores:
                raise ScorerError(f"scorer {self.name!r}: label {self.label!r} not in the pipeline's labels "
                                  f"{sorted(scores)}; pass label=...")
            rewards.append(scores[self.label])
        return torch.tensor(rewards, dtype=torch.float32)


def text_reward_model(model: str, tokenizer: str | None = None, *, label_index: int = 0,
                      chat_template: bool | None = None, max_length: int | None = None, device: Any = None,
                      dtype: Any = None, batch_size: int = 8) -> SequenceClassificationReward:
    """Sequence-classification reward model from a hub id or local folder (loads on first use)."""
    return SequenceClassificationReward(model, tokenizer, label_index=label_index, chat_template=chat_template,
                                        max_length=max_length, device=device, dtype=dtype, batch_size=batch_size)


def text_pipeline(model: str, task: str = "sentiment-analysis", label: str = "POSITIVE", *, on: str = "response",
                  device: Any = None, batch_size: int = 8) -> PipelineReward:
    """A transformers pipeline reward (loads on first use)."""
    return PipelineReward(model, task, label, on=on, device=device, batch_size=batch_size)


def text_function(fn: Callable[..., float] | str, *, prompt_first: bool = False, name: str | None = None
                  ) -> ValidatedScorer:
    """A per-sample Python function (or ``"module:function"``) as a validated scorer.

    Called as ``fn(response, prompt, metadata) -> float`` (the project's argument order), or as
    ``fn(prompt, response, metadata)`` with ``prompt_first=True``."""
    ref = fn if isinstance(fn, str) else None
    if isinstance(fn, str):
        fn = import_object(fn)
    if not callable(fn):
        raise ScorerError(f"text-function: {fn!r} is not callable")
    call = (lambda r, p, m: fn(p, r, m)) if prompt_first else fn  # type: ignore[misc]
    label = name or ref or getattr(fn, "__qualname__", "text-function")
    return ValidatedScorer(CallableScorer(call, name=label, per_sample=True), label)


def _length(text: str, unit: str) -> int:
    if unit == "chars":
        return len(text)
    if unit == "words":
        return len(text.split())
    raise ScorerError(f"text-length: unit {unit!r} must be 'chars' or 'words'")


def text_length(target: int | None = None, unit: str = "words") -> ValidatedScorer:
    """Length reward: ``-|length - target|`` in ``unit`` (words or chars), or the length itself when
    ``target`` is None. Needs no weights."""
    _length("", unit)

    def score(response: str, prompt: str, metadata: dict[str, Any]) -> float:
        n = _length(response, unit)
        return float(n) if target is None else -abs(float(n) - float(target))

    return ValidatedScorer(CallableScorer(score, name="text-length", per_sample=True), "text-length")


def text_contains(keyword: str, case_sensitive: bool = False) -> ValidatedScorer:
    """Number of (non-overlapping) occurrences of ``keyword`` in the response. Needs no weights."""
    if not keyword:
        raise ScorerError("text-contains: keyword must be a non-empty string")
    pattern = re.compile(re.escape(keyword), 0 if case_sensitive else re.IGNORECASE)

    def score(response: str, prompt: str, metadata: dict[str, Any]) -> float:
        return float(len(pattern.findall(response)))

    return ValidatedScorer(CallableScorer(score, name="text-contains", per_sample=True), "text-contains")
