"""FLUX.1: ``FluxPipeline``, a ``FluxTransformer2DModel`` trained by flow matching
(:mod:`~raft_diffusion.diffusion.families.flow`) on packed latents, CLIP pooled + T5 conditioning.

The training space is what the transformer takes: latents packed in 2x2 patches, (N, h/2 * w/2,
4C) (``FluxPipeline._pack_latents``); :meth:`FluxFamily.decode` / :meth:`encode` unpack and pack
them at the run's image size (``self.size``). FLUX.1-dev is guidance-distilled
(``transformer.config.guidance_embeds``): it takes the guidance value (``sampling.guidance_scale``)
as an input, in sampling and in training alike; FLUX.1-schnell takes none. There is no negative
prompt (no classifier-free guidance)."""

from __future__ import annotations

from typing import Any

import torch

from raft_diffusion.diffusion.families.base import Cond
from raft_diffusion.diffusion.families.flow import FlowFamily
from raft_diffusion.errors import ConfigError

#: T5 tokens per prompt (the pipeline's default and maximum; a shorter tokenizer limit wins)
MAX_SEQUENCE_LENGTH = 512


class FluxFamily(FlowFamily):
    """FLUX.1 dev / schnell. Cond: ``prompt_embeds`` (N, 512, 4096), T5's last hidden states;
    ``pooled_prompt_embeds`` (N, 768), CLIP-L's pooled output. The text ids are zeros (T, 3),
    made in :meth:`predict` as the pipeline makes them."""

    name = "flux"
    pipeline_class = "FluxPipeline"
    aliases = ("FluxImg2ImgPipeline",)
    text_encoder_attrs = ("text_encoder", "text_encoder_2")
    default_lora_targets = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
                            "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
                            "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2")
    required_components = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler")
    uses_negative = False
    timestep_divisor = 1000.0

    @classmethod
    def load_kwargs(cls, options: dict[str, Any]) -> dict[str, Any]:
        if options.get("drop_t5"):
            raise ConfigError("model.drop_t5 is for SD3 only; FLUX.1 takes its prompt through T5, so set model.drop_t5: false")
        return {}

    def size_factor(self) -> int:
        return int(self.pipe.vae_scale_factor * 2)

    def image_seq_len(self, size: tuple[int, int]) -> int:
        """Packed latent tokens at image ``size``: (h / 2 vae factor) x (w / 2 vae factor)."""
        f = self.pipe.vae_scale_factor * 2
        return (size[0] // f) * (size[1] // f)

    def max_sequence_length(self) -> int:
        """T5 tokens per prompt: 512, or the T5 tokenizer's own limit when lower."""
        return int(min(MAX_SEQUENCE_LENGTH, getattr(self.pipe.tokenizer_2, "model_max_length", MAX_SEQUENCE_LENGTH)))

    @torch.inference_mode()
    def encode_prompts(self, texts: list[str]) -> Cond:
        embeds, pooled, _ = self.pipe.encode_prompt(
            texts, None, device=self.pipe.text_encoder.device, num_images_per_prompt=1,
            max_sequence_length=self.max_sequence_length(),
        )
        return {"prompt_embeds": embeds.detach().to("cpu"), "pooled_prompt_embeds": pooled.detach().to("cpu")}

    def pipeline_inputs(self, cond: Cond, negative: Cond | None) -> dict[str, Any]:
        self.check_scheduler()
        return {"prompt_embeds": cond["prompt_embeds"], "pooled_prompt_embeds": cond["pooled_prompt_embeds"]}

    # ------------------------------------------------------------------ packed latents <-> VAE latents
    def to_vae_space(self, latents: torch.Tensor) -> torch.Tensor:
        """Packed latents (N, L, 4C) -> unpacked at ``self.size``, then ``z / scaling + shift``: (N, C, h, w)."""
        h, w = self._size()
        z = type(self.pipe)._unpack_latents(latents, h, w, self.pipe.vae_scale_factor)
        return super().to_vae_space(z)

    def from_vae_space(self, z: torch.Tensor) -> torch.Tensor:
        """VAE latents (N, C, h, w) -> ``(z - shift) * scaling``, packed 2x2: (N, h/2 * w/2, 4C)."""
        x = super().from_vae_space(z)
        n, c, h, w = x.shape
        return type(self.pipe)._pack_latents(x, n, c, h, w)

    # ------------------------------------------------------------------ the transformer
    def predict(self, model: Any, noisy: torch.Tensor, draws: dict[str, torch.Tensor], cond: Cond,
                size: tuple[int, int]) -> torch.Tensor:
        """The transformer's velocity (B, L, 4C) on packed latents at image ``size`` (h, w), with the
        latent image ids, zero text ids, ``t / 1000`` and (guidance-distilled models) the guidance."""
        b, device, dtype = noisy.shape[0], noisy.device, noisy.dtype
        f = self.pipe.vae_scale_factor * 2
        img_ids = type(self.pipe)._prepare_latent_image_ids(b, size[0] // f, size[1] // f, device, dtype)
        txt_ids = torch.zeros(cond["prompt_embeds"].shape[1], 3, device=device, dtype=dtype)
        guidance = None
        if self.denoiser.config.guidance_embeds:
            guidance = torch.full((b,), float(self.guidance_scale), device=device, dtype=torch.float32)
        return model(hidden_states=noisy, timestep=self.model_timestep(draws, dtype), guidance=guidance,
                     pooled_projections=cond["pooled_prompt_embeds"], encoder_hidden_states=cond["prompt_embeds"],
                     txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]

    @classmethod
    def build_tiny(cls, seed: int = 0, sample_size: int = 16, guidance_embeds: bool = True) -> Any:
        """A tiny random FLUX.1-like pipeline (diffusers' fast-test transformer: 1 double + 1 single
        block, 2 heads x 16, rope axes (4, 4, 8)), a tiny CLIP (width 8, the real CLIP tokenizer cut
        to 16 tokens), a tiny T5 (width 32, ``tokenizers.tiny_t5_tokenizer``) and a 4-channel VAE with
        FLUX's shift and scaling. ``guidance_embeds``: dev-like (True) or schnell-like. Images are
        multiples of 4 pixels (the pipeline's default size is 256 here: set ``sampling.height``)."""
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

        from raft_diffusion.diffusion.families.sd import tiny_vae
        from raft_diffusion.diffusion.tokenizers import tiny_clip_text_encoder, tiny_t5_text_encoder

        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=8, guidance_embeds=guidance_embeds,
            axes_dims_rope=(4, 4, 8),
        )
        torch.manual_seed(seed + 1)
        vae = tiny_vae(sample_size * 2, latent_channels=4, shift_factor=0.1159, scaling_factor=0.3611,
                       use_quant_conv=False, use_post_quant_conv=False)
        torch.manual_seed(seed + 2)
        tokenizer, text_encoder = tiny_clip_text_encoder(hidden_size=8)
        tokenizer_2, text_encoder_2 = tiny_t5_text_encoder(d_model=32)
        scheduler = FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
            max_image_seq_len=4096,
        )
        return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                            text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer)
