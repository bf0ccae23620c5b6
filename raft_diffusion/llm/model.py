"""Load a causal LM and its tokenizer (hub id or local folder); build a tiny random one offline.

Library code never reaches the network on its own: a hub id resolves through the Hugging Face
cache, and with ``HF_HUB_OFFLINE=1`` (or no network) a missing model is a one-line ModelError.
``pretrained: tiny-lm`` (or ``tiny``) loads :func:`tiny_lm_dir`, a tiny random Llama with a
word-level tokenizer and a chat template, built in code and cached on disk.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from raft_diffusion.errors import ConfigError, ModelError
from raft_diffusion.llm import TINY_LM
from raft_diffusion.training import resolve_device

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TINY_ALIASES = (TINY_LM, "tiny")

#: The tiny tokenizer's words (lower-cased; anything else is <unk>). "good" is the tiny default's reward word.
TINY_WORDS = tuple((
    ": , . ? ! ' user assistant human system a an the of is are it this that and or to in on with for "
    "photo picture image what who where why how do does can you i me my we they he she not yes no "
    "airplane automobile bird cat deer dog frog horse ship truck "
    "good bad big small red blue green old new happy sad fast slow hot cold day night sun rain tree water "
    "house road car boat city field sky cloud"
).split())
TINY_SPECIALS = ("<pad>", "<unk>", "<s>", "</s>")
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }} : {{ message['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}assistant :{% endif %}"
)


# ------------------------------------------------------------------ devices and dtypes


def resolve_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ConfigError(f"model.dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


# ------------------------------------------------------------------ loading
def _source(pretrained: str, cache_dir: str | Path | None) -> str:
    """A local folder path or a hub id for ``pretrained``; clear errors for neither."""
    if pretrained in TINY_ALIASES:
        return str(tiny_lm_dir(cache_dir))
    path = Path(pretrained).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"model.pretrained {pretrained!r} is a file; give a model folder (save_pretrained) or a hub id")
        if not (path / "config.json").is_file():
            raise ModelError(
                f"{str(path)!r} is not a transformers model folder (no config.json); give a folder saved with "
                "save_pretrained, a hub id, or 'tiny-lm'"
            )
        return str(path)
    if pretrained.startswith((".", "/", "~")) or pretrained.count("/") != 1:
        raise ModelError(
            f"model.pretrained {pretrained!r} is neither an existing folder nor a hub id like 'owner/name'; check the path"
        )
    return pretrained


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def load_tokenizer(pretrained: str, *, revision: str | None = None, cache_dir: str | Path | None = None) -> Any:
    """The model's tokenizer, left-padding, with a pad token (the eos token when it has none)."""
    from transformers import AutoTokenizer

    source = _source(pretrained, cache_dir)
    try:
        tok = AutoTokenizer.from_pretrained(source, revision=revision)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot load the tokenizer of {source!r}: {_first_line(exc)}. Without network, download it first "
            "(huggingface-cli download) or pass a local folder"
        ) from None
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ModelError(f"tokenizer of {source!r} has neither a pad nor an eos token; add a pad token to it")
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_causal_lm(
    pretrained: str,
    *,
    dtype: str = "float32",
    device: str = "auto",
    revision: str | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[Any, Any]:
    """(model, tokenizer): an ``AutoModelForCausalLM`` in eval mode, frozen, on ``device``."""
    from transformers import AutoModelForCausalLM

    torch_dtype = resolve_dtype(dtype)
    dev = resolve_device(device)
    source = _source(pretrained, cache_dir)
    tokenizer = load_tokenizer(pretrained, revision=revision, cache_dir=cache_dir)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, revision=revision)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot load causal LM {source!r}: {_first_line(exc)}. Without network, download it first "
            "(huggingface-cli download) or pass a local folder"
        ) from None
    from raft_diffusion import provenance

    provenance.record("model.pretrained", source, revision)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.requires_grad_(False)
    return model.to(dev).eval(), tokenizer


# ------------------------------------------------------------------ tiny LM (tests, trials)
def build_tiny_tokenizer() -> Any:
    """A word-level, lower-casing ``PreTrainedTokenizerFast`` over :data:`TINY_WORDS` with a chat template.

    Ids: <pad> 0, <unk> 1, <s> 2, </s> 3, then the words; decoding joins words with single spaces.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(TINY_SPECIALS + TINY_WORDS)}
    assert len(vocab) == len(TINY_SPECIALS) + len(TINY_WORDS), "duplicate word in TINY_WORDS"
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>",
        clean_up_tokenization_spaces=False, padding_side="left", model_max_length=256,
    )
    tok.chat_template = TINY_CHAT_TEMPLATE
    return tok


def build_tiny_lm(out_dir: str | Path, seed: int = 0, hidden_size: int = 32, layers: int = 2,
                  embedding_std: float = 0.1) -> Path:
    """Write a tiny random ``LlamaForCausalLM`` (about 24k parameters) + tokenizer to ``out_dir``.

    The (tied) embeddings are drawn with std ``embedding_std`` (transformers' 0.02 would cap the
    logits near +-0.6, so no adapter could make any token likely); next-token entropy starts near
    4 nats of the 4.5 maximum. Built in code, offline; ``AutoModelForCausalLM.from_pretrained``
    loads it back.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256, tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        torch.nn.init.normal_(model.model.embed_tokens.weight, std=embedding_std)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def tiny_lm_dir(cache_dir: str | Path | None = None) -> Path:
    """The cached tiny LM folder (built once per cache dir): what ``pretrained: tiny-lm`` loads.

    The cache is ``cache_dir``, else ``$RAFT_DIFFUSION_CACHE``, else ``~/.cache/raft_diffusion``.
    """
    from raft_diffusion.training import cached_folder

    return cached_folder("tiny-lm-v2", "config.json", build_tiny_lm, cache_dir)
