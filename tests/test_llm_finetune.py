"""LoRA SFT: prompt masking checked by hand, training on prompts when asked, NaN loss, LoRA targets."""

from __future__ import annotations

import pytest
import torch

from raft_diffusion.config import load_config
from raft_diffusion.errors import ModelError, RunError
from raft_diffusion.llm.backend import LLMBackend, resolve_target_modules
from raft_diffusion.llm.finetune import sft_loss
from raft_diffusion.llm.logprob import response_labels, token_logprobs


pytestmark = pytest.mark.usefixtures("one_thread")



@pytest.fixture()
def backend():
    cfg = load_config("llm-tiny", {"train.steps_per_round": 2, "train.batch_size": 2})
    return LLMBackend(cfg, progress=False)


PROMPT, RESPONSE = [10, 4, 14], [20, 21, 3]  # "user : a" + two words + eos


def hand_loss(logits, ids, positions):
    """Mean over ``positions`` t of -log softmax(logits[t])[ids[t + 1]], one term at a time."""
    terms = [-torch.log_softmax(logits[0, t].double(), -1)[ids[t + 1]] for t in positions]
    return sum(terms) / len(terms)


def test_labels_mask_the_prompt():
    ids, mask, labels = response_labels([PROMPT, [5]], [RESPONSE, [6, 3]], pad_id=0)
    assert ids.tolist() == [PROMPT + RESPONSE, [5, 6, 3, 0, 0, 0]]
    assert mask.tolist() == [[1] * 6, [1, 1, 1, 0, 0, 0]]
    assert labels.tolist() == [[-100, -100, -100, 20, 21, 3], [-100, 6, 3, -100, -100, -100]]
    _, _, unmasked = response_labels([PROMPT], [RESPONSE], pad_id=0, mask_prompt=False)
    assert unmasked.tolist() == [PROMPT + RESPONSE]


def test_loss_terms_only_on_response_tokens(backend):
    model = backend.model
    ids, mask, labels = response_labels([PROMPT], [RESPONSE], pad_id=0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        loss = sft_loss(model, ids, mask, labels)
        full = sft_loss(model, ids, mask, response_labels([PROMPT], [RESPONSE], 0, mask_prompt=False)[2])
    seq = ids[0].tolist()
    # positions 2, 3, 4 predict the response tokens 20, 21, eos; positions 0, 1 predict prompt tokens
    assert torch.isclose(loss.double(), hand_loss(logits, seq, [2, 3, 4]), atol=1e-5)
    assert torch.isclose(full.double(), hand_loss(logits, seq, [0, 1, 2, 3, 4]), atol=1e-5)
    # the loss has no gradient through the logits of prompt positions
    leaf = logits.clone().requires_grad_(True)
    lp, valid = token_logprobs(leaf, labels)
    (-lp.sum() / valid.sum()).backward()
    per_position = leaf.grad[0].abs().sum(-1)
    assert per_position[:2].eq(0).all() and per_position[2:5].gt(0).all() and per_position[5] == 0


def test_training_changes_only_lora_and_keeps_optimizer_state(backend):
    before = {n: p.detach().clone() for n, p in backend.model.named_parameters()}
    stats = backend.trainer.train([PROMPT] * 3, [RESPONSE] * 3, progress=False)
    assert stats["steps"] == 2 and stats["global_step"] == 2 and stats["loss"] > 0
    for n, p in backend.model.named_parameters():
        changed = not torch.equal(before[n], p.detach())
        assert changed == ("lora_B" in n or "lora_A" in n), n
    backend.trainer.train([PROMPT], [RESPONSE], progress=False)
    state = backend.trainer.optimizer.state_dict()["state"]
    assert state and all(int(s["step"]) == 4 for s in state.values())


def test_nan_loss_is_a_run_error(backend):
    with torch.no_grad():
        next(p for n, p in backend.model.named_parameters() if "lora_A" in n).fill_(float("nan"))
    with pytest.raises(RunError, match="training loss is nan"):
        backend.trainer.train([PROMPT], [RESPONSE], progress=False)


def test_lora_targets_auto_and_errors():
    from raft_diffusion.llm.model import load_causal_lm

    base, _ = load_causal_lm("tiny-lm", device="cpu")
    assert resolve_target_modules(base, []) == ["q_proj", "v_proj"], "no targets given: the architecture's"
    assert resolve_target_modules(base, ["auto"]) == ["q_proj", "v_proj"]
    with pytest.raises(ModelError, match="match no linear layer"):
        resolve_target_modules(base, ["c_attn"])


def test_ema_of_the_lora_is_what_the_run_writes(tmp_path):
    """``train.ema_decay`` works for the LLM's LoRA too: the written adapter is the average, the
    optimizer's raw weights (restored for the next round) differ from it."""
    from safetensors.torch import load_file

    from raft_diffusion.api import build_loop

    cfg = load_config("llm-tiny", {"output.dir": str(tmp_path / "run"), "raft.rounds": 2, "train.ema_decay": 0.5})
    loop = build_loop(cfg, progress=False)
    loop.outputs.finish(loop.run())
    tr = loop.backend.trainer
    assert tr.ema.optimization_step == tr.step > 0
    saved = load_file(tmp_path / "run" / "adapter" / "adapter_model.safetensors")
    lora = {n: p.detach() for n, p in loop.backend.model.named_parameters() if p.requires_grad}
    assert len(saved) == len(lora) and all(
        any(torch.equal(v, p) for p in tr.ema.shadow_params) for v in saved.values()), "the adapter is the average"
    average = [p.detach().clone() for p in tr.params]
    tr.use_raw_weights()
    assert any(not torch.equal(a, p) for a, p in zip(average, tr.params)), "the raw weights differ from the average"
