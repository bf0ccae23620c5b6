"""Full-size model architectures with random weights, built offline, for the GPU benchmarks.

Each builder returns a diffusers pipeline with the real architecture of a published model (layer
sizes from its config) and random weights, plus the real CLIP tokenizer: the speed and memory of
a round do not depend on the weights. ``small=True`` shrinks every width for a CPU smoke test of
the benchmark script itself. SD3.5 and FLUX.1 get the offline T5 tokenizer of
``raft_diffusion.diffusion.tokenizers.tiny_t5_tokenizer`` (a small vocabulary whose ids fit T5's).

    python benchmarks/full_size.py sd15 DIR [--dtype float16]
    python benchmarks/full_size.py flux1 DIR --dtype bfloat16 --device cuda
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch


def _clip_text(hidden: int, layers: int, heads: int, tokenizer: Any, with_projection: bool = False, projection: int = 768) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        hidden_size=hidden, intermediate_size=4 * hidden, num_attention_heads=heads, num_hidden_layers=layers,
        vocab_size=len(tokenizer), max_position_embeddings=77, projection_dim=projection, hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(cfg)


def _tokenizer() -> Any:
    import tempfile

    from raft_diffusion.diffusion.tokenizers import build_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        return build_tokenizer(tmp, model_max_length=77)


def _vae(widths: tuple[int, ...], scaling: float, **extra: Any) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=widths, layers_per_block=2,
        down_block_types=["DownEncoderBlock2D"] * len(widths), up_block_types=["UpDecoderBlock2D"] * len(widths),
        scaling_factor=scaling, **extra,
    )


def sd15(small: bool = False) -> Any:
    """Stable Diffusion 1.5's architecture (UNet 860M, VAE 84M, CLIP ViT-L/14 text 123M), random weights."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel

    w = (32, 64, 64, 64) if small else (320, 640, 1280, 1280)
    text = 64 if small else 768
    unet = UNet2DConditionModel(
        sample_size=64, block_out_channels=w, layers_per_block=2, cross_attention_dim=text, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    tok = _tokenizer()
    encoder = _clip_text(text, 2 if small else 12, 4 if small else 12, tok)
    vae = _vae((32, 32, 32, 32) if small else (128, 256, 512, 512), 0.18215)
    sched = DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                        num_train_timesteps=1000, steps_offset=1)
    return StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=encoder, tokenizer=tok, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def _vae16(small: bool, shift: float, scaling: float) -> Any:
    """The 16-channel VAE of SD3 / FLUX.1 (84M; no quant convs) with the model's shift and scaling."""
    from diffusers import AutoencoderKL

    widths = (32, 32, 32, 32) if small else (128, 256, 512, 512)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, block_out_channels=widths, layers_per_block=2,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, sample_size=1024,
        shift_factor=shift, scaling_factor=scaling, use_quant_conv=False, use_post_quant_conv=False,
    )


def _t5_xxl(small: bool) -> tuple[Any, Any]:
    """(the offline T5 tokenizer at 512 tokens, T5-XXL's encoder: d_model 4096, 24 layers, 64 heads x 64,
    gated-GELU feed-forward 10240, vocabulary 32128; 4.7B parameters, 9.5 GB in bfloat16)."""
    from transformers import T5Config, T5EncoderModel

    from raft_diffusion.diffusion.tokenizers import tiny_t5_tokenizer

    d = 128 if small else 4096
    cfg = T5Config(vocab_size=32128, d_model=d, d_kv=32 if small else 64, d_ff=256 if small else 10240,
                   num_layers=2 if small else 24, num_heads=4 if small else 64, feed_forward_proj="gated-gelu",
                   relative_attention_num_buckets=32, relative_attention_max_distance=128, pad_token_id=0,
                   eos_token_id=1, decoder_start_token_id=0)
    return tiny_t5_tokenizer(max_length=512), T5EncoderModel(cfg)


