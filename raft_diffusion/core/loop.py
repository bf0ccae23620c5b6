"""The RAFT round loop: prompts -> sampling -> scoring -> ranking -> fine-tuning -> records.

Backend-agnostic: it drives any :class:`~raft_diffusion.core.backend.Backend`. After every round
it writes the round's samples table, a checkpoint (atomic), ``metrics.jsonl`` and the trained
weights, so a run killed at any moment resumes from its last completed round.

Multi-process runs (``accelerate launch``, see :mod:`raft_diffusion.core.distributed`): every
process draws the same prompt batch, generates and scores the samples of its contiguous block
of prompts with the global sample seeds and ids, then rewards/ids are gathered so ranking runs on
the full batch everywhere; the backend's ``finetune`` gets each process's kept samples and their
place in the global kept list (:class:`TrainShard`); the main process alone writes the run folder,
from every process's outputs and the ``Samples.extras`` keys the backend lists in
``gathered_extras`` (gathered to it in the global sample order). One code path serves 1..N
processes: with one, every collective is the identity.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from prompts.types import Prompt
from raft_diffusion.core import checkpoint, distributed, early_stop, faults, rng
from raft_diffusion.core.backend import Backend, Samples
from raft_diffusion.core.distributed import Distributed, TrainShard
from raft_diffusion.core.ranking import Selection, group_ids, select
from raft_diffusion.core.records import History, eval_readings, part_summary, parts_text, reward_summary
from raft_diffusion.core.stages import (
    assemble_samples,
    debug_dump,
    for_main,
    local_samples,
    peak_memory_mb,
    run_stage,
    write_samples_table,
)
from raft_diffusion.errors import ConfigError, RunError
from scorers.common import component_scores

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
    early_stop: str | None = None
    early_stop_tolerance: float = 0.05
    early_stop_patience: int | None = None
    early_stop_best: str = "reward"


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
        dist: Distributed | None = None,
    ) -> None:
        self.dist = dist if dist is not None else distributed.get()
        if self.dist.enabled:
            w = self.dist.world_size
            if not getattr(backend, "supports_distributed", False):
                raise RunError(
                    f"the {getattr(backend, 'name', type(backend).__name__)} backend does not support multi-process runs "
                    f"(WORLD_SIZE={w}); run it with one process (plain python, or accelerate launch --num_processes 1)"
                )
            if settings.prompts_per_round < w:
                raise ConfigError(
                    f"raft.prompts_per_round = {settings.prompts_per_round} is smaller than the {w} processes; "
                    f"use at least {w} prompts per round or fewer processes (a prompt's K samples stay on one process)"
                )
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

    def ranking_inputs(self, samples: Samples, rewards: Sequence[float]) -> tuple[list[float], list[bool] | None]:
        """(the rewards ranking sees, the filter's keep flags or None) of ``samples``."""
        mask = self.sample_filter(samples, rewards) if self.sample_filter else None
        return self.selection_rewards(samples, rewards), (None if mask is None else [bool(x) for x in mask])

    def select(self, sel_rewards: Sequence[float], mask: Sequence[bool] | None, groups: Sequence[int],
               labels: Sequence[str]) -> Selection:
        """The kept samples under the configured strategy (:func:`~raft_diffusion.core.ranking.select`)."""
        s = self.settings
        return select(sel_rewards, groups, s.strategy, k=s.k, top_n=s.top_n, top_k=s.top_k,
                      keep_mask=mask, nonfinite=s.nonfinite, labels=labels)

    def rank(self, samples: Samples, rewards: Sequence[float]) -> Selection:
        """Filter and rank ``samples`` of one process (the round itself ranks the gathered batch)."""
        return self.select(*self.ranking_inputs(samples, rewards), samples.groups, samples.texts)

    # ----------------------------------------------------------------- state
    def _loop_state(self) -> dict[str, Any]:
        return {"next_round": self.next_round, "stream": self.stream.state_dict(), "history": self.history.to_dict(),
                "rng": rng.capture(), "settings": asdict(self.settings)}

    def resume(self, resume: str | bool) -> bool:
        """Restore the newest complete checkpoint (or the one named). Returns False when none."""
        self._main_only("cleaning partial checkpoints", lambda: checkpoint.clean_partial(self.run_dir / "checkpoints"))
        found = checkpoint.load_for_resume(self.run_dir, resume)
        if found is None:
            return False
        path, state, loop_state = found
        self.backend.load_state_dict(state)
        self.stream.load_state_dict(loop_state["stream"])
        self.history = History.from_dict(loop_state["history"], self.run_dir)
        rng.restore(loop_state["rng"])
        self.next_round = int(loop_state["next_round"])
        self._main_only("writing metrics", lambda: self.history.write(self.run_dir))
        log.info("resumed from %s: continuing at round %d", path, self.next_round)
        return True

    def _row(self, r: int, samples: Samples, rewards: Sequence[float], selection: Selection,
             train_stats: dict[str, Any], extra: dict[str, Any], times: tuple[float, float, float], t_round: float) -> dict[str, Any]:
        """The round's metrics row (``times`` = generate, score, train seconds)."""
        row: dict[str, Any] = {"round": r, "scorer": self.scorer_name}
        row.update(reward_summary(rewards, samples.groups, samples.texts, selection))
        row["kept_ids"] = [samples.ids[i] for i in selection.kept]
        row.update({f"train_{k}": v for k, v in train_stats.items()})
        row.update(extra)
        row.update(dict(zip(("time_generate_s", "time_score_s", "time_train_s"), times)))
        row.update(peak_memory_mb())
        row["time_round_s"] = time.perf_counter() - t_round
        return row

    def run(self) -> History:
        """Run rounds ``next_round .. settings.rounds``; returns the History."""
        s = self.settings
        faults.current_round = self.next_round - 1  # the last completed round (0: before training)
        self._main_only("creating the run folder", lambda: self.run_dir.mkdir(parents=True, exist_ok=True))
        if self.next_round == 1 and not self.history.evals:
            baseline = self.evaluate(0, "baseline evaluation")
            if baseline is not None:
                self.history.evals.append(baseline)
                self._synced(0, "writing metrics", lambda: self.history.write(self.run_dir), main_only=True)
        stopped = self.history.rounds[-1].get("stop_reason") if self.history.rounds else None
        if stopped:
            log.info("the run stopped early at round %d (%s); nothing left to run", self.history.rounds[-1]["round"], stopped)
        for r in range(self.next_round, s.rounds + 1):
            if stopped:
                break
            row = self.run_round(r)
            ev = self.evaluate(r) if s.eval_every and (r % s.eval_every == 0 or r == s.rounds) else None
            if ev is not None:
                self.history.evals.append(ev)
            self.history.rounds.append(row)
            falling = early_stop.diverging(self.history.evals, self.scorer_name, list(self.eval_scorers)) if ev else []
            if falling:
                row["diverging"] = falling
            decision = early_stop.decide(self.history.evals, self.history.rounds, s.early_stop, s.early_stop_tolerance,
                                         s.early_stop_patience, reward=self.scorer_name, best_by=s.early_stop_best)
            if s.early_stop:
                row["best_round"] = decision.best_round
            if decision.stop_reason:
                row["stop_reason"] = stopped = decision.stop_reason
            self.next_round = r + 1
            # weights, then the checkpoint that commits the round: a failure before it reruns the round on resume
            self._synced(r, "saving weights", lambda: self.backend.save_model(self.run_dir), main_only=True)
            if s.early_stop and decision.best_round == r:
                self._synced(r, "saving the best weights", lambda: self.backend.save_model(self.run_dir / early_stop.BEST_DIR),
                             main_only=True)
            self._synced(r, "checkpoint", lambda: checkpoint.save_checkpoint(
                self.run_dir / "checkpoints", r, self.backend.state_dict(), self._loop_state(), s.keep_checkpoints,
                protect=decision.best_round), main_only=True)
            self._synced(r, "writing metrics", lambda: self.history.write(self.run_dir), main_only=True)
            if self.dist.is_main:
                log.info(
                    "round %d/%d: reward %.4f (unbiased) | kept %.4f | mean %.4f%s | %.1fs", r, s.rounds,
                    row["reward_unbiased"], row["reward_kept"], row["reward_mean"], parts_text(row), row["time_round_s"],
                )
                if falling:
                    log.warning("round %d: the eval reward rose since round 0 while held-out %s fell: the reward may be "
                                "gamed (see before_after.png; raft.early_stop guards against it)", r, ", ".join(falling))
                if stopped:
                    log.info("stopping early after round %d: %s", r, stopped)
            if self.on_round:
                self._synced(r, "the on_round callback", lambda: self.on_round(r, self.history), main_only=True)
        self._synced(self.next_round - 1, "writing summary.json", lambda: early_stop.finish(
            self.run_dir, self.history, s.early_stop, self.scorer_name, list(self.eval_scorers)), main_only=True)
        best = checkpoint.best_to_restore(self.run_dir / "checkpoints", self.history.rounds) if s.early_stop else None
        if best is not None:  # the model in memory becomes the best round's, as the saved weights did
            self._synced(self.next_round - 1, "loading the best round's weights",
                         lambda: self.backend.load_state_dict(checkpoint.load_checkpoint(best)[0]))
        return self.history

    # ----------------------------------------------------------------- collectives
    def _synced(self, r: int, what: str, fn: Callable[[], Any], main_only: bool = False) -> Any:
        """``_stage`` on one process; on several, a failure anywhere stops every process (see Distributed.call)."""
        if not self.dist.enabled:
            return run_stage(r, what, fn)
        return self.dist.call(f"round {r}, {what}", lambda: run_stage(r, what, fn), main_only=main_only)

    def _main_only(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run a shared-file write on the main process only; the others wait for its outcome."""
        if not self.dist.enabled:
            return fn()
        return self.dist.call(what, fn, main_only=True)

    def _gather(self, r: int, what: str, obj: Any, to_main: bool = False) -> Any:
        try:
            return self.dist.gather_object(obj) if to_main else self.dist.all_gather_object(obj)
        except Exception as exc:
            raise RunError(f"round {r}, {what}: process {self.dist.rank} lost contact with the other processes ({exc})") from exc

    def _local_samples(self, prompts: Sequence[Prompt], k: int, seed_of: Callable[[int], int], id_of: Callable[[int], str]) -> tuple[Samples | None, int]:
        return local_samples(self.backend, self.dist.rank, self.dist.world_size, prompts, k, seed_of, id_of)

    def _gathered_keys(self) -> tuple[str, ...]:
        """The ``Samples.extras`` keys the backend needs on the main process (``Backend.gathered_extras``)."""
        return tuple(getattr(self.backend, "gathered_extras", ()) or ())

    def _for_main(self, samples: Samples | None) -> tuple[Any, dict[str, Any]] | None:
        """What this process sends the main process (see :func:`~raft_diffusion.core.stages.for_main`)."""
        return for_main(samples, self._gathered_keys())

    def _assemble(self, parts: Sequence[Any], n: int) -> tuple[Any, dict[str, Any]]:
        """(outputs, gathered extras) of all ``n`` samples in the global order (see :func:`assemble_samples`)."""
        return assemble_samples(parts, n, self._gathered_keys(), self.backend.name)

    # ----------------------------------------------------------------- rounds
    def run_round(self, r: int) -> dict[str, Any]:
        """One complete round on 1..N processes (prompts sharded by contiguous blocks; see the module
        doc); returns its metrics row. On one process every collective is the identity."""
        s, d = self.settings, self.dist
        faults.current_round = r
        t_round = time.perf_counter()
        batch = self._synced(r, "prompts", lambda: self.stream.next_batch())
        b, n = len(batch), len(batch) * s.k
        seeds_all = [rng.sample_seed(s.seed, r, i) for i in range(n)]
        ids_all = [f"r{r}-p{i // s.k}-k{i % s.k}" for i in range(n)]
        if b < d.world_size:
            raise ConfigError(f"round {r}: {b} prompts for {d.world_size} processes; use at least one prompt per process")

        t0 = time.perf_counter()
        samples, offset = self._synced(r, "generation", lambda: local_samples(
            self.backend, d.rank, d.world_size, batch, s.k, seeds_all.__getitem__, ids_all.__getitem__, candidates=True))
        assert samples is not None
        t_gen = time.perf_counter() - t0

        t0 = time.perf_counter()
        rewards_local, reward_parts_local = self._synced(
            r, f"scoring with {self.scorer_name!r}", lambda: (self.score(samples), component_scores(self.scorer)))
        t_score = time.perf_counter() - t0

        sel_local, mask_local = self._synced(r, "ranking", lambda: self.ranking_inputs(samples, rewards_local))
        parts = self._gather(r, "gathering rewards",
                             (rewards_local, sel_local, mask_local, list(samples.ids), reward_parts_local))
        rewards = [x for p in parts for x in p[0]]
        reward_parts = {label: [x for p in parts for x in p[4][label]] for label in parts[0][4]}
        sel_rewards = [x for p in parts for x in p[1]]
        mask = None if all(p[2] is None for p in parts) else [x for p in parts for x in p[2]]
        gathered_ids = [x for p in parts for x in p[3]]
        if gathered_ids != ids_all:
            raise RunError(f"round {r}: the processes' samples do not line up with the global batch (ids differ); a backend bug")
        per_sample = [p for p in batch for _ in range(s.k)]
        view = Samples(prompts=per_sample, groups=group_ids(b, s.k), ids=ids_all, seeds=seeds_all, outputs=None)
        selection = self._synced(r, "ranking", lambda: self.select(sel_rewards, mask, view.groups, view.texts))
        if not selection.kept:
            raise RunError(f"round {r}: no sample survived the filter/ranking; loosen the filter")

        mine = range(offset, offset + len(samples))
        kept_local = [g - offset for g in selection.kept if g in mine]
        shard = TrainShard(total=len(selection.kept), positions=[p for p, g in enumerate(selection.kept) if g in mine])
        t0 = time.perf_counter()
        # a backend without multi-process support (the loop refuses it under several) takes no shard
        extra_args = {"shard": shard} if getattr(self.backend, "supports_distributed", False) else {}
        train_stats = self._synced(r, "fine-tuning", lambda: self.backend.finetune(samples, kept_local, **extra_args))
        t_train = time.perf_counter() - t0
        debug_dump(self.backend, self.dist.rank, r)

        # grids, kept images, per-sample files: the main process writes them from every process's
        # outputs and the extras the backend lists in gathered_extras
        collected = self._gather(r, "collecting outputs", self._for_main(samples), to_main=True)
        round_dir = self.run_dir / "rounds" / f"round-{r:04d}"

        def write_round() -> dict[str, Any]:
            view.outputs, view.extras = self._assemble(collected, n)
            round_dir.mkdir(parents=True, exist_ok=True)
            write_samples_table(round_dir, view, rewards, selection)
            return self.backend.write_round_artifacts(round_dir, view, rewards, selection.kept) or {}

        extra = self._synced(r, "writing artifacts", write_round, main_only=True)
        extra = self._gather(r, "sharing artifact metrics", extra)[0] or {}

        extra = {**extra, "reward_parts": part_summary(reward_parts, selection.kept)} if reward_parts else extra
        row = self._row(r, view, rewards, selection, train_stats, extra, (t_gen, t_score, t_train), t_round)
        if d.enabled:
            row["n_processes"] = d.world_size
        return row

    # ----------------------------------------------------------------- eval
    def evaluate(self, round_index: int, what: str = "evaluation") -> dict[str, Any] | None:
        """Score the eval prompts with fixed seeds (paired across rounds; sharded over the processes,
        the same row everywhere; a multi reward's raw parts as ``"<name>/<part>"``); None when not configured."""
        if not self.eval_prompts:
            return None
        r = round_index
        k = self.settings.eval_samples_per_prompt
        scorers = {self.scorer_name: self.scorer, **self.eval_scorers}
        t0 = time.perf_counter()

        def local() -> tuple[Samples | None, dict[str, list[float]]]:
            samples, _ = self._local_samples(
                self.eval_prompts, k, lambda i: rng.sample_seed(self.settings.seed + 7919, 0, i), lambda i: f"eval-p{i // k}-k{i % k}")
            values: dict[str, list[float]] = {}
            for name, scorer in scorers.items() if samples is not None else ():  # a process may have no prompt
                values[name] = self.score(samples, scorer, name)
                values.update({f"{name}/{part}": v for part, v in component_scores(scorer).items()})  # a multi's parts
            return samples, values

        samples, values_local = self._synced(r, what, local)
        parts = self._gather(r, what, values_local)
        readings, sample_scores = eval_readings(parts, list(scorers), [p.text for p in self.eval_prompts], k)
        row: dict[str, Any] = {"round": round_index, **readings}
        row["seconds"] = time.perf_counter() - t0
        if hasattr(self.backend, "eval_metrics") or hasattr(self.backend, "write_eval_artifacts"):
            collected = self._gather(r, what, self._for_main(samples), to_main=True)

            def metrics() -> dict[str, Any]:
                per_sample = [p for p in self.eval_prompts for _ in range(k)]
                n = len(per_sample)
                outputs, extras = self._assemble(collected, n)
                view = Samples(prompts=per_sample, groups=group_ids(len(self.eval_prompts), k),
                               ids=[f"eval-p{i // k}-k{i % k}" for i in range(n)], seeds=[0] * n,
                               outputs=outputs, extras=extras)
                write = getattr(self.backend, "write_eval_artifacts", None)
                if write is not None:  # fixed-seed eval images, the before/after grid
                    write(self.run_dir, r, view, sample_scores)
                return self.backend.eval_metrics(view) if hasattr(self.backend, "eval_metrics") else {}

            extra = self._synced(r, f"{what} metrics", metrics, main_only=True)
            row.update(self._gather(r, what, extra)[0] or {})
        return row
