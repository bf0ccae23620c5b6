"""The Python API: ``train(RaftConfig(...)) -> History`` and ``generate(...)``.

The same functions back the CLI and the notebooks.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Callable, Sequence

from raft_diffusion import provenance, run_folder
from raft_diffusion.config import RaftConfig
from raft_diffusion.core.backend import Backend, Samples
from raft_diffusion.core.loop import LoopSettings, RaftLoop, RoundCallback, SampleFilter
from raft_diffusion.core.records import History
from raft_diffusion.errors import ConfigError
from raft_diffusion.generate import generate  # noqa: F401  (re-exported: the Python API's generate)

log = logging.getLogger(__name__)
RUN_MARKERS = run_folder.MARKERS


# ------------------------------------------------------------------ pieces, each usable alone
def build_scorer(cfg: RaftConfig, scorer: Callable[..., Any] | None = None) -> tuple[Callable[..., Any], str]:
    """The reward of a run: the given callable, or ``cfg.reward.scorer`` from the registry."""
    import scorers

    if scorer is not None:
        from scorers.custom import CallableScorer

        name = getattr(scorer, "name", None) or getattr(scorer, "__name__", "custom")
        return (scorer if hasattr(scorer, "name") else CallableScorer(scorer, name=name)), name
    return scorers.build(cfg.reward.scorer, **cfg.reward.kwargs), cfg.reward.scorer


def build_eval_scorers(cfg: RaftConfig) -> dict[str, Callable[..., Any]]:
    import scorers

    return {name: scorers.build(name, **(kw or {})) for name, kw in cfg.reward.eval_scorers.items()}


def build_filter(cfg: RaftConfig, sample_filter: SampleFilter | None = None) -> SampleFilter | None:
    """Combine the user's filter (callable or 'module:function') with the text pattern/length filter."""
    filters: list[SampleFilter] = []
    if sample_filter is not None:
        filters.append(sample_filter)
    r = cfg.ranking
    if r.filter:
        from scorers.custom import import_object

        filters.append(import_object(r.filter))
    if r.filter_pattern or r.min_response_chars:
        try:
            pattern = re.compile(r.filter_pattern) if r.filter_pattern else None
        except re.error as exc:
            raise ConfigError(f"ranking.filter_pattern {r.filter_pattern!r} is not a valid regex ({exc})") from None

        def text_filter(samples: Samples, rewards: Sequence[float]) -> list[bool]:
            outs = samples.outputs
            if not isinstance(outs, list):
                raise ConfigError("ranking.filter_pattern / min_response_chars apply to text outputs (backend llm) only")
            return [len(o) >= r.min_response_chars and not (pattern and pattern.search(o)) for o in outs]

        filters.append(text_filter)
    if not filters:
        return None
    if len(filters) == 1:
        return filters[0]
    return lambda s, rw: [all(flags) for flags in zip(*(f(s, rw) for f in filters))]


def build_prompts(cfg: RaftConfig) -> tuple[Any, list[Any]]:
    """(the training PromptStream, the eval prompts)."""
    import prompts

    p = cfg.prompts
    train_set = prompts.load(p.train, template=p.template)
    stream = prompts.PromptStream(train_set, cfg.raft.prompts_per_round, seed=cfg.raft.seed, shuffle=p.shuffle)
    eval_set: list[Any] = []
    if p.eval:
        eval_set = prompts.load(p.eval, template=p.eval_template or p.template, limit=p.eval_limit)
    return stream, eval_set


def build_backend(cfg: RaftConfig, progress: bool = True) -> Backend:
    if cfg.backend == "diffusion":
        from raft_diffusion.diffusion.backend import DiffusionBackend

        return DiffusionBackend(cfg, progress=progress)
    if cfg.backend == "llm":
        from raft_diffusion.llm.backend import LLMBackend

        return LLMBackend(cfg, progress=progress)
    raise ConfigError(f"backend must be 'diffusion' or 'llm', got {cfg.backend!r}")


