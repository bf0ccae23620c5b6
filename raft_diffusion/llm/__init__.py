"""The causal-LM backend of RAFT (transformers + peft) on the shared ranking core.

- :mod:`~raft_diffusion.llm.model`: load an ``AutoModelForCausalLM`` + tokenizer (hub id or local
  folder); ``build_tiny_lm`` / ``tiny_lm_dir`` write a tiny random LM offline (``pretrained: tiny-lm``).
- :mod:`~raft_diffusion.llm.sampling`: K responses per prompt, batched, per-sample seeds, stop strings,
  responses cut from the prompt by token position.
- :mod:`~raft_diffusion.llm.finetune`: LoRA SFT on prompt + kept response, prompt tokens masked.
- :mod:`~raft_diffusion.llm.logprob`: summed response log-probabilities (KL-regularised selection,
  perplexity).
- :mod:`~raft_diffusion.llm.metrics`: response length, Distinct-1/2.
- :mod:`~raft_diffusion.llm.data`: HH-RLHF-style JSONL transcripts -> prompts; long prompts dropped.
- :mod:`~raft_diffusion.llm.backend`: :class:`LLMBackend`, what the round loop drives.

Importing this package is cheap; transformers and peft load when a backend is built.
"""

from __future__ import annotations

TINY_LM = "tiny-lm"

__all__ = ["TINY_LM"]
