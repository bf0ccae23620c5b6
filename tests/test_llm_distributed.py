"""LLM backend over several processes: 1 process vs 2 CPU processes (gloo, ``accelerate launch
--multi_gpu --num_processes 2``) give the same samples, kept sets and files, and the same LoRA, which
is identical on both processes after every round (see tests/test_distributed.py for the launcher).

The config shards unevenly (3 prompts: 1 on process 0, 2 on process 1; 3 eval prompts likewise),
accumulates gradients over micro-batches that straddle the processes, and left-truncates every
prompt (the ``prompts_truncated`` count is shared across processes).

test_loop_gathers_the_declared_extras_to_the_main_process runs the real loop in a 2-process gloo
group with a fake backend: only the extras a backend lists in ``gathered_extras`` reach the main process.
"""

from __future__ import annotations

import json
import time

import pytest
import torch
from safetensors.torch import load_file

from prompts.types import Prompt
from raft_diffusion.core import distributed
from raft_diffusion.core.backend import Samples
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


class _ExtrasBackend:
    """A 2-process loop backend with list, tensor and bool extras; only ``tag`` and ``row`` are declared.

    ``tag`` holds each sample's own id and ``row`` its seed, so the main process can check the global
    order; ``latents`` (like the diffusion backend's) is not declared and must not reach it.
    """

    name = "extras"
    supports_distributed = True
    gathered_extras = ("tag", "row")

    def __init__(self, record_dir: str) -> None:
        self.record_dir = record_dir

    def generate(self, prompts, k, seeds, ids):
        from raft_diffusion.core.ranking import group_ids

        n = len(prompts) * k
        return Samples([p for p in prompts for _ in range(k)], group_ids(len(prompts), k), list(ids), list(seeds),
                       outputs=[f"out-{i}" for i in ids],
                       extras={"tag": list(ids), "row": torch.tensor(seeds, dtype=torch.long)[:, None], "latents": torch.zeros(n, 8)})

    def finetune(self, samples, kept, shard=None):
        return {"loss": 0.0}

    def _record(self, name, samples):
        import os

        ex = samples.extras
        with open(os.path.join(self.record_dir, f"{name}-rank{distributed.get().rank}.json"), "w") as fh:
            json.dump({"ids": samples.ids, "seeds": samples.seeds, "outputs": list(samples.outputs), "keys": sorted(ex),
                       "tag": ex["tag"], "row": ex["row"].tolist(), "row_is_tensor": isinstance(ex["row"], torch.Tensor)}, fh)

    def write_round_artifacts(self, round_dir, samples, rewards, kept):
        self._record("round", samples)
        return {}

    def eval_metrics(self, samples):
        self._record("eval", samples)
        return {}

    def save_model(self, out_dir):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def _extras_worker(rank: int, port: int, out_dir: str) -> None:
    """One round of the real loop in a 2-process gloo group with :class:`_ExtrasBackend` (3 prompts: 1 + 2)."""
    import os

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2", "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "ACCELERATE_USE_CPU": "true"})
    import prompts
    from raft_diffusion.core.distributed import ProcessGroup
    from raft_diffusion.core.loop import LoopSettings, RaftLoop

    d = ProcessGroup(timeout_s=30)
    distributed.set_current(d)
    stream = prompts.PromptStream([Prompt(f"p{i}") for i in range(3)], 3, seed=1)
    settings = LoopSettings(rounds=1, k=2, prompts_per_round=3, eval_samples_per_prompt=2, eval_every=1)
    loop = RaftLoop(_ExtrasBackend(out_dir), lambda outputs, texts, meta: torch.arange(len(outputs), dtype=torch.float32),
                    stream, settings, os.path.join(out_dir, "run"), eval_prompts=[Prompt(f"e{i}") for i in range(3)], dist=d)
    loop.run()
    d.barrier()
    torch.distributed.destroy_process_group()


def test_loop_gathers_the_declared_extras_to_the_main_process(tmp_path):
    """Under 2 processes the main process's write_round_artifacts/eval_metrics see the outputs and the
    backend's gathered_extras (a list and a tensor) of every sample in the global order, and no other extras."""
    import torch.multiprocessing as mp

    from tests.test_distributed import _free_port

    mp.start_processes(_extras_worker, args=(_free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    assert not list(tmp_path.glob("*-rank1.json")), "only the main process writes artifacts"
    rnd = json.loads((tmp_path / "round-rank0.json").read_text())
    assert rnd["ids"] == [f"r1-p{i // 2}-k{i % 2}" for i in range(6)]
    assert rnd["keys"] == ["row", "tag"]  # the undeclared latents stayed where they were made
    assert rnd["tag"] == rnd["ids"] and rnd["outputs"] == [f"out-{i}" for i in rnd["ids"]]
    assert rnd["row_is_tensor"] and rnd["row"] == [[s] for s in rnd["seeds"]]
    ev = json.loads((tmp_path / "eval-rank0.json").read_text())  # the last evaluation (round 1)
    assert ev["keys"] == ["row", "tag"]
    assert ev["tag"] == ev["ids"] == [f"eval-p{i // 2}-k{i % 2}" for i in range(6)]
    assert ev["outputs"] == [f"out-{i}" for i in ev["ids"]] and len(ev["row"]) == 6


def test_llm_backend_declares_what_its_main_process_reads():
    from raft_diffusion.llm.backend import EXTRA_KEYS, LLMBackend

    assert LLMBackend.gathered_extras == EXTRA_KEYS == ("prompt_ids", "response_ids", "finished")
