"""The model-family seam: the registry and its errors, detection from model_index.json, the generic
code holding nothing family-specific, and mixed precision through accelerate."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from raft_diffusion.api import build_loop
from raft_diffusion.cli import main
from raft_diffusion.config import RaftConfig
from raft_diffusion.diffusion.families import FAMILIES, family_for_pipeline_class, get_family, register_family
from raft_diffusion.diffusion.families.sd import SDFamily
from raft_diffusion.diffusion.pipeline import load_family
from raft_diffusion.errors import ConfigError, ModelError
from tests.fakes import TINY_BASE

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(pipe_dir, out_dir, **overrides):
    base = {
        **TINY_BASE, "model.pretrained": str(pipe_dir), "raft.rounds": 1, "raft.k": 2, "raft.prompts_per_round": 2,
        "sampling.steps": 2, "sampling.batch_size": 4, "train.steps_per_round": 2, "train.batch_size": 2,
        "train.learning_rate": 1e-2, "output.dir": str(out_dir),
    }
    return RaftConfig().replace({**base, **overrides})


def test_unknown_family_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown model family 'sd4'; known .*: .*\bsd\b"):
        get_family("sd4")
    assert get_family("sd") is SDFamily


def test_a_second_family_of_the_same_name_is_refused():
    with pytest.raises(ConfigError, match="model family 'sd' is already registered"):
        register_family(SDFamily)
    assert "sd" in FAMILIES


def test_pipeline_class_detection_and_its_error():
    assert family_for_pipeline_class("StableDiffusionPipeline") is SDFamily
    with pytest.raises(ModelError, match=r"is a KandinskyPipeline, which no model family serves; set model.family to one of: .*sd \(StableDiffusionPipeline\)"):
        family_for_pipeline_class("KandinskyPipeline", "model 'x'")


def test_load_family_detects_the_family_from_model_index(tiny_pipeline_dir):
    fam = load_family(str(tiny_pipeline_dir), device="cpu")
    assert isinstance(fam, SDFamily) and type(fam.pipe).__name__ == "StableDiffusionPipeline"
    assert fam.denoiser is fam.pipe.unet and fam.native_size() == 32 and fam.size_factor() == 4
    explicit = load_family(str(tiny_pipeline_dir), family="sd", device="cpu")
    assert isinstance(explicit, SDFamily)


def test_a_folder_of_an_unserved_pipeline_class_names_model_family(tiny_pipeline_dir, tmp_path):
    folder = tmp_path / "other"
    shutil.copytree(tiny_pipeline_dir, folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "WuerstchenPipeline"
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelError, match="is a WuerstchenPipeline, which no model family serves; set model.family"):
        load_family(str(folder), device="cpu")


def test_conditioning_roundtrips_through_the_family(tiny_pipeline_dir):
    """encode -> decode of the VAE and the prompt conditioning go through the family's scaling."""
    fam = load_family(str(tiny_pipeline_dir), device="cpu")
    cond = fam.encode_prompts(["a cat", "a dog"])
    assert set(cond) == {"prompt_embeds"} and cond["prompt_embeds"].shape[0] == 2
    images = torch.rand(2, 3, 32, 32)
    latents = fam.encode(images)
    with torch.no_grad():
        want = fam.vae.encode(images * 2 - 1).latent_dist.mean * fam.vae.config.scaling_factor
    assert torch.allclose(latents, want, atol=1e-5)
    decoded = fam.decode(latents)
    assert decoded.shape == images.shape and decoded.min() >= 0 and decoded.max() <= 1


@pytest.mark.parametrize("name", ["backend.py", "sampling.py", "finetune.py", "lora.py", "weights.py"])
def test_generic_diffusion_code_holds_nothing_family_specific(name):
    text = (ROOT / "raft_diffusion" / "diffusion" / name).read_text()
    code = re.sub(r'("""|\'\'\').*?\1', "", text, flags=re.S)  # docstrings may name examples
    for word in ("StableDiffusion", "unet", "UNet", "encoder_hidden_states", "DDPMScheduler", "add_noise"):
        assert word not in code, f"diffusion/{name} mentions {word!r}: it belongs in a family module"


