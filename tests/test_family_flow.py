"""Flow-matching families (SD3 / SD3.5 and FLUX.1) on tiny random pipelines saved to disk and loaded
back with ``from_pretrained``: detection, 2-round runs, the LoRA file through the pipeline class's
``load_lora_weights``, the flow-matching loss against diffusers' training helpers, latents and
guidance, T5 dropped, memory settings, a rising weight-free reward, presets; and, on FLUX (the
family with the most moving parts: packed latents, dynamic shift, guidance), 1 vs 2 processes and
a killed run resumed bit for bit."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from raft_diffusion.api import build_loop
from raft_diffusion.config import RaftConfig, load_config
from raft_diffusion.core import faults
from raft_diffusion.diffusion.families import family_for_pipeline_class, get_family
from raft_diffusion.diffusion.families.flux import FluxFamily
from raft_diffusion.diffusion.families.sd3 import SD3Family
from raft_diffusion.diffusion.pipeline import load_family
from raft_diffusion.errors import ConfigError
from tests.fakes import TINY_BASE
from tests.test_distributed import launch, lora_of
from tests.test_offload import CPU, FAKE, moves, of  # noqa: F401  (moves: a fixture)

FAMILIES = {"sd3": SD3Family, "flux": FluxFamily}
PIPELINES = {"sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline"}


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    """{family: folder} of tiny random SD3 and FLUX pipelines written with save_pretrained."""
    from raft_diffusion.diffusion.tiny import write_tiny_pipeline

    root = tmp_path_factory.mktemp("tiny-flow")
    return {name: write_tiny_pipeline(root / name, seed=0, family=name) for name in FAMILIES}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def flow_config(pipe_dir, out_dir, **overrides) -> RaftConfig:
    base = {
        **TINY_BASE, "model.pretrained": str(pipe_dir), "raft.rounds": 2, "raft.k": 2, "raft.prompts_per_round": 2,
        "raft.seed": 3, "sampling.scheduler": None, "sampling.steps": 2, "sampling.batch_size": 4, "sampling.height": 32,
        "sampling.width": 32, "sampling.guidance_scale": 3.5, "train.steps_per_round": 2, "train.batch_size": 2,
        "train.learning_rate": 1e-3, "output.dir": str(out_dir),
    }
    return RaftConfig().replace({**base, **overrides})


def snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def load_pipe(name, folder):
    import diffusers

    pipe = getattr(diffusers, PIPELINES[name]).from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ------------------------------------------------------------------ detection and tiny models
@pytest.mark.parametrize("name", FAMILIES)
def test_family_detected_from_model_index_with_its_sizes(name, pipes):
    fam = load_family(str(pipes[name]), device="cpu")
    assert type(fam) is FAMILIES[name] is get_family(name) is family_for_pipeline_class(PIPELINES[name])
    assert type(fam.pipe).__name__ == PIPELINES[name] and fam.denoiser is fam.pipe.transformer
    assert fam.size_factor() == 4 and fam.native_size() % fam.size_factor() == 0
    encoders = [getattr(fam.pipe, a) for a in fam.pipe.components if a.startswith("text_encoder")]
    assert len(fam.text_encoders()) == len(encoders) == (3 if name == "sd3" else 2)
    assert all(any(m is e for m in fam.frozen_modules()) for e in encoders), "model.offload parks every text encoder"


def test_tiny_model_command_and_aliases_build_offline(tmp_path):
    from raft_diffusion.cli import main
    from raft_diffusion.diffusion.pipeline import resolve_source

    assert main(["tiny-model", "--family", "sd3", str(tmp_path / "sd3")]) == 0
    assert json.loads((tmp_path / "sd3" / "model_index.json").read_text())["_class_name"] == "StableDiffusion3Pipeline"
    source, local = resolve_source("tiny-flux")
    assert local and isinstance(load_family("tiny-flux", device="cpu"), FluxFamily)
    assert json.loads((Path(source) / "model_index.json").read_text())["tokenizer_2"][1] in ("T5Tokenizer", "T5TokenizerFast")


# ------------------------------------------------------------------ runs and the LoRA file
@pytest.mark.parametrize("name", FAMILIES)
def test_two_rounds_train_every_lora_parameter_and_nothing_frozen(name, pipes, tmp_path):
    loop = build_loop(flow_config(pipes[name], tmp_path / "run"), progress=False)
    fam = loop.backend.family
    parts = {"transformer": fam.denoiser, "vae": fam.vae, **{f"te{i}": m for i, m in enumerate(fam.text_encoders())}}
    before = {k: snapshot(m) for k, m in parts.items()}
    history = loop.run()
    assert [r["round"] for r in history.rounds] == [1, 2]
    assert all(r["n_samples"] == 4 and r["n_kept"] == 2 and r["train_steps"] == 2 for r in history.rounds)
    after = {k: snapshot(m) for k, m in parts.items()}
    lora = [n for n in after["transformer"] if "lora_" in n]
    assert len(lora) == 2 * sum(1 for n, _ in fam.denoiser.named_modules() if n.endswith(".base_layer"))
    assert any(".ff." in n for n in lora) == (name == "flux"), "FLUX's default targets include the feed-forwards"
    # SD3's last block is context_pre_only: its context queries (attn.add_q_proj) reach no output, so that
    # LoRA's B gets no gradient and stays zero (its A moves by weight decay only)
    dead = f"transformer_blocks.{len(fam.denoiser.transformer_blocks) - 1}.attn.add_q_proj.lora_B" if name == "sd3" else None
    for part, params in after.items():
        for n, value in params.items():
            changed = not torch.equal(before[part][n], value)
            want = "lora_" in n and not (dead and n.startswith(dead))
            assert changed == want, f"{part}.{n}: {'changed' if changed else 'did not change'}"
    assert (tmp_path / "run" / "pytorch_lora_weights.safetensors").is_file()


@pytest.mark.parametrize("name", FAMILIES)
def test_saved_lora_loads_through_the_pipeline_class(name, pipes, tmp_path):
    from peft.utils import get_peft_model_state_dict

    loop = build_loop(flow_config(pipes[name], tmp_path / "run", **{"raft.rounds": 1, "lora.init": "gaussian"}), progress=False)
    loop.run()
    trained = get_peft_model_state_dict(loop.backend.family.denoiser)
    pipe = load_pipe(name, pipes[name])

    def image():
        return pipe("a photo of a cat", height=32, width=32, num_inference_steps=2,
                    generator=torch.Generator().manual_seed(0), output_type="pt").images

    base = image()
    pipe.load_lora_weights(tmp_path / "run")
    loaded = get_peft_model_state_dict(pipe.transformer, adapter_name=pipe.transformer.active_adapters()[0])
    assert sorted(loaded) == sorted(trained) and all(torch.equal(loaded[k].float(), trained[k].float()) for k in trained)
    assert not torch.allclose(base, image(), atol=1e-6), "the LoRA did not change the pipeline's output"
    pipe.unload_lora_weights()
    assert torch.allclose(base, image(), atol=1e-6)


# ------------------------------------------------------------------ the flow-matching loss
@pytest.mark.parametrize("name, scheme", [("sd3", "logit_normal"), ("sd3", "mode"), ("sd3", "cosmap"),
                                          ("flux", "logit_normal"), ("flux", "sigma_sqrt"), ("flux", "none")])
def test_flow_loss_equals_diffusers_training_helpers(name, scheme, pipes, tmp_path):
    """The trainer's micro-batch loss from a generator state equals the loss computed here from
    diffusers' helpers: noise then u (compute_density_for_timestep_sampling) from the same state,
    indices into the scheduler's timesteps / sigmas (+ FLUX's dynamic shift), x_t, target, weighting."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift
    from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

    over = {"train.weighting_scheme": scheme, "train.logit_mean": 0.3, "train.logit_std": 0.8, "lora.init": "gaussian"}
    loop = build_loop(flow_config(pipes[name], tmp_path / "run", **over), progress=False)
    fam, tr = loop.backend.family, loop.backend.trainer
    x0 = fam.encode(torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    cond = loop.backend.encoder(["a photo of a cat", "a dog", "a ship", "a red car"])
    tr.generator.manual_seed(11)
    tr._latents, tr._cond = x0, cond
    loss, _ = tr.micro_batch_loss(torch.arange(4), slice(0, 4))
    draws = fam.draw_training_noise(x0.shape, torch.Generator().manual_seed(11))

    g = torch.Generator().manual_seed(11)
    noise = torch.randn(x0.shape, generator=g)
    u = compute_density_for_timestep_sampling(scheme, 4, logit_mean=0.3, logit_std=0.8, mode_scale=1.29, generator=g)
    sched = FlowMatchEulerDiscreteScheduler.from_pretrained(pipes[name], subfolder="scheduler")
    idx = (u * sched.config.num_train_timesteps).long()
    timesteps, sigmas = sched.timesteps[idx], sched.sigmas[idx]
    if name == "flux":
        c = sched.config
        mu = calculate_shift(x0.shape[1], c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)
        assert mu > 0.1, "a resolution shift this test can see"
        sigmas = sched.time_shift(mu, 1.0, sigmas)
        timesteps = sigmas * 1000
    assert torch.equal(draws["noise"], noise) and torch.allclose(draws["sigmas"], sigmas) and torch.allclose(draws["timesteps"], timesteps)
    s = sigmas.view(-1, *([1] * (x0.dim() - 1)))
    noisy, target = (1 - s) * x0 + s * noise, noise - x0
    with torch.no_grad():
        if name == "sd3":
            pred = fam.denoiser(hidden_states=noisy, timestep=timesteps, encoder_hidden_states=cond["prompt_embeds"],
                                pooled_projections=cond["pooled_prompt_embeds"]).sample
        else:
            pred = fam.denoiser(hidden_states=noisy, timestep=timesteps / 1000, guidance=torch.full((4,), 3.5),
                                pooled_projections=cond["pooled_prompt_embeds"], encoder_hidden_states=cond["prompt_embeds"],
                                txt_ids=torch.zeros(cond["prompt_embeds"].shape[1], 3),
                                img_ids=FluxPipeline._prepare_latent_image_ids(4, 8, 8, "cpu", torch.float32)).sample
    weighting = compute_loss_weighting_for_sd3(scheme, sigmas=s)
    want = torch.mean((weighting.float() * (pred.float() - target.float()) ** 2).reshape(4, -1), 1).mean()
    torch.testing.assert_close(loss.detach(), want, rtol=1e-5, atol=1e-7)
    assert (weighting.flatten() == 1).all() == (scheme not in ("cosmap", "sigma_sqrt"))


# ------------------------------------------------------------------ latents, guidance, T5
@pytest.mark.parametrize("name", FAMILIES)
def test_decode_matches_the_pipeline_and_encode_inverts_the_vae(name, pipes):
    fam = load_family(str(pipes[name]), device="cpu")
    fam.size = (32, 32)
    kwargs = dict(prompt="a photo of a cat", height=32, width=32, num_inference_steps=2)
    latents = fam.pipe(**kwargs, generator=torch.Generator().manual_seed(0), output_type="latent").images
    images = fam.pipe(**kwargs, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert torch.allclose(fam.decode(latents), images, atol=1e-5)
    pixels = torch.rand(2, 3, 32, 32)
    vae = fam.vae
    with torch.no_grad():
        z = (vae.encode(pixels * 2 - 1).latent_dist.mean - vae.config.shift_factor) * vae.config.scaling_factor
    if name == "flux":
        z = fam.pipe._pack_latents(z, 2, 4, 16, 16)
    got = fam.encode(pixels)
    assert got.shape[1:] == latents.shape[1:]
    assert torch.allclose(got, z, atol=1e-5)


def test_flux_guidance_only_for_distilled_models_and_the_shift_follows_the_size():
    seen = []
    for distilled in (True, False):
        fam = FluxFamily(FluxFamily.build_tiny(guidance_embeds=distilled))
        fam.size, fam.guidance_scale = (32, 32), 4.0
        hook = fam.denoiser.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["guidance"]), with_kwargs=True)
        x0 = fam.encode(torch.rand(2, 3, 32, 32))
        draws = fam.draw_training_noise(x0.shape, torch.Generator().manual_seed(0))
        noisy, _ = fam.training_pair(x0, draws)
        with torch.no_grad():
            fam.predict(fam.denoiser, noisy, draws, fam.encode_prompts(["a cat", "a dog"]), fam.size)
        hook.remove()
    assert torch.equal(seen[0], torch.full((2,), 4.0)) and seen[1] is None
    u = torch.tensor([0.2, 0.5, 0.8])
    small = fam.training_sigmas(u)
    fam.size = (128, 128)
    assert (fam.training_sigmas(u) > small).all(), "more image tokens shift the sigmas up (calculate_shift)"


