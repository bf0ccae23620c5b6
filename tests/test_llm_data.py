"""HH-RLHF transcripts -> prompts, the long-prompt drop count, the converter, Distinct-n, the presets."""

from __future__ import annotations

import json

import pytest

import prompts
from raft_diffusion.config import load_config
from raft_diffusion.errors import PromptError
from raft_diffusion.llm import data
from raft_diffusion.llm.metrics import distinct_n, response_metrics

ROWS = [
    {"chosen": "\n\nHuman: What is a cat?\n\nAssistant: A small animal.",
     "rejected": "\n\nHuman: What is a cat?\n\nAssistant: No idea."},
    {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a red thing?\n\nAssistant: A red car is red.",
     "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a red thing?\n\nAssistant: Blue."},
    {"chosen": "\n\nHuman: " + "dog " * 40 + "?\n\nAssistant: Yes."},
]


def write_hh(path, rows=ROWS):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_prompt_is_the_transcript_up_to_the_last_assistant_turn(tmp_path):
    got = data.read_hh_jsonl(write_hh(tmp_path / "hh.jsonl"))
    assert got[0].text == "\n\nHuman: What is a cat?\n\nAssistant:"
    assert got[0].metadata["reference"] == "A small animal." and got[0].metadata["rejected"] == "No idea."
    assert got[1].text == "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a red thing?\n\nAssistant:"
    assert got[1].metadata["reference"] == "A red car is red." and got[1].metadata["rejected"] == "Blue."
    assert "rejected" not in got[2].metadata and [p.metadata["line"] for p in got] == [1, 2, 3]


def test_bad_hh_rows_are_clear_errors(tmp_path):
    with pytest.raises(PromptError, match="no 'Assistant:' turn"):
        data.read_hh_jsonl(write_hh(tmp_path / "a.jsonl", [{"chosen": "Human: hi"}]))
    with pytest.raises(PromptError, match="line 1: needs a 'chosen'"):
        data.read_hh_jsonl(write_hh(tmp_path / "b.jsonl", [{"answer": "x"}]))


def test_long_prompts_are_dropped_and_counted(tmp_path):
    from raft_diffusion.llm.model import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    rows = data.read_hh_jsonl(write_hh(tmp_path / "hh.jsonl"))
    kept, stats = data.drop_long_prompts(rows, tok, max_tokens=30)
    assert (stats.kept, stats.dropped, stats.max_tokens) == (2, 1, 30) and kept == rows[:2]
    stats = data.convert_hh(tmp_path / "hh.jsonl", tmp_path / "out.jsonl", tok, max_prompt_tokens=30)
    assert stats.dropped == 1
    loaded = prompts.load(str(tmp_path / "out.jsonl"))  # the ordinary prompt loader reads the result
    assert [p.metadata["reference"] for p in loaded] == ["A small animal.", "A red car is red."]
    assert loaded[0].text == "Human: What is a cat?\n\nAssistant:"  # the loader strips surrounding whitespace


def test_converter_command(tmp_path, capsys):
    assert data.main([str(write_hh(tmp_path / "hh.jsonl")), str(tmp_path / "p.jsonl"), "--max-prompt-tokens", "30"]) == 0
    out = capsys.readouterr().out
    assert "wrote 2 prompts" in out and "dropped 1 over 30 tokens" in out


def test_distinct_n_by_hand():
    texts = ["the cat the cat", "a cat"]
    # unigrams: the cat the cat a cat -> 6 total, {the, cat, a} -> 3
    assert distinct_n(texts, 1) == 3 / 6
    # bigrams: (the cat) (cat the) (the cat) | (a cat) -> 4 total, 3 distinct
    assert distinct_n(texts, 2) == 3 / 4
    assert distinct_n([""], 2) == 0.0
    m = response_metrics(texts, [4, 2], [True, False])
    assert m["response_tokens"] == 3 and m["response_words"] == 3 and m["finished_fraction"] == 0.5


def test_presets_load():
    tiny = load_config("llm-tiny")
    assert tiny.backend == "llm" and tiny.model.pretrained == "tiny-lm" and tiny.reward.scorer == "text-contains"
    hh = load_config("llm-hh-rlhf")
    assert (hh.raft.k, hh.raft.prompts_per_round, hh.generation.max_new_tokens, hh.generation.max_prompt_tokens) == (32, 2048, 128, 256)
    assert (hh.train.learning_rate, hh.train.epochs_per_round, hh.generation.temperature) == (2e-5, 2, 1.0)
    assert hh.model.pretrained.count("/") == 1 and hh.reward.kwargs["model"].count("/") == 1


def test_hh_prompts_train_end_to_end_with_reference_perplexity(tmp_path):
    import torch

    from raft_diffusion.api import train
    from raft_diffusion.llm.model import build_tiny_tokenizer

    data.convert_hh(write_hh(tmp_path / "hh.jsonl"), tmp_path / "p.jsonl", build_tiny_tokenizer(), max_prompt_tokens=30)
    cfg = load_config("llm-tiny", {
        "prompts.train": str(tmp_path / "p.jsonl"), "prompts.eval": str(tmp_path / "p.jsonl"), "prompts.template": None,
        "raft.rounds": 1, "raft.k": 2, "raft.prompts_per_round": 2, "raft.eval_samples_per_prompt": 1,
        "generation.stop": ["human"], "ranking.filter_pattern": "#", "ranking.min_response_chars": 1,
        "output.dir": str(tmp_path / "run"),
    })
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        history = train(cfg, progress=False)
    finally:
        torch.set_num_threads(n)
    assert [e["perplexity_n"] for e in history.evals] == [2, 2]
    assert all(e["perplexity"] > 1 for e in history.evals)
    assert "human" not in " ".join(json.loads(l)["response"] for l in
                                   (tmp_path / "run" / "rounds" / "round-0001" / "responses.jsonl").read_text().splitlines())
