"""End to end on a tiny SD pipeline saved to and loaded from disk: rows, LoRA, resume, diffusers loading."""

from __future__ import annotations

import json

import pytest
import torch

from raft_diffusion.api import build_loop, train
from raft_diffusion.config import RaftConfig
from tests.fakes import TINY_BASE
from raft_diffusion.core.records import History


def tiny_config(pipe_dir, out_dir, **overrides):
    base = {
        "model.pretrained": str(pipe_dir),
        "raft.rounds": 2, "raft.k": 2, "raft.prompts_per_round": 2, "raft.seed": 3,
        "sampling.steps": 2, "sampling.batch_size": 4,
        "train.steps_per_round": 2, "train.batch_size": 2, "train.learning_rate": 1e-3,
        "prompts.eval": "cifar10", "prompts.eval_limit": 2,
        "output.dir": str(out_dir),
    }
    base.update(overrides)
    return RaftConfig().replace({**TINY_BASE, **base})


def snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def test_two_rounds_rows_and_parameters(tiny_pipeline_dir, tmp_path):
    loop = build_loop(tiny_config(tiny_pipeline_dir, tmp_path / "run"), progress=False)
    pipe = loop.backend.pipe
    before = {name: snapshot(getattr(pipe, name)) for name in ("unet", "vae", "text_encoder")}
    history = loop.run()

    assert [r["round"] for r in history.rounds] == [1, 2]
    for row in history.rounds:
        assert row["n_samples"] == 4 and row["n_kept"] == 2 and row["train_steps"] == 2
        assert set(row["best_per_prompt"]) and row["time_generate_s"] > 0
    assert [e["round"] for e in history.evals] == [0, 1, 2]
    assert History.load(tmp_path / "run").rounds == json.loads(json.dumps(history.rounds))

    after = {name: snapshot(getattr(pipe, name)) for name in ("unet", "vae", "text_encoder")}
    lora = [n for n in after["unet"] if "lora_" in n]
    assert lora, "no LoRA parameters"
    for name in lora:
        assert not torch.equal(before["unet"][name], after["unet"][name]), f"LoRA parameter {name} did not change"
    for part, params in after.items():
        for name, value in params.items():
            if "lora_" not in name:
                assert torch.equal(before[part][name], value), f"frozen parameter {part}.{name} changed"

    run = tmp_path / "run"
    for rel in ("config.yaml", "metrics.jsonl", "eval.jsonl", "reward_curve.png", "pytorch_lora_weights.safetensors",
                "rounds/round-0001/grid.png", "rounds/round-0002/samples.jsonl"):
        assert (run / rel).is_file(), rel
    assert len(list((run / "rounds" / "round-0001" / "kept").glob("*.png"))) == 2


@pytest.mark.parametrize("targets", [None, ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "ff.net.0.proj"]],
                         ids=["attention", "attention+convs+ff"])
def test_saved_lora_loads_in_diffusers_whole(tiny_pipeline_dir, tmp_path, targets):
    """diffusers' load_lora_weights restores every trained LoRA weight (attention, resnet convs and
    feed-forward alike), changes the output, and unloads back to the base model."""
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    over = {"lora.init": "gaussian", "raft.rounds": 1, **({"lora.target_modules": targets} if targets else {})}
    loop = build_loop(tiny_config(tiny_pipeline_dir, tmp_path / "run", **over), progress=False)
    loop.run()
    trained = get_peft_model_state_dict(loop.backend.pipe.unet)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def image():
        g = torch.Generator().manual_seed(0)
        return pipe("a photo of a cat", num_inference_steps=2, generator=g, output_type="pt").images

    base = image()
    pipe.load_lora_weights(tmp_path / "run")
    loaded = get_peft_model_state_dict(pipe.unet, adapter_name=pipe.unet.active_adapters()[0])
    assert sorted(loaded) == sorted(trained), "every trained LoRA weight is restored"
    assert all(torch.equal(loaded[k].float(), trained[k].float()) for k in trained)
    tuned = image()
    assert not torch.allclose(base, tuned, atol=1e-6), "the LoRA did not change the pipeline's output"
    pipe.unload_lora_weights()
    assert torch.allclose(base, image(), atol=1e-6)