def sd35m(small: bool = False) -> Any:
    """Stable Diffusion 3.5 Medium's architecture: MMDiT-X transformer 2.5B (24 layers, 24 heads x 64,
    dual attention in layers 0-12, RMS q/k norm, patch 2), CLIP-L (123M) + CLIP-bigG (695M) with
    projection, T5-XXL (4.7B), 16-channel VAE (shift 0.0609, scaling 1.5305); random weights."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tok = _tokenizer()
    clip_l = _clip_text(32 if small else 768, 2 if small else 12, 2 if small else 12, tok, True, 32 if small else 768)
    clip_g = _clip_text(64 if small else 1280, 2 if small else 32, 2 if small else 20, tok, True, 64 if small else 1280)
    tok3, t5 = _t5_xxl(small)
    layers = 2 if small else 24
    transformer = SD3Transformer2DModel(
        sample_size=32 if small else 128, patch_size=2, in_channels=16, out_channels=16, num_layers=layers,
        attention_head_dim=16 if small else 64, num_attention_heads=4 if small else 24,
        joint_attention_dim=128 if small else 4096, caption_projection_dim=64 if small else 1536,
        pooled_projection_dim=96 if small else 2048, pos_embed_max_size=64 if small else 384,
        dual_attention_layers=(0,) if small else tuple(range(13)), qk_norm="rms_norm",
    )
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=_vae16(small, 0.0609, 1.5305), text_encoder=clip_l, tokenizer=tok, text_encoder_2=clip_g, tokenizer_2=tok,
        text_encoder_3=t5, tokenizer_3=tok3,
    )


def flux1(small: bool = False) -> Any:
    """FLUX.1-dev's architecture: transformer 11.9B (19 double + 38 single blocks, 24 heads x 128, rope
    axes 16/56/56, guidance embedding), CLIP-L (123M, pooled 768), T5-XXL (4.7B), 16-channel VAE
    (shift 0.1159, scaling 0.3611), dynamically shifted flow scheduler; random weights."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tok = _tokenizer()
    clip_l = _clip_text(32 if small else 768, 2 if small else 12, 2 if small else 12, tok)
    tok2, t5 = _t5_xxl(small)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1 if small else 19, num_single_layers=2 if small else 38,
        attention_head_dim=16 if small else 128, num_attention_heads=2 if small else 24,
        joint_attention_dim=128 if small else 4096, pooled_projection_dim=32 if small else 768, guidance_embeds=True,
        axes_dims_rope=(4, 6, 6) if small else (16, 56, 56),
    )
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                            base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(scheduler=sched, vae=_vae16(small, 0.1159, 0.3611), text_encoder=clip_l, tokenizer=tok,
                        text_encoder_2=t5, tokenizer_2=tok2, transformer=transformer)


def sdxl(small: bool = False) -> Any:
    """Stable Diffusion XL base 1.0's architecture: UNet 2.6B (widths 320/640/1280, 1/2/10 transformer
    layers, 5/10/20 heads, cross-attention 2048, size-id embedding 256 x 6 + pooled 1280 = 2816), CLIP-L
    (123M) + OpenCLIP bigG with projection (695M), VAE 84M (scaling 0.13025), Euler; random weights."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tok = _tokenizer()
    clip_l = _clip_text(32 if small else 768, 2 if small else 12, 2 if small else 12, tok)
    proj = 64 if small else 1280
    clip_g = _clip_text(64 if small else 1280, 2 if small else 32, 2 if small else 20, tok, True, proj)
    time_dim = 8 if small else 256
    unet = UNet2DConditionModel(
        sample_size=128, block_out_channels=(32, 64, 64) if small else (320, 640, 1280), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2) if small else (1, 2, 10), attention_head_dim=(2, 4, 8) if small else (5, 10, 20),
        use_linear_projection=True, cross_attention_dim=96 if small else 2048, addition_embed_type="text_time",
        addition_time_embed_dim=time_dim, projection_class_embeddings_input_dim=6 * time_dim + proj,
    )
    vae = _vae((32, 32, 32, 32) if small else (128, 256, 512, 512), 0.13025, sample_size=1024, force_upcast=True)
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading")
    return StableDiffusionXLPipeline(unet=unet, vae=vae, text_encoder=clip_l, tokenizer=tok, text_encoder_2=clip_g,
                                     tokenizer_2=tok, scheduler=sched, add_watermarker=False)


BUILDERS = {"sd15": sd15, "sd35m": sd35m, "flux1": flux1, "sdxl": sdxl}
#: drawn directly in the target dtype on ``--device``: float32 CPU init of T5-XXL (4.7B) and FLUX.1's
#: transformer (12B) takes minutes and ~90 GB of RAM; on a GPU in bfloat16 it takes seconds
DIRECT = {"sd35m", "flux1", "sdxl"}


def write(arch: str, out: str | Path, dtype: str = "float16", small: bool = False, seed: int = 0,
          device: str = "cpu") -> Path:
    """Build ``arch`` with random weights and save it (safetensors) in ``dtype`` to ``out``; the
    :data:`DIRECT` archs are drawn in ``dtype`` on ``device``."""
    torch.manual_seed(seed)
    if arch in DIRECT:
        previous = torch.get_default_dtype()
        torch.set_default_dtype(getattr(torch, dtype))
        try:
            with torch.device(device):
                pipe = BUILDERS[arch](small=small)
        finally:
            torch.set_default_dtype(previous)
    else:
        pipe = BUILDERS[arch](small=small)
    pipe.to(getattr(torch, dtype))
    pipe.save_pretrained(out, safe_serialization=True)
    return Path(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("arch", choices=sorted(BUILDERS))
    p.add_argument("out")
    p.add_argument("--dtype", default="float16")
    p.add_argument("--small", action="store_true", help="shrunk widths (CPU smoke test)")
    p.add_argument("--device", default="cpu", help=f"where {', '.join(sorted(DIRECT))} draw their weights (cuda: fast)")
    a = p.parse_args()
    print(write(a.arch, a.out, a.dtype, a.small, device=a.device))


if __name__ == "__main__":
    main()
