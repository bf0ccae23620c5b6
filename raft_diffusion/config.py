"""Typed run configuration: one dataclass per concern, YAML in and out, CLI overrides.

Every field carries a ``help`` string (shown by ``raft-diffusion train --help-config`` and in the
README's reference). Errors name the field, the value and the fix, on one line.
:class:`RaftConfig` validates itself on construction; the cross-field checks and the allowed values
of the choice fields (``SCHEDULERS``, ``DTYPES``, ``LR_SCHEDULERS``) live in
:mod:`raft_diffusion.validation` and are re-exported here.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from raft_diffusion.config_types import _build, set_dotted  # noqa: F401  (set_dotted re-exported)
from raft_diffusion.core import ranking
from raft_diffusion.errors import ConfigError
from raft_diffusion.validation import (  # noqa: F401  (re-exported: the checks moved there)
    DTYPES,
    LR_SCHEDULERS,
    SCHEDULERS,
    _check,
    _check_strategy,
    validate,
)


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ModelConfig:
    pretrained: str = _f("miniworld", "hub id, local diffusers folder or model alias (or causal LM for backend llm); 'miniworld' is the bundled miniature SD (an alias the miniworld plugin registers), 'tiny' a tiny random pipeline built offline")
    family: Union[str, None] = _f(None, "diffusion model family (see `raft-diffusion families`); default: detected from the pipeline class in model_index.json")
    vae: Union[str, None] = _f(None, "a separate VAE (folder or hub id) for any family, with the pipeline's latent channels, e.g. stabilityai/sd-vae-ft-mse for SD 1.5 or a float16-safe SDXL VAE; default: the pipeline's own (SDXL's kept in float32)")
    drop_t5: bool = _f(False, "SD3: load the pipeline without its T5 text encoder (less memory; the CLIP encoders only)")
    revision: Union[str, None] = _f(None, "hub revision (branch, tag or commit)")
    variant: Union[str, None] = _f(None, "weights variant, e.g. 'fp16'")
    dtype: str = _f("float32", f"dtype of the frozen weights: {', '.join(DTYPES)}; LoRA parameters stay float32")
    device: str = _f("auto", "'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:1', 'mps'")
    attention: str = _f("sdpa", "attention backend of the denoiser: 'sdpa' (torch scaled_dot_product_attention) or 'eager' (plain matmul)")
    offload: bool = _f(False, "diffusion: keep the VAE, text encoder and scorer on the CPU except while used (the VAE to decode, the scorer to score; new prompts are encoded on the CPU): less accelerator memory for two host-device copies of the VAE and scorer weights per generate call; a no-op on the CPU")


@dataclass
class RaftSection:
    rounds: int = _f(3, "number of RAFT rounds (stages)")
    k: int = _f(8, "samples per prompt; the paper keeps 1 of K (acceptance ratio 1/K)")
    prompts_per_round: int = _f(8, "b, the number of prompts sampled each round")
    seed: int = _f(0, "base seed: per-sample generation seeds, training noise, prompt shuffling")
    eval_every: int = _f(1, "evaluate the eval prompts every N rounds (0: only before and after)")
    eval_samples_per_prompt: int = _f(2, "samples per eval prompt (fixed seeds, paired across rounds)")
    early_stop: Union[str, None] = _f("miniworld-clip", "a held-out scorer that guards the run (a reward.eval_scorers name, or the reward's "
                                      "name): stop when it falls more than early_stop_tolerance below its start; the final "
                                      "LoRA is the best round by it. null disables")
    early_stop_best: str = _f("reward", "with early_stop, what picks the final round: 'reward' (the highest eval reward among the rounds "
                              "the guard allows) or 'guard' (the highest guard reading; for a reward whose eval reading says "
                              "little, such as a z-scored multi)")
    early_stop_tolerance: float = _f(0.05, "with early_stop: the relative fall below the guard's start (0.05 = 5%) that stops the run")
    early_stop_patience: Union[int, None] = _f(None, "stop when the train reward (unbiased) has not improved for N rounds; null disables")


@dataclass
class PromptsConfig:
    train: str = _f("miniworld", "prompt set name (see `raft-diffusion prompts`) or a .txt/.jsonl/.csv file")
    template: Union[str, None] = _f(None, "template applied to every prompt ('{}' is the prompt); null for none")
    shuffle: bool = _f(True, "seeded shuffle of each pass over the prompt set")
    eval: Union[str, None] = _f("miniworld-ood", "held-out prompt set or file scored before training and every eval_every rounds")
    eval_template: Union[str, None] = _f(None, "template of eval prompts (default: the train template)")
    eval_limit: Union[int, None] = _f(None, "use only the first N eval prompts")


@dataclass
class SamplingConfig:
    scheduler: Union[str, None] = _f("dpm++", f"sampler: {', '.join(SCHEDULERS)} (dpm++ = DPM-Solver++ multistep); null keeps the pipeline's own (flow models)")
    steps: int = _f(10, "denoising steps per image")
    guidance_scale: float = _f(3.0, "classifier-free guidance scale (1 disables guidance)")
    height: Union[int, None] = _f(None, "image height in pixels, a multiple of 8 (default: the model's native size)")
    width: Union[int, None] = _f(None, "image width in pixels, a multiple of 8 (default: the model's native size)")
    batch_size: int = _f(32, "images generated per pipeline call")
    eta: float = _f(0.0, "DDIM eta (0 = deterministic DDIM)")
    negative_prompt: Union[str, None] = _f(None, "negative prompt used for guidance (default: empty)")
    native_fraction: float = _f(0.0, "share of each prompt's K candidates drawn at the model's native size and resized "
                                   "down to height x width before scoring (resolution adaptation); 0 draws all at height x width")


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
    scorer: str = _f("miniworld-aesthetic", "registered scorer name (see `raft-diffusion scorers`) or 'module:function'")
    kwargs: dict = _f({}, "keyword arguments of the scorer's factory")
    eval_scorers: dict = _f({"miniworld-clip": {}, "miniworld-independent": {}, "miniworld-gold": {}},
                            "extra held-out scorers {name: {kwargs}} reported on the eval prompts")


@dataclass
class RankingConfig:
    strategy: str = _f("per_prompt", f"{', '.join(ranking.strategy_names())} (or one added with "
                                      "raft_diffusion.core.ranking.register_strategy)")
    top_n: int = _f(1, "per_prompt: samples kept per prompt")
    top_k: Union[int, None] = _f(None, "per_prompt_then_global: winners kept overall (the authors' notebook: 8 of 10)")
    nonfinite: str = _f("error", "'error' stops on a NaN/inf reward; 'exclude' drops and counts such samples")
    filter: Union[str, None] = _f("raft_diffusion.miniworld.fidelity:faithful", "'module:function' (samples, rewards) -> N bools; False discards before ranking")
    filter_pattern: Union[str, None] = _f(None, "LLM: discard responses matching this regex (the paper's '#' fix)")
    min_response_chars: int = _f(0, "LLM: discard responses shorter than this")
    kl_beta: float = _f(0.0, "LLM: KL-regularised selection r - beta * log(p_model / p_initial); 0 disables")


@dataclass
class LoraConfig:
    rank: int = _f(16, "LoRA rank r")
    alpha: Union[float, None] = _f(None, "LoRA alpha (default: equal to rank)")
    dropout: float = _f(0.0, "LoRA dropout")
    target_modules: list = _f(["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"],
                              "module names to adapt; empty: the model family's default (the attention projections). "
                              "The default, for the miniworld's UNet: attention, resnet convs and feed-forward")
    init: str = _f("default", "'default' (B = 0: starts as the base model) or 'gaussian'")


@dataclass
class TrainConfig:
    adapter: str = _f("lora", "diffusion: what RAFT trains: 'lora' (a peft LoRA on the denoiser, the lora.* settings; the run "
                      "writes pytorch_lora_weights.safetensors) or 'full' (every denoiser weight, float32, as diffusers' "
                      "train_text_to_image does; the run writes the denoiser folder, unet/ or transformer/; needs "
                      "model.dtype float32 and memory for AdamW's two moments of every weight)")
    learning_rate: float = _f(1e-3, "AdamW learning rate (the authors' notebook: 9e-6 for SD 1.5)")
    steps_per_round: Union[int, None] = _f(20, "optimizer steps per round; null: epochs_per_round passes over the kept set")
    epochs_per_round: int = _f(1, "passes over the kept set per round when steps_per_round is null")
    batch_size: int = _f(16, "samples per micro-batch")
    gradient_accumulation_steps: int = _f(1, "micro-batches per optimizer step")
    max_grad_norm: Union[float, None] = _f(1.0, "gradient clipping norm (null disables)")
    lr_scheduler: str = _f("constant", f"{', '.join(LR_SCHEDULERS)}; spans all rounds")
    warmup_steps: int = _f(0, "LR warmup steps")
    weight_decay: float = _f(1e-2, "AdamW weight decay")
    adam_beta1: float = _f(0.9, "AdamW beta1")
    adam_beta2: float = _f(0.999, "AdamW beta2")
    adam_epsilon: float = _f(1e-8, "AdamW epsilon")
    optimizer: str = _f("adamw", "'adamw' or 'adamw8bit' (needs bitsandbytes)")
    mixed_precision: Union[str, None] = _f(None, "'no', 'fp16' (GPU) or 'bf16': autocast of the training forward through accelerate; "
                                           "the LoRA parameters stay float32. Default: accelerate launch --mixed_precision, else 'no'")
    weighting_scheme: str = _f("logit_normal", "flow models: how training sigmas are drawn and weighted (diffusers' training_utils): logit_normal, mode, cosmap, sigma_sqrt, none (uniform)")
    logit_mean: float = _f(0.0, "flow models, logit_normal: mean of the normal before the sigmoid")
    logit_std: float = _f(1.0, "flow models, logit_normal: its standard deviation")
    mode_scale: float = _f(1.29, "flow models, mode: scale of the mode weighting")
    gradient_checkpointing: bool = _f(False, "recompute activations in backward: less memory, ~30% slower")
    caption_dropout: float = _f(0.5, "diffusion: fraction of kept samples trained against the empty (negative) prompt, so "
                                 "the unconditional branch that guidance subtracts learns them too; high guidance "
                                 "otherwise amplifies the LoRA's drift round after round (0.1-0.2 is typical)")
    kl_weight: float = _f(0.3, "diffusion: weight of ||eps_lora - eps_base||^2 added to the loss on the trained "
                           "samples, a pull toward the base model's predictions (the per-step KL between the two "
                           "reverse processes, up to a constant); one more UNet forward per micro-batch; 0 disables")
    kl_anchor: str = _f("base", "diffusion, with kl_weight: 'base' pulls toward the base model; 'round' toward the model "
                         "as it was when the round's training began (a trust region per round, so gains compound)")
    ema_decay: Union[float, None] = _f(None, "an exponential moving average of the trained weights (diffusers' EMAModel), "
                                       "this decay per optimizer step (e.g. 0.99; warmed up over the first steps): "
                                       "each round generates from the average and the run writes it, while the "
                                       "optimizer goes on from the raw weights (kept on the CPU between rounds). "
                                       "Steadier rounds for full fine-tuning; null: off")
    latents: str = _f("encoded", "diffusion: what the kept samples are trained as: 'sampled' (the sampler's final latents) "
                      "or 'encoded' (the kept images back through the VAE encoder, posterior mean, as the paper's code "
                      "trains on saved images; latents that guidance pushed off the VAE's manifold do not compound)")
    mask_prompt: bool = _f(True, "LLM: exclude prompt tokens from the SFT loss")


@dataclass
class OutputConfig:
    dir: str = _f("runs/default", "run folder: config, metrics.jsonl, grids, checkpoints, final LoRA")
    overwrite: bool = _f(False, "replace a folder that holds another run")
    resume: Union[str, None] = _f(None, "'latest' or a checkpoint folder: continue a stopped run")
    allow_config_change: bool = _f(False, "resume with settings that change what the completed rounds mean (raft.k, "
                                   "seed, ranking, prompts, reward, sampling, training, model; --allow-changes): "
                                   "recorded in config-changes.jsonl and config.resume-N.yaml")
    keep_checkpoints: Union[int, None] = _f(2, "keep the newest N round checkpoints (null keeps all)")
    save_grids: bool = _f(True, "write an image grid per round")
    save_kept: bool = _f(True, "write the kept samples (PNG images / JSONL responses)")
    report_to: str = _f("none", "trackers through accelerate: none, tensorboard, wandb or all (W&B offline works without a network)")
    push_to_hub: bool = _f(False, "upload the LoRA and the model card to the Hugging Face Hub at the end of the run")
    hub_model_id: Union[str, None] = _f(None, "the hub repository for push_to_hub ('user/name'); default: the run folder's name")


@dataclass
class RaftConfig:
    """A complete run. ``RaftConfig()`` is the embedded default (``raft-diffusion train`` with no
    config; every config file and preset starts from it): the miniworld's miniature SD aligned to the
    miniworld aesthetic predictor, offline on the CPU in a few minutes. Its model, reward and prompt
    sets are names the miniworld plugin registers; this module does not import the miniworld."""

    backend: str = _f("diffusion", "'diffusion' (the LoRA of a diffusion model's denoiser; see `raft-diffusion families`) or 'llm' (causal LM LoRA)")
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


# ------------------------------------------------------------------- files, presets, CLI overrides
PRESET_DIR = Path(__file__).parent / "presets"


def presets() -> list[str]:
    """Names of the bundled presets (``raft_diffusion/presets/*.yaml``)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def read_yaml(source: str | Path) -> dict[str, Any]:
    """Mapping from a YAML path or a preset name; clear errors for missing / unreadable / invalid files."""
    path = Path(source)
    if not path.is_file() and (PRESET_DIR / f"{source}.yaml").exists():
        path = PRESET_DIR / f"{source}.yaml"  # a preset name wins over a folder of that name (a run folder, say)
    if path.is_dir():
        raise ConfigError(f"config file {str(source)!r} is a folder; give a YAML file or a preset ({', '.join(presets())})")
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
    from raft_diffusion.config_yaml import load_config_text

    data = load_config_text(text, f"config file {str(path)!r}")
    if data is None:
        raise ConfigError(f"config file {str(path)!r} is empty (no settings); give at least one setting, "
                          "or leave the config out to run the embedded default")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections, got {type(data).__name__}")
    return data


def parse_value(text: str) -> Any:
    """A CLI override value parsed as YAML scalar/list ("8" -> 8, "null" -> None, "[a, b]" -> list)."""
    from raft_diffusion.config_yaml import DuplicateKey, load

    try:
        return load(text)
    except DuplicateKey as exc:
        raise ConfigError(f"the override value {text!r} repeats the key {exc.key!r}; keep one of them") from None
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