def test_resume_continues_at_the_next_round_and_matches(tiny_pipeline_dir, tmp_path):
    from safetensors.torch import load_file

    full = train(tiny_config(tiny_pipeline_dir, tmp_path / "full"), progress=False)
    train(tiny_config(tiny_pipeline_dir, tmp_path / "part", **{"raft.rounds": 1}), progress=False)
    resumed = train(tiny_config(tiny_pipeline_dir, tmp_path / "part", **{"output.resume": "latest"}), progress=False)
    assert [r["round"] for r in resumed.rounds] == [1, 2]
    assert [r["kept_ids"] for r in resumed.rounds] == [r["kept_ids"] for r in full.rounds]
    a = load_file(tmp_path / "full" / "pytorch_lora_weights.safetensors")
    b = load_file(tmp_path / "part" / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_refuses_a_folder_holding_another_run(tiny_pipeline_dir, tmp_path):
    from raft_diffusion.errors import ConfigError

    cfg = tiny_config(tiny_pipeline_dir, tmp_path / "run", **{"raft.rounds": 1})
    train(cfg, progress=False)
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match="already holds a run; pass --resume latest"):
        train(cfg, progress=False)
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before


def test_nan_loss_stops_with_round_and_cause(tiny_pipeline_dir, tmp_path):
    from raft_diffusion.errors import RunError

    loop = build_loop(tiny_config(tiny_pipeline_dir, tmp_path / "run", **{"prompts.eval": None}), progress=False)
    loop.backend.trainer.loss = lambda x0, draws, cond: torch.tensor(float("nan"), requires_grad=True)
    with pytest.raises(RunError, match=r"round 1, fine-tuning: training loss is nan at step 1"):
        loop.run()
    assert not (tmp_path / "run" / "checkpoints").exists() or not list((tmp_path / "run" / "checkpoints").iterdir())


def test_caption_dropout_trains_a_share_against_the_empty_prompt(tiny_pipeline_dir, tmp_path):
    from raft_diffusion.errors import ConfigError

    loop = build_loop(tiny_config(tiny_pipeline_dir, tmp_path / "run", **{"train.caption_dropout": 0.5}), progress=False)
    trainer = loop.backend.trainer
    from raft_diffusion.diffusion.families.base import where_cond

    uncond = loop.backend.encoder.negative(1)
    embeds = torch.randn(400, *uncond["prompt_embeds"].shape[1:])
    out = where_cond(trainer._drop_mask(400), trainer.uncond, {"prompt_embeds": embeds})["prompt_embeds"]
    uncond = uncond["prompt_embeds"]
    dropped = [bool(torch.equal(row, uncond[0])) for row in out]
    kept = [bool(torch.equal(a, b)) for a, b in zip(out, embeds)]
    assert all(d != k for d, k in zip(dropped, kept)), "every row is either its own prompt or the empty one"
    assert 150 < sum(dropped) < 250
    from raft_diffusion.config import validate

    with pytest.raises(ConfigError, match="caption_dropout"):
        validate(tiny_config(tiny_pipeline_dir, tmp_path / "x", **{"train.caption_dropout": 1.0}))


def test_kl_weight_pulls_toward_the_base_model(tiny_pipeline_dir, tmp_path):
    """The penalty is the squared distance to the adapters-off UNet's output: zero while the LoRA is
    still the base model, positive once it has moved, and a heavy weight keeps the model nearer."""
    from raft_diffusion.config import validate
    from raft_diffusion.errors import ConfigError

    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 4, 8, 8, generator=g)
    draws = {"noise": torch.randn(x0.shape, generator=g), "timesteps": torch.randint(0, 1000, (4,), generator=g)}

    def trained(weight, name):
        loop = build_loop(tiny_config(tiny_pipeline_dir, tmp_path / name, **{
            "train.kl_weight": weight, "train.steps_per_round": 12, "train.learning_rate": 3e-2}), progress=False)
        tr = loop.backend.trainer
        emb = loop.backend.encoder.negative(4)
        with torch.no_grad():
            start = tr.loss(x0, draws, emb)
        tr.train(x0, emb, progress=False)
        with torch.no_grad():
            pred, target, base = tr.prediction(x0, draws, emb)
            loss = tr.loss(x0, draws, emb)
        return start, pred, target, base, loss, tr

    start0, pred0, _, base0, _, _ = trained(0.0, "a")
    start1, pred1, target, base1, loss, tr = trained(10.0, "b")
    assert base0 is None and base1 is not None
    assert all(p.requires_grad for p in tr.params), "adapters are back on and trainable"
    assert torch.allclose(start0, start1), "a zero LoRA is the base model: no penalty at the start"
    penalty = (pred1 - base1).pow(2).flatten(1).mean(1)
    assert bool((penalty > 0).all())
    assert torch.allclose(loss, F.mse_loss(pred1, target) + 10.0 * F.mse_loss(pred1, base1))
    assert penalty.mean() < (pred0 - base1).pow(2).mean(), "the anchored model stays nearer the base"
    with pytest.raises(ConfigError, match=r"train.kl_weight must be >= 0"):
        validate(tiny_config(tiny_pipeline_dir, tmp_path / "x", **{"train.kl_weight": -1.0}))


