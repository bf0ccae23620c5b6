"""The diffusion backend of the round loop: generate, fine-tune the denoiser (its LoRA or every weight), save; any model family."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import torch

from prompts.types import Prompt
from raft_diffusion.config import RaftConfig
from raft_diffusion.core.backend import Samples
from raft_diffusion.core import distributed, faults
from raft_diffusion.core.distributed import FailureFlag, TrainShard
from raft_diffusion.core.ranking import group_ids
from raft_diffusion.training import expected_kept_per_round
from raft_diffusion.diffusion import sampling
from raft_diffusion.diffusion.finetune import LoraTrainer
from raft_diffusion.diffusion.weights import WeightsAdapter
from raft_diffusion.diffusion.families.base import Cond, cat_cond, index_cond
from raft_diffusion.diffusion.pipeline import load_family, make_scheduler
from raft_diffusion.errors import ConfigError, RunError
from raft_diffusion.report import before_after_grid, diversity, image_grid, save_atomic_image, save_eval_images

log = logging.getLogger(__name__)


class DiffusionBackend:
    """Holds the model family (pipeline), the conditioning cache and the LoRA trainer; nothing here
    knows a family: see :mod:`raft_diffusion.diffusion.families`."""

    name = "diffusion"
    #: multi-process runs: the loop shards prompts and passes ``shard`` to :meth:`finetune`
    supports_distributed = True
    #: which candidates were drawn at the native size (``sampling.native_fraction``), for the round's grid and figures
    gathered_extras = ("native",)

    def __init__(self, cfg: RaftConfig, pipe: Any | None = None, progress: bool = True) -> None:
        self.cfg = cfg
        self.progress = progress
        m, s = cfg.model, cfg.sampling
        if pipe is not None:
            from raft_diffusion.diffusion.families import family_for_pipeline_class, get_family

            cls = get_family(m.family) if m.family else family_for_pipeline_class(type(pipe).__name__)
            self.family = cls(pipe)
            if s.scheduler:
                pipe.scheduler = make_scheduler(s.scheduler, pipe.scheduler.config)
        else:
            self.family = load_family(
                m.pretrained, family=m.family, dtype=m.dtype, device=m.device, scheduler=s.scheduler,
                revision=m.revision, variant=m.variant, offload=m.offload, options=model_options(cfg),
            )
        family = self.family
        self.pipe = family.pipe
        denoiser = family.denoiser
        if m.attention == "eager":
            from diffusers.models.attention_processor import AttnProcessor

            denoiser.set_attn_processor(AttnProcessor())
        native = family.native_size()
        self.height = s.height or native
        self.width = s.width or native
        family.size = (self.height, self.width)
        family.guidance_scale = s.guidance_scale
        family.configure_training(cfg.train)
        factor = family.size_factor()
        for name, v in (("height", self.height), ("width", self.width)):
            if v % factor:
                raise ConfigError(f"sampling.{name} = {v} must be a multiple of {factor} for this model (VAE x denoiser downsampling)")
        self.native_draw = sampling.native_draw_size(self.height, self.width, native, factor)
        if s.native_fraction and max(self.height, self.width) >= native:
            raise ConfigError(f"sampling.native_fraction = {s.native_fraction} draws candidates at the native {native} px and "
                              f"shrinks them, but {self.height}x{self.width} is not smaller; set it to 0 or lower sampling.height/width")
        for module in (*family.frozen_modules(), denoiser):
            module.requires_grad_(False)
        # model.offload: VAE and text encoders parked on the CPU; a no-op when the denoiser runs on the CPU.
        # pipe.device is the denoiser's accelerator (diffusers 0.42 prefers a non-CPU component).
        device = denoiser.device
        self.offload = sampling.Offload(device if m.offload and device.type != "cpu" else None)
        self.offload.park(*family.frozen_modules())
        self.encoder = sampling.PromptEncoder(family, s.negative_prompt)
        self.weights = WeightsAdapter(cfg.train.adapter)
        reference = self.weights.attach(family, cfg)
        kept = expected_kept_per_round(cfg)
        t = cfg.train
        per_round = t.steps_per_round if t.steps_per_round is not None else -(-kept // (t.batch_size * t.gradient_accumulation_steps)) * t.epochs_per_round
        uncond = self.encoder.negative(1) if t.caption_dropout else None
        self.trainer = LoraTrainer(family, t, per_round * cfg.raft.rounds, cfg.raft.seed, (self.height, self.width), uncond,
                                   reference)

    # -------------------------------------------------------------- protocol
    def generate(self, prompts: Sequence[Prompt], k: int, seeds: Sequence[int], ids: Sequence[str]) -> Samples:
        """K images per prompt at height x width (the eval images); outputs (N, 3, H, W) float32 in [0, 1];
        extras: "latents" (N, ...) and "native" (N,) bool, all False here."""
        texts = [p.text for p in prompts for _ in range(k)]
        result = self._draw(texts, seeds, self.height, self.width)
        return self._samples(prompts, k, seeds, ids, result, torch.zeros(len(texts), dtype=torch.bool))

    def generate_candidates(self, prompts: Sequence[Prompt], k: int, seeds: Sequence[int], ids: Sequence[str]) -> Samples:
        """A round's candidates: as :meth:`generate`, except that the first ``sampling.native_fraction``
        of each prompt's K are drawn at the model's native size, resized to height x width and encoded
        for training (extras "native" marks them). Each image still depends only on (prompt, seed)."""
        n_native = round(self.cfg.sampling.native_fraction * k)
        if not n_native:
            return self.generate(prompts, k, seeds, ids)
        texts = [p.text for p in prompts for _ in range(k)]
        native = torch.tensor([i % k < n_native for i in range(len(texts))])
        images = torch.empty(len(texts), 3, self.height, self.width)
        latents: torch.Tensor | None = None
        for rows, size in ((native, self.native_draw), (~native, (self.height, self.width))):
            idx = rows.nonzero().flatten()
            if not len(idx):
                continue
            result = self._draw([texts[i] for i in idx], [seeds[i] for i in idx], *size)
            if size != (self.height, self.width):
                result.images = sampling.resize_images(result.images, self.height, self.width)
                result.latents = sampling.encode_images(self.family, result.images, self.offload)
            images[idx] = result.images
            if latents is None:
                latents = result.latents.new_empty(len(texts), *result.latents.shape[1:])
            latents[idx] = result.latents
        assert latents is not None
        return self._samples(prompts, k, seeds, ids, sampling.GenerationResult(images, latents), native)

    def _draw(self, texts: Sequence[str], seeds: Sequence[int], height: int, width: int) -> sampling.GenerationResult:
        """Images and latents at ``height x width``; the family's ``size`` (which FLUX's latent packing
        reads) is that size meanwhile."""
        s, family = self.cfg.sampling, self.family
        run_size, family.size = family.size, (height, width)
        try:
            return sampling.generate(
                family, self.encoder, texts, seeds, steps=s.steps, guidance_scale=s.guidance_scale,
                height=height, width=width, batch_size=s.batch_size, eta=s.eta, progress=self.progress,
                offload=self.offload,
            )
        finally:
            family.size = run_size

    @staticmethod
    def _samples(prompts: Sequence[Prompt], k: int, seeds: Sequence[int], ids: Sequence[str],
                 result: sampling.GenerationResult, native: torch.Tensor) -> Samples:
        return Samples(
            prompts=[p for p in prompts for _ in range(k)], groups=group_ids(len(prompts), k), ids=list(ids),
            seeds=list(seeds), outputs=result.images, extras={"latents": result.latents, "native": native},
        )

    def prepare_scorer(self, scorer: Any) -> Any:
        """``scorer`` as the loop should call it: with ``model.offload`` on an accelerator its weights
        are parked on the CPU and move to its device only while it scores (:mod:`scorers.offload`)."""
        if not self.offload.active:
            return scorer
        from scorers.offload import offloaded

        return offloaded(scorer)

    def finetune(self, samples: Samples, kept: Sequence[int], shard: TrainShard | None = None) -> dict[str, float]:
        """Train on the kept samples. ``kept``: this process's kept samples (all of them on one process);
        ``shard`` places them in the global kept list. Every process assembles the whole kept set
        (latents and conditioning, in the global order) and trains on it (:class:`LoraTrainer`)."""
        shard = shard or TrainShard(total=len(kept), positions=list(range(len(kept))))
        dist = distributed.get()
        flag = FailureFlag(dist)  # a failure here must reach the others before the first gradient exchange
        batch: tuple[torch.Tensor, Cond] | None = None
        with flag.capture():
            batch = self._kept_batch(samples, kept)
        parts = dist.all_gather_object((list(shard.positions), batch, flag.value))
        flag.check(sum(p[2] for p in parts), "preparing the kept samples for training")
        latents, cond = assemble_kept([(p[0], *p[1]) for p in parts], shard.total)
        return self.trainer.train(latents, cond, progress=self.progress)

    def _kept_batch(self, samples: Samples, kept: Sequence[int]) -> tuple[torch.Tensor, Cond]:
        """(latents (M, ...), conditioning name -> (M, ...)) of this process's kept samples."""
        faults.point("prepare")
        idx = torch.tensor(list(kept), dtype=torch.long)
        latents = samples.extras["latents"][idx]
        if not kept:
            return latents, index_cond(self.encoder(samples.texts[:1]), slice(0, 0))
        if self.cfg.train.latents == "encoded":
            latents = sampling.encode_images(self.family, samples.outputs[idx], self.offload)
        return latents, self.encoder([samples.texts[i] for i in kept])

    def save_model(self, out_dir: Path) -> None:
        self.weights.save(self.family, out_dir)

    def state_dict(self) -> dict[str, Any]:
        return {**self.weights.state_dict(self.family.denoiser), "trainer": self.trainer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weights.load_state_dict(self.family.denoiser, state)
        self.trainer.load_state_dict(state["trainer"])

    def write_round_artifacts(self, round_dir: Path, samples: Samples, rewards: Sequence[float], kept: Sequence[int]) -> dict[str, Any]:
        """grid.png (prompt and reward under each image, kept ones marked) and kept/*.png; returns diversity."""
        images = samples.outputs
        out = self.cfg.output
        if out.save_grids:
            kept_set = set(kept)
            native = samples.extras["native"]
            captions = [f"{samples.texts[i]}\n{rewards[i]:.3f}{' native' if native[i] else ''}{' *kept' if i in kept_set else ''}"
                        for i in range(len(samples))]
            k = len(samples) // max(1, len(set(samples.groups)))
            save_atomic_image(image_grid(images, captions, columns=max(1, k)), round_dir / "grid.png")
        if out.save_kept:
            from raft_diffusion.report import to_pil

            kept_dir = round_dir / "kept"
            kept_dir.mkdir(exist_ok=True)
            for i in kept:
                save_atomic_image(to_pil(images[i]), kept_dir / f"{samples.ids[i]}.png")
        div = diversity(images, samples.groups)
        metrics = {"diversity": sum(div.values()) / len(div) if div else 0.0}
        if self.cfg.sampling.native_fraction and kept:
            metrics["kept_native"] = float(samples.extras["native"][list(kept)].float().mean())
        return metrics

    def write_eval_artifacts(self, run_dir: Path, round_index: int, samples: Samples, scores: dict[str, list[float]]) -> None:
        """The eval round's fixed-seed images (``eval/round-XXXX/``) and ``before_after.png``."""
        save_eval_images(run_dir, round_index, samples.outputs, samples.ids, samples.texts, scores)
        before_after_grid(run_dir, round_index)

    def eval_metrics(self, samples: Samples) -> dict[str, Any]:
        div = diversity(samples.outputs, samples.groups)
        return {"diversity": sum(div.values()) / len(div) if div else 0.0}


def model_options(cfg: RaftConfig) -> dict[str, Any]:
    """The options a family's ``load_kwargs`` / ``after_load`` may read: the ``model.*`` fields."""
    return dict(cfg.model.__dict__)


def assemble_kept(parts: Sequence[tuple[Sequence[int], torch.Tensor, Cond]], total: int) -> tuple[torch.Tensor, Cond]:
    """The whole kept set in the global kept order, from every process's (positions, latents, cond)."""
    positions = [p for part in parts for p in part[0]]
    if sorted(positions) != list(range(total)):
        raise RunError(f"the processes' kept samples do not cover the {total} kept samples once each; a loop bug")
    latents = torch.cat([part[1] for part in parts])
    cond = cat_cond([part[2] for part in parts])
    order = torch.empty(total, dtype=torch.long)
    order[torch.tensor(positions, dtype=torch.long)] = torch.arange(total)
    return latents[order], index_cond(cond, order)
