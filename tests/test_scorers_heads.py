"""Aesthetic heads: original layer shapes and key names, .pth and .safetensors, weight resolution errors."""

from __future__ import annotations

import os

import pytest
import torch

from raft_diffusion.errors import ScorerError
from scorers import testing
from scorers.aesthetic import aesthetic_v1, aesthetic_v2, head_config_from_state_dict, load_head
from scorers.aesthetic_head import AestheticLinear, AestheticMLP
from scorers.weights import load_state_dict, resolve_file

ORIGINAL_KEYS = [f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")]
ORIGINAL_SHAPES = {
    "layers.0.weight": (1024, 768), "layers.0.bias": (1024,),
    "layers.2.weight": (128, 1024), "layers.2.bias": (128,),
    "layers.4.weight": (64, 128), "layers.4.bias": (64,),
    "layers.6.weight": (16, 64), "layers.6.bias": (16,),
    "layers.7.weight": (1, 16), "layers.7.bias": (1,),
}


def test_v2_mlp_layer_shapes_match_the_original():
    state = AestheticMLP().state_dict()
    assert sorted(state) == sorted(ORIGINAL_KEYS)
    assert {k: tuple(v.shape) for k, v in state.items()} == ORIGINAL_SHAPES
    dims = [m.out_features for m in AestheticMLP().layers if isinstance(m, torch.nn.Linear)]
    assert [768, *dims] == [768, 1024, 128, 64, 16, 1]


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_original_state_dict_loads_strictly(tmp_path, suffix):
    path = testing.save_head(tmp_path / f"sac+logos+ava1-l14-linearMSE{suffix}", seed=1)
    head = load_head(path, kind="mlp")
    assert isinstance(head, AestheticMLP) and not head.training
    original = testing.head_state_dict(seed=1)
    for k, v in head.state_dict().items():
        assert torch.equal(v, original[k]), k
    x = torch.nn.functional.normalize(torch.randn(4, 768), dim=-1)
    ref = x
    for i in (0, 2, 4, 6, 7):  # no activations between the layers; dropout off in eval
        ref = ref @ original[f"layers.{i}.weight"].T + original[f"layers.{i}.bias"]
    torch.testing.assert_close(head(x), ref, atol=1e-5, rtol=0)


def test_pth_loads_with_weights_only(tmp_path, monkeypatch):
    path = testing.save_head(tmp_path / "aesthetic-model.pth")
    calls = []
    real = torch.load

    def spy(*a, **kw):
        calls.append(kw.get("weights_only"))
        return real(*a, **kw)

    monkeypatch.setattr(torch, "load", spy)
    load_state_dict(path)
    assert calls == [True]


def test_lightning_style_and_module_prefix_unwrapped(tmp_path):
    state = testing.head_state_dict(seed=2)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "w.pt")
    head = load_head(tmp_path / "w.pt")
    assert torch.equal(head.state_dict()["layers.7.bias"], state["layers.7.bias"])


def test_v1_linear_original_keys(tmp_path):
    path = testing.save_head(tmp_path / "sa_0_4_vit_l_14_linear.pth", "linear")
    head = load_head(tmp_path, "sa_0_4_vit_l_14_linear.pth")
    assert isinstance(head, AestheticLinear) and head.linear.in_features == 768
    assert torch.equal(head.linear.weight, torch.load(path, weights_only=True)["weight"])


def test_smaller_head_config_and_inference(tmp_path):
    state = testing.head_state_dict("mlp", 32, (16, 8, 8, 4))
    assert head_config_from_state_dict(state) == {"kind": "mlp", "embed_dim": 32, "hidden": [16, 8, 8, 4]}
    path = testing.save_head(tmp_path / "head.safetensors", "mlp", 32, (16, 8, 8, 4), config=True)
    head = load_head(tmp_path, "head.safetensors")
    assert head.embed_dim == 32 and head.hidden == (16, 8, 8, 4)
    with pytest.raises(ScorerError, match="embed_dim"):
        load_head(path, config={"embed_dim": 64})


def test_unexpected_keys_are_refused(tmp_path):
    state = testing.head_state_dict()
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ScorerError, match="does not match"):
        load_head(tmp_path / "bad.pth")
    torch.save({"foo": torch.zeros(2)}, tmp_path / "junk.pth")
    with pytest.raises(ScorerError, match="not an aesthetic head"):
        load_head(tmp_path / "junk.pth")


def test_missing_weights_message_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-home"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "empty-cache"), raising=False)
    with pytest.raises(ScorerError) as err:
        aesthetic_v2()  # default hub id, not cached, offline
    msg = str(err.value)
    assert "\n" not in msg
    assert "aesthetic-model.pth" in msg and "trl-lib/ddpo-aesthetic-predictor" in msg and "weights=" in msg
    with pytest.raises(ScorerError, match="sa_0_4_vit_l_14_linear.pth"):
        aesthetic_v1()
    with pytest.raises(ScorerError, match="not found in"):
        aesthetic_v2(str(tmp_path))  # a folder without the file
    with pytest.raises(ScorerError, match="neither a local file"):
        resolve_file(os.path.join(str(tmp_path), "missing", "x.pth"), what="t")
