"""The Backend protocol that the diffusion and LLM backends implement, and the Samples record.

The round loop (:mod:`raft_diffusion.core.loop`) only talks to a backend through this protocol,
so the core imports neither diffusers nor transformers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

from prompts.types import Prompt


@dataclass
class Samples:
    """K samples for each of b prompts, laid out prompt-major (N = b * K).

    prompts: N prompts (each prompt repeated K times). groups: N prompt-group ids (0..b-1).
    ids: N stable sample ids ("r{round}-p{prompt}-k{j}"). seeds: N per-sample seeds.
    outputs: what the scorer reads: images (N, 3, H, W) float32 in [0, 1] on the CPU, or N strings.
    extras: backend-private per-sample data needed for fine-tuning (final latents, token ids, ...);
    under several processes only the keys in ``Backend.gathered_extras`` reach the main process.
    """

    prompts: list[Prompt]
    groups: list[int]
    ids: list[str]
    seeds: list[int]
    outputs: Any
    extras: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def texts(self) -> list[str]:
        return [p.text for p in self.prompts]

    @property
    def metadata(self) -> list[dict[str, Any]]:
        """Per-sample metadata: the prompt's metadata plus "group" and "sample_id"."""
        return [{**p.metadata, "group": g, "sample_id": i} for p, g, i in zip(self.prompts, self.groups, self.ids)]


class Backend(Protocol):
    """What the round loop needs from a model backend.

    Multi-process runs also read two optional class attributes (with ``getattr``, so a backend may
    omit them): ``supports_distributed`` (the loop then shards the prompts and passes ``shard=`` to
    :meth:`finetune`) and ``gathered_extras``. A backend may also have ``generate_candidates`` (the
    signature of :meth:`generate`): the loop then draws each round's candidates with it and keeps
    :meth:`generate` for the eval images (the diffusion backend's ``sampling.native_fraction``).
    """

    name: str
    #: ``Samples.extras`` keys that :meth:`write_round_artifacts` (and ``eval_metrics``) read. Under
    #: several processes the loop gathers only the outputs and these keys to the main process, each a
    #: per-sample list or a tensor with one row per sample, concatenated in the global sample order;
    #: other extras stay on the process that made them. Default none (the diffusion backend's
    #: latents are only for its own fine-tuning and never travel).
    gathered_extras: tuple[str, ...] = ()

    def generate(self, prompts: Sequence[Prompt], k: int, seeds: Sequence[int], ids: Sequence[str]) -> Samples:
        """K samples per prompt, with sample i drawn from seed ``seeds[i]`` (N = len(prompts) * k)."""
        ...

    def finetune(self, samples: Samples, kept: Sequence[int]) -> dict[str, float]:
        """Fine-tune on ``samples[kept]``; returns stats such as {"loss": ..., "lr": ..., "steps": ...}."""
        ...

    def save_model(self, out_dir: Path) -> None:
        """Write the user-facing trained weights (a LoRA file or an adapter folder) into ``out_dir``."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: trainable weights, optimizer, LR schedule, RNGs."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        ...

    def write_round_artifacts(
        self, round_dir: Path, samples: Samples, rewards: Sequence[float], kept: Sequence[int]
    ) -> dict[str, Any]:
        """Write the round's grid and kept samples; return extra metrics (e.g. diversity)."""
        ...
