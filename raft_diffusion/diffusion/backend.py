"""The Stable Diffusion backend of the round loop: generate, fine-tune the UNet LoRA, save."""

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
from raft_diffusion.diffusion import lora as lora_mod
from raft_diffusion.diffusion import sampling
from raft_diffusion.diffusion.finetune import LoraTrainer
from raft_diffusion.diffusion.pipeline import load_pipeline, native_size
from raft_diffusion.errors import ConfigError
from raft_diffusion.report import diversity, image_grid, save_atomic_image

log = logging.getLogger(__name__)


class DiffusionBackend:
    """Holds the pipeline, the prompt-embedding cache and the LoRA trainer."""

    name = "diffusion"
    #: multi-process runs: the loop shards prompts and passes ``shard`` to :meth:`finetune`
    supports_distributed = True

    def __init__(self, cfg: RaftConfig, pipe: Any | None = None, progress: bool = True) -> None:
        self.cfg = cfg
        self.progress = progress
        m, s = cfg.model, cfg.sampling
        self.pipe = pipe if pipe is not None else load_pipeline(
            m.pretrained, dtype=m.dtype, device=m.device, scheduler=s.scheduler, revision=m.revision, variant=m.variant,
            offload=m.offload,
        )
        if pipe is not None and s.scheduler:
            from raft_diffusion.diffusion.pipeline import make_scheduler

            self.pipe.scheduler = make_scheduler(s.scheduler, self.pipe.scheduler.config)
        if m.attention == "eager":
            from diffusers.models.attention_processor import AttnProcessor

            self.pipe.unet.set_attn_processor(AttnProcessor())
        native = native_size(self.pipe)
        self.height = s.height or native
        self.width = s.width or native
        factor = self.pipe.vae_scale_factor * 2 ** (len(self.pipe.unet.config.block_out_channels) - 1)
        for name, v in (("height", self.height), ("width", self.width)):
            if v % factor:
                raise ConfigError(f"sampling.{name} = {v} must be a multiple of {factor} for this model (VAE x UNet downsampling)")
        for module in (self.pipe.vae, self.pipe.text_encoder, self.pipe.unet):
            module.requires_grad_(False)
        # model.offload: VAE and text encoder parked on the CPU; a no-op when the UNet runs on the CPU.
        # pipe.device is the UNet's accelerator (diffusers 0.42 prefers a non-CPU component).
        device = self.pipe.unet.device
        self.offload = sampling.Offload(device if m.offload and device.type != "cpu" else None)
        self.offload.park(self.pipe.vae, self.pipe.text_encoder)
        self.encoder = sampling.PromptEncoder(self.pipe, s.negative_prompt)
        lo = cfg.lora
        lora_mod.add_lora(self.pipe.unet, lo.rank, lo.alpha, lo.dropout, lo.target_modules, lo.init, seed=cfg.raft.seed)
        from diffusers import DDPMScheduler

        noise_scheduler = DDPMScheduler.from_config(self.pipe.scheduler.config)
        kept = expected_kept_per_round(cfg)
        t = cfg.train
        per_round = t.steps_per_round if t.steps_per_round is not None else -(-kept // (t.batch_size * t.gradient_accumulation_steps)) * t.epochs_per_round
        uncond = self.encoder.negative(1) if t.caption_dropout else None
        self.trainer = LoraTrainer(self.pipe.unet, noise_scheduler, t, per_round * cfg.raft.rounds, cfg.raft.seed, uncond)

    # -------------------------------------------------------------- protocol
    def generate(self, prompts: Sequence[Prompt], k: int, seeds: Sequence[int], ids: Sequence[str]) -> Samples:
        """K images per prompt; outputs (N, 3, H, W) float32 in [0, 1]; extras hold latents and embeds."""
        per_sample = [p for p in prompts for _ in range(k)]
        texts = [p.text for p in per_sample]
        s = self.cfg.sampling
        result = sampling.generate(
            self.pipe, self.encoder, texts, seeds, steps=s.steps, guidance_scale=s.guidance_scale,
            height=self.height, width=self.width, batch_size=s.batch_size, eta=s.eta, progress=self.progress,
            offload=self.offload,
        )
        return Samples(
            prompts=per_sample, groups=group_ids(len(prompts), k), ids=list(ids), seeds=list(seeds),
            outputs=result.images, extras={"latents": result.latents},
        )

    def prepare_scorer(self, scorer: Any) -> Any:
        """``scorer`` as the loop should call it: with ``model.offload`` on an accelerator its weights
        are parked on the CPU and move to its device only while it scores (:mod:`scorers.offload`)."""
        if not self.offload.active:
            return scorer
        from scorers.offload import offloaded

        return offloaded(scorer)

    def finetune(self, samples: Samples, kept: Sequence[int], shard: TrainShard | None = None) -> dict[str, float]:
        """Train on ``samples[kept]``; with ``shard`` (several processes) these are this process's kept samples."""
        if shard is None:
            return self.trainer.train(*self._kept_batch(samples, kept), progress=self.progress)
        # a failure here must reach the others before they wait in the first gradient exchange
        flag = FailureFlag(distributed.get())
        batch = None
        with flag.capture():
            batch = self._kept_batch(samples, kept)
        flag.final_check("preparing the kept samples for training")
        return self.trainer.train(*batch, progress=self.progress, shard=shard)

    def _kept_batch(self, samples: Samples, kept: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents (M, C, h, w), prompt embeddings (M, L, D)) of the kept samples."""
        faults.point("prepare")
        idx = torch.tensor(list(kept), dtype=torch.long)
        latents = samples.extras["latents"][idx]
        if not kept:
            return latents, self.encoder(samples.texts[:1])[:0]  # owns no kept sample: still joins every all-reduce
        if self.cfg.train.latents == "encoded":
            latents = sampling.encode_images(self.pipe.vae, samples.outputs[idx], self.offload)
        return latents, self.encoder([samples.texts[i] for i in kept])

    def save_model(self, out_dir: Path) -> None:
        lora_mod.save_lora(self.pipe.unet, out_dir)

    def state_dict(self) -> dict[str, Any]:
        return {"lora": lora_mod.lora_state_dict(self.pipe.unet), "trainer": self.trainer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        lora_mod.load_lora_state_dict(self.pipe.unet, state["lora"])
        self.trainer.load_state_dict(state["trainer"])

    def write_round_artifacts(self, round_dir: Path, samples: Samples, rewards: Sequence[float], kept: Sequence[int]) -> dict[str, Any]:
        """grid.png (prompt and reward under each image, kept ones marked) and kept/*.png; returns diversity."""
        images = samples.outputs
        out = self.cfg.output
        if out.save_grids:
            kept_set = set(kept)
            captions = [f"{samples.texts[i]}\n{rewards[i]:.3f}{' *kept' if i in kept_set else ''}" for i in range(len(samples))]
            k = len(samples) // max(1, len(set(samples.groups)))
            save_atomic_image(image_grid(images, captions, columns=max(1, k)), round_dir / "grid.png")
        if out.save_kept:
            from raft_diffusion.report import to_pil

            kept_dir = round_dir / "kept"
            kept_dir.mkdir(exist_ok=True)
            for i in kept:
                save_atomic_image(to_pil(images[i]), kept_dir / f"{samples.ids[i]}.png")
        div = diversity(images, samples.groups)
        return {"diversity": sum(div.values()) / len(div) if div else 0.0}

    def eval_metrics(self, samples: Samples) -> dict[str, Any]:
        div = diversity(samples.outputs, samples.groups)
        return {"diversity": sum(div.values()) / len(div) if div else 0.0}
