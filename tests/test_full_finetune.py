"""``train.adapter: full``: every denoiser weight trained, saved as a diffusers folder, loaded back
by ``from_pretrained`` and by ``generate``, resumed bit-exactly, KL-anchored to a frozen base copy."""

from __future__ import annotations

import pytest
import torch

from raft_diffusion.api import build_loop, train
from raft_diffusion.config import validate
from raft_diffusion.errors import ConfigError, ModelError
from tests.test_diffusion_run import snapshot, tiny_config

FULL = {"train.adapter": "full", "train.learning_rate": 1e-3}


def test_trains_every_denoiser_weight_and_saves_a_diffusers_folder(tiny_pipeline_dir, tmp_path):
    from diffusers import UNet2DConditionModel

    loop = build_loop(tiny_config(tiny_pipeline_dir, tmp_path / "run", **FULL), progress=False)
    pipe = loop.backend.pipe
    before = {name: snapshot(getattr(pipe, name)) for name in ("unet", "vae", "text_encoder")}
    assert not any("lora_" in n for n in before["unet"]), "no LoRA is attached"
    loop.outputs.finish(loop.run())
    after = {name: snapshot(getattr(pipe, name)) for name in ("unet", "vae", "text_encoder")}
    changed = [n for n in after["unet"] if not torch.equal(before["unet"][n], after["unet"][n])]
    assert len(changed) > len(after["unet"]) // 2, "most denoiser weights moved"
    for part in ("vae", "text_encoder"):
        assert all(torch.equal(before[part][n], v) for n, v in after[part].items()), f"{part} stays frozen"

    run = tmp_path / "run"
    assert not (run / "pytorch_lora_weights.safetensors").exists()
    assert not [p.name for p in run.iterdir() if p.name.startswith(".unet-")], "no temporary folder is left"
    saved = UNet2DConditionModel.from_pretrained(run / "unet")
    for name, value in saved.state_dict().items():
        assert torch.equal(value, pipe.unet.state_dict()[name]), name
    card = (run / "README.md").read_text()
    assert "AutoModel.from_pretrained" in card and "--weights" in card and "LoRA rank" not in card


def test_generate_loads_the_fine_tuned_denoiser(tiny_pipeline_dir, tmp_path):
    """``generate`` with the run folder swaps the saved denoiser in (the images differ from the base
    model's); the denoiser folder itself loads the same weights diffusers' ``AutoModel`` reads."""
    from diffusers import AutoModel

    from raft_diffusion.diffusion.pipeline import load_family
    from raft_diffusion.diffusion.weights import load_trained_weights
    from raft_diffusion.generate import generate

    train(tiny_config(tiny_pipeline_dir, tmp_path / "run", **{**FULL, "raft.rounds": 1, "train.learning_rate": 1e-2}),
          progress=False)
    paths = generate(str(tiny_pipeline_dir), ["a photo of a cat"], tmp_path / "tuned", lora=tmp_path / "run", steps=2,
                     device="cpu")
    base = generate(str(tiny_pipeline_dir), ["a photo of a cat"], tmp_path / "base", steps=2, device="cpu")
    assert paths[0].read_bytes() != base[0].read_bytes(), "the fine-tuned denoiser changes the image"

    fam = load_family(str(tiny_pipeline_dir), device="cpu")
    load_trained_weights(fam, tmp_path / "run" / "unet")
    reference = AutoModel.from_pretrained(str(tmp_path / "run"), subfolder="unet")
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in fam.denoiser.state_dict().items())


def test_a_denoiser_of_another_architecture_is_refused(tiny_pipeline_dir, tmp_path):
    from diffusers import UNet2DConditionModel

    from raft_diffusion.diffusion.pipeline import load_family
    from raft_diffusion.diffusion.weights import load_trained_weights

    fam = load_family(str(tiny_pipeline_dir), device="cpu")
    config = dict(fam.denoiser.config)
    config["block_out_channels"] = [c * 2 for c in config["block_out_channels"]]
    UNet2DConditionModel.from_config(config).save_pretrained(tmp_path / "other" / "unet")
    with pytest.raises(ModelError, match="does not fit this pipeline"):
        load_trained_weights(fam, tmp_path / "other")


