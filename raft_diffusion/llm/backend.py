"""The causal-LM backend of the round loop: sample responses, LoRA-SFT on the kept ones, save the adapter.

Samples.outputs are N response strings; Samples.extras hold per-sample ``prompt_ids``,
``response_ids`` (eos appended where the response ended on its own: what SFT trains on and what
``log_ratio`` scores) and ``finished``. One model is held: the reference policy of the KL-
regularised selection is the same model with its LoRA adapter disabled.

Several processes (``accelerate launch``; see :mod:`raft_diffusion.core.loop`): each process
generates its block of prompts with the global per-sample seeds, so every sample equals its
1-process self. :meth:`LLMBackend.finetune` with a ``shard`` first exchanges the label-token count
of each kept sample (the SFT loss is normalised over the global micro-batch), then trains with
gradients summed across processes (:mod:`raft_diffusion.llm.finetune`). The main process writes the
round's files and metrics from the outputs and the extras in :attr:`LLMBackend.gathered_extras`,
which the loop gathers to it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch

from prompts.types import Prompt
from raft_diffusion.config import RaftConfig
from raft_diffusion.core import distributed
from raft_diffusion.core.backend import Samples
from raft_diffusion.core.distributed import FailureFlag, TrainShard
from raft_diffusion.core.ranking import group_ids
from raft_diffusion.errors import ModelError, RunError
from raft_diffusion.llm import logprob, sampling
from raft_diffusion.llm.finetune import SFTTrainer, add_lora
from raft_diffusion.llm.metrics import response_metrics
from raft_diffusion.training import expected_kept_per_round

log = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
#: Tried in order when peft knows no default for the architecture.
FALLBACK_TARGETS = (["q_proj", "v_proj"], ["c_attn"], ["query_key_value"], ["Wqkv"], ["qkv_proj"])
#: Eval-prompt metadata keys holding a reference answer (held-out perplexity).
REFERENCE_KEYS = ("reference", "chosen_response", "chosen", "response")
#: Samples.extras of this backend (all per-sample lists).
EXTRA_KEYS = ("prompt_ids", "response_ids", "finished")


def resolve_target_modules(model: Any, targets: Sequence[str]) -> list[str]:
    """The LoRA target modules: as given, or for "auto" (or none given) the architecture's
    attention projections (peft's default mapping, else the first of FALLBACK_TARGETS present)."""
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"]
    targets = list(targets)
    if targets in (["auto"], []):
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as MAPPING

        candidates = [MAPPING[model.config.model_type]] if model.config.model_type in MAPPING else []
        for cand in candidates + [list(c) for c in FALLBACK_TARGETS]:
            if all(any(n.endswith("." + t) or n == t for n in names) for t in cand):
                return list(cand)
        raise ModelError(f"cannot pick LoRA targets for model type {model.config.model_type!r}; set lora.target_modules, e.g. [q_proj, v_proj]")
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        tails = sorted({n.rsplit(".", 1)[-1] for n in names})[:12]
        raise ModelError(f"lora.target_modules {missing} match no linear layer of the {type(model).__name__}; use names such as {', '.join(tails)}")
    return targets


def reference_of(metadata: dict[str, Any]) -> str | None:
    for key in REFERENCE_KEYS:
        value = metadata.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return None


class LLMBackend:
    """Holds the peft causal LM, its tokenizer and the SFT trainer."""

    name = "llm"
    #: multi-process runs: the loop shards prompts and passes ``shard`` to :meth:`finetune`
    supports_distributed = True
    #: what the main process reads in write_round_artifacts/metrics/eval_metrics (the loop gathers them)
    gathered_extras = EXTRA_KEYS

    def __init__(self, cfg: RaftConfig, model: Any | None = None, tokenizer: Any | None = None, progress: bool = True) -> None:
        from raft_diffusion.llm.model import load_causal_lm

        self.cfg, self.progress = cfg, progress
        m = cfg.model
        if model is None:
            model, tokenizer = load_causal_lm(m.pretrained, dtype=m.dtype, device=m.device, revision=m.revision)
        elif tokenizer is None:
            raise ModelError("LLMBackend(model=...) also needs tokenizer=...")
        self.tokenizer = tokenizer
        model.requires_grad_(False)
        lo = cfg.lora
        self.target_modules = resolve_target_modules(model, lo.target_modules)
        self.model = add_lora(model, lo.rank, lo.alpha, lo.dropout, self.target_modules, lo.init, seed=cfg.raft.seed).eval()
        self.pad_id = tokenizer.pad_token_id
        self.eos_id = tokenizer.eos_token_id
        t = cfg.train
        kept = expected_kept_per_round(cfg)
        per_round = t.steps_per_round if t.steps_per_round is not None else -(-kept // (t.batch_size * t.gradient_accumulation_steps)) * t.epochs_per_round
        self.trainer = SFTTrainer(self.model, t, per_round * cfg.raft.rounds, cfg.raft.seed, self.pad_id)
        self.prompts_truncated = 0
        self._truncated_unshared = 0  # this process's truncations the other processes have not counted yet
        self._tokenizer_files: dict[str, bytes] | None = None

    # -------------------------------------------------------------- helpers
    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Prompt token ids as generation sees them (chat template, left-truncated to max_prompt_tokens)."""
        g = self.cfg.generation
        ids, truncated = sampling.encode_prompts(self.tokenizer, texts, g.use_chat_template, g.max_prompt_tokens)
        if truncated:
            self.prompts_truncated += truncated
            self._truncated_unshared += truncated
            log.warning("%d prompts over generation.max_prompt_tokens = %d were left-truncated; drop them beforehand "
                        "(raft_diffusion.llm.data.drop_long_prompts)", truncated, g.max_prompt_tokens)
        return ids

    # -------------------------------------------------------------- protocol
    def generate(self, prompts: Sequence[Prompt], k: int, seeds: Sequence[int], ids: Sequence[str]) -> Samples:
        """K responses per prompt; outputs: N strings; extras: prompt_ids, response_ids, finished."""
        g = self.cfg.generation
        per_sample = [p for p in prompts for _ in range(k)]
        distinct = self.encode([p.text for p in prompts])
        prompt_ids = [distinct[i // k] for i in range(len(per_sample))]
        gen = sampling.generate(
            self.model, self.tokenizer, prompt_ids, seeds, temperature=g.temperature, top_p=g.top_p, top_k=g.top_k,
            min_new_tokens=g.min_new_tokens, max_new_tokens=g.max_new_tokens, stop=g.stop, batch_size=g.batch_size,
            progress=self.progress,
        )
        responses = [logprob.with_eos(r, f, self.eos_id) for r, f in zip(gen.response_ids, gen.finished)]
        return Samples(
            prompts=per_sample, groups=group_ids(len(prompts), k), ids=list(ids), seeds=list(seeds), outputs=gen.responses,
            extras={"prompt_ids": gen.prompt_ids, "response_ids": responses, "finished": gen.finished},
        )

    def finetune(self, samples: Samples, kept: Sequence[int], shard: TrainShard | None = None) -> dict[str, float]:
        """SFT on the kept samples. ``kept``: this process's (all of them on one process); ``shard``
        places them in the global kept list. Every process assembles the whole kept set (token ids in
        the global order, and the prompt-truncation counts) and trains on it (:class:`SFTTrainer`)."""
        shard = shard or TrainShard(total=len(kept), positions=list(range(len(kept))))
        dist = distributed.get()
        flag = FailureFlag(dist)  # a failure here must reach the others before the first exchange
        pairs: list[tuple[list[int], list[int]]] = []
        with flag.capture():
            ex = samples.extras
            pairs = [(list(ex["prompt_ids"][i]), list(ex["response_ids"][i])) for i in kept]
        parts = dist.all_gather_object((list(shard.positions), pairs, self._truncated_unshared, flag.value))
        flag.check(sum(p[3] for p in parts), "preparing the kept samples for training")
        ordered: list[tuple[list[int], list[int]] | None] = [None] * shard.total
        for positions, part, _, _ in parts:
            for pos, pair in zip(positions, part):
                ordered[pos] = pair
        if any(x is None for x in ordered) or sum(len(p[0]) for p in parts) != shard.total:
            raise RunError(f"the processes' kept samples do not cover the {shard.total} kept samples once each; a loop bug")
        self.prompts_truncated += sum(p[2] for p in parts) - self._truncated_unshared
        self._truncated_unshared = 0
        return self.trainer.train([x[0] for x in ordered if x], [x[1] for x in ordered if x], progress=self.progress)

    def log_ratio(self, samples: Samples) -> list[float]:
        """log p_model(y|x) - log p_initial(y|x) per sample (summed over response tokens incl. eos)."""
        ex = samples.extras
        return logprob.log_ratio(self.model, ex["prompt_ids"], ex["response_ids"], self.pad_id, self.cfg.generation.batch_size)

    def save_model(self, out_dir: Path) -> None:
        """Write ``out_dir/adapter/`` (peft adapter + tokenizer) atomically: temp folder, then rename."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        final = out / ADAPTER_DIR
        tmp = Path(tempfile.mkdtemp(dir=out, prefix=f".{ADAPTER_DIR}-"))
        old = out / f".{ADAPTER_DIR}-old-{os.getpid()}"
        try:
            self._write_adapter(tmp)
            if final.exists():
                os.replace(final, old)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)

    def _write_adapter(self, folder: Path) -> None:
        """adapter_model.safetensors + adapter_config.json (what peft's save_pretrained writes, without its
        model card) + the tokenizer files (serialized once, then copied)."""
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import save_file

        weights = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(self.model).items()}
        save_file(weights, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
        config = self.model.peft_config["default"]
        training, config.inference_mode = config.inference_mode, True  # as peft's save_pretrained writes it
        try:
            config.save_pretrained(str(folder))
        finally:
            config.inference_mode = training
        if self._tokenizer_files is None:
            with tempfile.TemporaryDirectory() as tok_dir:
                self.tokenizer.save_pretrained(tok_dir)
                self._tokenizer_files = {p.name: p.read_bytes() for p in Path(tok_dir).iterdir() if p.is_file()}
        for name, data in self._tokenizer_files.items():
            (folder / name).write_bytes(data)

    def state_dict(self) -> dict[str, Any]:
        from peft.utils import get_peft_model_state_dict

        lora = {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(self.model).items()}
        return {"lora": lora, "trainer": self.trainer.state_dict(), "prompts_truncated": self.prompts_truncated}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from peft.utils import set_peft_model_state_dict

        result = set_peft_model_state_dict(self.model, state["lora"])
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise ModelError(f"checkpoint LoRA has {len(unexpected)} keys this model lacks (e.g. {unexpected[0]}); it belongs to another model")
        self.trainer.load_state_dict(state["trainer"])
        self.prompts_truncated = int(state.get("prompts_truncated", 0))

    def write_round_artifacts(self, round_dir: Path, samples: Samples, rewards: Sequence[float], kept: Sequence[int]) -> dict[str, Any]:
        """responses.jsonl (every sample) and kept.jsonl (the kept ones); returns length and Distinct-1/2."""
        finished = samples.extras["finished"]
        rows = [
            {"id": samples.ids[i], "prompt": samples.texts[i], "response": str(samples.outputs[i]), "reward": float(rewards[i]),
             "seed": samples.seeds[i], "finished": bool(finished[i])}
            for i in range(len(samples))
        ]
        _write_jsonl(round_dir / "responses.jsonl", rows)
        if self.cfg.output.save_kept:
            _write_jsonl(round_dir / "kept.jsonl", [rows[i] for i in kept])
        out = self.metrics(samples)
        out["prompts_truncated"] = self.prompts_truncated
        return out

    def metrics(self, samples: Samples) -> dict[str, Any]:
        """Response length (tokens, words), Distinct-1/2 and the finished fraction of ``samples``."""
        ex = samples.extras
        lengths = [len(r) - int(f) for r, f in zip(ex["response_ids"], ex["finished"])]
        return response_metrics(samples.outputs, lengths, ex["finished"])

    def eval_metrics(self, samples: Samples) -> dict[str, Any]:
        """:meth:`metrics` of the eval samples, plus ``perplexity`` of the reference answers when the eval
        prompts' metadata carry one (keys in REFERENCE_KEYS, e.g. HH-RLHF's chosen answer)."""
        out = self.metrics(samples)
        ex = samples.extras
        seen: set[int] = set()
        prompt_ids, refs = [], []
        for i, (g, p) in enumerate(zip(samples.groups, samples.prompts)):
            ref = reference_of(p.metadata)
            if g in seen or ref is None:
                continue
            seen.add(g)
            prompt_ids.append(ex["prompt_ids"][i])
            refs.append(logprob.with_eos(self.tokenizer(ref, add_special_tokens=False).input_ids, True, self.eos_id))
        if refs:
            out["perplexity"] = logprob.perplexity(self.model, prompt_ids, refs, self.pad_id, self.cfg.generation.batch_size)
            out["perplexity_n"] = len(refs)
        return out


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    from raft_diffusion.core.atomic import atomic_path

    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
