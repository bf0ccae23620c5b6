"""Readers for prompt files: ``.txt`` (one per line), ``.jsonl`` and ``.csv``.

Every reader returns :class:`~prompts.types.Prompt` records whose metadata carries ``set``
(the file's stem), ``source`` (the path), ``index`` (position among the file's prompts),
``line`` (1-based line number) and ``label`` (the text, unless the row sets one), plus every
extra field of the row, which wins over these defaults. Files must be UTF-8.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

from prompts.types import Prompt
from raft_diffusion.errors import PromptError

logger = logging.getLogger(__name__)

#: Keys (JSONL) or columns (CSV) holding the prompt text, in order of preference.
TEXT_KEYS: tuple[str, ...] = ("prompt", "text")


def read_text(path: str | os.PathLike[str]) -> str:
    """The file's text, decoded as UTF-8 (a BOM is dropped); raises PromptError otherwise."""
    p = Path(path)
    if not p.exists():
        raise PromptError(f"prompt file {str(p)!r} does not exist; check the path")
    if p.is_dir():
        raise PromptError(f"prompt file {str(p)!r} is a directory; pass a .txt, .jsonl or .csv file")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise PromptError(f"cannot read prompt file {str(p)!r} ({exc.strerror}); check its permissions") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise PromptError(
            f"prompt file {str(p)!r} is not valid UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start} "
            f"(line {line}); the file must be UTF-8 encoded, re-save it as UTF-8"
        ) from None


def _lines(text: str) -> list[str]:
    """Split on "\\n" only (not on the exotic separators str.splitlines knows), dropping "\\r"."""
    return [line.rstrip("\r") for line in text.split("\n")]


def read_lines(path: str | os.PathLike[str]) -> list[tuple[int, str]]:
    """(1-based line number, stripped line) for each non-blank line not starting with '#'."""
    out: list[tuple[int, str]] = []
    for number, raw in enumerate(_lines(read_text(path)), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            out.append((number, line))
    return out


def _prompt(path: Path, index: int, line: int, text: str, extras: dict[str, Any]) -> Prompt:
    metadata: dict[str, Any] = {"set": path.stem, "source": str(path), "index": index, "line": line}
    metadata.update(extras)
    metadata.setdefault("label", text)
    return Prompt(text=text, metadata=metadata)


def read_txt(path: str | os.PathLike[str]) -> list[Prompt]:
    """One prompt per line; blank lines and lines starting with '#' are skipped."""
    p = Path(path)
    return [_prompt(p, i, line, text, {}) for i, (line, text) in enumerate(read_lines(p))]


def _text_field(row: dict[str, Any], where: str, path: Path) -> tuple[str, dict[str, Any]]:
    """Pop the prompt text (first of TEXT_KEYS present) from ``row``; the rest is metadata."""
    for key in TEXT_KEYS:
        if key in row:
            value = row.pop(key)
            if not isinstance(value, str) or not value.strip():
                raise PromptError(
                    f"prompt file {str(path)!r}, {where}: {key!r} must be a non-empty string, got {value!r}"
                )
            return value.strip(), row
    raise PromptError(
        f"prompt file {str(path)!r}, {where}: no 'prompt' or 'text' field (found {sorted(row)}); "
        "add a 'prompt' field"
    )


def read_jsonl(path: str | os.PathLike[str]) -> list[Prompt]:
    """One JSON object per line with a "prompt" (or "text") key; other keys become metadata."""
    p = Path(path)
    prompts: list[Prompt] = []
    for number, raw in enumerate(_lines(read_text(p)), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise PromptError(
                f"prompt file {str(p)!r}, line {number}: malformed JSON ({exc.msg} at column {exc.colno}); "
                "each line must be one JSON object"
            ) from None
        if not isinstance(row, dict):
            raise PromptError(
                f"prompt file {str(p)!r}, line {number}: expected a JSON object, got {type(row).__name__}; "
                'write {"prompt": "..."}'
            )
        text, extras = _text_field(row, f"line {number}", p)
        prompts.append(_prompt(p, len(prompts), number, text, extras))
    return prompts


def read_csv(path: str | os.PathLike[str]) -> list[Prompt]:
    """CSV with a header row; column "prompt" (or "text") is the prompt, other columns metadata."""
    p = Path(path)
    text = read_text(p)
    if not text.strip():
        return []
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except csv.Error as exc:
        raise PromptError(f"prompt file {str(p)!r}: malformed CSV header ({exc}); fix the first row") from None
    column = next((c for c in TEXT_KEYS if c in header), None)
    if column is None:
        raise PromptError(
            f"prompt file {str(p)!r}: CSV header {header} has no 'prompt' or 'text' column; "
            "name the prompt column 'prompt'"
        )
    prompts: list[Prompt] = []
    try:
        for cells in reader:
            number = reader.line_num
            if not any(c.strip() for c in cells):
                continue
            if len(cells) > len(header):
                raise PromptError(
                    f"prompt file {str(p)!r}, line {number}: {len(cells)} fields but the header has "
                    f"{len(header)}; quote cells that contain commas"
                )
            row = dict(zip(header, cells + [""] * (len(header) - len(cells))))
            value = row.pop(column).strip()
            if not value:
                raise PromptError(
                    f"prompt file {str(p)!r}, line {number}: empty {column!r} cell; fill it or delete the row"
                )
            prompts.append(_prompt(p, len(prompts), number, value, row))
    except csv.Error as exc:
        raise PromptError(f"prompt file {str(p)!r}, line {reader.line_num}: malformed CSV ({exc})") from None
    return prompts


#: Readers by lower-case file extension.
READERS: dict[str, Callable[[str | os.PathLike[str]], list[Prompt]]] = {
    ".txt": read_txt,
    ".jsonl": read_jsonl,
    ".csv": read_csv,
}


def read_file(path: str | os.PathLike[str]) -> list[Prompt]:
    """Read a prompt file with the reader for its extension; an empty file raises PromptError."""
    p = Path(path)
    reader = READERS.get(p.suffix.lower())
    if reader is None:
        found = f"unsupported extension {p.suffix!r}" if p.suffix else "no extension"
        raise PromptError(f"prompt file {str(p)!r} has {found}; use one of {', '.join(READERS)}")
    prompts = reader(p)
    if not prompts:
        raise PromptError(f"prompt file {str(p)!r} contains no prompts; add at least one prompt")
    logger.debug("read %d prompts from %s", len(prompts), p)
    return prompts
