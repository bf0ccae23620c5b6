"""Tests of the ``prompts`` package: built-in sets, file formats, errors, stream, split."""

from __future__ import annotations

import collections
import json
import logging
import subprocess
import sys
from itertools import islice
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import prompts
from prompts import Prompt, PromptStream, load, split_eval
from raft_diffusion.errors import PromptError

BUILTIN_COUNTS = {"cifar10": 10, "cifar100": 100, "simple_animals": 45, "imagenet_animals": 398}


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let a test register sets without leaking them into the global registry."""
    prompts.available()  # plugins register their sets into the global registry first, not into the copy
    monkeypatch.setattr(prompts.REGISTRY, "_entries", dict(prompts.REGISTRY._entries))


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def error_of(source: object, **kwargs: object) -> str:
    with pytest.raises(PromptError) as info:
        load(source, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message, message
    return message


def make_prompts(n: int) -> list[Prompt]:
    return [Prompt(f"p{i}", {"index": i}) for i in range(n)]


# ----------------------------------------------------------------------------- built-in sets


@pytest.mark.parametrize(("name", "count"), sorted(BUILTIN_COUNTS.items()))
def test_builtin_set_counts_and_metadata(name: str, count: int) -> None:
    ps = load(name)
    assert len(ps) == count
    assert len({p.text for p in ps}) == count, "duplicate prompts"
    for i, p in enumerate(ps):
        assert p.metadata["set"] == name
        assert p.metadata["index"] == i
        assert p.metadata["label"]
        assert p.text == p.text.strip() and p.text


def test_builtin_sets_are_registered_and_described() -> None:
    assert set(BUILTIN_COUNTS) <= set(prompts.available())
    assert prompts.available() == sorted(prompts.available())
    described = dict(prompts.describe())
    assert [n for n, _ in prompts.describe()] == prompts.available()
    assert all(described[n] for n in BUILTIN_COUNTS)


def test_cifar10_names() -> None:
    expected = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert [p.text for p in load("cifar10")] == expected


def test_cifar100_renders_underscores_and_keeps_raw_label() -> None:
    ps = load("cifar100")
    labels = [p.metadata["label"] for p in ps]
    assert labels[:10] == ["apple", "aquarium_fish", "baby", "bear", "beaver",
                           "bed", "bee", "beetle", "bicycle", "bottle"]
    assert labels[-1] == "worm"
    assert labels == sorted(labels), "official CIFAR-100 label order is alphabetical"
    for p in ps:
        assert "_" not in p.text
        assert p.text == p.metadata["label"].replace("_", " ")
    by_label = {p.metadata["label"]: p.text for p in ps}
    assert by_label["maple_tree"] == "maple tree"


def test_ddpo_sets_boundaries() -> None:
    animals = [p.text for p in load("simple_animals")]
    assert animals[0] == "cat" and animals[-1] == "kangaroo"
    imagenet = [p.text for p in load("imagenet_animals")]
    assert imagenet[0] == "tench" and imagenet[-1] == "puffer"
    # DDPO's imagenet_dogs slice is [151:269] of the same file.
    assert imagenet[151] == "Chihuahua" and imagenet[268] == "Mexican hairless"


def test_loads_return_fresh_metadata() -> None:
    first = load("cifar10")
    first[0].metadata["mutated"] = True
    assert "mutated" not in load("cifar10")[0].metadata


# ----------------------------------------------------------------------------- template, limit


def test_template_wraps_text_and_keeps_label() -> None:
    template = "a photo of a {}"
    raw = load("cifar100")
    wrapped = load("cifar100", template=template)
    assert [p.text for p in wrapped] == [template.replace("{}", p.text) for p in raw]
    assert [p.metadata["label"] for p in wrapped] == [p.metadata["label"] for p in raw]
    assert all(p.metadata["template"] == template for p in wrapped)


def test_template_sets_label_from_raw_text_when_missing(tmp_path: Path) -> None:
    path = write(tmp_path / "p.jsonl", json.dumps({"prompt": "red fox", "style": "oil"}) + "\n")
    (p,) = load(path, template="a painting of a {}")
    assert p.text == "a painting of a red fox"
    assert p.metadata["label"] == "red fox"
    assert p.metadata["style"] == "oil"


def test_template_keeps_other_braces_literal(tmp_path: Path) -> None:
    path = write(tmp_path / "p.txt", "cat\n")
    (p,) = load(path, template="{style} photo of a {}")
    assert p.text == "{style} photo of a cat"


@pytest.mark.parametrize("template", ["a photo", "a photo of a {0}", ""])
def test_template_without_placeholder_is_refused(template: str) -> None:
    message = error_of("cifar10", template=template)
    assert repr(template) in message and "{}" in message


def test_limit_keeps_first_prompts() -> None:
    full = load("imagenet_animals")
    assert load("imagenet_animals", limit=7) == full[:7]
    assert load("cifar10", limit=1000) == load("cifar10")


@pytest.mark.parametrize("limit", [0, -3, 2.5, True, "5"])
def test_bad_limit_is_refused(limit: object) -> None:
    assert repr(limit) in error_of("cifar10", limit=limit)


# ----------------------------------------------------------------------------- file formats


def test_txt_skips_blank_and_comment_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "mine.txt", "# header\n\n  a red car  \r\n   \n# note\na blue boat\n")
    ps = load(str(path))
    assert [p.text for p in ps] == ["a red car", "a blue boat"]
    assert [p.metadata["line"] for p in ps] == [3, 6]
    assert [p.metadata["index"] for p in ps] == [0, 1]
    assert all(p.metadata["source"] == str(path) and p.metadata["set"] == "mine" for p in ps)


def test_txt_accepts_utf8_bom_and_non_ascii(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_bytes("\ufeffcafé au lait\nчай\n".encode("utf-8"))
    assert [p.text for p in load(path)] == ["café au lait", "чай"]


def test_jsonl_prompt_and_text_keys_with_metadata(tmp_path: Path) -> None:
    rows = [
        {"prompt": "a cat", "label": "cat", "weight": 2},
        {"text": "a dog", "tags": ["pet"]},
        {"prompt": "How do I bake bread?", "chosen": "Mix flour...", "rejected": "No."},
    ]
    path = write(tmp_path / "p.jsonl", "\n".join(json.dumps(r) for r in rows[:2]) + "\n\n" + json.dumps(rows[2]))
    ps = load(path)
    assert [p.text for p in ps] == ["a cat", "a dog", "How do I bake bread?"]
    assert ps[0].metadata["label"] == "cat" and ps[0].metadata["weight"] == 2
    assert ps[1].metadata["tags"] == ["pet"] and ps[1].metadata["label"] == "a dog"
    assert ps[2].metadata["chosen"] == rows[2]["chosen"] and ps[2].metadata["rejected"] == "No."
    assert "prompt" not in ps[0].metadata and "text" not in ps[1].metadata
    assert [p.metadata["line"] for p in ps] == [1, 2, 4]


def test_csv_prompt_column_and_metadata(tmp_path: Path) -> None:
    path = write(tmp_path / "p.csv", 'id,prompt,style\n1,"a cat, sleeping",watercolor\n\n2,a dog,\n')
    ps = load(path)
    assert [p.text for p in ps] == ["a cat, sleeping", "a dog"]
    assert ps[0].metadata["id"] == "1" and ps[0].metadata["style"] == "watercolor"
    assert ps[1].metadata["style"] == ""
    assert "prompt" not in ps[0].metadata


def test_csv_text_column(tmp_path: Path) -> None:
    path = write(tmp_path / "p.csv", "text,label\nan owl,owl\n")
    (p,) = load(path)
    assert p.text == "an owl" and p.metadata["label"] == "owl"


def test_pathlike_and_str_sources_agree(tmp_path: Path) -> None:
    path = write(tmp_path / "p.txt", "x\ny\n")
    assert load(path) == load(str(path))


# ----------------------------------------------------------------------------- error messages


def test_unknown_name_lists_known_sets_and_path_forms() -> None:
    message = error_of("cifar11")
    assert "'cifar11'" in message
    for name in prompts.available():
        assert name in message
    for ext in (".txt", ".jsonl", ".csv"):
        assert ext in message


def test_empty_source_is_an_unknown_name() -> None:
    assert "''" in error_of("")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.txt"
    message = error_of(path)
    assert str(path) in message and "does not exist" in message


def test_directory_with_known_extension(tmp_path: Path) -> None:
    folder = tmp_path / "dir.txt"
    folder.mkdir()
    assert str(folder) in error_of(folder)


@pytest.mark.parametrize(
    ("name", "text"),
    [("e.txt", "# only a comment\n\n   \n"), ("e.jsonl", "\n\n"), ("e.csv", "prompt,label\n"), ("z.csv", "")],
)
def test_empty_files(tmp_path: Path, name: str, text: str) -> None:
    path = write(tmp_path / name, text)
    message = error_of(path)
    assert str(path) in message and "no prompts" in message


def test_undecodable_bytes_name_offset_and_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    data = "first\nsecond caf".encode() + b"\xe9\n"
    path.write_bytes(data)
    message = error_of(path)
    assert str(path) in message
    offset = data.index(b"\xe9")
    assert f"offset {offset}" in message
    assert "line 2" in message and "UTF-8" in message and "0xe9" in message


def test_malformed_json_line_number(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.jsonl", '{"prompt": "ok"}\n{"prompt": "broken"\n')
    message = error_of(path)
    assert str(path) in message and "line 2" in message and "JSON" in message


def test_jsonl_line_without_prompt_key(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.jsonl", '{"prompt": "ok"}\n{"question": "q"}\n')
    message = error_of(path)
    assert "line 2" in message and "'question'" in message and "prompt" in message


@pytest.mark.parametrize("row", ['["a list"]', '"a string"', '{"prompt": ""}', '{"prompt": 3}'])
def test_jsonl_bad_rows(tmp_path: Path, row: str) -> None:
    path = write(tmp_path / "bad.jsonl", row + "\n")
    assert "line 1" in error_of(path)


def test_csv_without_prompt_column(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.csv", "caption,label\na cat,cat\n")
    message = error_of(path)
    assert str(path) in message and "'caption'" in message and "prompt" in message


def test_csv_empty_prompt_cell_and_extra_fields(tmp_path: Path) -> None:
    empty = write(tmp_path / "empty_cell.csv", "prompt,label\na cat,cat\n,dog\n")
    assert "line 3" in error_of(empty)
    extra = write(tmp_path / "extra.csv", "prompt,label\na cat,cat,oops\n")
    assert "line 2" in error_of(extra)


@pytest.mark.parametrize("name", ["prompts.json", "prompts.yaml", "prompts"])
def test_unknown_extension(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / name, "a cat\n")
    message = error_of(path)
    assert str(path) in message and ".txt" in message and ".jsonl" in message and ".csv" in message


def test_unknown_extension_for_missing_dotted_name() -> None:
    message = error_of("prompts.json")
    assert "'.json'" in message


def test_non_path_source_is_refused() -> None:
    assert "42" in error_of(42)


# ----------------------------------------------------------------------------- registry


def test_register_user_set_from_strings(scratch_registry: None) -> None:
    prompts.register("my_set", lambda: ["  a cat ", "a dog"], "two pets")
    assert "my_set" in prompts.available()
    assert ("my_set", "two pets") in prompts.describe()
    ps = load("my_set", template="a photo of {}")
    assert [p.text for p in ps] == ["a photo of a cat", "a photo of a dog"]
    assert [p.metadata["index"] for p in ps] == [0, 1]
    assert all(p.metadata["set"] == "my_set" for p in ps)


def test_register_user_set_from_prompts_keeps_metadata(scratch_registry: None) -> None:
    prompts.register("mine", lambda: [Prompt("x", {"label": "X", "extra": 1})])
    (p,) = load("mine")
    assert p.metadata["label"] == "X" and p.metadata["extra"] == 1 and p.metadata["set"] == "mine"


def test_duplicates_refused(scratch_registry: None) -> None:
    prompts.register("dup", lambda: ["a"])
    with pytest.raises(PromptError, match="'dup'"):
        prompts.register("dup", lambda: ["b"])
    with pytest.raises(PromptError, match="'cifar10'"):
        prompts.register("cifar10", lambda: ["b"])


def test_register_bad_loader_and_bad_output(scratch_registry: None) -> None:
    with pytest.raises(PromptError, match="'bad'"):
        prompts.register("bad", ["not", "callable"])  # type: ignore[arg-type]
    prompts.register("empty", lambda: [])
    assert "'empty'" in error_of("empty")
    prompts.register("ints", lambda: [1, 2])
    assert "'ints'" in error_of("ints")


# ----------------------------------------------------------------------------- stream


def take(stream: PromptStream, k: int) -> list[list[str]]:
    return [[p.text for p in batch] for batch in islice(stream, k)]


def test_stream_is_deterministic_and_seed_dependent() -> None:
    ps = make_prompts(50)
    assert take(PromptStream(ps, 8, seed=3), 20) == take(PromptStream(ps, 8, seed=3), 20)
    assert take(PromptStream(ps, 8, seed=3), 20) != take(PromptStream(ps, 8, seed=4), 20)


def test_stream_passes_are_fresh_permutations() -> None:
    ps = make_prompts(30)
    stream = PromptStream(ps, 30, seed=1)
    first, second = stream.next_batch(), stream.next_batch()
    assert sorted(p.text for p in first) == sorted(p.text for p in ps)
    assert sorted(p.text for p in second) == sorted(p.text for p in ps)
    assert first != second
    assert [ps[i] for i in stream.order(0)] == first


def test_stream_without_shuffle_is_sequential() -> None:
    ps = make_prompts(5)
    stream = PromptStream(ps, 3, shuffle=False)
    assert take(stream, 3) == [["p0", "p1", "p2"], ["p3", "p4", "p0"], ["p1", "p2", "p3"]]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 20), b=st.integers(1, 25), seed=st.integers(0, 2**31))
def test_stream_cycles_every_prompt_equally(n: int, b: int, seed: int) -> None:
    ps = make_prompts(n)
    stream = PromptStream(ps, b, seed=seed)
    batches = [stream.next_batch() for _ in range(n)]  # n batches of b = exactly b passes
    assert all(len(batch) == b for batch in batches)
    counts = collections.Counter(p.text for batch in batches for p in batch)
    assert set(counts) == {p.text for p in ps}
    assert set(counts.values()) == {b}
    assert stream.epoch == b - 1 and stream.cursor == n


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 15), b=st.integers(1, 20), before=st.integers(0, 12), after=st.integers(1, 12),
       seed=st.integers(0, 10**6), shuffle=st.booleans())
def test_stream_resume_equals_uninterrupted(n: int, b: int, before: int, after: int, seed: int, shuffle: bool) -> None:
    ps = make_prompts(n)
    reference = take(PromptStream(ps, b, seed=seed, shuffle=shuffle), before + after)
    first = PromptStream(ps, b, seed=seed, shuffle=shuffle)
    head = take(first, before)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = PromptStream(ps, b, seed=seed + 1, shuffle=not shuffle)  # state carries seed and shuffle
    resumed.load_state_dict(state)
    assert head + take(resumed, after) == reference


def test_state_dict_fields() -> None:
    stream = PromptStream(make_prompts(4), 3, seed=9)
    stream.next_batch()
    stream.next_batch()
    state = stream.state_dict()
    assert {"seed", "epoch", "cursor"} <= set(state)
    assert (state["seed"], state["epoch"], state["cursor"]) == (9, stream.epoch, stream.cursor)


def test_resume_with_other_set_size_is_refused() -> None:
    state = PromptStream(make_prompts(4), 2).state_dict()
    with pytest.raises(PromptError, match="4"):
        PromptStream(make_prompts(5), 2).load_state_dict(state)
    with pytest.raises(PromptError, match="cursor"):
        PromptStream(make_prompts(4), 2).load_state_dict({**state, "cursor": 9})
    with pytest.raises(PromptError, match="epoch"):
        PromptStream(make_prompts(4), 2).load_state_dict({"seed": 0, "cursor": 0})


@pytest.mark.parametrize("batch_size", [0, -1, prompts.MAX_BATCH_SIZE + 1, True, 2.0])
def test_bad_batch_size(batch_size: object) -> None:
    with pytest.raises(PromptError, match="batch_size") as info:
        PromptStream(make_prompts(3), batch_size)  # type: ignore[arg-type]
    assert repr(batch_size) in str(info.value)


def test_batch_larger_than_set_warns_and_repeats(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="prompts.stream"):
        stream = PromptStream(make_prompts(3), 7)
    assert any("repeat" in r.getMessage() for r in caplog.records)
    assert len(stream.next_batch()) == 7


def test_empty_stream_is_refused() -> None:
    with pytest.raises(PromptError, match="at least one prompt"):
        PromptStream([], 2)


# ----------------------------------------------------------------------------- split


def test_split_eval_partitions_deterministically() -> None:
    ps = load("cifar100")
    train, held = split_eval(ps, 10, seed=5)
    assert len(held) == 10 and len(train) == len(ps) - 10
    texts = [p.text for p in train] + [p.text for p in held]
    assert sorted(texts) == sorted(p.text for p in ps)
    assert split_eval(ps, 10, seed=5) == (train, held)
    assert split_eval(ps, 10, seed=6)[1] != held
    order = [p.text for p in ps]
    assert [p.text for p in held] == sorted((p.text for p in held), key=order.index)
    assert {p.metadata["split"] for p in train} == {"train"}
    assert {p.metadata["split"] for p in held} == {"eval"}
    assert "split" not in ps[0].metadata


@pytest.mark.parametrize("n_eval", [-1, 10, 11, 1.5])
def test_split_eval_bad_sizes(n_eval: object) -> None:
    with pytest.raises(PromptError, match="n_eval") as info:
        split_eval(load("cifar10"), n_eval)  # type: ignore[arg-type]
    assert repr(n_eval) in str(info.value)


def test_eval_prompts_from_their_own_source(tmp_path: Path) -> None:
    path = write(tmp_path / "eval.txt", "a zebra\na yak\n")
    assert [p.text for p in load(path)] == ["a zebra", "a yak"]


# ----------------------------------------------------------------------------- purity


def test_package_imports_without_torch() -> None:
    code = "import sys, prompts; prompts.load('cifar10'); assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
