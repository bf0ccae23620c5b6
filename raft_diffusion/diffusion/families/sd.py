"""Stable Diffusion 1.x / 2.x: ``StableDiffusionPipeline``, one CLIP text encoder, a UNet that
predicts epsilon or v (the scheduler config says which), uniform DDPM timesteps."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from raft_diffusion.diffusion.families.base import Cond, ModelFamily
from raft_diffusion.errors import ConfigError


class UNetFamily(ModelFamily):
    """What the UNet families (SD 1.x/2.x and SDXL) share: DDPM noising with epsilon or v targets."""

    denoiser_attr = "unet"
    _noise_scheduler: Any = None

    def size_factor(self) -> int:
        return int(self.pipe.vae_scale_factor * 2 ** (len(self.pipe.unet.config.block_out_channels) - 1))

    def native_size(self) -> int:
        return int(self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor)

    @property
    def noise_scheduler(self) -> Any:
        """A ``DDPMScheduler`` from the pipeline's scheduler config (the training noise schedule)."""
        if self._noise_scheduler is None:
            from diffusers import DDPMScheduler

            self._noise_scheduler = DDPMScheduler.from_config(self.pipe.scheduler.config)
        return self._noise_scheduler

    def draw_training_noise(self, shape: Sequence[int], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """noise (shape) ~ N(0, I), then timesteps (B,) ~ U{0, ..., T-1}, in that order."""
        noise = torch.randn(tuple(shape), generator=generator)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (shape[0],), generator=generator)
        return {"noise": noise, "timesteps": t}

    def training_pair(self, x0: torch.Tensor, draws: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t = add_noise(x0, noise, t); target epsilon or velocity as ``prediction_type`` says."""
        sched = self.noise_scheduler
        noise, t = draws["noise"], draws["timesteps"]
        noisy = sched.add_noise(x0, noise, t)
        kind = sched.config.prediction_type
        if kind == "epsilon":
            return noisy, noise
        if kind == "v_prediction":
            return noisy, sched.get_velocity(x0, noise, t)
        raise ConfigError(f"scheduler prediction_type {kind!r} is not supported; use epsilon or v_prediction")


class SDFamily(UNetFamily):
    """SD 1.x / 2.x. Cond: ``prompt_embeds`` (N, 77, D), the CLIP text encoder's last hidden states."""

    name = "sd"
    pipeline_class = "StableDiffusionPipeline"
    aliases = ("StableDiffusionImg2ImgPipeline",)
    required_components = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")

    @classmethod
    def load_kwargs(cls, options: dict[str, Any]) -> dict[str, Any]:
        # RAFT decodes images itself; add your own filter if you need one
        return {"safety_checker": None, "requires_safety_checker": False}

    @torch.inference_mode()
    def encode_prompts(self, texts: list[str]) -> Cond:
        # the text encoder's own device, not pipe.device (which reports the UNet's accelerator)
        embeds, _ = self.pipe.encode_prompt(texts, self.pipe.text_encoder.device, 1, False)
        return {"prompt_embeds": embeds.detach().to("cpu")}

    def pipeline_inputs(self, cond: Cond, negative: Cond | None) -> dict[str, Any]:
        return {"prompt_embeds": cond["prompt_embeds"],
                "negative_prompt_embeds": None if negative is None else negative["prompt_embeds"]}

    def predict(self, model: Any, noisy: torch.Tensor, draws: dict[str, torch.Tensor], cond: Cond,
                size: tuple[int, int]) -> torch.Tensor:
        return model(noisy, draws["timesteps"], encoder_hidden_states=cond["prompt_embeds"], return_dict=False)[0]

    @classmethod
    def build_tiny(cls, seed: int = 0, sample_size: int = 16) -> Any:
        """A tiny random StableDiffusionPipeline (diffusers' fast-test sizes, the real CLIP tokenizer).

        Images are ``sample_size * 2`` pixels (the VAE downsamples by 2). About 0.5M parameters,
        most in the 49,408-token embedding table."""
        from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

        from raft_diffusion.diffusion.tokenizers import tiny_clip_text_encoder

        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            block_out_channels=(8, 16), layers_per_block=1, sample_size=sample_size, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=8, norm_num_groups=2, attention_head_dim=2,
        )
        torch.manual_seed(seed + 1)
        vae = tiny_vae(sample_size * 2)
        torch.manual_seed(seed + 2)
        tokenizer, text_encoder = tiny_clip_text_encoder(hidden_size=8)
        scheduler = DDIMScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
            set_alpha_to_one=False, steps_offset=1,
        )
        return StableDiffusionPipeline(
            unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )


def tiny_vae(image_size: int, latent_channels: int = 4, **extra: Any) -> Any:
    """A tiny random ``AutoencoderKL`` that downsamples by 2 (diffusers' fast-test sizes)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[4, 8], in_channels=3, out_channels=3, latent_channels=latent_channels, norm_num_groups=2,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"], up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        sample_size=image_size, **extra,
    )