def test_sd3_with_t5_dropped_encodes_zeros_in_its_place_and_trains(pipes, tmp_path):
    loop = build_loop(flow_config(pipes["sd3"], tmp_path / "run", **{"model.drop_t5": True, "raft.rounds": 1}), progress=False)
    fam = loop.backend.family
    assert fam.pipe.text_encoder_3 is None and fam.pipe.tokenizer_3 is None and len(fam.text_encoders()) == 2
    full = load_family(str(pipes["sd3"]), device="cpu").encode_prompts(["a photo of a cat"])["prompt_embeds"]
    dropped = loop.backend.encoder(["a photo of a cat"])["prompt_embeds"]
    n_clip = fam.pipe.tokenizer_max_length
    assert dropped.shape[1] == n_clip + 256 and not dropped[:, n_clip:].any() and full[:, n_clip:].any()
    assert torch.allclose(dropped[:, :n_clip], full[:, :n_clip])
    before = snapshot(fam.denoiser)
    row = loop.run().rounds[0]
    assert row["train_steps"] == 2 and any(not torch.equal(before[n], p) for n, p in fam.denoiser.named_parameters() if "lora_" in n)


def test_non_flow_sampler_and_flux_without_t5_are_refused(pipes, tmp_path):
    with pytest.raises(ConfigError, match=r"StableDiffusion3Pipeline a DPMSolverMultistepScheduler, .*set sampling.scheduler: null"):
        build_loop(flow_config(pipes["sd3"], tmp_path / "a", **{"sampling.scheduler": "dpm++"}), progress=False)
    with pytest.raises(ConfigError, match="model.drop_t5 is for SD3 only"):
        build_loop(flow_config(pipes["flux"], tmp_path / "b", **{"model.drop_t5": True}), progress=False)


