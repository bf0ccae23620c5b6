"""Tiny random CLIP models and heads, built in code and saved like real weights (tests, benchmarks).

Everything here runs offline in well under a second per model:

- :func:`register_tiny_open_clip` adds the open_clip architecture ``raft-tiny-clip`` (32 px, 16-d
  embeddings, OpenAI BPE vocabulary) through ``open_clip.add_model_config``;
  :func:`save_tiny_open_clip` writes a random state-dict checkpoint for it (or for any arch);
- :func:`save_tiny_transformers_clip` writes a ``CLIPModel`` + ``CLIPTokenizer`` (small vocab.json /
  merges.txt) + ``CLIPImageProcessor`` folder with ``save_pretrained``;
- :func:`save_head` writes an aesthetic head (.pth or .safetensors, optional config.json).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Sequence

import torch

TINY_OPEN_CLIP = "raft-tiny-clip"
TINY_OPEN_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}
_registered: dict[str, Path] = {}


def register_tiny_open_clip(name: str = TINY_OPEN_CLIP, config: dict | None = None) -> str:
    """Register a small open_clip architecture (once per process); returns its name."""
    import open_clip

    if name in _registered and open_clip.get_model_config(name) is not None:
        return name
    folder = Path(tempfile.mkdtemp(prefix="raft-openclip-cfg-"))
    path = folder / f"{name}.json"
    path.write_text(json.dumps(config or TINY_OPEN_CLIP_CONFIG))
    open_clip.add_model_config(path)
    _registered[name] = path
    return name


def save_tiny_open_clip(path: str | os.PathLike[str], model_name: str = TINY_OPEN_CLIP, seed: int = 0) -> Path:
    """Random open_clip weights for ``model_name`` saved as a state dict (``.pt`` or ``.safetensors``)."""
    import open_clip

    if model_name == TINY_OPEN_CLIP:
        register_tiny_open_clip()
    torch.manual_seed(seed)
    model = open_clip.create_model(model_name, pretrained=None)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def write_clip_vocab(folder: str | os.PathLike[str]) -> tuple[Path, Path]:
    """A tiny character-level CLIP BPE vocabulary (vocab.json, merges.txt) in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder / "vocab.json", folder / "merges.txt"


def save_tiny_transformers_clip(folder: str | os.PathLike[str], seed: int = 0, image_size: int = 32,
                                shortest_edge: int | None = None, crop: int | None = None,
                                projection_dim: int = 8) -> Path:
    """A random transformers CLIPModel folder with tokenizer and image processor (save_pretrained)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    folder = Path(folder)
    vocab, merges = write_clip_vocab(folder)
    tok = CLIPTokenizer(str(vocab), str(merges), model_max_length=77)
    n_vocab = len(tok)
    cfg = CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
                         vocab_size=n_vocab, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
                           image_size=image_size, patch_size=8),
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    model = CLIPModel(cfg).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    edge = shortest_edge or image_size
    proc = CLIPImageProcessor(size={"shortest_edge": edge},
                              crop_size={"height": crop or image_size, "width": crop or image_size})
    proc.save_pretrained(folder)
    return folder


def head_state_dict(kind: str = "mlp", embed_dim: int = 768, hidden: Sequence[int] = (1024, 128, 64, 16),
                    seed: int = 0) -> dict[str, torch.Tensor]:
    """A random head state dict with the original LAION key names (``layers.N.*`` or ``weight``/``bias``)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "linear":
        return {"weight": torch.randn(1, embed_dim, generator=g) * 0.1, "bias": torch.randn(1, generator=g)}
    dims = [embed_dim, *hidden, 1]
    state = {}
    for idx, (i, o) in zip((0, 2, 4, 6, 7), zip(dims[:-1], dims[1:])):
        state[f"layers.{idx}.weight"] = torch.randn(o, i, generator=g) / i ** 0.5
        state[f"layers.{idx}.bias"] = torch.randn(o, generator=g) * 0.1
    return state


def save_head(path: str | os.PathLike[str], kind: str = "mlp", embed_dim: int = 768,
              hidden: Sequence[int] = (1024, 128, 64, 16), seed: int = 0, config: bool = False) -> Path:
    """Write a random head (.pth via torch.save or .safetensors); ``config`` adds config.json beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = head_state_dict(kind, embed_dim, hidden, seed)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    if config:
        (path.parent / "config.json").write_text(json.dumps(
            {"embed_dim": embed_dim, "hidden": list(hidden) if kind == "mlp" else [], "kind": kind}))
    return path
