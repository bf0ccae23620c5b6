"""The RAFT round loop: prompts -> sampling -> scoring -> ranking -> fine-tuning -> records.

Backend-agnostic: it drives any :class:`~raft_diffusion.core.backend.Backend`. After every round
it writes the round's samples table, a checkpoint (atomic), ``metrics.jsonl`` and the trained
weights, so a run killed at any moment resumes from its last completed round.
"""

from __future__ import annotations

import logging
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from prompts.types import Prompt
from raft_diffusion.core import checkpoint, faults, rng
from raft_diffusion.core.backend import Backend, Samples
from raft_diffusion.core.ranking import Selection, group_ids, select
from raft_diffusion.core.records import History, reward_summary, write_jsonl
from raft_diffusion.errors import RaftError, RunError

log = logging.getLogger(__name__)

#: A filter hook: (samples, rewards) -> N booleans; False discards the sample before ranking.
SampleFilter = Callable[[Samples, Sequence[float]], Sequence[bool]]
#: Called after each completed round with (round_index, history).
RoundCallback = Callable[[int, History], None]


@dataclass
class LoopSettings:
    """The loop's own knobs (the backend owns model, sampling and training settings)."""

    rounds: int = 3
    k: int = 4
    prompts_per_round: int = 4
    seed: int = 0
    strategy: str = "per_prompt"
    top_n: int = 1
    top_k: int | None = None
    nonfinite: str = "error"
    eval_every: int = 1
    eval_samples_per_prompt: int = 1
    keep_checkpoints: int | None = 2
    kl_beta: float = 0.0


def _peak_memory_mb() -> dict[str, float]:
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024.0 if sys.platform != "darwin" else 1024.0**2)}
    if torch.cuda.is_available():
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    return out


def _stage(round_index: int, what: str, fn: Callable[[], Any]) -> Any:
    """Run one stage; any failure becomes an error naming the round and the stage."""
    try:
        return fn()
    except RaftError as exc:
        exc.args = (f"round {round_index}, {what}: {exc}",)
        raise
    except torch.OutOfMemoryError as exc:
        raise RunError(
            f"round {round_index}, {what}: out of memory ({str(exc).splitlines()[0]}); lower the batch size "
            "or enable memory options; completed rounds are on disk (resume with --resume latest)"
        ) from exc
    except OSError as exc:
        raise RunError(f"round {round_index}, {what}: {exc}; completed rounds are on disk (resume with --resume latest)") from exc
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise RunError(f"round {round_index}, {what} failed: {type(exc).__name__}: {exc}") from exc


