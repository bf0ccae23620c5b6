"""Typed run configuration: one dataclass per concern, YAML in and out, CLI overrides, validation.

Every field carries a ``help`` string (shown by ``raft-diffusion train --help-config`` and in the
README's reference). Errors name the field, the value and the fix, on one line.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from raft_diffusion.errors import ConfigError

SCHEDULERS = ("ddim", "dpm++", "dpm", "euler", "euler-a", "pndm", "ddpm", "lms", "heun", "unipc")
DTYPES = ("float32", "float16", "bfloat16")
STRATEGIES = ("per_prompt", "global", "per_prompt_then_global")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ModelConfig:
    pretrained: str = _f("tiny", "hub id or local diffusers folder (or causal LM for backend llm); 'miniworld' is the bundled miniature SD, 'tiny' a tiny random pipeline built offline")
    revision: Union[str, None] = _f(None, "hub revision (branch, tag or commit)")
    variant: Union[str, None] = _f(None, "weights variant, e.g. 'fp16'")
    dtype: str = _f("float32", f"dtype of the frozen weights: {', '.join(DTYPES)}; LoRA parameters stay float32")
    device: str = _f("auto", "'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:1', 'mps'")
    attention: str = _f("sdpa", "attention backend of the UNet: 'sdpa' (torch scaled_dot_product_attention) or 'eager' (plain matmul)")
    offload: bool = _f(False, "diffusion: keep the VAE, text encoder and scorer on the CPU except while used (the VAE to decode, the scorer to score; new prompts are encoded on the CPU): less accelerator memory for two host-device copies of the VAE and scorer weights per generate call; a no-op on the CPU")


@dataclass
class RaftSection:
    rounds: int = _f(3, "number of RAFT rounds (stages)")
    k: int = _f(4, "samples per prompt; the paper keeps 1 of K (acceptance ratio 1/K)")
    prompts_per_round: int = _f(4, "b, the number of prompts sampled each round")
    seed: int = _f(0, "base seed: per-sample generation seeds, training noise, prompt shuffling")
    eval_every: int = _f(1, "evaluate the eval prompts every N rounds (0: only before and after)")
    eval_samples_per_prompt: int = _f(1, "samples per eval prompt (fixed seeds, paired across rounds)")


@dataclass
class PromptsConfig:
    train: str = _f("cifar10", "prompt set name (see `raft-diffusion prompts`) or a .txt/.jsonl/.csv file")
    template: Union[str, None] = _f("a photo of a {}", "template applied to every prompt ('{}' is the prompt); null for none")
    shuffle: bool = _f(True, "seeded shuffle of each pass over the prompt set")
    eval: Union[str, None] = _f(None, "held-out prompt set or file scored before training and every eval_every rounds")
    eval_template: Union[str, None] = _f(None, "template of eval prompts (default: the train template)")
    eval_limit: Union[int, None] = _f(None, "use only the first N eval prompts")


@dataclass
class SamplingConfig:
    scheduler: str = _f("ddim", f"sampler: {', '.join(SCHEDULERS)} (dpm++ = DPM-Solver++ multistep)")
    steps: int = _f(20, "denoising steps per image")
    guidance_scale: float = _f(7.5, "classifier-free guidance scale (1 disables guidance)")
    height: Union[int, None] = _f(None, "image height in pixels, a multiple of 8 (default: the model's native size)")
    width: Union[int, None] = _f(None, "image width in pixels, a multiple of 8 (default: the model's native size)")
    batch_size: int = _f(8, "images generated per pipeline call")
    eta: float = _f(0.0, "DDIM eta (0 = deterministic DDIM)")
    negative_prompt: Union[str, None] = _f(None, "negative prompt used for guidance (default: empty)")


@dataclass
class GenerationConfig:
    temperature: float = _f(1.0, "LLM sampling temperature (the paper's lambda)")
    top_p: float = _f(1.0, "nucleus sampling threshold")
    top_k: int = _f(0, "top-k sampling (0 disables)")
    min_new_tokens: int = _f(1, "minimum new tokens per response")
    max_new_tokens: int = _f(32, "maximum new tokens per response (paper: 128)")
    stop: list = _f([], "stop strings; the response is cut at the first one")
    batch_size: int = _f(16, "responses generated per generate() call")
    max_prompt_tokens: int = _f(256, "prompts longer than this many tokens are dropped and counted")
    use_chat_template: bool = _f(True, "wrap prompts in the tokenizer's chat template when it has one")


@dataclass
class RewardConfig:
    scorer: str = _f("jpeg-compressibility", "registered scorer name (see `raft-diffusion scorers`) or 'module:function'")
    kwargs: dict = _f({}, "keyword arguments of the scorer's factory")
    eval_scorers: dict = _f({}, "extra held-out scorers {name: {kwargs}} reported on the eval prompts")


@dataclass
class RankingConfig:
    strategy: str = _f("per_prompt", f"{', '.join(STRATEGIES)}")
    top_n: int = _f(1, "per_prompt: samples kept per prompt")
    top_k: Union[int, None] = _f(None, "per_prompt_then_global: winners kept overall (the authors' notebook: 8 of 10)")
    nonfinite: str = _f("error", "'error' stops on a NaN/inf reward; 'exclude' drops and counts such samples")
    filter: Union[str, None] = _f(None, "'module:function' (samples, rewards) -> N bools; False discards before ranking")
    filter_pattern: Union[str, None] = _f(None, "LLM: discard responses matching this regex (the paper's '#' fix)")
    min_response_chars: int = _f(0, "LLM: discard responses shorter than this")
    kl_beta: float = _f(0.0, "LLM: KL-regularised selection r - beta * log(p_model / p_initial); 0 disables")


@dataclass
class LoraConfig:
    rank: int = _f(4, "LoRA rank r")
    alpha: Union[float, None] = _f(None, "LoRA alpha (default: equal to rank)")
    dropout: float = _f(0.0, "LoRA dropout")
    target_modules: list = _f(["to_q", "to_k", "to_v", "to_out.0"], "module names to adapt (UNet attention by default)")
    init: str = _f("default", "'default' (B = 0: starts as the base model) or 'gaussian'")


@dataclass
class TrainConfig:
    learning_rate: float = _f(1e-4, "AdamW learning rate (the authors' notebook: 9e-6 for SD 1.5)")
    steps_per_round: Union[int, None] = _f(None, "optimizer steps per round; default: epochs_per_round over the kept set")
    epochs_per_round: int = _f(1, "passes over the kept set per round when steps_per_round is unset")
    batch_size: int = _f(8, "samples per micro-batch")
    gradient_accumulation_steps: int = _f(1, "micro-batches per optimizer step")
    max_grad_norm: Union[float, None] = _f(1.0, "gradient clipping norm (null disables)")
    lr_scheduler: str = _f("constant", f"{', '.join(LR_SCHEDULERS)}; spans all rounds")
    warmup_steps: int = _f(0, "LR warmup steps")
    weight_decay: float = _f(1e-2, "AdamW weight decay")
    adam_beta1: float = _f(0.9, "AdamW beta1")
    adam_beta2: float = _f(0.999, "AdamW beta2")
    adam_epsilon: float = _f(1e-8, "AdamW epsilon")
    optimizer: str = _f("adamw", "'adamw' or 'adamw8bit' (needs bitsandbytes)")
    gradient_checkpointing: bool = _f(False, "recompute activations in backward: less memory, ~30% slower")
    caption_dropout: float = _f(0.0, "diffusion: fraction of kept samples trained against the empty (negative) prompt, so "
                                 "the unconditional branch that guidance subtracts learns them too; high guidance "
                                 "otherwise amplifies the LoRA's drift round after round (0.1-0.2 is typical)")
    kl_weight: float = _f(0.0, "diffusion: weight of ||eps_lora - eps_base||^2 added to the loss on the trained "
                           "samples, a pull toward the base model's predictions (the per-step KL between the two "
                           "reverse processes, up to a constant); one more UNet forward per micro-batch; 0 disables")
    kl_anchor: str = _f("base", "diffusion, with kl_weight: 'base' pulls toward the base model; 'round' toward the model "
                         "as it was when the round's training began (a trust region per round, so gains compound)")
    latents: str = _f("sampled", "diffusion: what the kept samples are trained as: 'sampled' (the sampler's final latents) "
                      "or 'encoded' (the kept images back through the VAE encoder, posterior mean, as the paper's code "
                      "trains on saved images; latents that guidance pushed off the VAE's manifold do not compound)")
    mask_prompt: bool = _f(True, "LLM: exclude prompt tokens from the SFT loss")


@dataclass
class OutputConfig:
    dir: str = _f("runs/raft", "run folder: config, metrics.jsonl, grids, checkpoints, final LoRA")
    overwrite: bool = _f(False, "replace a folder that holds another run")
    resume: Union[str, None] = _f(None, "'latest' or a checkpoint folder: continue a stopped run")
    keep_checkpoints: Union[int, None] = _f(2, "keep the newest N round checkpoints (null keeps all)")
    save_grids: bool = _f(True, "write an image grid per round")
    save_kept: bool = _f(True, "write the kept samples (PNG images / JSONL responses)")


@dataclass
class RaftConfig:
    """A complete run. ``RaftConfig()`` is the embedded default: runs offline on the CPU."""

    backend: str = _f("diffusion", "'diffusion' (Stable Diffusion UNet LoRA) or 'llm' (causal LM LoRA)")
    description: str = _f("", "free text recorded with the run")
    model: ModelConfig = field(default_factory=ModelConfig)
    raft: RaftSection = field(default_factory=RaftSection)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    ranking: RankingConfig = field(default_factory=RankingConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def __post_init__(self) -> None:
        validate(self)

    # --------------------------------------------------------------- I/O
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RaftConfig":
        return _build(cls, data, "")

    def replace(self, overrides: dict[str, Any]) -> "RaftConfig":
        """A copy with dotted overrides applied: ``cfg.replace({"raft.k": 8})``."""
        data = self.to_dict()
        for key, value in overrides.items():
            set_dotted(data, key, value)
        return RaftConfig.from_dict(data)


# ------------------------------------------------------------------- building and type checks
def _is_optional(tp: Any) -> tuple[bool, Any]:
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def _coerce(value: Any, tp: Any, where: str) -> Any:
    optional, inner = _is_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where} must not be null; give a {getattr(inner, '__name__', inner)}")
    tp = inner
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where} must be a string, got {value!r}")
    if tp is list:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, (list, tuple)):
            return list(value)
        raise ConfigError(f"{where} must be a list, got {value!r}")
    if tp is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ConfigError(f"{where} must be a mapping, got {value!r}")
    return value


def _build(cls: type, data: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of fields, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), list(fields), n=1)
        hint = f"did you mean '{prefix}{close[0]}'? " if close else ""
        raise ConfigError(f"unknown config key '{prefix}{key}'; {hint}known keys here: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, tp, f"{prefix}{name}")
    return cls(**kwargs)


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``data["a"]["b"] = value`` for ``key = "a.b"``; unknown sections raise."""
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        if part not in node or not isinstance(node[part], dict):
            known = [k for k, v in node.items() if isinstance(v, dict)]
            raise ConfigError(f"unknown config section {'.'.join(parts[:i + 1])!r} in {key!r}; sections: {', '.join(known)}")
        node = node[part]
    node[parts[-1]] = value