def test_kl_anchor_round_pulls_toward_the_round_start(tiny_pipeline_dir, tmp_path):
    """kl_anchor 'round': the reference is the LoRA as it was when the round's training began,
    swapped in for the reference forward only."""
    loop = build_loop(tiny_config(tiny_pipeline_dir, tmp_path / "r", **{
        "train.kl_weight": 1.0, "train.kl_anchor": "round", "train.steps_per_round": 6,
        "train.learning_rate": 3e-2}), progress=False)
    tr = loop.backend.trainer
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, 4, 8, 8, generator=g)
    emb = loop.backend.encoder.negative(4)
    draws = {"noise": torch.randn(x0.shape, generator=g), "timesteps": torch.randint(0, 1000, (4,), generator=g)}
    tr.train(x0, emb, progress=False)
    first = [p.detach().clone() for p in tr.params]
    tr.train(x0, emb, progress=False)
    second = [p.detach().clone() for p in tr.params]
    assert all(torch.equal(a, f) for a, f in zip(tr._anchor, first)), "the anchor is the LoRA at the round's start"
    assert not all(torch.equal(f, s) for f, s in zip(first, second))
    with torch.no_grad():
        with tr._reference():
            assert all(torch.equal(p, f) for p, f in zip(tr.params, first))
        assert all(torch.equal(p, s) for p, s in zip(tr.params, second)), "the current weights come back"
        _, _, reference = tr.prediction(x0, draws, emb)
        tr.kl_anchor = "base"
        _, _, base = tr.prediction(x0, draws, emb)
    assert not torch.allclose(reference, base), "the round's anchor is not the base model"


def test_latents_encoded_trains_on_the_kept_images_through_the_vae(tiny_pipeline_dir, tmp_path):
    """train.latents 'encoded': the kept images go back through the VAE encoder (posterior mean,
    scaled), instead of the sampler's final latents; the prompt embeddings are the same."""
    from prompts.types import Prompt
    from raft_diffusion.config import validate
    from raft_diffusion.diffusion import sampling
    from raft_diffusion.errors import ConfigError

    def kept_batch(mode, name):
        loop = build_loop(tiny_config(tiny_pipeline_dir, tmp_path / name, **{"train.latents": mode}), progress=False)
        backend = loop.backend
        samples = backend.generate([Prompt("a red circle"), Prompt("a blue cross")], 2, [1, 2, 3, 4], list("abcd"))
        return backend, samples, backend._kept_batch(samples, [0, 3])

    _, samples, (sampled, emb_s) = kept_batch("sampled", "s")
    backend, samples_e, (encoded, emb_e) = kept_batch("encoded", "e")
    assert torch.equal(samples.outputs, samples_e.outputs), "the same images either way"
    assert torch.equal(sampled, samples.extras["latents"][[0, 3]])
    vae = backend.pipe.vae
    with torch.no_grad():
        want = vae.encode(samples.outputs[[0, 3]] * 2 - 1).latent_dist.mean * vae.config.scaling_factor
    assert encoded.shape == sampled.shape and torch.allclose(encoded, want, atol=1e-5)
    assert not torch.allclose(encoded, sampled), "a random VAE does not map its decodes back onto the sampler's latents"
    assert emb_s.keys() == emb_e.keys() and all(torch.equal(emb_s[k], emb_e[k]) for k in emb_s)
    assert torch.allclose(sampling.encode_images(backend.family, samples.outputs[[0, 3]], batch_size=1), want, atol=1e-5)
    with pytest.raises(ConfigError, match=r"train.latents must be 'sampled' or 'encoded', got 'pixels'"):
        validate(tiny_config(tiny_pipeline_dir, tmp_path / "x", **{"train.latents": "pixels"}))