@pytest.mark.parametrize("extra", [{}, {"train.ema_decay": 0.9}], ids=["plain", "ema"])
def test_resume_is_bit_exact(tiny_pipeline_dir, tmp_path, extra):
    """With ``train.ema_decay`` the checkpoint carries the average and the raw weights the optimizer
    goes on from: losing either would change round 2's samples or the written weights."""
    from safetensors.torch import load_file

    over = {**FULL, **extra}
    whole = train(tiny_config(tiny_pipeline_dir, tmp_path / "whole", **over), progress=False)
    train(tiny_config(tiny_pipeline_dir, tmp_path / "part", **{**over, "raft.rounds": 1}), progress=False)
    resumed = train(tiny_config(tiny_pipeline_dir, tmp_path / "part", **{**over, "output.resume": "latest"}), progress=False)
    assert [r["kept_ids"] for r in resumed.rounds] == [r["kept_ids"] for r in whole.rounds]
    a = load_file(tmp_path / "whole" / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "part" / "unet" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ema_generates_from_the_average_while_the_optimizer_trains_the_raw_weights(tiny_pipeline_dir, tmp_path):
    """``train.ema_decay``: after each round the denoiser holds diffusers' EMA of the weights; the
    optimizer's trajectory (the raw weights) is the one the same run without an EMA takes."""
    over = {**FULL, "train.steps_per_round": 4, "train.learning_rate": 1e-2}
    plain = build_loop(tiny_config(tiny_pipeline_dir, tmp_path / "plain", **over), progress=False).backend
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 4, 8, 8, generator=g)
    emb = plain.encoder.negative(4)
    for _ in range(2):
        plain.trainer.train(x0, emb, progress=False)
    expected = snapshot(plain.pipe.unet)

    ema = build_loop(tiny_config(tiny_pipeline_dir, tmp_path / "ema", **over, **{"train.ema_decay": 0.9}),
                     progress=False).backend
    start = snapshot(ema.pipe.unet)
    tr = ema.trainer
    for _ in range(2):
        tr.train(x0, emb, progress=False)
    assert tr.ema.optimization_step == 8
    live = [p.detach().clone() for p in tr.params]
    assert all(torch.equal(p, s) for p, s in zip(live, tr.ema.shadow_params)), "the denoiser holds the average"
    moved = [n for n, v in snapshot(ema.pipe.unet).items() if not torch.equal(v, start[n])]
    assert moved and any(not torch.equal(snapshot(ema.pipe.unet)[n], expected[n]) for n in moved), "the average lags"
    tr.use_raw_weights()
    raw = snapshot(ema.pipe.unet)
    assert all(torch.equal(raw[n], expected[n]) for n in expected), "the raw weights follow the plain run"
    tr.use_raw_weights()  # idempotent
    assert all(torch.equal(v, raw[n]) for n, v in snapshot(ema.pipe.unet).items())


def test_a_checkpoint_of_the_other_adapter_is_a_clear_error(tiny_pipeline_dir, tmp_path):
    loop = build_loop(tiny_config(tiny_pipeline_dir, tmp_path / "lora", **{"raft.rounds": 1}), progress=False)
    lora_state = loop.backend.state_dict()
    full = build_loop(tiny_config(tiny_pipeline_dir, tmp_path / "full", **FULL), progress=False)
    with pytest.raises(ModelError, match="the checkpoint holds a LoRA, but train.adapter is 'full'"):
        full.backend.load_state_dict(lora_state)


def test_kl_reference_is_a_frozen_copy_of_the_base(tiny_pipeline_dir, tmp_path):
    """With full fine-tuning there are no adapters to switch off: the KL term reads a frozen copy of
    the base denoiser, which training leaves untouched."""
    import torch.nn.functional as F

    loop = build_loop(tiny_config(tiny_pipeline_dir, tmp_path / "kl", **{
        **FULL, "train.kl_weight": 1.0, "train.steps_per_round": 6, "train.learning_rate": 1e-2}), progress=False)
    tr = loop.backend.trainer
    start = snapshot(loop.backend.pipe.unet)
    assert tr.reference is not None and tr.reference is not loop.backend.pipe.unet
    assert not any(p.requires_grad for p in tr.reference.parameters())
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 4, 8, 8, generator=g)
    draws = {"noise": torch.randn(x0.shape, generator=g), "timesteps": torch.randint(0, 1000, (4,), generator=g)}
    emb = loop.backend.encoder.negative(4)
    with torch.no_grad():
        pred, _, base = tr.prediction(x0, draws, emb)
    assert torch.allclose(pred, base), "no penalty before training"
    tr.train(x0, emb, progress=False)
    assert all(torch.equal(start[n], p) for n, p in tr.reference.named_parameters()), "the reference stays the base"
    with torch.no_grad():
        pred, target, base = tr.prediction(x0, draws, emb)
        loss = tr.loss(x0, draws, emb)
    assert F.mse_loss(pred, base) > 0
    assert torch.allclose(loss, F.mse_loss(pred, target) + F.mse_loss(pred, base))


@pytest.mark.parametrize("over, message", [
    ({"train.adapter": "dora"}, "train.adapter must be one of lora, full, got 'dora'"),
    ({"train.adapter": "full", "model.dtype": "float16"}, "train.adapter 'full' keeps the denoiser's weights float32"),
    ({"train.ema_decay": 1.0}, "train.ema_decay must be between 0 and 1 (e.g. 0.99) or null to turn it off, got 1.0"),
])
def test_bad_adapter_settings(tiny_pipeline_dir, tmp_path, over, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(tiny_config(tiny_pipeline_dir, tmp_path / "x", **over))


def test_hub_uploads_the_denoiser_folder(tiny_pipeline_dir, tmp_path):
    from raft_diffusion.hub import upload_patterns

    assert "unet/*" in upload_patterns(tiny_config(tiny_pipeline_dir, tmp_path, **FULL))
    assert "pytorch_lora_weights.safetensors" in upload_patterns(tiny_config(tiny_pipeline_dir, tmp_path))


def test_the_llm_backend_refuses_full():
    from raft_diffusion.config import load_config

    with pytest.raises(ConfigError, match="train.adapter 'full' is for the diffusion backend"):
        load_config("llm-tiny", {"train.adapter": "full"})