# ------------------------------------------------------------------- validation
def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def validate(cfg: RaftConfig) -> None:
    """Cross-field checks; each failure names the field, the value and the fix."""
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
    _check(s.scheduler in SCHEDULERS, f"unknown sampling.scheduler {s.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
    _check(s.steps >= 1, f"sampling.steps must be >= 1, got {s.steps}")
    _check(s.batch_size >= 1, f"sampling.batch_size must be >= 1, got {s.batch_size}")
    _check(s.guidance_scale >= 0, f"sampling.guidance_scale must be >= 0, got {s.guidance_scale}")
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
    k = cfg.ranking
    _check(k.strategy in STRATEGIES, f"unknown ranking.strategy {k.strategy!r}; choose one of {', '.join(STRATEGIES)}")
    _check(k.top_n >= 1, f"ranking.top_n must be >= 1, got {k.top_n}")
    _check(k.top_n <= r.k, f"ranking.top_n = {k.top_n} exceeds raft.k = {r.k}; keep at most k per prompt")
    _check(k.top_k is None or k.top_k >= 1, f"ranking.top_k must be >= 1 or null, got {k.top_k}")
    _check(k.nonfinite in ("error", "exclude"), f"ranking.nonfinite must be 'error' or 'exclude', got {k.nonfinite!r}")
    _check(k.kl_beta >= 0, f"ranking.kl_beta must be >= 0, got {k.kl_beta}")
    lo = cfg.lora
    _check(lo.rank >= 1, f"lora.rank must be >= 1, got {lo.rank}")
    _check(lo.alpha is None or lo.alpha > 0, f"lora.alpha must be > 0, got {lo.alpha}")
    _check(0 <= lo.dropout < 1, f"lora.dropout must be in [0, 1), got {lo.dropout}")
    _check(bool(lo.target_modules), "lora.target_modules is empty; name at least one module, e.g. to_q")
    _check(lo.init in ("default", "gaussian"), f"lora.init must be 'default' or 'gaussian', got {lo.init!r}")
    t = cfg.train
    _check(t.learning_rate > 0, f"train.learning_rate must be > 0, got {t.learning_rate}")
    _check(t.steps_per_round is None or t.steps_per_round >= 0, f"train.steps_per_round must be >= 0, got {t.steps_per_round}")
    _check(t.epochs_per_round >= 1, f"train.epochs_per_round must be >= 1, got {t.epochs_per_round}")
    _check(t.batch_size >= 1, f"train.batch_size must be >= 1, got {t.batch_size}")
    _check(t.gradient_accumulation_steps >= 1, f"train.gradient_accumulation_steps must be >= 1, got {t.gradient_accumulation_steps}")
    _check(t.max_grad_norm is None or t.max_grad_norm > 0, f"train.max_grad_norm must be > 0 or null, got {t.max_grad_norm}")
    _check(t.lr_scheduler in LR_SCHEDULERS, f"unknown train.lr_scheduler {t.lr_scheduler!r}; choose one of {', '.join(LR_SCHEDULERS)}")
    _check(t.optimizer in ("adamw", "adamw8bit"), f"train.optimizer must be 'adamw' or 'adamw8bit', got {t.optimizer!r}")
    _check(0.0 <= t.caption_dropout < 1.0, f"train.caption_dropout must be in [0, 1), got {t.caption_dropout}")
    _check(t.kl_weight >= 0.0, f"train.kl_weight must be >= 0 (0 disables), got {t.kl_weight}")
    _check(t.kl_anchor in ("base", "round"), f"train.kl_anchor must be 'base' or 'round', got {t.kl_anchor!r}")
    _check(t.latents in ("sampled", "encoded"), f"train.latents must be 'sampled' or 'encoded', got {t.latents!r}")
    o = cfg.output
    _check(bool(o.dir.strip()), "output.dir is empty; give a folder for the run")
    _check(o.keep_checkpoints is None or o.keep_checkpoints >= 1, f"output.keep_checkpoints must be >= 1 or null, got {o.keep_checkpoints}")
    _check(not (o.overwrite and o.resume), "output.overwrite and output.resume are both set; choose one")


# ------------------------------------------------------------------- files, presets, CLI overrides
PRESET_DIR = Path(__file__).parent / "presets"


def presets() -> list[str]:
    """Names of the bundled presets (``raft_diffusion/presets/*.yaml``)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def read_yaml(source: str | Path) -> dict[str, Any]:
    """Mapping from a YAML path or a preset name; clear errors for missing / unreadable / invalid files."""
    path = Path(source)
    if not path.exists() and (PRESET_DIR / f"{source}.yaml").exists():
        path = PRESET_DIR / f"{source}.yaml"
    if not path.exists():
        raise ConfigError(
            f"config file {str(source)!r} does not exist; give a YAML path or a preset ({', '.join(presets())})"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"config file {str(path)!r} cannot be read ({exc.strerror}); check its permissions") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {str(path)!r} is not valid YAML{where}; fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections, got {type(data).__name__}")
    return data


def parse_value(text: str) -> Any:
    """A CLI override value parsed as YAML scalar/list ("8" -> 8, "null" -> None, "[a, b]" -> list)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def load_config(source: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RaftConfig:
    """Build a config from an optional YAML file / preset plus dotted overrides."""
    base = dataclasses.asdict(RaftConfig())
    if source is not None:
        _merge(base, read_yaml(source), "")
    for key, value in (overrides or {}).items():
        set_dotted(base, key, value)
    return RaftConfig.from_dict(base)


def _merge(base: dict[str, Any], new: dict[str, Any], prefix: str) -> None:
    for key, value in new.items():
        if key not in base:
            close = difflib.get_close_matches(str(key), list(base), n=1)
            hint = f"did you mean '{prefix}{close[0]}'? " if close else ""
            raise ConfigError(f"unknown config key '{prefix}{key}'; {hint}known keys here: {', '.join(base)}")
        if isinstance(base[key], dict) and isinstance(value, dict) and key not in ("kwargs", "eval_scorers"):
            _merge(base[key], value, f"{prefix}{key}.")
        else:
            base[key] = value


def field_docs() -> list[tuple[str, str, Any]]:
    """(dotted name, help, default) of every config field, for --help-config and the README."""
    out = []
    root = RaftConfig()
    for f in dataclasses.fields(RaftConfig):
        value = getattr(root, f.name)
        if dataclasses.is_dataclass(value):
            for g in dataclasses.fields(value):
                out.append((f"{f.name}.{g.name}", g.metadata.get("help", ""), getattr(value, g.name)))
        else:
            out.append((f.name, f.metadata.get("help", ""), value))
    return out