def loop_settings(cfg: RaftConfig) -> LoopSettings:
    r, k = cfg.raft, cfg.ranking
    return LoopSettings(
        rounds=r.rounds, k=r.k, prompts_per_round=r.prompts_per_round, seed=r.seed, strategy=k.strategy,
        top_n=k.top_n, top_k=k.top_k, nonfinite=k.nonfinite, eval_every=r.eval_every,
        eval_samples_per_prompt=r.eval_samples_per_prompt, keep_checkpoints=cfg.output.keep_checkpoints,
        kl_beta=k.kl_beta, early_stop=r.early_stop, early_stop_tolerance=r.early_stop_tolerance,
        early_stop_patience=r.early_stop_patience, early_stop_best=r.early_stop_best,
    )


def prepare_run_dir(cfg: RaftConfig) -> Path:
    """Create or check the run folder. A folder holding another run is refused unless resuming or overwriting;
    an overwritten run is removed later, once the new run is built (:func:`build_loop`)."""
    run_dir = Path(cfg.output.dir).expanduser()
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"output.dir {str(run_dir)!r} is a file; choose a folder")
    holds_run = run_folder.is_run_folder(run_dir)
    if run_dir.is_dir() and not holds_run and any(run_dir.iterdir()):
        if cfg.output.overwrite:
            raise ConfigError(f"output.dir {str(run_dir)!r} is not empty and holds no run, and --overwrite replaces only a "
                              "raft-diffusion run; choose an empty or new folder")
        raise ConfigError(f"output.dir {str(run_dir)!r} is not empty and holds no run; choose an empty or new folder")
    if holds_run and not cfg.output.resume and not cfg.output.overwrite:
        raise ConfigError(
            f"output.dir {str(run_dir)!r} already holds a run; pass --resume latest to continue it, "
            "--overwrite to replace it, or choose another --output.dir"
        )
    if holds_run and cfg.output.resume:
        _check_resumable(cfg, run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"output.dir {str(run_dir)!r} is not writable ({exc.strerror}); choose another folder") from None
    return run_dir


def _check_resumable(cfg: RaftConfig, run_dir: Path) -> None:
    """The config that resumes a run keeps its LoRA shape, and changes nothing its completed rounds mean
    unless ``output.allow_config_change`` (see :mod:`raft_diffusion.resume_check`)."""
    from raft_diffusion import resume_check

    try:
        done = [int(r["round"]) for r in History.load(run_dir).rounds]
    except (OSError, ValueError, KeyError, TypeError):
        done = []
    resume_check.check(cfg, run_dir, max(done, default=0))


def record_config(cfg: RaftConfig, run_dir: Path, next_round: int) -> None:
    """``config.yaml`` for a new run; on a resume that changed settings, the change (``config-changes.jsonl``,
    ``config.resume-N.yaml``): the run's first ``config.yaml`` is never overwritten."""
    from raft_diffusion import resume_check
    from raft_diffusion.config import read_yaml
    from raft_diffusion.core.atomic import atomic_path

    saved = resume_check.latest_config(run_dir)
    if cfg.output.resume and saved.is_file():
        resume_check.record(cfg, run_dir, resume_check.changes(read_yaml(saved), cfg.to_dict()), next_round)
        return
    with atomic_path(run_dir / "config.yaml") as tmp:
        cfg.to_yaml(tmp)


