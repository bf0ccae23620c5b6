"""CLIP backbones and the CLIP-based scorers on tiny random models saved and loaded like real weights."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from raft_diffusion.errors import ScorerError
from scorers import backbones, testing
from scorers.aesthetic import AestheticScorer, aesthetic_from_folder, aesthetic_v1, aesthetic_v2, load_head
from scorers.backbones import ImagePreprocess, OpenClipBackbone, TransformersClipBackbone
from scorers.clip_score import clip_score, clip_score_transformers
from scorers.hpsv2 import hpsv2
from scorers.pickscore import pickscore

MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)


@pytest.fixture(autouse=True)
def _fresh_backbones():
    backbones.clear_shared_backbones()
    yield
    backbones.clear_shared_backbones()


@pytest.fixture(scope="module")
def oc_ckpt(tmp_path_factory):
    return testing.save_tiny_open_clip(tmp_path_factory.mktemp("oc") / "tiny.pt", seed=1)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return testing.save_tiny_transformers_clip(tmp_path_factory.mktemp("hf") / "clip", seed=2, image_size=32)


def images(n=3, h=40, w=52, seed=0, lo=0.0, hi=1.0):
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(n, 3, h, w, generator=g)


def l2(x):
    return x / x.norm(dim=-1, keepdim=True)


def test_open_clip_checkpoint_round_trip(oc_ckpt):
    import open_clip

    bb = OpenClipBackbone(testing.TINY_OPEN_CLIP, str(oc_ckpt), device="cpu").load()
    torch.manual_seed(1)
    ref = open_clip.create_model(testing.TINY_OPEN_CLIP, pretrained=None)
    for (k, a), b in zip(ref.state_dict().items(), bb.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert not any(p.requires_grad for p in bb.model.parameters())
    assert bb.preprocess.size == 32 and bb.preprocess.crop == (32, 32)


def test_open_clip_aesthetic_equals_step_by_step_reference(oc_ckpt, tmp_path):
    """resize shortest side (bicubic, antialias) -> clamp -> centre crop -> normalise -> embed -> L2 -> head."""
    import open_clip

    head_path = testing.save_head(tmp_path / "head.pth", "mlp", embed_dim=16, hidden=(12, 8, 6, 4), seed=3)
    bb = OpenClipBackbone(testing.TINY_OPEN_CLIP, str(oc_ckpt), device="cpu")
    scorer = AestheticScorer(bb, load_head(head_path), name="aesthetic-test", batch_size=2)
    x = images(5, 40, 52)
    got = scorer(x, ["p"] * 5, [{}] * 5)

    model = open_clip.create_model(testing.TINY_OPEN_CLIP, pretrained=str(oc_ckpt)).eval()
    # step by step: 40x52 -> shortest side 32 -> 32 x int(32*52/40)=41, crop left round(9/2)=4
    r = F.interpolate(x, size=(32, 41), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    r = r[..., 0:32, 4:36]
    r = (r - MEAN) / STD
    with torch.no_grad():
        emb = l2(model.encode_image(r))
        head = torch.load(head_path, weights_only=True)
        h = emb
        for i in (0, 2, 4, 6, 7):
            h = h @ head[f"layers.{i}.weight"].T + head[f"layers.{i}.bias"]
    assert got.dtype == torch.float32 and got.shape == (5,)
    torch.testing.assert_close(got, h[:, 0], atol=1e-5, rtol=0)


def test_preprocess_matches_open_clip_own_transform(oc_ckpt):
    """Our tensor preprocessing equals open_clip's eval transform (torchvision, tensor path) step by step."""
    import open_clip

    bb = OpenClipBackbone(testing.TINY_OPEN_CLIP, str(oc_ckpt), device="cpu").load()
    model = bb.model
    tf = open_clip.image_transform(model.visual.image_size, is_train=False,
                                   **{k: v for k, v in open_clip.get_model_preprocess_cfg(model).items()
                                      if k in ("mean", "std", "interpolation", "resize_mode", "fill_color")})
    x = images(2, 45, 33, seed=4)
    resize, crop, normalize = tf.transforms[0], tf.transforms[1], tf.transforms[-1]
    ref = torch.stack([normalize(crop(resize(im).clamp(0, 1))) for im in x])
    torch.testing.assert_close(bb.preprocess(x), ref, atol=1e-5, rtol=0)
    unclamped = ImagePreprocess(**{**bb.preprocess.__dict__, "clamp": False, "_cache": {}})
    torch.testing.assert_close(unclamped(x), torch.stack([tf(im) for im in x]), atol=1e-5, rtol=0)


