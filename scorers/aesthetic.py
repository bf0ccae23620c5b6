"""LAION aesthetic predictors: a head on L2-normalised CLIP image embeddings, AVA 1-10 scale.

- ``aesthetic-v2`` (:func:`aesthetic_v2`): the "improved aesthetic predictor" MLP
  768-1024-128-64-16-1 (``sac+logos+ava1-l14-linearMSE.pth``; the same weights are on the hub as
  ``trl-lib/ddpo-aesthetic-predictor`` / ``aesthetic-model.pth``, the default).
- ``aesthetic-v1`` (:func:`aesthetic_v1`): LAION's first predictor, one ``Linear(768, 1)``
  (``sa_0_4_vit_l_14_linear.pth`` from github.com/LAION-AI/aesthetic-predictor; no hub copy is
  assumed, so pass its path). This is the head the RAFT authors' diffusion notebook used.

Both default to OpenAI CLIP ViT-L/14 through open_clip (``ViT-L-14`` / ``openai``, QuickGELU) with
CLIP's own preprocessing; any :class:`~scorers.backbones.ClipBackbone` can be plugged in. The
embedding is L2-normalised before the head (forgetting it gives scores of 20-30). Scores are
absolute image-quality estimates that do not depend on the prompt, so they compare across prompts.

:func:`aesthetic_from_folder` loads a head folder (``head.safetensors`` + optional ``config.json``
``{"embed_dim": ..., "hidden": [...], "kind": "mlp"}``) on a transformers CLIPModel folder: the
same classes at any width.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from raft_diffusion.errors import ScorerError
from scorers.aesthetic_head import AestheticLinear, AestheticMLP
from scorers.backbones import BackboneScorer, ClipBackbone, backbone_from_spec, shared_backbone
from scorers.weights import load_state_dict, resolve_file

V2_HUB_ID = "trl-lib/ddpo-aesthetic-predictor"
V2_HUB_FILE = "aesthetic-model.pth"
V2_ORIGINAL_FILE = "sac+logos+ava1-l14-linearMSE.pth"
V1_FILE = "sa_0_4_vit_l_14_linear.pth"
_HEAD_KEYS = ("embed_dim", "hidden", "kind")


def head_config_from_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """``{"kind", "embed_dim", "hidden"}`` read off the tensor shapes of a head state dict."""
    keys = set(state)
    if "layers.0.weight" in keys:
        try:
            hidden = [int(state[f"layers.{i}.weight"].shape[0]) for i in (0, 2, 4, 6)]
        except KeyError as exc:
            raise ScorerError(f"aesthetic MLP state dict lacks {exc.args[0]!r}; expected layers.{{0,2,4,6,7}}") from None
        return {"kind": "mlp", "embed_dim": int(state["layers.0.weight"].shape[1]), "hidden": hidden}
    for w in ("linear.weight", "weight"):
        if w in keys:
            return {"kind": "linear", "embed_dim": int(state[w].shape[1]), "hidden": []}
    raise ScorerError(
        f"not an aesthetic head state dict (keys {sorted(keys)[:6]}); expected layers.0.weight ... (v2 MLP) "
        "or weight/bias (v1 linear)"
    )


def read_head_config(config: str | os.PathLike[str] | Mapping[str, Any] | None, weights_path: Path) -> dict[str, Any]:
    """The head config: a mapping, a json file, or ``config.json`` beside the weights when it holds
    head keys (a CLIPModel ``config.json`` in the same folder is ignored)."""
    if isinstance(config, Mapping):
        return dict(config)
    path = Path(config) if config is not None else weights_path.parent / "config.json"
    if not path.is_file():
        if config is not None:
            raise ScorerError(f"aesthetic head config {path} not found")
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ScorerError(f"aesthetic head config {path} is not valid json: {exc}") from None
    if not isinstance(data, dict):
        raise ScorerError(f"aesthetic head config {path} must be a json object")
    return {k: data[k] for k in _HEAD_KEYS if k in data}


def build_head(kind: str, embed_dim: int, hidden: Any = None) -> nn.Module:
    """An :class:`AestheticMLP` (``kind`` "mlp"/"v2") or :class:`AestheticLinear` ("linear"/"v1")."""
    if kind in ("mlp", "v2"):
        return AestheticMLP(int(embed_dim), tuple(int(h) for h in hidden) if hidden else (1024, 128, 64, 16))
    if kind in ("linear", "v1"):
        return AestheticLinear(int(embed_dim))
    raise ScorerError(f"aesthetic head kind {kind!r} must be 'mlp' (v2) or 'linear' (v1)")


def load_head(source: str | os.PathLike[str] | None, filename: str | None = None, *,
              config: str | os.PathLike[str] | Mapping[str, Any] | None = None, kind: str | None = None,
              what: str = "aesthetic") -> nn.Module:
    """Load an aesthetic head from a local file / folder / hub id (``.pth`` or ``.safetensors``),
    strictly, with the original parameter names. Returns the module in eval mode on CPU."""
    path = resolve_file(source, filename, what=what)
    state = load_state_dict(path, what=what)
    inferred = head_config_from_state_dict(state)
    cfg = read_head_config(config, path)
    if "embed_dim" in cfg and int(cfg["embed_dim"]) != inferred["embed_dim"]:
        raise ScorerError(f"{what}: head config says embed_dim={cfg['embed_dim']} but {path.name} has "
                          f"{inferred['embed_dim']}")
    if "hidden" in cfg and inferred["kind"] == "mlp" and [int(h) for h in cfg["hidden"]] != inferred["hidden"]:
        raise ScorerError(f"{what}: head config says hidden={list(cfg['hidden'])} but {path.name} has "
                          f"{inferred['hidden']}")
    want_kind = kind or cfg.get("kind")
    if want_kind is not None:
        norm = {"v2": "mlp", "v1": "linear"}.get(str(want_kind), str(want_kind))
        if norm != inferred["kind"]:
            raise ScorerError(f"{what}: expected a {norm} head but {path.name} holds a {inferred['kind']} head")
    if inferred["kind"] == "linear" and "weight" in state:
        state = {f"linear.{k}": v for k, v in state.items()}
    head = build_head(inferred["kind"], inferred["embed_dim"], inferred["hidden"])
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ScorerError(f"{what}: {path.name} does not match the head: {str(exc).splitlines()[0]}") from None
    return head.eval().requires_grad_(False)


class AestheticScorer(BackboneScorer):
    """reward = head(normalize(backbone.encode_images(images))). Image scorer; ignores prompts."""

    kind = "image"

    def __init__(self, backbone: ClipBackbone, head: nn.Module, *, name: str = "aesthetic",
                 batch_size: int = 32, normalize: bool = True) -> None:
        super().__init__(name, batch_size)
        self.backbone = backbone
        self.head = head
        self.normalize = normalize

    def to(self, device: str | torch.device) -> "AestheticScorer":
        """Move the backbone and the head to ``device``; returns self."""
        self.backbone.to(device)
        self.head = self.head.to(self.backbone.device)
        return self

    def _load(self) -> None:
        self.backbone.load()
        self.head = self.head.to(device=self.backbone.device, dtype=torch.float32).eval()

    def score_batch(self, outputs: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> torch.Tensor:
        emb = self.backbone.encode_images(outputs)
        want = getattr(self.head, "embed_dim", emb.shape[-1])
        if emb.shape[-1] != want:
            raise ScorerError(
                f"scorer {self.name!r}: the backbone ({self.backbone.describe()}) gives {emb.shape[-1]}-d "
                f"embeddings but the head expects {want}; use the CLIP model the head was trained on"
            )
        if self.normalize:
            emb = emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return self.head(emb).squeeze(-1)


def _backbone(backbone: Any, clip_model: str, clip_pretrained: str | None, device: Any, dtype: Any) -> ClipBackbone:
    if backbone is not None:
        return backbone_from_spec(backbone, device=device, dtype=dtype)
    return shared_backbone("open_clip", clip_model, clip_pretrained, device=device, dtype=dtype)


def aesthetic_v2(weights: str | None = V2_HUB_ID, filename: str | None = V2_HUB_FILE, *, backbone: Any = None,
                 clip_model: str = "ViT-L-14", clip_pretrained: str | None = "openai", config: Any = None,
                 device: Any = None, dtype: Any = None, batch_size: int = 32) -> AestheticScorer:
    """LAION aesthetic v2 (MLP) scorer. ``weights``: hub id (default ``trl-lib/ddpo-aesthetic-predictor``
    with ``filename`` ``aesthetic-model.pth``), a local folder, or a local ``.pth``/``.safetensors``
    file such as the original ``sac+logos+ava1-l14-linearMSE.pth``. The head file is located at
    construction (a missing file fails at once); the CLIP model loads on first use."""
    head = load_head(weights, filename, config=config, kind="mlp", what="aesthetic-v2")
    return AestheticScorer(_backbone(backbone, clip_model, clip_pretrained, device, dtype), head,
                           name="aesthetic-v2", batch_size=batch_size)


def aesthetic_v1(weights: str | None = None, filename: str | None = V1_FILE, *, backbone: Any = None,
                 clip_model: str = "ViT-L-14", clip_pretrained: str | None = "openai", config: Any = None,
                 device: Any = None, dtype: Any = None, batch_size: int = 32) -> AestheticScorer:
    """LAION aesthetic v1 (linear) scorer. ``weights``: the local ``sa_0_4_vit_l_14_linear.pth``
    (github.com/LAION-AI/aesthetic-predictor; keys ``weight``/``bias``), a folder holding it, or a hub
    id with ``filename``."""
    head = load_head(weights, filename, config=config, kind="linear", what="aesthetic-v1")
    return AestheticScorer(_backbone(backbone, clip_model, clip_pretrained, device, dtype), head,
                           name="aesthetic-v1", batch_size=batch_size)


def aesthetic_from_folder(head_dir: str | os.PathLike[str], clip_dir: str | os.PathLike[str], *,
                          filename: str = "head.safetensors", name: str = "aesthetic", device: Any = None,
                          dtype: Any = None, batch_size: int = 32) -> AestheticScorer:
    """An aesthetic scorer from a head folder (``filename`` + optional ``config.json`` with
    ``embed_dim``/``hidden``/``kind``) on a transformers CLIPModel folder or hub id ``clip_dir``
    (its saved CLIPImageProcessor gives the preprocessing). E.g. the miniworld predictor:
    ``aesthetic_from_folder("assets/aesthetic", "assets/clip")``."""
    head = load_head(head_dir, filename, what=name)
    backbone = shared_backbone("transformers", str(clip_dir), None, device=device, dtype=dtype)
    return AestheticScorer(backbone, head, name=name, batch_size=batch_size)