# ------------------------------------------------------------------ memory settings
def test_bfloat16_weights_and_gradient_checkpointing_train_a_float32_lora(pipes, tmp_path):
    over = {"model.dtype": "bfloat16", "train.gradient_checkpointing": True, "raft.rounds": 1}
    loop = build_loop(flow_config(pipes["sd3"], tmp_path / "run", **over), progress=False)
    fam, tr = loop.backend.family, loop.backend.trainer
    assert fam.denoiser.is_gradient_checkpointing and fam.denoiser.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in tr.params)
    before = [p.detach().clone() for p in tr.params]
    row = loop.run().rounds[0]
    assert row["train_loss"] == row["train_loss"] and any(not torch.equal(a, p) for a, p in zip(before, tr.params))


def test_offload_parks_every_text_encoder_and_the_vae(pipes, tmp_path, monkeypatch, moves):  # noqa: F811
    from diffusers import SD3Transformer2DModel

    from raft_diffusion.diffusion.backend import DiffusionBackend

    fam = load_family(str(pipes["sd3"]), device="cpu")
    monkeypatch.setattr(SD3Transformer2DModel, "device", property(lambda self: FAKE))
    moves.clear()
    backend = DiffusionBackend(flow_config(pipes["sd3"], tmp_path, **{"model.offload": True}), pipe=fam.pipe, progress=False)
    assert backend.offload.device == FAKE
    for module in (fam.pipe.vae, fam.pipe.text_encoder, fam.pipe.text_encoder_2, fam.pipe.text_encoder_3):
        assert of(moves, module) == [CPU]


