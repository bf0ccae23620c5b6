"""Stable Diffusion 3 / 3.5: ``StableDiffusion3Pipeline``, an ``SD3Transformer2DModel`` trained by
flow matching (:mod:`~raft_diffusion.diffusion.families.flow`), two CLIP text encoders with
projection and an optional T5 (``model.drop_t5: true`` loads the pipeline without it; the
pipeline then puts zeros where the T5 embeddings go, as diffusers does)."""

from __future__ import annotations

from typing import Any

import torch

from raft_diffusion.diffusion.families.base import Cond
from raft_diffusion.diffusion.families.flow import FlowFamily

#: T5 tokens per prompt (the pipeline's default; a shorter tokenizer limit wins)
MAX_SEQUENCE_LENGTH = 256


class SD3Family(FlowFamily):
    """SD3 / SD3.5. Cond: ``prompt_embeds`` (N, 77 + T5 tokens, 4096), CLIP-L and bigG penultimate
    states (concatenated, padded to the T5 width) then T5's; ``pooled_prompt_embeds`` (N, 2048),
    both CLIP projections concatenated. Latents (N, 16, H/8, W/8) = ``(z - shift) * scaling``."""

    name = "sd3"
    pipeline_class = "StableDiffusion3Pipeline"
    aliases = ("StableDiffusion3Img2ImgPipeline",)
    text_encoder_attrs = ("text_encoder", "text_encoder_2", "text_encoder_3")
    default_lora_targets = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
                            "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out")
    required_components = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler")
    timestep_divisor = 1.0

    @classmethod
    def load_kwargs(cls, options: dict[str, Any]) -> dict[str, Any]:
        """``model.drop_t5``: load without T5 (``text_encoder_3=None, tokenizer_3=None``)."""
        return {"text_encoder_3": None, "tokenizer_3": None} if options.get("drop_t5") else {}

    def size_factor(self) -> int:
        return int(self.pipe.vae_scale_factor * self.pipe.transformer.config.patch_size)

    def image_seq_len(self, size: tuple[int, int]) -> int:
        """(h / vae factor / patch) x (w / vae factor / patch), as the SD3 pipeline counts it."""
        f = self.pipe.vae_scale_factor
        p = self.pipe.transformer.config.patch_size
        return (size[0] // f // p) * (size[1] // f // p)

    def max_sequence_length(self) -> int:
        """T5 tokens per prompt: 256, or the T5 tokenizer's own limit when lower."""
        tok = getattr(self.pipe, "tokenizer_3", None)
        limit = getattr(tok, "model_max_length", MAX_SEQUENCE_LENGTH) if tok is not None else MAX_SEQUENCE_LENGTH
        return int(min(MAX_SEQUENCE_LENGTH, limit))

    @torch.inference_mode()
    def encode_prompts(self, texts: list[str]) -> Cond:
        # the text encoders' own device, not pipe.device (which reports the transformer's accelerator)
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            texts, None, None, device=self.pipe.text_encoder.device, num_images_per_prompt=1,
            do_classifier_free_guidance=False, max_sequence_length=self.max_sequence_length(),
        )
        return {"prompt_embeds": embeds.detach().to("cpu"), "pooled_prompt_embeds": pooled.detach().to("cpu")}

    def pipeline_inputs(self, cond: Cond, negative: Cond | None) -> dict[str, Any]:
        self.check_scheduler()
        out = {"prompt_embeds": cond["prompt_embeds"], "pooled_prompt_embeds": cond["pooled_prompt_embeds"]}
        if negative is not None:
            out.update(negative_prompt_embeds=negative["prompt_embeds"],
                       negative_pooled_prompt_embeds=negative["pooled_prompt_embeds"])
        return out

    def predict(self, model: Any, noisy: torch.Tensor, draws: dict[str, torch.Tensor], cond: Cond,
                size: tuple[int, int]) -> torch.Tensor:
        """The transformer's velocity (B, C, h, w) at ``timestep`` t in [0, 1000], as the pipeline calls it."""
        return model(hidden_states=noisy, timestep=self.model_timestep(draws), encoder_hidden_states=cond["prompt_embeds"],
                     pooled_projections=cond["pooled_prompt_embeds"], return_dict=False)[0]

    @classmethod
    def build_tiny(cls, seed: int = 0, sample_size: int = 16) -> Any:
        """A tiny random SD3.5-like pipeline: transformer of 2 joint blocks (the first with SD3.5's
        dual attention, RMS q/k norm; patch 2, width 32), two tiny CLIP encoders with projection
        (widths 8 and 16, the real CLIP tokenizer cut to 16 tokens), a tiny T5 (width 32, the offline
        T5 tokenizer of ``tokenizers.tiny_t5_tokenizer``) and a VAE with SD3's shift and scaling.
        Images are ``sample_size * 2`` pixels."""
        from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

        from raft_diffusion.diffusion.families.sd import tiny_vae
        from raft_diffusion.diffusion.tokenizers import tiny_clip_text_encoder, tiny_t5_text_encoder

        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(
            sample_size=sample_size, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
            num_attention_heads=4, joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=16,
            pos_embed_max_size=max(32, sample_size), dual_attention_layers=(0,), qk_norm="rms_norm",
        )
        torch.manual_seed(seed + 1)
        vae = tiny_vae(sample_size * 2, latent_channels=4, shift_factor=0.0609, scaling_factor=1.5035,
                       use_quant_conv=False, use_post_quant_conv=False)
        torch.manual_seed(seed + 2)
        tokenizer, text_encoder = tiny_clip_text_encoder(hidden_size=8, with_projection=True, projection_dim=8)
        tokenizer_2, text_encoder_2 = tiny_clip_text_encoder(hidden_size=16, with_projection=True, projection_dim=8)
        tokenizer_3, text_encoder_3 = tiny_t5_text_encoder(d_model=32)
        return StableDiffusion3Pipeline(
            transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
            text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
            text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3,
        )
