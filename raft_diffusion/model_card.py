"""The run's ``README.md`` in the diffusers / peft model-card form (``huggingface_hub.ModelCard``).

YAML front matter (base_model, library_name, license when the base model's own card names one,
pipeline_tag, tags) and a body with the base model, family, reward, rounds, the figures of
``summary.json`` (reward and fidelity before/after, best round, why the run stopped), the
before/after grid and a usage snippet.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from raft_diffusion.run_folder import DENOISER_FOLDERS

log = logging.getLogger(__name__)

CARD = "README.md"
#: the card's last line: a README.md carrying it is a run's own card (``--overwrite`` may replace it)
CARD_MARKER = "<!-- model card written by raft-diffusion -->"
#: where the card goes when the run folder holds a README.md of yours
OTHER_CARD = "MODEL_CARD.md"
_SNAPSHOT = re.compile(r"models--(?P<owner>[^/\\]+?)--(?P<name>[^/\\]+)[/\\]snapshots[/\\]")


def hub_id(pretrained: str) -> str | None:
    """The hub id of a base model: ``model.pretrained`` when it is one ('owner/name'), or the id of a
    hub-cache snapshot folder (``.../models--owner--name/snapshots/REV``); None for other local folders
    and aliases."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    text = str(pretrained)
    match = _SNAPSHOT.search(text.replace("\\", "/") + "/")
    if match:
        return f"{match['owner']}/{match['name']}"
    if Path(text).expanduser().exists() or text.count("/") != 1 or text.startswith((".", "~")):
        return None
    try:
        validate_repo_id(text)
    except HFValidationError:
        return None
    return text


def base_license(pretrained: str) -> str | None:
    """The license the base model's own card names, read from its local folder or the hub cache
    (no network); None when neither has a card."""
    from huggingface_hub import ModelCard, try_to_load_from_cache

    from raft_diffusion.models import resolve_model

    readme: Any = None
    try:
        folder = Path(resolve_model(str(pretrained))).expanduser()
        if (folder / CARD).is_file():
            readme = folder / CARD
        elif hub_id(pretrained):
            readme = try_to_load_from_cache(hub_id(pretrained), CARD)
        if isinstance(readme, (str, Path)) and Path(readme).is_file():
            return getattr(ModelCard.load(str(readme)).data, "license", None)
    except Exception as exc:  # noqa: BLE001 - a card without a readable license is no error
        log.debug("no license from the base model's card (%s)", exc)
    return None


def _num(value: Any) -> str:
    return "n/a" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))


def card_text(cfg: Any, history: Any, scorer_name: str, summary: dict[str, Any], *, family: str | None = None,
              lora_ref: str, run_dir: Path, for_hub: bool = False) -> str:
    """The card as Markdown with YAML front matter. ``lora_ref``: what the usage snippet loads (the run
    folder, or the hub repo). ``for_hub``: leave out a base_model that is no hub id (the hub refuses one)."""
    from huggingface_hub import ModelCardData

    llm = cfg.backend == "llm"
    base = cfg.model.pretrained
    family = family or cfg.model.family
    base_id = hub_id(base)
    if for_hub and base_id is None:
        log.warning("model.pretrained %r is no hub id: the pushed model card names no base_model", base)
    task = "text-generation" if llm else "text-to-image"
    full = not llm and cfg.train.adapter == "full"
    sub = next((n for n in DENOISER_FOLDERS if (Path(run_dir) / n).is_dir()), "unet") if full else None
    tags = ["raft", "full-finetune" if full else "lora", task, "peft" if llm else "diffusers", *([] if llm else ["diffusers-training"]),
            *([family] if family else [])]
    data = ModelCardData(
        base_model=base_id or (None if for_hub else base), library_name="peft" if llm else "diffusers",
        license=base_license(base), pipeline_tag=task, tags=tags,
    )
    rounds_run = summary.get("rounds_run") or (history.rounds[-1]["round"] if history.rounds else 0)
    r, rank = cfg.raft, cfg.ranking
    lines = [
        f"# RAFT {'fine-tuned ' + str(sub) if full else 'LoRA'} for {base_id or base}", "",
        (f"A {'denoiser (every weight)' if full else 'LoRA'} fine-tuned with RAFT (Reward rAnked FineTuning) by "
         f"raft-diffusion: each round generated {r.k} samples for each of {r.prompts_per_round} prompts, scored them "
         f"with the reward `{scorer_name}`, kept the best (`{rank.strategy}`) and fine-tuned the "
         f"{'denoiser' if full else 'LoRA'} on them."), "",
        f"- Base model: `{base}`",
        *([f"- Family: `{family}`"] if family else []),
        f"- Reward: `{scorer_name}`",
        f"- Rounds: {rounds_run} of {r.rounds}",
        (f"- Full fine-tuning of the {sub}" if full else f"- LoRA rank {cfg.lora.rank}")
        + f", learning rate {cfg.train.learning_rate:g}", "",
        "## Results (eval prompts, the same seeds before and after)", "",
        "| | before training | after |", "|---|---|---|",
        (f"| reward `{summary.get('reward_name') or scorer_name}` | {_num(summary.get('reward_before'))} | "
        f"{_num(summary.get('reward_after'))} |"),
        *(f"| reward part `{part}` | {_num(reading.get('before'))} | {_num(reading.get('after'))} |"
          for part, reading in (summary.get("reward_parts") or {}).items()),
    ]
    if summary.get("fidelity_name"):
        lines.append(f"| fidelity `{summary['fidelity_name']}` | {_num(summary.get('fidelity_before'))} | "
                     f"{_num(summary.get('fidelity_after'))} |")
    for name, reading in (summary.get("held_out") or {}).items():
        if name != summary.get("fidelity_name"):
            lines.append(f"| held-out `{name}` | {_num(reading.get('before'))} | {_num(reading.get('after'))} |")
    stop = summary.get("stop_reason")
    best = summary.get("best_round")
    lines += ["", (f"Best round by the held-out guard: {best}. " if best is not None else "")
              + (f"Stopped early: {stop}." if stop else "The run ran every round."), ""]
    if (Path(run_dir) / "before_after.png").is_file():
        lines += ["![Eval images before training (left of each pair) and after](before_after.png)", ""]
    lines += ["## Use", "", *(_llm_usage(base_id or base, lora_ref, for_hub) if llm else
                              _diffusion_usage(base_id or base, lora_ref, _example_prompt(history), for_hub, sub))]
    lines += ["", "`report.html` beside this card holds every round's curves, metrics and sample grids.", "", CARD_MARKER, ""]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)


