"""Full-size model architectures with random weights, built offline, for the GPU benchmarks.

Each builder returns a diffusers pipeline with the real architecture of a published model (layer
sizes from its config) and random weights, plus the real CLIP tokenizer: the speed and memory of
a round do not depend on the weights. ``small=True`` shrinks every width for a CPU smoke test of
the benchmark script itself.

    python benchmarks/full_size.py sd15 DIR [--dtype float16]
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


BUILDERS = {"sd15": sd15}


def write(arch: str, out: str | Path, dtype: str = "float16", small: bool = False, seed: int = 0) -> Path:
    """Build ``arch`` with random weights and save it (safetensors) in ``dtype`` to ``out``."""
    torch.manual_seed(seed)
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
    a = p.parse_args()
    print(write(a.arch, a.out, a.dtype, a.small))


if __name__ == "__main__":
    main()