def test_families_command_and_tiny_model_family_errors(capsys, tmp_path):
    assert main(["families"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^sd\s+StableDiffusionPipeline\s+", out, re.M)
    assert main(["tiny-model", "--family", "nope", str(tmp_path / "t")]) == 2
    assert "unknown model family 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_bf16_mixed_precision_autocasts_the_training_forward_and_keeps_the_lora_float32(tiny_pipeline_dir, tmp_path):
    loop = build_loop(tiny_config(tiny_pipeline_dir, tmp_path / "run", **{"train.mixed_precision": "bf16"}), progress=False)
    trainer = loop.backend.trainer
    assert trainer.accelerator.mixed_precision == "bf16"
    seen: list[torch.dtype] = []
    layer = next(m for n, m in trainer.raw_model.named_modules() if n.endswith("attn1.to_q.base_layer"))
    handle = layer.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    before = [p.detach().clone() for p in trainer.params]
    x0 = torch.randn(2, 4, 16, 16)
    cond = loop.backend.encoder(["a cat", "a dog"])
    try:
        stats = trainer.train(x0, cond, progress=False)
    finally:
        handle.remove()
    assert seen and set(seen) == {torch.bfloat16}, "the training forward ran under bf16 autocast"
    assert all(p.dtype == torch.float32 for p in trainer.params), "the LoRA parameters stay float32"
    assert any(not torch.equal(a, p) for a, p in zip(before, trainer.params)) and stats["steps"] == 2


def test_accelerate_launch_mixed_precision_flag_is_honoured(tiny_pipeline_dir, tmp_path, monkeypatch):
    """`accelerate launch --mixed_precision bf16` sets ACCELERATE_MIXED_PRECISION; with no config field it applies."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    loop = build_loop(tiny_config(tiny_pipeline_dir, tmp_path / "run"), progress=False)
    assert loop.backend.trainer.accelerator.mixed_precision == "bf16"
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    plain = build_loop(tiny_config(tiny_pipeline_dir, tmp_path / "plain"), progress=False)
    assert plain.backend.trainer.accelerator.mixed_precision == "no"


def test_fp16_mixed_precision_on_the_cpu_is_a_clear_error(tiny_pipeline_dir, tmp_path):
    with pytest.raises(ConfigError, match="train.mixed_precision fp16 needs a GPU; use bf16 on the CPU"):
        build_loop(tiny_config(tiny_pipeline_dir, tmp_path / "run", **{"train.mixed_precision": "fp16"}), progress=False)
    with pytest.raises(ConfigError, match="train.mixed_precision must be 'no', 'fp16' or 'bf16'"):
        tiny_config(tiny_pipeline_dir, tmp_path / "x", **{"train.mixed_precision": "fp8"})


def test_model_vae_replaces_the_vae_of_an_sd_pipeline_and_must_fit_it(tiny_pipeline_dir, tmp_path):
    """``model.vae`` is every family's (SD 1.x here; it was SDXL's alone and silently ignored elsewhere)."""
    from diffusers import AutoencoderKL

    from raft_diffusion.diffusion.families.sd import tiny_vae

    vae = AutoencoderKL.from_pretrained(tiny_pipeline_dir / "vae")
    vae.register_to_config(scaling_factor=0.5)
    vae.save_pretrained(tmp_path / "vae")
    fam = load_family(str(tiny_pipeline_dir), device="cpu", options={"vae": str(tmp_path / "vae")})
    assert fam.vae.config.scaling_factor == 0.5
    assert load_family(str(tiny_pipeline_dir), device="cpu").vae.config.scaling_factor != 0.5
    tiny_vae(16, latent_channels=8).save_pretrained(tmp_path / "vae8")
    with pytest.raises(ModelError, match=r"model.vae '.*vae8' has 8 latent channels, the pipeline's own VAE 4; "
                                         r"name a VAE made for this model"):
        load_family(str(tiny_pipeline_dir), device="cpu", options={"vae": str(tmp_path / "vae8")})
