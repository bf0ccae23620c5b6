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
    assert set(figs["train"]) == {"clip", "clip_vision", "vae", "unet", "aesthetic"}
    assert "generation" in figs["figures"] and (out / "FIGURES.md").is_file()
    assert (out / "pipeline" / "model_index.json").is_file() and (out / "aesthetic" / "head.safetensors").is_file()
    assert main(["miniworld", "evaluate", "--assets", str(out)]) == 0


def test_bad_input_is_one_line_error(tmp_path):
    from raft_diffusion.cli import main

    assert main(["miniworld", "evaluate", "--assets", str(tmp_path)]) == 2
    assert main(["miniworld", "build", "--quick", "--out", str(tmp_path), "--seed", "-1"]) == 2


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
