"""LLM backend: KL-regularised selection by hand, adapter round trip, perplexity, resume state, the tiny default."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

from prompts.types import Prompt
from raft_diffusion.api import train
from raft_diffusion.config import load_config
from raft_diffusion.core.loop import LoopSettings, RaftLoop
from raft_diffusion.llm import sampling
from raft_diffusion.llm.backend import LLMBackend
from raft_diffusion.llm.model import load_causal_lm


pytestmark = pytest.mark.usefixtures("one_thread")



def make_backend(**overrides):
    cfg = load_config("llm-tiny", {"train.steps_per_round": 2, "train.batch_size": 4, **overrides})
    return LLMBackend(cfg, progress=False)


def perturb_lora(backend, seed=0, std=0.5):
    """Give the adapter non-zero B so the adapted model differs from the base."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in backend.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def hand_logprob(model, prompt_ids, response_ids):
    """sum_t log p(y_t | x, y_<t) with one unpadded forward pass."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    n = len(prompt_ids)
    return sum(float(logp[n - 1 + j, t]) for j, t in enumerate(response_ids))


def test_kl_selection_picks_another_sample_and_matches_hand_computation(tmp_path):
    backend = make_backend()
    perturb_lora(backend)
    samples = backend.generate([Prompt("what is a cat ?")], 4, [1, 2, 3, 4], [f"s{i}" for i in range(4)])
    prompt_ids, responses = samples.extras["prompt_ids"], samples.extras["response_ids"]
    ratios = []
    for p, r in zip(prompt_ids, responses):
        current = hand_logprob(backend.model, p, r)
        with backend.model.disable_adapter():
            initial = hand_logprob(backend.model, p, r)
        ratios.append(current - initial)
    assert backend.log_ratio(samples) == pytest.approx(ratios, abs=1e-4)

    a, b = max(range(4), key=ratios.__getitem__), min(range(4), key=ratios.__getitem__)
    assert ratios[a] - ratios[b] > 0.1, ratios
    rewards = [0.0] * 4
    rewards[a], rewards[b] = 1.0, 0.9
    beta = 0.2 / (ratios[a] - ratios[b])
    hand = [r - beta * lr for r, lr in zip(rewards, ratios)]
    assert max(range(4), key=hand.__getitem__) == b

    def loop(kl_beta):
        return RaftLoop(backend, None, None, LoopSettings(k=4, prompts_per_round=1, kl_beta=kl_beta), tmp_path)

    assert loop(0.0).rank(samples, rewards).kept == [a]
    kl = loop(beta)
    assert kl.selection_rewards(samples, rewards) == pytest.approx(hand, abs=1e-4)
    assert kl.rank(samples, rewards).kept == [b]


def test_log_ratio_is_zero_before_training():
    backend = make_backend()
    samples = backend.generate([Prompt("dog")], 3, [5, 6, 7], ["a", "b", "c"])
    assert backend.log_ratio(samples) == pytest.approx([0.0] * 3, abs=1e-6)


def test_adapter_saves_and_loads_back_with_identical_generations(tmp_path):
    from peft import PeftModel

    backend = make_backend(**{"lora.init": "gaussian"})
    perturb_lora(backend, seed=3)
    prompts = [Prompt("what is a dog ?"), Prompt("a big red truck")]
    seeds = [10, 11, 12, 13, 14, 15]
    want = backend.generate(prompts, 3, seeds, list("abcdef"))
    backend.save_model(tmp_path)
    backend.save_model(tmp_path)  # replacing an existing adapter folder is atomic too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()

    base, tok = load_causal_lm("tiny-lm", device="cpu")
    loaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    got = sampling.generate(loaded, tok, want.extras["prompt_ids"], seeds, max_new_tokens=backend.cfg.generation.max_new_tokens,
                            min_new_tokens=backend.cfg.generation.min_new_tokens)
    assert got.responses == want.outputs
    plain, _ = load_causal_lm("tiny-lm", device="cpu")
    base_gen = sampling.generate(plain, tok, want.extras["prompt_ids"], seeds, max_new_tokens=12, min_new_tokens=1)
    assert base_gen.responses != want.outputs, "the adapter changed nothing"


def test_state_dict_resumes_training_exactly():
    a, b = make_backend(), make_backend()
    samples = a.generate([Prompt("cat"), Prompt("dog")], 2, [1, 2, 3, 4], list("wxyz"))
    a.finetune(samples, [0, 3])
    b.load_state_dict(a.state_dict())
    a.finetune(samples, [1, 2])
    b.finetune(samples, [1, 2])
    for (n, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert torch.equal(p, q), n


def test_eval_metrics_perplexity_of_references():
    backend = make_backend()
    prompts = [Prompt("what is a cat ?", {"reference": "a cat is good"}), Prompt("dog", {})]
    samples = backend.generate(prompts, 2, [1, 2, 3, 4], list("abcd"))
    metrics = backend.eval_metrics(samples)
    assert {"response_tokens", "distinct_1", "distinct_2", "perplexity"} <= set(metrics) and metrics["perplexity_n"] == 1
    ref = backend.tokenizer("a cat is good", add_special_tokens=False).input_ids + [backend.eos_id]
    total = hand_logprob(backend.model, samples.extras["prompt_ids"][0], ref)
    assert metrics["perplexity"] == pytest.approx(math.exp(-total / len(ref)), rel=1e-4)


def test_reward_rises_on_the_tiny_default(tmp_path):
    cfg = load_config("llm-tiny", {"output.dir": str(tmp_path / "run")})
    t0 = time.perf_counter()
    history = train(cfg, progress=False)
    seconds = time.perf_counter() - t0
    means = [r["reward_mean"] for r in history.rounds]
    evals = [e["text-contains"] for e in history.evals]
    assert means[-1] > 2 * means[0] and means[-1] >= 0.4, means
    assert sum(means[-2:]) > sum(means[:2]) and evals[-1] > evals[0], (means, evals)
    assert seconds < 120
    for row in history.rounds:  # per-prompt ranking: exactly one kept sample per prompt
        groups = [kid.split("-")[1] for kid in row["kept_ids"]]
        assert row["n_kept"] == cfg.raft.prompts_per_round == len(set(groups)) == len(groups)
        assert {"distinct_1", "distinct_2", "response_tokens", "train_loss"} <= set(row)
    run = tmp_path / "run"
    kept = [json.loads(line) for line in (run / "rounds" / "round-0001" / "kept.jsonl").read_text().splitlines()]
    assert [k["id"] for k in kept] == history.rounds[0]["kept_ids"] and all("response" in k for k in kept)
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
