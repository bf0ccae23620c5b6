"""HH-RLHF-style transcripts -> RAFT prompts; prompts over a token limit are dropped and counted.

An HH-RLHF row is ``{"chosen": transcript, "rejected": transcript}`` where a transcript reads
``"\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nHuman: ...\\n\\nAssistant: <answer>"``. The prompt is the
transcript up to and including its last ``"Assistant:"``; the rest of the chosen transcript is
the reference answer (metadata ``reference``, used for held-out perplexity), the rest of the
rejected one is ``rejected``. Files are the user's own copy (nothing is downloaded).

To train on such a file, convert it once into the prompt loader's JSONL format::

    python -m raft_diffusion.llm.data hh_train.jsonl prompts.jsonl --tokenizer huggyllama/llama-7b --max-prompt-tokens 256

then set ``prompts.train: prompts.jsonl`` (and ``prompts.template: null``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from prompts.files import read_text
from prompts.types import Prompt
from raft_diffusion.errors import PromptError

log = logging.getLogger(__name__)
ASSISTANT = "Assistant:"


def split_transcript(transcript: str) -> tuple[str, str]:
    """(prompt up to and including the last "Assistant:", the answer after it, stripped)."""
    cut = transcript.rfind(ASSISTANT)
    if cut < 0:
        raise PromptError(f"transcript has no {ASSISTANT!r} turn: {transcript[:60]!r}...; is this HH-RLHF data?")
    end = cut + len(ASSISTANT)
    return transcript[:end], transcript[end:].strip()


def read_hh_jsonl(path: str | os.PathLike[str]) -> list[Prompt]:
    """Prompts from an HH-RLHF-style JSONL file (``chosen``/``rejected`` transcripts, or ``prompt``).

    metadata: ``reference`` (the chosen answer), ``rejected`` (the rejected answer, when present),
    ``index`` and ``line``, plus any other keys of the row.
    """
    p = Path(path)
    out: list[Prompt] = []
    for number, raw in enumerate(read_text(p).split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise PromptError(f"HH-RLHF file {str(p)!r}, line {number}: malformed JSON ({exc.msg}); one object per line") from None
        if not isinstance(row, dict) or not ({"chosen", "prompt"} & set(row)):
            raise PromptError(f"HH-RLHF file {str(p)!r}, line {number}: needs a 'chosen' transcript (or a 'prompt')")
        meta: dict[str, Any] = {k: v for k, v in row.items() if k not in ("chosen", "rejected", "prompt")}
        if "chosen" in row:
            text, meta["reference"] = split_transcript(str(row["chosen"]))
            if "rejected" in row:
                rej_prompt, rejected = split_transcript(str(row["rejected"]))
                meta["rejected"] = rejected if rej_prompt == text else None
        else:
            text = str(row["prompt"])
        meta.update({"set": p.stem, "source": str(p), "index": len(out), "line": number})
        out.append(Prompt(text=text, metadata=meta))
    if not out:
        raise PromptError(f"HH-RLHF file {str(p)!r} holds no rows; give a JSONL file with 'chosen' transcripts")
    return out


@dataclass
class DropStats:
    kept: int
    dropped: int
    max_tokens: int


def drop_long_prompts(prompts: Sequence[Prompt], tokenizer: Any, max_tokens: int) -> tuple[list[Prompt], DropStats]:
    """(prompts with at most ``max_tokens`` tokens, counts). The paper drops HH prompts over 256 tokens."""
    kept = [p for p in prompts if len(tokenizer(p.text, add_special_tokens=False).input_ids) <= max_tokens]
    stats = DropStats(kept=len(kept), dropped=len(prompts) - len(kept), max_tokens=max_tokens)
    if stats.dropped:
        log.info("dropped %d of %d prompts longer than %d tokens", stats.dropped, len(prompts), max_tokens)
    return kept, stats


def write_prompts_jsonl(prompts: Sequence[Prompt], path: str | os.PathLike[str]) -> Path:
    """Write ``{"prompt": ..., **metadata}`` rows that :func:`prompts.load` reads back."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    skip = {"set", "source", "line"}
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as fh:
        for p in prompts:
            fh.write(json.dumps({"prompt": p.text, **{k: v for k, v in p.metadata.items() if k not in skip}}) + "\n")
    os.replace(tmp, out)
    return out


def convert_hh(src: str | os.PathLike[str], dst: str | os.PathLike[str], tokenizer: Any, max_prompt_tokens: int = 256
               ) -> DropStats:
    """Read an HH-RLHF file, drop long prompts, write the loader's JSONL; returns the counts."""
    kept, stats = drop_long_prompts(read_hh_jsonl(src), tokenizer, max_prompt_tokens)
    write_prompts_jsonl(kept, dst)
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m raft_diffusion.llm.data",
                                     description="Convert HH-RLHF-style JSONL into a RAFT prompt file.")
    parser.add_argument("src", help="HH-RLHF JSONL ('chosen'/'rejected' transcripts)")
    parser.add_argument("dst", help="output JSONL for prompts.train / prompts.eval")
    parser.add_argument("--tokenizer", default="tiny-lm", help="hub id or folder of the policy's tokenizer")
    parser.add_argument("--max-prompt-tokens", type=int, default=256, help="drop longer prompts (paper: 256)")
    args = parser.parse_args(argv)
    from raft_diffusion.llm.model import load_tokenizer

    stats = convert_hh(args.src, args.dst, load_tokenizer(args.tokenizer), args.max_prompt_tokens)
    print(f"wrote {stats.kept} prompts to {args.dst}; dropped {stats.dropped} over {stats.max_tokens} tokens")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
