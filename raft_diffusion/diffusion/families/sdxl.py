"""Stable Diffusion XL: ``StableDiffusionXLPipeline`` (base model; no refiner).

Two CLIP text encoders: the prompt embedding is the penultimate hidden states of both, concatenated;
the pooled embedding is the second encoder's projection (the pipeline's own ``encode_prompt``). The
UNet also takes ``added_cond_kwargs = {"text_embeds": pooled, "time_ids": ...}``, the six numbers
``original size + crop (0, 0) + target size`` (``_get_add_time_ids``), which training passes for the
run's resolution exactly as sampling does. An empty prompt is all zeros where the pipeline forces
it (``force_zeros_for_empty_prompt``), for classifier-free guidance and caption dropout alike. The
VAE stays in float32 (SDXL's overflows in float16) unless ``model.vae`` names another one, e.g. an
fp16-safe VAE, loaded in ``model.dtype`` (:func:`~raft_diffusion.diffusion.pipeline.load_vae`).
Noising, epsilon / v targets: :class:`UNetFamily`.
"""

from __future__ import annotations

from typing import Any

import torch

from raft_diffusion.diffusion.families.base import Cond
from raft_diffusion.diffusion.families.sd import UNetFamily, tiny_vae


class SDXLFamily(UNetFamily):
    """SDXL. Cond: ``prompt_embeds`` (N, 77, 2048), ``pooled_prompt_embeds`` (N, 1280), in the second
    text encoder's dtype (sizes of SDXL base)."""

    name = "sdxl"
    pipeline_class = "StableDiffusionXLPipeline"
    text_encoder_attrs = ("text_encoder", "text_encoder_2")
    required_components = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")

    def after_load(self, options: dict[str, Any]) -> None:
        """Keep the pipeline's own VAE in float32 (it overflows in float16); a ``model.vae`` stays as loaded."""
        if not options.get("vae") and self.pipe.vae.dtype != torch.float32:
            self.pipe.vae.to(torch.float32)

    # ------------------------------------------------------------------ conditioning
    @torch.inference_mode()
    def encode_prompts(self, texts: list[str]) -> Cond:
        """``prompt_embeds`` (N, L, D1 + D2) and ``pooled_prompt_embeds`` (N, P) on the CPU; rows of an
        empty prompt are zeros when ``force_zeros_for_empty_prompt`` (the pipeline's negative prompt)."""
        pipe = self.pipe
        device = pipe.text_encoder_2.device  # offload: the encoders' device, not the UNet's
        embeds, _, pooled, _ = pipe.encode_prompt(list(texts), device=device, num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
        if pipe.config.force_zeros_for_empty_prompt:
            empty = torch.tensor([t == "" for t in texts], device=embeds.device)
            embeds = torch.where(empty.view(-1, 1, 1), torch.zeros_like(embeds), embeds)
            pooled = torch.where(empty.view(-1, 1), torch.zeros_like(pooled), pooled)
        return {"prompt_embeds": embeds.detach().to("cpu"), "pooled_prompt_embeds": pooled.detach().to("cpu")}

    def pipeline_inputs(self, cond: Cond, negative: Cond | None) -> dict[str, Any]:
        out = {"prompt_embeds": cond["prompt_embeds"], "pooled_prompt_embeds": cond["pooled_prompt_embeds"]}
        if negative is not None:
            out["negative_prompt_embeds"] = negative["prompt_embeds"]
            out["negative_pooled_prompt_embeds"] = negative["pooled_prompt_embeds"]
        return out

    def time_ids(self, size: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
        """The pipeline's ``add_time_ids`` (1, 6) at ``size`` (h, w): original = target = size, crop (0, 0)."""
        pipe = self.pipe
        size = (int(size[0]), int(size[1]))
        proj = pipe.text_encoder_2.config.projection_dim  # what the pipeline passes
        return pipe._get_add_time_ids(size, (0, 0), size, dtype=dtype, text_encoder_projection_dim=proj)

    def predict(self, model: Any, noisy: torch.Tensor, draws: dict[str, torch.Tensor], cond: Cond,
                size: tuple[int, int]) -> torch.Tensor:
        embeds = cond["prompt_embeds"]
        time_ids = self.time_ids(size, embeds.dtype).to(embeds.device).repeat(noisy.shape[0], 1)
        added = {"text_embeds": cond["pooled_prompt_embeds"], "time_ids": time_ids}
        return model(noisy, draws["timesteps"], encoder_hidden_states=embeds, added_cond_kwargs=added,
                     return_dict=False)[0]

    # ------------------------------------------------------------------ latents <-> VAE
    def _latent_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The VAE config's per-channel ``latents_mean`` / ``latents_std`` (1, C, 1, 1), when it has them."""
        cfg = self.vae.config
        mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
        if mean is None or std is None:
            return None
        shape = (1, len(mean), 1, 1)
        return (torch.tensor(mean).view(shape).to(like.device, like.dtype),
                torch.tensor(std).view(shape).to(like.device, like.dtype))

    def to_vae_space(self, latents: torch.Tensor) -> torch.Tensor:
        """As the pipeline decodes: ``x * std / scaling + mean`` when the VAE has latent stats, else ``x / scaling``."""
        stats = self._latent_stats(latents)
        if stats is None:
            return super().to_vae_space(latents)
        return latents * stats[1] / self.vae.config.scaling_factor + stats[0]

    def from_vae_space(self, z: torch.Tensor) -> torch.Tensor:
        stats = self._latent_stats(z)
        if stats is None:
            return super().from_vae_space(z)
        return (z - stats[0]) * self.vae.config.scaling_factor / stats[1]

    # ------------------------------------------------------------------ tiny model
    @classmethod
    def build_tiny(cls, seed: int = 0, sample_size: int = 16) -> Any:
        """A tiny random StableDiffusionXLPipeline: two CLIP text encoders of width 32 (the second with a
        32-wide projection), so cross-attention 64 and added-embedding input 6 x 8 + 32 = 80 (diffusers'
        fast-test SDXL UNet, narrower); images ``sample_size * 2`` pixels, VAE scaling 0.13025."""
        from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

        from raft_diffusion.diffusion.tokenizers import tiny_clip_text_encoder

        width, proj, time_dim = 32, 32, 8
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            block_out_channels=(8, 16), layers_per_block=1, sample_size=sample_size, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 2),
            addition_embed_type="text_time", addition_time_embed_dim=time_dim, cross_attention_dim=2 * width,
            projection_class_embeddings_input_dim=6 * time_dim + proj, norm_num_groups=2,
        )
        torch.manual_seed(seed + 1)
        vae = tiny_vae(sample_size * 2, scaling_factor=0.13025, force_upcast=True)
        torch.manual_seed(seed + 2)
        tokenizer, text_encoder = tiny_clip_text_encoder(hidden_size=width)
        torch.manual_seed(seed + 3)
        tokenizer_2, text_encoder_2 = tiny_clip_text_encoder(hidden_size=width, with_projection=True, projection_dim=proj)
        scheduler = EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
            timestep_spacing="leading", prediction_type="epsilon",
        )
        return StableDiffusionXLPipeline(
            unet=unet, vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
            tokenizer_2=tokenizer_2, scheduler=scheduler, force_zeros_for_empty_prompt=True, add_watermarker=False,
        )