class RaftLoop:
    """Runs RAFT rounds over a backend, a scorer and a prompt stream, writing into ``run_dir``."""

    def __init__(
        self,
        backend: Backend,
        scorer: Callable[..., Any],
        stream: Any,
        settings: LoopSettings,
        run_dir: str | Path,
        *,
        scorer_name: str = "reward",
        eval_prompts: Sequence[Prompt] | None = None,
        eval_scorers: dict[str, Callable[..., Any]] | None = None,
        sample_filter: SampleFilter | None = None,
        on_round: RoundCallback | None = None,
    ) -> None:
        self.backend = backend
        self.scorer = scorer
        self.scorer_name = scorer_name
        self.stream = stream
        self.settings = settings
        self.run_dir = Path(run_dir)
        self.eval_prompts = list(eval_prompts or [])
        self.eval_scorers = dict(eval_scorers or {})
        self.sample_filter = sample_filter
        self.on_round = on_round
        self.history = History(run_dir=self.run_dir)
        self.next_round = 1

    # ----------------------------------------------------------------- scoring
    def score(self, samples: Samples, scorer: Callable[..., Any] | None = None, name: str | None = None) -> list[float]:
        """Rewards of ``samples`` as N floats, validated (shape, dtype; finiteness is ranking's job)."""
        from scorers.base import validate_rewards

        scorer = scorer or self.scorer
        name = name or self.scorer_name
        rewards = scorer(samples.outputs, samples.texts, samples.metadata)
        return validate_rewards(rewards, len(samples), name, allow_nonfinite=True).tolist()

    def selection_rewards(self, samples: Samples, rewards: Sequence[float]) -> list[float]:
        """The rewards ranking sees: ``r - beta * log(p_model / p_initial)`` when ``kl_beta > 0``.

        The backend provides ``log_ratio(samples) -> N floats``; it changes which sample is kept,
        not the fine-tuning loss (the paper's KL-regularised selection).
        """
        beta = self.settings.kl_beta
        if not beta:
            return list(rewards)
        log_ratio = getattr(self.backend, "log_ratio", None)
        if log_ratio is None:
            raise RunError(f"ranking.kl_beta = {beta} needs a backend with log_ratio(); the {self.backend.name} backend has none")
        ratios = list(log_ratio(samples))
        return [r - beta * lr for r, lr in zip(rewards, ratios)]

    def rank(self, samples: Samples, rewards: Sequence[float]) -> Selection:
        s = self.settings
        mask = self.sample_filter(samples, rewards) if self.sample_filter else None
        return select(
            self.selection_rewards(samples, rewards), samples.groups, s.strategy, k=s.k, top_n=s.top_n, top_k=s.top_k,
            keep_mask=mask, nonfinite=s.nonfinite, labels=samples.texts,
        )

    # ----------------------------------------------------------------- state
    def _loop_state(self) -> dict[str, Any]:
        return {
            "next_round": self.next_round,
            "stream": self.stream.state_dict(),
            "history": self.history.to_dict(),
            "rng": rng.capture(),
            "settings": asdict(self.settings),
        }

    def resume(self, resume: str | bool) -> bool:
        """Restore the newest complete checkpoint (or the one named). Returns False when none."""
        checkpoint.clean_partial(self.run_dir / "checkpoints")
        path = checkpoint.resolve_resume(self.run_dir, resume)
        if path is None:
            return False
        state, loop_state = checkpoint.load_checkpoint(path)
        self.backend.load_state_dict(state)
        self.stream.load_state_dict(loop_state["stream"])
        self.history = History.from_dict(loop_state["history"], self.run_dir)
        rng.restore(loop_state["rng"])
        self.next_round = int(loop_state["next_round"])
        self.history.write(self.run_dir)
        log.info("resumed from %s: continuing at round %d", path, self.next_round)
        return True

    # ----------------------------------------------------------------- eval
    def evaluate(self, round_index: int) -> dict[str, Any] | None:
        """Score the eval prompts with fixed seeds (paired across rounds); None when not configured."""
        if not self.eval_prompts:
            return None
        k = self.settings.eval_samples_per_prompt
        n = len(self.eval_prompts) * k
        seeds = [rng.sample_seed(self.settings.seed + 7919, 0, i) for i in range(n)]
        ids = [f"eval-p{i // k}-k{i % k}" for i in range(n)]
        t0 = time.perf_counter()
        samples = self.backend.generate(self.eval_prompts, k, seeds, ids)
        row: dict[str, Any] = {"round": round_index}
        for name, scorer in {self.scorer_name: self.scorer, **self.eval_scorers}.items():
            values = self.score(samples, scorer, name)
            row[name] = statistics.fmean(values)
            row[f"{name}_per_prompt"] = {
                p.text: statistics.fmean(values[j * k:(j + 1) * k]) for j, p in enumerate(self.eval_prompts)
            }
        row["seconds"] = time.perf_counter() - t0
        if hasattr(self.backend, "eval_metrics"):
            row.update(self.backend.eval_metrics(samples))
        return row

    # ----------------------------------------------------------------- rounds
    def run_round(self, r: int) -> dict[str, Any]:
        """One complete round; returns its metrics row."""
        s = self.settings
        faults.current_round = r
        t_round = time.perf_counter()
        batch = _stage(r, "prompts", lambda: self.stream.next_batch())
        n = len(batch) * s.k
        seeds = [rng.sample_seed(s.seed, r, i) for i in range(n)]
        ids = [f"r{r}-p{i // s.k}-k{i % s.k}" for i in range(n)]

        t0 = time.perf_counter()
        samples = _stage(r, "generation", lambda: self.backend.generate(batch, s.k, seeds, ids))
        assert len(samples) == n and samples.groups == group_ids(len(batch), s.k), "backend broke the layout"
        t_gen = time.perf_counter() - t0

        t0 = time.perf_counter()
        rewards = _stage(r, f"scoring with {self.scorer_name!r}", lambda: self.score(samples))
        t_score = time.perf_counter() - t0

        selection = _stage(r, "ranking", lambda: self.rank(samples, rewards))
        if not selection.kept:
            raise RunError(f"round {r}: no sample survived the filter/ranking; loosen the filter")

        t0 = time.perf_counter()
        train_stats = _stage(r, "fine-tuning", lambda: self.backend.finetune(samples, selection.kept))
        t_train = time.perf_counter() - t0

        round_dir = self.run_dir / "rounds" / f"round-{r:04d}"
        round_dir.mkdir(parents=True, exist_ok=True)
        kept_set = set(selection.kept)
        excluded = set(selection.excluded)
        write_jsonl(round_dir / "samples.jsonl", [
            {"id": samples.ids[i], "prompt": samples.texts[i], "group": samples.groups[i], "seed": samples.seeds[i],
             "reward": rewards[i], "kept": i in kept_set, "excluded": i in excluded}
            for i in range(n)
        ])
        extra = _stage(r, "writing artifacts", lambda: self.backend.write_round_artifacts(round_dir, samples, rewards, selection.kept)) or {}

        row: dict[str, Any] = {"round": r, "scorer": self.scorer_name}
        row.update(reward_summary(rewards, samples.groups, samples.texts, selection))
        row["kept_ids"] = [samples.ids[i] for i in selection.kept]
        row.update({f"train_{k}": v for k, v in train_stats.items()})
        row.update(extra)
        row.update({"time_generate_s": t_gen, "time_score_s": t_score, "time_train_s": t_train})
        row.update(_peak_memory_mb())
        row["time_round_s"] = time.perf_counter() - t_round
        return row

    def run(self) -> History:
        """Run rounds ``next_round .. settings.rounds``; returns the History."""
        s = self.settings
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.next_round == 1 and not self.history.evals:
            baseline = _stage(0, "baseline evaluation", lambda: self.evaluate(0))
            if baseline is not None:
                self.history.evals.append(baseline)
                self.history.write(self.run_dir)
        for r in range(self.next_round, s.rounds + 1):
            row = self.run_round(r)
            if s.eval_every and (r % s.eval_every == 0 or r == s.rounds):
                ev = _stage(r, "evaluation", lambda: self.evaluate(r))
                if ev is not None:
                    self.history.evals.append(ev)
            self.history.rounds.append(row)
            self.next_round = r + 1
            _stage(r, "checkpoint", lambda: checkpoint.save_checkpoint(
                self.run_dir / "checkpoints", r, self.backend.state_dict(), self._loop_state(), s.keep_checkpoints))
            self.history.write(self.run_dir)
            _stage(r, "saving weights", lambda: self.backend.save_model(self.run_dir))
            log.info(
                "round %d/%d: reward %.4f (unbiased) | kept %.4f | mean %.4f | %.1fs",
                r, s.rounds, row["reward_unbiased"], row["reward_kept"], row["reward_mean"], row["time_round_s"],
            )
            if self.on_round:
                self.on_round(r, self.history)
        return self.history