# ------------------------------------------------------------------ the reward rises
@pytest.mark.parametrize("name", FAMILIES)
def test_jpeg_compressibility_rises_over_rounds(name, pipes, tmp_path):
    """Paired eval (fixed seeds) before and after 5 rounds, best 1 of 8 per prompt, at 64 px (at 32
    px a JPEG is mostly header). Over seeds 0-5 the gain was 0.04-0.07 (SD3) and 0.06-0.10 (FLUX)
    against a per-image spread (std) of about 0.02; the LoRA also adapts the output layers so that a tiny
    random model can follow."""
    targets = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "proj_out", "norm_out.linear"]
    over = {"raft.rounds": 5, "raft.k": 8, "raft.seed": 0, "raft.eval_samples_per_prompt": 8, "prompts.eval": "cifar10",
            "prompts.eval_limit": 2, "sampling.steps": 4, "sampling.batch_size": 16, "sampling.height": 64,
            "sampling.width": 64, "sampling.guidance_scale": 1.0, "lora.target_modules": targets,
            "train.steps_per_round": 20, "train.learning_rate": 3e-2, "output.save_grids": False, "output.save_kept": False}
    history = build_loop(flow_config(pipes[name], tmp_path / "run", **over), progress=False).run()
    evals = [e["jpeg-compressibility"] for e in history.evals]
    assert len(evals) == 6 and evals[-1] > evals[0] + 0.015, evals


