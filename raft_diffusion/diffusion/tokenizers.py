"""Tokenizers and text encoders built offline for tiny test pipelines: the real CLIP BPE tokenizer
(49,408 tokens) from the BPE file open_clip ships.

open_clip's ``bpe_simple_vocab_16e6.txt.gz`` is the merge list OpenAI CLIP was trained with. The
vocabulary is the 256 byte symbols, the same with ``</w>``, one token per merge (48,894 merges) and
the two specials ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407): exactly the ids of
``openai/clip-vit-*`` tokenizers. We write ``vocab.json`` + ``merges.txt`` and load a transformers
``CLIPTokenizer`` from them.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

VOCAB_SIZE = 49408
BOS_ID = 49406
EOS_ID = 49407


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def bpe_path() -> Path:
    """Where open_clip keeps its BPE file."""
    import open_clip

    path = Path(os.path.dirname(open_clip.__file__)) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        from raft_diffusion.errors import ModelError

        raise ModelError(f"open_clip's BPE file is missing at {path}; reinstall open_clip_torch")
    return path


def write_vocab_files(out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``vocab.json`` and ``merges.txt`` of the CLIP BPE into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(bpe_path()).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    base = list(_bytes_to_unicode().values())
    vocab = base + [v + "</w>" for v in base] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == VOCAB_SIZE, f"CLIP vocabulary has {len(vocab)} tokens, expected {VOCAB_SIZE}"
    vocab_file, merges_file = out / "vocab.json", out / "merges.txt"
    vocab_file.write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8")
    merges_file.write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    return vocab_file, merges_file


def build_tokenizer(work_dir: str | Path, model_max_length: int = 77):
    """A ``CLIPTokenizer`` with the real CLIP vocabulary, written to and loaded from ``work_dir``."""
    from transformers import CLIPTokenizer

    vocab_file, merges_file = write_vocab_files(work_dir)
    vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
    merges = [tuple(line.split()) for line in merges_file.read_text(encoding="utf-8").splitlines()[1:] if line]
    tok = CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        model_max_length=model_max_length,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    assert len(tok) == VOCAB_SIZE and tok.bos_token_id == BOS_ID and tok.eos_token_id == EOS_ID
    return tok


def slim_tokenizer_folder(folder: str | Path) -> None:
    """Replace the 3.6 MB ``tokenizer.json`` that ``save_pretrained`` writes by ``vocab.json`` +
    ``merges.txt`` (1.4 MB), from which ``CLIPTokenizer.from_pretrained`` rebuilds the same tokenizer."""
    folder = Path(folder)
    (folder / "tokenizer.json").unlink(missing_ok=True)
    write_vocab_files(folder)


def tiny_clip_text_encoder(hidden_size: int = 8, with_projection: bool = False, projection_dim: int = 8,
                           max_length: int = 16) -> tuple[Any, Any]:
    """(the real CLIP tokenizer cut to ``max_length`` tokens, a tiny random CLIP text encoder) for
    tiny test pipelines; ``with_projection`` gives a ``CLIPTextModelWithProjection`` (SDXL's second
    encoder, SD3's CLIP encoders)."""
    import tempfile

    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(tmp, model_max_length=max_length)
    config = CLIPTextConfig(
        hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_attention_heads=2, num_hidden_layers=2,
        vocab_size=len(tokenizer), max_position_embeddings=max_length, projection_dim=projection_dim,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)
    return tokenizer, model


#: words of the bundled prompt sets and templates that the tiny T5 vocabulary holds whole
T5_WORDS = ("a an the of photo picture painting image in on at with and or red green blue black white small large "
            "airplane automobile bird cat deer dog frog horse ship truck car").split()


def tiny_t5_tokenizer(max_length: int = 16) -> Any:
    """A T5 tokenizer over a small vocabulary, built offline without sentencepiece or a download.

    transformers' ``T5TokenizerFast(vocab=[(piece, log_prob), ...])`` builds a tokenizers Unigram
    model from a list of pieces (``▁`` marks a word start). The list: ``<pad>`` (0), ``</s>`` (1),
    ``<unk>`` (2), ``▁``, the words of :data:`T5_WORDS` and every printable ASCII character with and
    without ``▁``, so any ASCII prompt tokenizes without ``<unk>`` (about 220 pieces, no extra ids).
    ``save_pretrained`` writes ``tokenizer.json``, which ``T5TokenizerFast.from_pretrained`` reads back.
    """
    import string

    from transformers import T5TokenizerFast

    pieces: dict[str, float] = {"<pad>": 0.0, "</s>": 0.0, "<unk>": 0.0, "\u2581": -2.0}
    for word in T5_WORDS:
        pieces.setdefault("\u2581" + word, -4.0)
    chars = string.ascii_letters + string.digits + string.punctuation
    for c in chars:
        pieces.setdefault("\u2581" + c, -8.0)
    for c in chars:
        pieces.setdefault(c, -9.0)
    return T5TokenizerFast(vocab=list(pieces.items()), extra_ids=0, model_max_length=max_length)


def tiny_t5_text_encoder(d_model: int = 32, max_length: int = 16) -> tuple[Any, Any]:
    """(:func:`tiny_t5_tokenizer`, a tiny random ``T5EncoderModel`` of width ``d_model``): the T5
    encoder of tiny SD3 / FLUX pipelines (its last hidden states (N, max_length, d_model))."""
    from transformers import T5Config, T5EncoderModel

    tokenizer = tiny_t5_tokenizer(max_length)
    config = T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_kv=d_model // 4, d_ff=2 * d_model, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return tokenizer, T5EncoderModel(config)