def _example_prompt(history: Any) -> str:
    best = history.rounds[0].get("best_per_prompt") if history.rounds else None
    return next(iter(best), "a photo of a cat") if isinstance(best, dict) and best else "a photo of a cat"


def _diffusion_usage(base: str, lora: str, prompt: str, on_hub: bool, sub: str | None = None) -> list[str]:
    """diffusers' lines, and raft-diffusion's generate command (which reads a local folder). ``sub``:
    the fine-tuned denoiser's subfolder (``train.adapter: full``), None for a LoRA."""
    p = prompt.replace('"', "'")
    folder = ("raft-model" if sub else "raft-lora") if on_hub else lora
    fetch = [f"hf download {lora} --local-dir {folder}"] if on_hub else []
    if sub:
        load = ["from diffusers import AutoModel, DiffusionPipeline", "",
                f'{sub} = AutoModel.from_pretrained("{lora}", subfolder="{sub}")',
                f'pipe = DiffusionPipeline.from_pretrained("{base}", {sub}={sub})']
    else:
        load = ["from diffusers import DiffusionPipeline", "",
                f'pipe = DiffusionPipeline.from_pretrained("{base}")', f'pipe.load_lora_weights("{lora}")']
    return ["```python", *load, f'image = pipe("{p}").images[0]', "```", "", "or with raft-diffusion:", "", "```bash",
            *fetch, f'raft-diffusion generate --model {base} {"--weights" if sub else "--lora"} {folder} --prompt "{p}" --out images',
            "```"]


def _llm_usage(base: str, lora: str, on_hub: bool) -> list[str]:
    where = f'"{lora}", subfolder="adapter"' if on_hub else f'"{Path(lora) / "adapter"}"'
    return ["```python", "from peft import PeftModel", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
            f'base = AutoModelForCausalLM.from_pretrained("{base}")', f"model = PeftModel.from_pretrained(base, {where})",
            f"tokenizer = AutoTokenizer.from_pretrained({where})", "```"]


def write_card(run_dir: Path, text: str) -> Path:
    """Save the card as ``run_dir/README.md`` (parsed by ``huggingface_hub.ModelCard`` first); a README.md
    that is not a run's card (yours, kept by ``--overwrite``) stays, and the card goes to ``MODEL_CARD.md``."""
    from huggingface_hub import ModelCard

    from raft_diffusion.core.atomic import atomic_path
    from raft_diffusion.run_folder import is_our_card

    path = Path(run_dir) / CARD
    if path.is_file() and not is_our_card(path):
        log.warning("%s is not a model card raft-diffusion wrote: it is kept, and the card is %s", path, OTHER_CARD)
        path = Path(run_dir) / OTHER_CARD
    card = ModelCard(text)
    with atomic_path(path) as tmp:
        card.save(tmp)
    return path
