"""LLM backend over several processes: 1 process vs 2 CPU processes (gloo, ``accelerate launch
--multi_gpu --num_processes 2``) give the same samples, kept sets and files, and the same LoRA, which
is identical on both processes after every round (see tests/test_distributed.py for the launcher).

The config shards unevenly (3 prompts: 1 on process 0, 2 on process 1; 3 eval prompts likewise),
accumulates gradients over micro-batches that straddle the processes, and left-truncates every
prompt (the ``prompts_truncated`` count is shared across processes).
"""

from __future__ import annotations

import json
import pickle
import time

import pytest
import torch
from safetensors.torch import load_file

from prompts.types import Prompt
from raft_diffusion.core.backend import Samples
from raft_diffusion.llm.backend import Response, sample_extras
from raft_diffusion.llm.logprob import label_counts, response_labels
from tests.test_distributed import launch, lora_of

ROUNDS = 2


def _args(lm_dir, out_dir, *extra):
    return [
        "train", "llm-tiny", "--no-progress", "--output", str(out_dir), "--model.pretrained", str(lm_dir),
        "--raft.rounds", str(ROUNDS), "--raft.k", "4", "--raft.prompts_per_round", "3", "--raft.seed", "3",
        "--train.steps_per_round", "3", "--train.batch_size", "2", "--train.gradient_accumulation_steps", "2",
        # lr 1e-3: Adam turns float-rounding differences of tiny gradient entries into ~lr-sized steps at llm-tiny's 5e-2
        "--train.learning_rate", "1e-3", "--prompts.eval_limit", "3", "--generation.max_prompt_tokens", "6",
        *extra,
    ]


@pytest.fixture(scope="module")
def lm_dir():
    from raft_diffusion.llm.model import tiny_lm_dir

    return tiny_lm_dir()  # built once here, not by both processes at once


@pytest.fixture(scope="module")
def runs(lm_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("llm-dist")
    t0 = time.perf_counter()
    one = launch(_args(lm_dir, root / "one"), root / "dump-one")
    assert one.returncode == 0, one.stderr[-3000:]
    t1 = time.perf_counter()
    two = launch(_args(lm_dir, root / "two"), root / "dump-two", n=2)
    assert two.returncode == 0, two.stderr[-3000:]
    t2 = time.perf_counter()
    print(f"\nLLM, 1 process: {t1 - t0:.1f}s, 2 processes (accelerate launch): {t2 - t1:.1f}s")
    return root


def _rows(path):
    return [json.loads(line) for line in open(path)]


def test_same_samples_kept_ids_and_files(runs):
    a, b = _rows(runs / "one" / "metrics.jsonl"), _rows(runs / "two" / "metrics.jsonl")
    assert [r["round"] for r in b] == list(range(1, ROUNDS + 1))
    assert [r["kept_ids"] for r in a] == [r["kept_ids"] for r in b]
    assert all(r["n_processes"] == 2 for r in b)
    for x, y in zip(a, b):
        for key in ("reward_unbiased", "reward_mean", "reward_kept", "n_kept", "n_samples", "best_per_prompt",
                    "distinct_1", "distinct_2", "response_tokens", "finished_fraction", "prompts_truncated", "train_steps"):
            assert x[key] == y[key], key
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-5)
    assert a[-1]["prompts_truncated"] > 0, "the config should truncate prompts"
    for r in range(1, ROUNDS + 1):
        for name in ("samples.jsonl", "responses.jsonl", "kept.jsonl"):
            rel = f"rounds/round-{r:04d}/{name}"
            assert (runs / "one" / rel).read_text() == (runs / "two" / rel).read_text(), rel
    ea, eb = _rows(runs / "one" / "eval.jsonl"), _rows(runs / "two" / "eval.jsonl")
    assert [e["round"] for e in eb] == list(range(ROUNDS + 1))
    for x, y in zip(ea, eb):
        assert {k: v for k, v in x.items() if k != "seconds"} == {k: v for k, v in y.items() if k != "seconds"}


def test_lora_equal_across_processes_and_to_one_process(runs):
    one, two = runs / "dump-one", runs / "dump-two"
    worst = 0.0
    for r in range(1, ROUNDS + 1):
        ref, r0, r1 = lora_of(one, r, 0), lora_of(two, r, 0), lora_of(two, r, 1)
        assert ref.keys() == r0.keys() == r1.keys()
        for k in ref:
            assert torch.equal(r0[k], r1[k]), f"round {r}: {k} differs between process 0 and process 1"
            torch.testing.assert_close(r0[k], ref[k], atol=1e-6, rtol=1e-5, msg=f"round {r}: {k} vs 1 process")
            worst = max(worst, (r0[k] - ref[k]).abs().max().item())
        assert any(ref[k].abs().max() > 1e-3 for k in ref if "lora_B" in k), "training moved nothing"
    print(f"\nmax |LoRA(2 processes) - LoRA(1 process)| = {worst:.3g}")
    a = load_file(runs / "one" / "adapter" / "adapter_model.safetensors")
    b = load_file(runs / "two" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


def test_only_main_writes_the_run_folder(runs):
    names = sorted(p.name for p in (runs / "two").iterdir())
    assert names == sorted(p.name for p in (runs / "one").iterdir())
    assert not [p for p in (runs / "two").rglob("*") if ".tmp" in p.name or p.name.startswith(".adapter-")]
    assert [p.name for p in sorted((runs / "two" / "checkpoints").iterdir())] == [f"round-{r:04d}" for r in range(1, ROUNDS + 1)]


# ------------------------------------------------------------------ in-process, no subprocess
def test_label_counts_match_the_labels():
    prompts, responses = [[5, 6, 7], [], [8], [9, 10]], [[1, 2], [3, 4, 5], [], [6]]
    for mask_prompt in (True, False):
        _, _, labels = response_labels(prompts, responses, 0, mask_prompt)
        assert label_counts(prompts, responses, mask_prompt) == (labels[:, 1:] != -100).sum(-1).tolist()


def test_responses_carry_their_ids_through_a_gather():
    r = Response("a cat", [4, 5], [6, 7, 3], True)
    back = pickle.loads(pickle.dumps([r]))[0]
    assert back == "a cat" and isinstance(back, str) and json.dumps(back) == '"a cat"'
    assert (back.prompt_ids, back.response_ids, back.finished) == ([4, 5], [6, 7, 3], True)
    view = Samples(prompts=[Prompt("p")], groups=[0], ids=["x"], seeds=[0], outputs=[back])  # no extras
    assert sample_extras(view) == {"prompt_ids": [[4, 5]], "response_ids": [[6, 7, 3]], "finished": [True]}