# ------------------------------------------------------------------ the whole job
def build_loop(
    cfg: RaftConfig | None = None,
    *,
    scorer: Callable[..., Any] | None = None,
    sample_filter: SampleFilter | None = None,
    on_round: RoundCallback | None = None,
    progress: bool = True,
) -> RaftLoop:
    """Everything :func:`train` runs, assembled but not started (``loop.backend`` is the model)."""
    from raft_diffusion.core import distributed
    from raft_diffusion.run_outputs import RunOutputs

    cfg = checked(cfg or RaftConfig())
    # under `accelerate launch` the main process alone prepares and writes the run folder; a
    # failure anywhere stops every process (Distributed.call); one process: plain calls
    dist = distributed.get()
    if dist.enabled and not dist.is_main:
        logging.getLogger("raft_diffusion").setLevel(logging.WARNING)
        progress = False
    prepared = dist.call("preparing the run folder", lambda: prepare_run_dir(cfg), main_only=True)
    run_dir = prepared if prepared is not None else Path(cfg.output.dir).expanduser()

    def pieces() -> tuple[Any, ...]:
        provenance.reset()
        reward_fn, scorer_name = build_scorer(cfg, scorer)
        eval_scorers = build_eval_scorers(cfg)
        stream, eval_prompts = build_prompts(cfg)
        filt = build_filter(cfg, sample_filter)
        backend = build_backend(cfg, progress=progress)
        prepare = getattr(backend, "prepare_scorer", None)  # e.g. model.offload parks the scorers on the CPU
        if prepare is not None:
            reward_fn = prepare(reward_fn)
            eval_scorers = {name: prepare(s) for name, s in eval_scorers.items()}
        return reward_fn, scorer_name, eval_scorers, stream, eval_prompts, filt, backend

    reward_fn, scorer_name, eval_scorers, stream, eval_prompts, filt, backend = dist.call("building the run", pieces)
    if cfg.output.overwrite:  # only now that the new run is built: a config that fails leaves the old run whole
        dist.call("removing the previous run (--overwrite)",
                  lambda: run_folder.clear_run(run_dir) if run_folder.is_run_folder(run_dir) else [], main_only=True)

    # the reward curve, report.html, trackers (output.report_to), model card and hub push; a setup
    # failure (a tracker not installed, no hub login) stops every process before training
    family = getattr(getattr(backend, "family", None), "name", None)
    outputs = dist.call("setting up the run outputs", lambda: RunOutputs(cfg, run_dir, scorer_name, family=family))

    models_json: list[Path] = []  # what provenance.write returned (main process)

    def after_round(r: int, history: History) -> None:
        if models_json:  # models loaded on first use (a scorer's backbone) join models.json
            provenance.update(models_json[0], cfg)
        outputs.on_round(r, history)
        if on_round:
            on_round(r, history)

    loop = RaftLoop(
        backend, reward_fn, stream, loop_settings(cfg), run_dir, scorer_name=scorer_name,
        eval_prompts=eval_prompts, eval_scorers=eval_scorers, sample_filter=filt, on_round=after_round, dist=dist,
    )
    loop.outputs = outputs
    if cfg.output.resume and not loop.resume(cfg.output.resume):
        log.info("no checkpoint in %s yet: starting from round 1", run_dir)
    from raft_diffusion.core.stages import run_stage

    def records() -> None:  # config.yaml (or the resume's changes) and models.json
        record_config(cfg, run_dir, loop.next_round)
        models_json.append(provenance.write(run_dir, cfg))

    what = "writing config.yaml and models.json"  # a full disk here names the last completed round
    dist.call(what, lambda: run_stage(loop.next_round - 1, what, records), main_only=True)
    log.info("run folder: %s (%s backend, model %s, scorer %s)", run_dir, cfg.backend, cfg.model.pretrained, scorer_name)
    return loop


def train(
    cfg: RaftConfig | None = None,
    *,
    scorer: Callable[..., Any] | None = None,
    sample_filter: SampleFilter | None = None,
    on_round: RoundCallback | None = None,
    progress: bool = True,
) -> History:
    """Run RAFT as ``cfg`` says and return the History (one metrics row per round, eval rows).

    ``scorer`` overrides ``cfg.reward.scorer`` with any callable ``(outputs, prompts, metadata)
    -> Tensor (N,)``; ``sample_filter(samples, rewards) -> N bools`` discards samples before ranking.
    ``on_round(round_index, history)`` is called after every completed round.
    """
    loop = build_loop(cfg, scorer=scorer, sample_filter=sample_filter, on_round=on_round, progress=progress)
    history = loop.run()
    if loop.dist.is_main:  # report.html, README.md, trackers closed, hub upload
        from raft_diffusion.core.stages import os_error_message
        from raft_diffusion.errors import RunError

        try:
            loop.outputs.finish(history)
        except OSError as exc:  # a full disk: the rounds are done; --resume latest writes these again
            last = history.rounds[-1]["round"] if history.rounds else 0
            raise RunError(os_error_message(last, "writing report.html and the model card", exc)) from exc
    return history


def checked(cfg: RaftConfig) -> RaftConfig:
    """``cfg`` validated again (it may have been changed since it was built): every field's type, finite
    numbers, the cross-field checks. Raises ConfigError naming the field."""
    if not isinstance(cfg, RaftConfig):
        raise ConfigError(f"train() takes a RaftConfig (load_config(...) or RaftConfig()), got {type(cfg).__name__}")
    from raft_diffusion.config import validate

    validate(cfg)
    return cfg
