"""model.offload: VAE, text encoder and scorer parked on the CPU, moved to the device only while used.

No GPU here, so these tests check behaviour, not memory: a spy on ``nn.Module.to`` records moves
to a fake accelerator (``cuda:0``, never touched: such moves are recorded and the module stays on
the CPU) and the order of moves and uses; and a run through the offload code path on the CPU
gives the same rewards, kept samples and LoRA as a plain run.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from raft_diffusion.config import RaftConfig
from raft_diffusion.diffusion import sampling
from raft_diffusion.errors import ConfigError
from scorers.common import BaseScorer
from scorers.offload import OffloadedScorer, offloaded
from tests.fakes import TINY_BASE

FAKE = torch.device("cuda", 0)
CPU = torch.device("cpu")


def _target(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.device | None:
    dev = kwargs.get("device", args[0] if args else None)
    if isinstance(dev, (str, torch.device)):
        return torch.device(dev)
    return None


@pytest.fixture
def moves(monkeypatch):
    """Events ``(module, device)`` of every ``nn.Module.to(device)``; moves off the CPU are only recorded."""
    events: list[Any] = []
    real = torch.nn.Module.to

    def to(self, *args, **kwargs):
        dev = _target(args, kwargs)
        if dev is not None:
            events.append((self, dev))
            if dev.type != "cpu":
                return self
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", to)
    return events


def of(events: list[Any], obj: Any) -> list[Any]:
    """The events of one module (moves as devices, other markers as they are)."""
    return [e[1] if isinstance(e, tuple) else e for e in events if not isinstance(e, tuple) or e[0] is obj]


def tiny_config(pipe_dir, out_dir, **overrides: Any) -> RaftConfig:
    base = {
        **TINY_BASE,
        "model.pretrained": str(pipe_dir),
        "raft.rounds": 2, "raft.k": 2, "raft.prompts_per_round": 2, "raft.seed": 5,
        "sampling.steps": 2, "sampling.batch_size": 3,
        "train.steps_per_round": 2, "train.batch_size": 2, "train.learning_rate": 1e-3,
        "reward.scorer": "miniworld-clip", "prompts.eval": "cifar10", "prompts.eval_limit": 2,
        "output.dir": str(out_dir),
    }
    base.update(overrides)
    return RaftConfig().replace(base)


@pytest.fixture
def shared_backbones():
    from scorers.backbones import clear_shared_backbones

    yield
    clear_shared_backbones()  # scorers built here (some for a fake device) must not leak into other tests


# ------------------------------------------------------------------ config
def test_field_defaults_off_and_is_refused_for_llm():
    assert RaftConfig().model.offload is False
    assert RaftConfig().replace({"model.offload": True}).model.offload is True
    with pytest.raises(ConfigError, match="model.offload applies to backend diffusion only"):
        RaftConfig().replace({"backend": "llm", "model.offload": True})
    with pytest.raises(ConfigError, match="model.offload must be true or false"):
        RaftConfig().replace({"model.offload": "sometimes"})


# ------------------------------------------------------------------ placement
def test_a_cpu_run_is_a_noop(tiny_pipeline_dir, tmp_path, one_thread):
    from raft_diffusion.diffusion.backend import DiffusionBackend

    backend = DiffusionBackend(tiny_config(tiny_pipeline_dir, tmp_path, **{"model.offload": True}), progress=False)
    assert not backend.offload.active
    scorer = object()
    assert backend.prepare_scorer(scorer) is scorer


def test_load_pipeline_puts_only_the_unet_on_the_accelerator(tiny_pipeline_dir, monkeypatch, moves):
    from raft_diffusion.diffusion import pipeline as pipeline_mod

    monkeypatch.setattr(pipeline_mod, "resolve_device", lambda device: FAKE)
    pipe = pipeline_mod.load_pipeline(str(tiny_pipeline_dir), device="cuda", offload=True)
    assert of(moves, pipe.unet) == [FAKE]
    assert FAKE not in of(moves, pipe.vae) + of(moves, pipe.text_encoder)


def test_backend_parks_vae_and_text_encoder_when_the_unet_is_on_an_accelerator(tiny_pipeline_dir, tmp_path, monkeypatch, moves):
    from diffusers import UNet2DConditionModel

    from raft_diffusion.diffusion.backend import DiffusionBackend
    from raft_diffusion.diffusion.pipeline import load_pipeline

    pipe = load_pipeline(str(tiny_pipeline_dir), device="cpu")
    monkeypatch.setattr(UNet2DConditionModel, "device", property(lambda self: FAKE))
    moves.clear()
    cfg = tiny_config(tiny_pipeline_dir, tmp_path, **{"model.offload": True})
    backend = DiffusionBackend(cfg, pipe=pipe, progress=False)
    assert backend.offload.device == FAKE
    assert of(moves, pipe.vae) == [CPU] and of(moves, pipe.text_encoder) == [CPU]
    plain = DiffusionBackend(tiny_config(tiny_pipeline_dir, tmp_path), pipe=load_pipeline(str(tiny_pipeline_dir), device="cpu"), progress=False)
    assert not plain.offload.active


def test_generate_moves_the_vae_once_around_decoding_and_encodes_on_the_cpu(tiny_pipeline_dir, tmp_path, moves, one_thread):
    from prompts.types import Prompt

    from raft_diffusion.diffusion.backend import DiffusionBackend

    backend = DiffusionBackend(tiny_config(tiny_pipeline_dir, tmp_path), progress=False)
    pipe = backend.pipe
    prompts = [Prompt("a photo of a cat"), Prompt("a photo of a dog")]
    seeds, ids = [11, 12, 13, 14], ["a", "b", "c", "d"]
    want = backend.generate(prompts, 2, seeds, ids)  # no offload: decoded batch by batch

    backend.encoder._cache.clear()
    backend.offload = sampling.Offload(FAKE)
    moves.clear()
    real_decode, real_encode = pipe.vae.decode, pipe.encode_prompt
    encode_devices: list[torch.device] = []

    def decode(*args, **kwargs):
        moves.append("decode")
        return real_decode(*args, **kwargs)

    def encode_prompt(texts, device, *args, **kwargs):
        encode_devices.append(torch.device(device))
        return real_encode(texts, device, *args, **kwargs)

    pipe.vae.decode, pipe.encode_prompt = decode, encode_prompt
    got = backend.generate(prompts, 2, seeds, ids)

    # sampling.batch_size 3: two pipeline batches, decoded in one visit of the VAE to the device
    assert of(moves, pipe.vae) == [FAKE, "decode", "decode", CPU]
    assert FAKE not in of(moves, pipe.text_encoder) and encode_devices and set(encode_devices) == {CPU}
    assert torch.equal(got.outputs, want.outputs) and torch.equal(got.extras["latents"], want.extras["latents"])


def test_the_vae_goes_back_to_the_cpu_when_decoding_fails(moves):
    vae = torch.nn.Linear(2, 2)
    off = sampling.Offload(FAKE)
    with pytest.raises(RuntimeError, match="boom"):
        with off.onto(vae):
            raise RuntimeError("boom")
    assert of(moves, vae) == [FAKE, CPU]
    disabled = sampling.Offload(None)
    with disabled.onto(vae):
        pass
    disabled.park(vae)
    assert of(moves, vae) == [FAKE, CPU]


# ------------------------------------------------------------------ scorers
class RecordingScorer(BaseScorer):
    """An offload-capable scorer that records where it is when it scores."""

    supports_offload = True

    def __init__(self, device: torch.device, fail: bool = False) -> None:
        super().__init__("recording", batch_size=2)
        self.device = device
        self.fail = fail
        self.events: list[Any] = []

    def to(self, device: Any) -> "RecordingScorer":
        self.device = torch.device(device)
        self.events.append(self.device)
        return self

    def score_batch(self, outputs, prompts, metadata):
        self.events.append(("score", self.device))
        if self.fail:
            raise RuntimeError("scorer broke")
        return outputs.mean(dim=(1, 2, 3))


def test_offloaded_scorer_is_on_its_device_only_while_scoring():
    scorer = RecordingScorer(FAKE)
    wrapped = offloaded(scorer)
    assert isinstance(wrapped, OffloadedScorer) and wrapped.name == "recording" and wrapped.device == FAKE
    assert scorer.events == [CPU]
    images = torch.rand(3, 3, 4, 4)
    rewards = wrapped(images, ["a"] * 3, None)
    assert torch.allclose(rewards, images.mean(dim=(1, 2, 3)))
    assert scorer.events == [CPU, FAKE, ("score", FAKE), ("score", FAKE), CPU]
    assert offloaded(wrapped) is wrapped

    broken = RecordingScorer(FAKE, fail=True)
    with pytest.raises(RuntimeError, match="scorer broke"):
        offloaded(broken)(images, ["a"] * 3, None)
    assert broken.events[-1] == CPU


def test_composite_scorers_offload_their_parts_and_weightless_ones_are_left_alone():
    from scorers.common import ValidatedScorer
    from scorers.custom import CallableScorer
    from scorers.multi import MultiScorer
    from scorers.simple import Brightness

    part = RecordingScorer(FAKE)
    multi = MultiScorer([(part, 1.0), (Brightness(), 1.0)], normalize="raw")
    assert offloaded(multi) is multi
    assert isinstance(multi.components[0][1], OffloadedScorer) and isinstance(multi.components[1][1], ValidatedScorer)
    multi(torch.rand(2, 3, 4, 4), ["a", "b"], None)
    assert part.events == [CPU, FAKE, ("score", FAKE), CPU]

    inner = RecordingScorer(FAKE)
    custom = CallableScorer(inner, name="custom")
    assert offloaded(custom) is custom and isinstance(custom.fn, OffloadedScorer)
    on_cpu = RecordingScorer(CPU)
    assert offloaded(on_cpu) is on_cpu and on_cpu.events == []
    plain = Brightness()
    assert offloaded(plain) is plain


@pytest.mark.parametrize("name", ["miniworld-clip", "miniworld-aesthetic"])
def test_clip_scorers_move_their_weights(name, moves, shared_backbones, one_thread):
    import scorers

    scorer = scorers.build(name, device="cpu").load()
    assert scorer.supports_offload and scorer.device == CPU
    moves.clear()
    scorer.to(FAKE)  # before scoring: no cached text embedding (a real tensor would need CUDA)
    assert scorer.device == FAKE and scorer.backbone.device == FAKE
    assert FAKE in of(moves, scorer.backbone.model)
    if hasattr(scorer, "head"):
        assert FAKE in of(moves, scorer.head)
    scorer.to("cpu")
    assert scorer.device == CPU and of(moves, scorer.backbone.model)[-1] == CPU

    images = torch.rand(2, 3, 32, 32)
    prompts = ["a red circle", "a blue square"]
    before = scorer(images, prompts)
    scorer.to("cpu")
    assert torch.equal(scorer(images, prompts), before)
    assert all(e.device == CPU for e in getattr(scorer, "_text_cache", {}).values())


def test_build_loop_wraps_the_scorers_when_offloading(tiny_pipeline_dir, tmp_path, monkeypatch, shared_backbones):
    from diffusers import UNet2DConditionModel

    from raft_diffusion.api import build_loop

    monkeypatch.setattr(UNet2DConditionModel, "device", property(lambda self: FAKE))
    cfg = tiny_config(tiny_pipeline_dir, tmp_path / "run", **{
        "model.offload": True, "model.device": "cpu", "reward.kwargs": {"device": "cuda"},
        "reward.eval_scorers": {"miniworld-aesthetic": {"device": "cuda"}, "brightness": {}},
    })
    loop = build_loop(cfg, progress=False)
    assert isinstance(loop.scorer, OffloadedScorer) and loop.scorer.device.type == "cuda"
    assert loop.scorer.scorer.device == CPU  # parked until it scores
    assert isinstance(loop.eval_scorers["miniworld-aesthetic"], OffloadedScorer)
    assert not isinstance(loop.eval_scorers["brightness"], OffloadedScorer)


# ------------------------------------------------------------------ same results
def test_the_offload_path_gives_the_same_run_on_the_cpu(tiny_pipeline_dir, tmp_path, shared_backbones, one_thread):
    """Offload code path forced on the CPU (VAE decoded after sampling, scorer wrapped): same run."""
    from raft_diffusion.api import build_loop
    from raft_diffusion.diffusion import lora as lora_mod

    plain = build_loop(tiny_config(tiny_pipeline_dir, tmp_path / "plain"), progress=False)
    off = build_loop(tiny_config(tiny_pipeline_dir, tmp_path / "off", **{"model.offload": True}), progress=False)
    off.backend.offload = sampling.Offload(CPU)
    off.scorer = OffloadedScorer(off.scorer, device=CPU)
    a, b = plain.run(), off.run()

    for ra, rb in zip(a.rounds, b.rounds, strict=True):
        assert ra["kept_ids"] == rb["kept_ids"]
        for key in ("reward_mean", "reward_kept", "reward_unbiased", "train_loss"):
            assert ra[key] == rb[key], key
    assert [e["miniworld-clip"] for e in a.evals] == [e["miniworld-clip"] for e in b.evals]
    la, lb = lora_mod.lora_state_dict(plain.backend.family.denoiser), lora_mod.lora_state_dict(off.backend.family.denoiser)
    assert la.keys() == lb.keys() and all(torch.equal(la[k], lb[k]) for k in la)