def test_transformers_backbone_matches_clip_image_processor(hf_dir):
    from transformers import CLIPImageProcessor, CLIPModel

    bb = TransformersClipBackbone(str(hf_dir), device="cpu").load()
    assert bb.preprocess.crop_rounding == "floor"
    proc = CLIPImageProcessor.from_pretrained(hf_dir)
    x = images(3, 37, 50, seed=5, lo=0.25, hi=0.75)  # no bicubic overshoot: clamp inactive
    ref_pix = proc(images=list(x), do_rescale=False, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(bb.preprocess(x), ref_pix, atol=1e-5, rtol=0)
    model = CLIPModel.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        out = model.vision_model(pixel_values=ref_pix)
        ref = model.visual_projection(out.pooler_output)
    torch.testing.assert_close(bb.encode_images(x), ref, atol=1e-5, rtol=0)


def test_clip_score_transformers_reference(hf_dir):
    from transformers import AutoTokenizer, CLIPModel

    scorer = clip_score_transformers(str(hf_dir), device="cpu", batch_size=2)
    prompts = ["a cat", "a cat", "a dog", "a dog"]
    x = images(4, 32, 32, seed=6)
    got = scorer(x, prompts, [{}] * 4)
    model = CLIPModel.from_pretrained(hf_dir).eval()
    tok = AutoTokenizer.from_pretrained(hf_dir)
    with torch.no_grad():
        pix = (x - MEAN) / STD
        img = l2(model.visual_projection(model.vision_model(pixel_values=pix).pooler_output))
        enc = tok(prompts, padding=True, return_tensors="pt")
        txt = l2(model.text_projection(model.text_model(**enc).pooler_output))
    ref = (100 * (img * txt).sum(-1)).clamp_min(0)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
    assert (got >= 0).all()


def test_clip_score_open_clip_reference_and_text_cache(oc_ckpt):
    import open_clip

    scorer = clip_score(testing.TINY_OPEN_CLIP, str(oc_ckpt), device="cpu")
    x = images(3, 32, 32, seed=7)
    prompts = ["red", "red", "blue"]
    got = scorer(x, prompts, [{}] * 3)
    model = open_clip.create_model(testing.TINY_OPEN_CLIP, pretrained=str(oc_ckpt)).eval()
    tok = open_clip.get_tokenizer(testing.TINY_OPEN_CLIP)
    with torch.no_grad():
        cos = (l2(model.encode_image((x - MEAN) / STD)) * l2(model.encode_text(tok(prompts)))).sum(-1)
    torch.testing.assert_close(got, (100 * cos).clamp_min(0), atol=1e-4, rtol=0)
    assert set(scorer._text_cache) == {"red", "blue"}


def test_pickscore_and_hpsv2_scales(hf_dir, oc_ckpt, tmp_path):
    from scorers.clip_score import ClipSimilarityScorer

    ps = pickscore(str(hf_dir), str(hf_dir), device="cpu")
    x = images(2, 32, 32, seed=8)
    cos = ClipSimilarityScorer(ps.backbone, scale=1.0, floor=None)(x, ["a cat", "a dog"], None)
    ls = ps.load().backbone.logit_scale
    assert abs(ls - 1 / 0.07) < 1e-3  # CLIP's initial temperature
    torch.testing.assert_close(ps(x, ["a cat", "a dog"], None), ls * cos, atol=1e-4, rtol=0)
    # HPSv2: a checkpoint file in a folder, resolved by version -> file name; cosine, no floor
    (tmp_path / "hps").mkdir()
    ckpt = testing.save_tiny_open_clip(tmp_path / "hps" / "HPS_v2.1_compressed.pt", seed=9)
    torch.save({"state_dict": torch.load(ckpt, weights_only=True)}, ckpt)  # the published layout
    h = hpsv2("v2.1", str(tmp_path / "hps"), model_name=testing.TINY_OPEN_CLIP, device="cpu")
    assert h.name == "hpsv2.1" and h.backbone.load().preprocess.resize_mode == "longest"
    r = h(images(2, 24, 40, seed=10), ["x", "y"], None)
    assert r.shape == (2,) and (r.abs() <= 1 + 1e-5).all()
    with pytest.raises(ScorerError, match="HPS_v2_compressed.pt"):
        hpsv2("v2", str(tmp_path / "hps"), model_name=testing.TINY_OPEN_CLIP)


def test_longest_mode_pads_like_hpsv2():
    pre = ImagePreprocess(size=32, crop=(32, 32), resize_mode="longest", mean=(0, 0, 0), std=(1, 1, 1))
    x = torch.full((1, 3, 16, 32), 0.5)
    y = pre(x)
    assert y.shape == (1, 3, 32, 32)
    assert torch.allclose(y[..., 8:24, :], torch.tensor(0.5)) and (y[..., :8, :] == 0).all() and (y[..., 24:, :] == 0).all()


def test_aesthetic_from_folder_with_config(hf_dir, tmp_path):
    head_dir = tmp_path / "aesthetic"
    testing.save_head(head_dir / "head.safetensors", "mlp", embed_dim=8, hidden=(6, 5, 4, 3), config=True)
    scorer = aesthetic_from_folder(head_dir, hf_dir, name="miniworld-aesthetic", device="cpu")
    assert scorer.head.hidden == (6, 5, 4, 3)
    r = scorer(images(3, 32, 32), ["a"] * 3, None)
    assert r.shape == (3,) and r.dtype == torch.float32
    json.dump({"embed_dim": 8, "hidden": [7, 5, 4, 3], "kind": "mlp"}, open(head_dir / "config.json", "w"))
    with pytest.raises(ScorerError, match="hidden"):
        aesthetic_from_folder(head_dir, hf_dir)


def test_aesthetic_factories_with_pluggable_backbone(oc_ckpt, tmp_path):
    v2 = testing.save_head(tmp_path / "v2.safetensors", "mlp", embed_dim=16, hidden=(12, 8, 6, 4))
    v1 = testing.save_head(tmp_path / "v1.pth", "linear", embed_dim=16)
    spec = f"open_clip:{testing.TINY_OPEN_CLIP}:{oc_ckpt}"
    s2 = aesthetic_v2(str(v2), backbone=spec, device="cpu")
    s1 = aesthetic_v1(str(v1), backbone=spec, device="cpu")
    assert s1.backbone is s2.backbone  # one shared model
    x = images(2, 32, 32)
    assert s2(x, ["a", "b"], None).shape == (2,) and s1(x, ["a", "b"], None).shape == (2,)
    with pytest.raises(ScorerError, match="linear head"):
        aesthetic_v2(str(v1), backbone=spec)
    wrong = aesthetic_v2(str(testing.save_head(tmp_path / "big.pth")), backbone=spec, device="cpu")
    with pytest.raises(ScorerError, match="768"):
        wrong(x, ["a", "b"], None)


def test_missing_backbone_weights_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ScorerError, match="pretrained"):
        OpenClipBackbone(testing.TINY_OPEN_CLIP, str(tmp_path / "nope.pt")).load()
    with pytest.raises(ScorerError, match="unknown open_clip architecture"):
        OpenClipBackbone("no-such-arch", None).load()
    with pytest.raises(ScorerError, match="local folder"):
        TransformersClipBackbone(str(tmp_path / "no" / "such" / "dir")).load()


def test_openai_tag_builds_with_quick_gelu(monkeypatch):
    """OpenAI's weights were trained with QuickGELU; open_clip only warns, so the backbone must ask for it."""
    import open_clip

    seen = {}

    def fake_create_model(name, pretrained=None, **kw):
        seen.update(kw, name=name, pretrained=pretrained)
        raise RuntimeError("offline")

    monkeypatch.setattr(open_clip, "create_model", fake_create_model)
    with pytest.raises(ScorerError, match="hf download timm/vit_large_patch14_clip_224.openai"):
        OpenClipBackbone("ViT-L-14", "openai", device="cpu").load()
    assert seen["force_quick_gelu"] is True and seen["pretrained"] == "openai" and seen["weights_only"] is True
    with pytest.raises(ScorerError):
        OpenClipBackbone("ViT-H-14", "laion2b_s32b_b79k", device="cpu").load()
    assert seen["force_quick_gelu"] is False


def test_quick_gelu_checkpoint_round_trip(oc_ckpt):
    from open_clip.transformer import QuickGELU

    bb = OpenClipBackbone(testing.TINY_OPEN_CLIP, str(oc_ckpt), device="cpu", quick_gelu=True).load()
    assert any(isinstance(m, QuickGELU) for m in bb.model.modules())
