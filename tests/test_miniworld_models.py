"""The committed miniworld models load offline through the standard from_pretrained paths, and the
build command runs end to end (--quick)."""

import json

import pytest
import torch

from raft_diffusion import miniworld


def test_pipeline_loads_and_generates():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(miniworld.pipeline_path(), local_files_only=True)
    assert pipe.safety_checker is None and pipe.feature_extractor is None
    assert pipe.vae.config.latent_channels == 4 and pipe.vae.config.scaling_factor != 1.0
    assert len(pipe.tokenizer) == 49408
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    res = miniworld.NATIVE_RESOLUTION
    out = pipe(["a red circle", ""], num_inference_steps=2, height=res, width=res, generator=g, output_type="pt").images
    assert out.shape == (2, 3, res, res) and torch.isfinite(out).all()
    ada = miniworld.ADAPTATION_RESOLUTION
    out = pipe("a blue cross", num_inference_steps=2, height=ada, width=ada, output_type="pt").images
    assert out.shape == (1, 3, ada, ada)


def test_clip_loads_with_tokenizer_and_processor():
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    path = miniworld.clip_path()
    clip = CLIPModel.from_pretrained(path, local_files_only=True)
    tok = CLIPTokenizer.from_pretrained(path, local_files_only=True)
    proc = CLIPImageProcessor.from_pretrained(path, local_files_only=True)
    assert len(tok) == 49408 and tok.bos_token_id == 49406 and tok.eos_token_id == 49407
    assert tok.model_max_length == clip.config.text_config.max_position_embeddings
    assert all(p.dtype == torch.float32 for p in clip.parameters())
    ids = tok(["a red circle"], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    px = proc(images=[(torch.rand(32, 32, 3) * 255).byte().numpy()], return_tensors="pt").pixel_values
    with torch.no_grad():
        out = clip(input_ids=ids, pixel_values=px)
    assert out.logits_per_image.shape == (1, 1)


def test_aesthetic_head_strict_load():
    from safetensors.torch import load_file

    from scorers.aesthetic_head import AestheticMLP

    cfg = json.loads((miniworld.aesthetic_path() / "config.json").read_text())
    assert cfg["kind"] == "mlp"
    head = AestheticMLP(cfg["embed_dim"], cfg["hidden"])
    head.load_state_dict(load_file(str(miniworld.aesthetic_path() / "head.safetensors")), strict=True)
    x = torch.nn.functional.normalize(torch.randn(3, cfg["embed_dim"]), dim=-1)
    assert head.eval()(x).shape == (3, 1)


def test_build_quick_cli(tmp_path):
    from raft_diffusion.cli import main

    out = tmp_path / "mw"
    assert main(["miniworld", "build", "--quick", "--out", str(out), "--seed", "1"]) == 0
    figs = json.loads((out / "figures.json").read_text())
    assert set(figs["train"]) == {"clip", "clip_vision_stage2", "vae", "vae_decoder", "unet_stage1", "unet_stage2",
                                  "aesthetic"}
    assert set(figs["train"]["vae_decoder"]["psnr_db"]) == {"32", "16"}
    assert "generation" in figs["figures"] and (out / "FIGURES.md").is_file()
    assert (out / "pipeline" / "model_index.json").is_file() and (out / "aesthetic" / "head.safetensors").is_file()
    # the last UNet stage added the pooled-text embedding to the first stage's cross-attention UNet
    unet_cfg = json.loads((out / "pipeline" / "unet" / "config.json").read_text())
    assert unet_cfg["addition_embed_type"] == "text"
    assert main(["miniworld", "evaluate", "--assets", str(out)]) == 0
    # every generation figure is read by the independent evaluator and by the CLIP
    gen = figs["figures"]["generation"]["in_domain@16"]
    assert {"shape_acc", "colour_acc", "clip_shape_acc", "clip_colour_acc"} <= set(gen)
    assert figs["figures"]["evaluator"]["shape_acc@32"] >= 0.95
    (out / "FIGURES.md").unlink()
    assert main(["miniworld", "evaluate", "--assets", str(out), "--recompute", "--quick", "--write"]) == 0
    rewritten = json.loads((out / "figures.json").read_text())
    assert rewritten["train"] == figs["train"] and "evaluator" in rewritten["figures"]
    assert "independent evaluator / miniworld CLIP" in (out / "FIGURES.md").read_text()


def test_build_a_new_latent_space_reusing_the_pixel_models(tmp_path):
    """``--reuse clip,aesthetic`` copies the committed pixel-space models and trains only the VAE
    (here with 8 latent channels) and a UNet that fits it; the pipeline generates and is evaluated."""
    from raft_diffusion.cli import main

    out = tmp_path / "mw"
    assert main(["miniworld", "build", "--quick", "--out", str(out), "--latent-channels", "8",
                 "--vae-train-sizes", "32,16", "--reuse", "clip,aesthetic"]) == 0
    committed = miniworld.assets_dir()
    for name in ("clip/model.safetensors", "aesthetic/head.safetensors"):
        assert (out / name).read_bytes() == (committed / name).read_bytes(), name
    figs = json.loads((out / "figures.json").read_text())
    assert figs["settings"]["vae_sizes"] == [32, 16]
    assert set(figs["train"]) == {"clip", "vae", "vae_decoder", "unet_stage1", "unet_stage2", "aesthetic"}
    assert figs["train"]["clip"]["reused_from"] == str(committed) and figs["train"]["aesthetic"]["steps"] == 0
    vae_cfg = json.loads((out / "pipeline" / "vae" / "config.json").read_text())
    unet_cfg = json.loads((out / "pipeline" / "unet" / "config.json").read_text())
    assert vae_cfg["latent_channels"] == unet_cfg["in_channels"] == unet_cfg["out_channels"] == 8
    assert "in_domain@16" in figs["figures"]["generation"]


def test_bad_input_is_one_line_error(tmp_path, capsys):
    from raft_diffusion.cli import main

    assert main(["miniworld", "evaluate", "--assets", str(tmp_path)]) == 2
    assert main(["miniworld", "build", "--quick", "--out", str(tmp_path), "--seed", "-1"]) == 2
    assert main(["miniworld", "build", "--quick", "--out", str(tmp_path), "--latent-channels", "0"]) == 2
    assert "--latent-channels must be >= 1, got 0" in capsys.readouterr().err
    assert main(["miniworld", "build", "--quick", "--out", str(tmp_path), "--vae-blocks", "4"]) == 2
    assert "--vae-blocks must be 1, 2 or 3 (downsampling 1x, 2x, 4x), got 4" in capsys.readouterr().err
    assert main(["miniworld", "build", "--quick", "--out", str(tmp_path), "--vae-train-sizes", "32,x"]) == 2
    assert "--vae-train-sizes '32,x' must be sizes in pixels, multiples of 8" in capsys.readouterr().err
    assert main(["miniworld", "build", "--quick", "--out", str(tmp_path), "--reuse", "clip,unet"]) == 2
    assert "cannot reuse unet; reusable models: clip, aesthetic" in capsys.readouterr().err
    assert main(["miniworld", "build", "--quick", "--out", str(tmp_path / "b"), "--reuse", "clip",
                 "--reuse-from", str(tmp_path)]) == 2
    assert "has no clip to reuse" in capsys.readouterr().err
    assert not (tmp_path / "b").exists(), "refused before anything is written"


@pytest.mark.parametrize("name", ["in_domain_prompts", "out_of_domain_prompts"])
def test_prompt_sets(name):
    prompts = getattr(miniworld, name)()
    assert 5 <= len(prompts) <= 30 and len(set(prompts)) == len(prompts)


def test_faithful_filter_keeps_images_that_follow_their_prompt():
    from raft_diffusion.core.backend import Samples
    from raft_diffusion.core.ranking import group_ids
    from raft_diffusion.miniworld import world
    from raft_diffusion.miniworld.fidelity import FidelityScorer, faithful
    from prompts.types import Prompt

    scenes = world.heldout_scenes(12)
    images = world.render_batch(scenes)
    right = [f"a {s.objects[0].colour} {s.objects[0].shape}" for s in scenes]
    wrong = [f"a {next(c for c in world.COLOURS if c != s.objects[0].colour)} {s.objects[0].shape}" for s in scenes]
    texts = right + wrong
    samples = Samples(prompts=[Prompt(t) for t in texts], groups=group_ids(len(texts), 1), ids=[str(i) for i in range(len(texts))],
                      seeds=list(range(len(texts))), outputs=torch.cat([images, images]))
    keep = faithful(samples, [0.0] * len(texts))
    shape_ok, colour_ok = FidelityScorer().correctness(samples.outputs, texts)
    assert keep == [bool(s and c) for s, c in zip(shape_ok.tolist(), colour_ok.tolist())]
    assert sum(keep[:12]) >= 10, "renders named right should mostly pass"
    assert not any(keep[12:]), "an image of another colour than prompted must be discarded"


def test_unet_stage_continues_from_previous(tmp_path):
    """init_from carries every tensor the two UNets share; the added embedding starts fresh."""
    from diffusers import UNet2DConditionModel

    from raft_diffusion.miniworld.train_clip import train_clip
    from raft_diffusion.miniworld.train_unet import train_unet
    from raft_diffusion.miniworld.train_vae import train_vae

    train_clip(tmp_path, steps=1, quick=True)
    train_vae(tmp_path, steps=1, quick=True)
    train_unet(tmp_path, steps=1, n_data=8, quick=True, checkpoint_every=0, addition_embed=False)
    first = UNet2DConditionModel.from_pretrained(tmp_path / "pipeline" / "unet").state_dict()
    train_unet(tmp_path, steps=0, n_data=8, quick=True, checkpoint_every=0, init_from=tmp_path / "pipeline")
    second = UNet2DConditionModel.from_pretrained(tmp_path / "pipeline" / "unet").state_dict()
    assert set(first) < set(second) and any(k.startswith("add_embedding") for k in set(second) - set(first))
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_decoder_finetune_keeps_the_latent_space(tmp_path):
    """Only the decoder moves: the encoder's latents (what the UNet was trained on) stay the same."""
    from diffusers import AutoencoderKL

    from raft_diffusion.miniworld import world
    from raft_diffusion.miniworld.train_vae import finetune_decoder, train_vae

    train_vae(tmp_path / "a", steps=2, quick=True)
    before = AutoencoderKL.from_pretrained(tmp_path / "a" / "vae")
    r = finetune_decoder(tmp_path / "a" / "vae", tmp_path / "b", steps=3, batch_size=4, lr=1e-2)
    after = AutoencoderKL.from_pretrained(tmp_path / "b" / "vae")
    assert r["steps"] == 3 and set(r["psnr_db"]) == {world.NATIVE_RESOLUTION, miniworld.ADAPTATION_RESOLUTION}
    x = world.render_batch(world.heldout_scenes(2)) * 2 - 1
    with torch.no_grad():
        z0, z1 = before.encode(x).latent_dist.mean, after.encode(x).latent_dist.mean
        d0, d1 = before.decode(z0).sample, after.decode(z0).sample
    assert torch.equal(z0, z1) and after.config.scaling_factor == before.config.scaling_factor
    assert not torch.allclose(d0, d1)


@pytest.mark.parametrize("blocks,channels,side", [(3, 4, 8), (2, 4, 16), (3, 16, 8)])
def test_vae_blocks_set_the_latent_room(tmp_path, blocks, channels, side):
    """``blocks`` sets the downsampling, ``latent_channels`` the depth: 32 px renders become
    channels x side x side latents."""
    from diffusers import AutoencoderKL

    from raft_diffusion.miniworld import world
    from raft_diffusion.miniworld.train_vae import train_vae

    train_vae(tmp_path, steps=1, quick=True, blocks=blocks, latent_channels=channels)
    vae = AutoencoderKL.from_pretrained(tmp_path / "vae")
    with torch.no_grad():
        z = vae.encode(world.render_batch(world.heldout_scenes(1)) * 2 - 1).latent_dist.mean
    assert tuple(z.shape) == (1, channels, side, side)


def test_vae_trained_at_two_sizes_sees_the_second(tmp_path):
    """``sizes=(32, 16)`` adds a 16 px loss: from the same seed the weights differ from a 32 px run."""
    from safetensors.torch import load_file

    from raft_diffusion.miniworld.train_vae import train_vae

    train_vae(tmp_path / "a", steps=2, quick=True)
    train_vae(tmp_path / "a2", steps=2, quick=True)
    train_vae(tmp_path / "b", steps=2, quick=True, sizes=(32, 16))
    a, a2, b = (load_file(tmp_path / x / "vae" / "diffusion_pytorch_model.safetensors") for x in ("a", "a2", "b"))
    assert all(torch.equal(a[k], a2[k]) for k in a), "seeded: the same settings give the same weights"
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)
