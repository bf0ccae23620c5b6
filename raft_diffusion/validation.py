"""Cross-field validation of a :class:`~raft_diffusion.config.RaftConfig`, and the allowed values
of its choice fields (samplers, dtypes, LR schedulers).

``RaftConfig.__post_init__`` runs :func:`validate`; each failure raises a
:class:`~raft_diffusion.errors.ConfigError` naming the field, the value and the fix, on one line.
This module imports :mod:`raft_diffusion.config` only for type checking (config imports this
module), so there is no import cycle; :mod:`raft_diffusion.config` re-exports its public names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from raft_diffusion.core import ranking
from raft_diffusion.errors import ConfigError

if TYPE_CHECKING:
    from raft_diffusion.config import RaftConfig

SCHEDULERS = ("ddim", "dpm++", "dpm", "euler", "euler-a", "pndm", "ddpm", "lms", "heun", "unipc")
DTYPES = ("float32", "float16", "bfloat16")
REPORT_TO = ("none", "tensorboard", "wandb", "all")
WEIGHTING_SCHEMES = ("logit_normal", "mode", "cosmap", "sigma_sqrt", "none")
ADAPTERS = ("lora", "full")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _check_strategy(name: str) -> None:
    if name not in ranking.STRATEGIES:
        from raft_diffusion.plugins import load_plugins

        load_plugins()  # a plugin may add strategies
    _check(name in ranking.STRATEGIES,
           f"unknown ranking.strategy {name!r}; choose one of {', '.join(ranking.strategy_names())}")


def validate(cfg: RaftConfig) -> None:
    """Cross-field checks; each failure names the field, the value and the fix. Field types (and finite
    floats) are checked first, so a config built or changed in Python fails the same way as a file."""
    from raft_diffusion.config_types import check_types

    check_types(cfg)
    _check(cfg.backend in ("diffusion", "llm"), f"backend must be 'diffusion' or 'llm', got {cfg.backend!r}")
    r = cfg.raft
    _check(r.rounds >= 1, f"raft.rounds must be >= 1, got {r.rounds}")
    _check(r.k >= 1, f"raft.k must be >= 1 (samples per prompt), got {r.k}")
    _check(r.k <= 4096, f"raft.k = {r.k} is out of range; use at most 4096 samples per prompt")
    _check(r.prompts_per_round >= 1, f"raft.prompts_per_round must be >= 1, got {r.prompts_per_round}")
    _check(r.eval_every >= 0, f"raft.eval_every must be >= 0, got {r.eval_every}")
    _check(r.eval_samples_per_prompt >= 1, f"raft.eval_samples_per_prompt must be >= 1, got {r.eval_samples_per_prompt}")
    m = cfg.model
    _check(bool(m.pretrained.strip()), "model.pretrained is empty; give a hub id, a local folder or 'tiny'")
    _check(m.dtype in DTYPES, f"model.dtype {m.dtype!r} is not one of {', '.join(DTYPES)}")
    _check(m.attention in ("sdpa", "eager"), f"model.attention must be 'sdpa' or 'eager', got {m.attention!r}")
    _check(not (m.offload and cfg.backend == "llm"), "model.offload applies to backend diffusion only; set it to false for backend llm")
    s = cfg.sampling
    _check(s.scheduler is None or s.scheduler in SCHEDULERS, f"unknown sampling.scheduler {s.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
    _check(s.steps >= 1, f"sampling.steps must be >= 1, got {s.steps}")
    _check(s.batch_size >= 1, f"sampling.batch_size must be >= 1, got {s.batch_size}")
    _check(s.guidance_scale >= 0, f"sampling.guidance_scale must be >= 0, got {s.guidance_scale}")
    _check(0 <= s.eta <= 1, f"sampling.eta must be in [0, 1] (0 = deterministic DDIM), got {s.eta}")
    _check(0 <= s.native_fraction <= 1, f"sampling.native_fraction must be in [0, 1] (0 draws every candidate at height x width), got {s.native_fraction}")
    for name in ("height", "width"):
        v = getattr(s, name)
        _check(v is None or (v > 0 and v % 8 == 0),
               f"sampling.{name} = {v} is not a positive multiple of 8; use e.g. {max(8, (v or 0) // 8 * 8)}")
    g = cfg.generation
    _check(g.temperature > 0, f"generation.temperature must be > 0, got {g.temperature}")
    _check(0 < g.top_p <= 1, f"generation.top_p must be in (0, 1], got {g.top_p}")
    _check(g.top_k >= 0, f"generation.top_k must be >= 0, got {g.top_k}")
    _check(1 <= g.max_new_tokens, f"generation.max_new_tokens must be >= 1, got {g.max_new_tokens}")
    _check(0 <= g.min_new_tokens <= g.max_new_tokens,
           f"generation.min_new_tokens = {g.min_new_tokens} must be between 0 and max_new_tokens ({g.max_new_tokens})")
    _check(g.batch_size >= 1, f"generation.batch_size must be >= 1, got {g.batch_size}")
    _check(g.max_prompt_tokens >= 1, f"generation.max_prompt_tokens must be >= 1, got {g.max_prompt_tokens}")
    k = cfg.ranking
    _check_strategy(k.strategy)
    _check(k.top_n >= 1, f"ranking.top_n must be >= 1, got {k.top_n}")
    _check(k.top_n <= r.k, f"ranking.top_n = {k.top_n} exceeds raft.k = {r.k}; keep at most k per prompt")
    _check(k.top_k is None or k.top_k >= 1, f"ranking.top_k must be >= 1 or null, got {k.top_k}")
    _check(k.nonfinite in ("error", "exclude"), f"ranking.nonfinite must be 'error' or 'exclude', got {k.nonfinite!r}")
    _check(k.kl_beta >= 0, f"ranking.kl_beta must be >= 0, got {k.kl_beta}")
    _check(k.min_response_chars >= 0, f"ranking.min_response_chars must be >= 0, got {k.min_response_chars}")
    _check(cfg.prompts.eval_limit is None or cfg.prompts.eval_limit >= 1,
           f"prompts.eval_limit must be >= 1 or null, got {cfg.prompts.eval_limit}")
    lo = cfg.lora
    _check(lo.rank >= 1, f"lora.rank must be >= 1, got {lo.rank}")
    _check(lo.alpha is None or lo.alpha > 0, f"lora.alpha must be > 0, got {lo.alpha}")
    _check(0 <= lo.dropout < 1, f"lora.dropout must be in [0, 1), got {lo.dropout}")
    _check(lo.init in ("default", "gaussian"), f"lora.init must be 'default' or 'gaussian', got {lo.init!r}")
    t = cfg.train
    _check(t.adapter in ADAPTERS, f"train.adapter must be one of {', '.join(ADAPTERS)}, got {t.adapter!r}")
    _check(t.adapter == "lora" or cfg.backend == "diffusion",
           f"train.adapter {t.adapter!r} is for the diffusion backend; the llm backend trains a LoRA (train.adapter: lora)")
    _check(t.adapter == "lora" or m.dtype == "float32",
           f"train.adapter 'full' keeps the denoiser's weights float32 for AdamW, but model.dtype is {m.dtype!r}; "
           "set model.dtype: float32 (train.mixed_precision bf16 or fp16 still speeds up the forward)")
    _check(t.learning_rate > 0, f"train.learning_rate must be > 0, got {t.learning_rate}")
    _check(t.steps_per_round is None or t.steps_per_round >= 0, f"train.steps_per_round must be >= 0, got {t.steps_per_round}")
    _check(t.epochs_per_round >= 1, f"train.epochs_per_round must be >= 1, got {t.epochs_per_round}")
    _check(t.batch_size >= 1, f"train.batch_size must be >= 1, got {t.batch_size}")
    _check(t.gradient_accumulation_steps >= 1, f"train.gradient_accumulation_steps must be >= 1, got {t.gradient_accumulation_steps}")
    _check(t.max_grad_norm is None or t.max_grad_norm > 0, f"train.max_grad_norm must be > 0 or null, got {t.max_grad_norm}")
    _check(t.weighting_scheme in WEIGHTING_SCHEMES,
           f"unknown train.weighting_scheme {t.weighting_scheme!r}; choose one of {', '.join(WEIGHTING_SCHEMES)}")
    _check(t.logit_std > 0, f"train.logit_std must be > 0, got {t.logit_std}")
    _check(t.lr_scheduler in LR_SCHEDULERS, f"unknown train.lr_scheduler {t.lr_scheduler!r}; choose one of {', '.join(LR_SCHEDULERS)}")
    _check(t.mixed_precision in (None, "no", "fp16", "bf16"),
           f"train.mixed_precision must be 'no', 'fp16' or 'bf16' (or null: from accelerate launch), got {t.mixed_precision!r}")
    _check(t.optimizer in ("adamw", "adamw8bit"), f"train.optimizer must be 'adamw' or 'adamw8bit', got {t.optimizer!r}")
    for name in ("adam_beta1", "adam_beta2"):
        _check(0.0 <= getattr(t, name) < 1.0, f"train.{name} must be in [0, 1), got {getattr(t, name)}; e.g. 0.9 / 0.999")
    _check(t.adam_epsilon > 0, f"train.adam_epsilon must be > 0, got {t.adam_epsilon}; e.g. 1e-8")
    _check(t.weight_decay >= 0, f"train.weight_decay must be >= 0 (0 disables), got {t.weight_decay}")
    _check(t.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {t.warmup_steps}")
    _check(t.mode_scale >= 0, f"train.mode_scale must be >= 0, got {t.mode_scale}")
    _check(0.0 <= t.caption_dropout < 1.0, f"train.caption_dropout must be in [0, 1), got {t.caption_dropout}")
    _check(t.kl_weight >= 0.0, f"train.kl_weight must be >= 0 (0 disables), got {t.kl_weight}")
    _check(t.kl_anchor in ("base", "round"), f"train.kl_anchor must be 'base' or 'round', got {t.kl_anchor!r}")
    _check(t.ema_decay is None or 0.0 < t.ema_decay < 1.0,
           f"train.ema_decay must be between 0 and 1 (e.g. 0.99) or null to turn it off, got {t.ema_decay}")
    _check(t.latents in ("sampled", "encoded"), f"train.latents must be 'sampled' or 'encoded', got {t.latents!r}")
    o = cfg.output
    _check(o.report_to in REPORT_TO, f"output.report_to {o.report_to!r} is not one of {', '.join(REPORT_TO)}")
    _check(o.hub_model_id is None or o.hub_model_id.count("/") <= 1 and bool(o.hub_model_id.strip("/ ")),
           f"output.hub_model_id {o.hub_model_id!r} is not a hub repository id; use 'user/name'")
    _check(r.early_stop_tolerance >= 0, f"raft.early_stop_tolerance must be >= 0, got {r.early_stop_tolerance}")
    _check(r.early_stop_patience is None or r.early_stop_patience >= 1,
           f"raft.early_stop_patience must be >= 1 or null, got {r.early_stop_patience}")
    _check(r.early_stop is None or r.early_stop in (cfg.reward.eval_scorers or {}) or r.early_stop == cfg.reward.scorer,
           f"raft.early_stop {r.early_stop!r} is not a held-out scorer of this run; name one of reward.eval_scorers "
           f"({', '.join(cfg.reward.eval_scorers) or 'none configured'}) or the reward {cfg.reward.scorer!r}")
    _check(r.early_stop_best in ("reward", "guard"), f"raft.early_stop_best must be 'reward' or 'guard', got {r.early_stop_best!r}")
    _check(r.early_stop is None or bool(cfg.prompts.eval), "raft.early_stop needs eval prompts; set prompts.eval")
    _check(bool(o.dir.strip()), "output.dir is empty; give a folder for the run")
    _check(o.keep_checkpoints is None or o.keep_checkpoints >= 1, f"output.keep_checkpoints must be >= 1 or null, got {o.keep_checkpoints}")
    _check(not (o.overwrite and o.resume), "output.overwrite and output.resume are both set; choose one")