# ------------------------------------------------------------------ presets
@pytest.mark.parametrize("preset, hub_id", [
    ("sd35-medium-aesthetic", "stabilityai/stable-diffusion-3.5-medium"),
    ("sd35-medium-resolution-512", "stabilityai/stable-diffusion-3.5-medium"),
    ("flux1-dev-aesthetic", "black-forest-labs/FLUX.1-dev"),
    ("flux1-schnell-aesthetic", "black-forest-labs/FLUX.1-schnell"),
])
def test_flow_presets_load(preset, hub_id):
    cfg = load_config(preset)
    assert cfg.model.pretrained == hub_id and cfg.sampling.scheduler is None and cfg.model.dtype == "bfloat16"
    assert cfg.train.gradient_checkpointing and (cfg.sampling.height or 1024) % 16 == 0
    if "schnell" in preset:
        assert cfg.sampling.steps <= 4 and cfg.sampling.guidance_scale == 0


# ------------------------------------------------------------------ FLUX: processes and resume
def flux_args(pipe_dir, out_dir, *extra):
    return [
        "train", "tiny-demo", "--no-progress", "--output", str(out_dir), "--model.pretrained", str(pipe_dir),
        "--raft.rounds", "2", "--raft.k", "2", "--raft.prompts_per_round", "2", "--raft.seed", "3",
        "--sampling.scheduler", "null", "--sampling.steps", "2", "--sampling.batch_size", "4", "--sampling.height", "32",
        "--sampling.width", "32", "--sampling.guidance_scale", "3.5", "--lora.target_modules", "[]",
        "--train.steps_per_round", "3", "--train.batch_size", "2", "--train.learning_rate", "1e-3",
        "--train.caption_dropout", "0.5", "--prompts.eval", "null", *extra,
    ]


@pytest.fixture(scope="module")
def flux_runs(pipes, tmp_path_factory):
    """One process, two processes (accelerate launch, gloo) and a run killed in round 2's training
    then resumed: the same command line each time."""
    root = tmp_path_factory.mktemp("flux-runs")
    for name, n, env in (("one", 1, None), ("two", 2, None), ("killed", 1, {faults.ENV: "2:train"})):
        proc = launch(flux_args(pipes["flux"], root / name), root / f"dump-{name}", n=n, env=env)
        if name == "killed":
            assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
            proc = launch(flux_args(pipes["flux"], root / name, "--resume", "latest"), root / "dump-resumed")
        assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def rows(run):
    return [json.loads(line) for line in open(run / "metrics.jsonl")]


def test_flux_one_and_two_processes_keep_the_same_samples(flux_runs):
    a, b = rows(flux_runs / "one"), rows(flux_runs / "two")
    assert [r["kept_ids"] for r in a] == [r["kept_ids"] for r in b] and all(r["n_processes"] == 2 for r in b)
    assert [r["reward_mean"] for r in a] == [r["reward_mean"] for r in b]
    for r in (1, 2):
        ref, r0, r1 = (lora_of(flux_runs / d, r, k) for d, k in (("dump-one", 0), ("dump-two", 0), ("dump-two", 1)))
        for k in ref:
            assert torch.equal(r0[k], r1[k])
            torch.testing.assert_close(r0[k], ref[k], atol=1e-5, rtol=1e-4)


def test_flux_killed_run_resumes_to_the_same_lora(flux_runs):
    assert [r["kept_ids"] for r in rows(flux_runs / "killed")] == [r["kept_ids"] for r in rows(flux_runs / "one")]
    a = load_file(flux_runs / "one" / "pytorch_lora_weights.safetensors")
    b = load_file(flux_runs / "killed" / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_full_fine_tuning_writes_a_transformer_folder_that_loads_back(pipes, tmp_path, name):
    """``train.adapter full`` on a flow family: every transformer weight trains, ``transformer/`` is
    written, and the family's pipeline reads it back through ``load_trained_weights``."""
    from raft_diffusion.diffusion.weights import load_trained_weights

    loop = build_loop(flow_config(pipes[name], tmp_path / "run", **{"raft.rounds": 1, "train.adapter": "full",
                                                                    "train.kl_weight": 0.3}), progress=False)
    before = snapshot(loop.backend.pipe.transformer)
    loop.run()
    trained = loop.backend.pipe.transformer.state_dict()
    assert any(not torch.equal(before[k], trained[k]) for k in before)
    assert (tmp_path / "run" / "transformer" / "config.json").is_file()
    fam = load_family(str(pipes[name]), device="cpu")
    load_trained_weights(fam, tmp_path / "run")
    assert all(torch.equal(v, trained[k]) for k, v in fam.denoiser.state_dict().items())
