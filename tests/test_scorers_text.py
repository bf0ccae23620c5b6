"""Text rewards: a tiny sequence-classification reward model (with and without chat template),
a transformers pipeline, plain functions, and the weight-free rewards."""

from __future__ import annotations

import pytest
import torch

import scorers
from raft_diffusion.errors import ScorerError
from scorers.text import SequenceClassificationReward, text_function

WORDS = ["the", "cat", "dog", "is", "good", "bad", "hello", "world", "user", "assistant", "[", "]", ":", "?"]
TEMPLATE = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }} {% endfor %}"


def save_tiny_classifier(folder, chat_template=None, num_labels=1, seed=0):
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tok = BertTokenizer(str(folder / "vocab.txt"), model_max_length=64)
    if chat_template:
        tok.chat_template = chat_template
    tok.save_pretrained(folder)
    labels = {0: "NEGATIVE", 1: "POSITIVE"} if num_labels == 2 else {0: "LABEL_0"}
    cfg = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64, num_labels=num_labels, id2label=labels,
                     label2id={v: k for k, v in labels.items()})
    torch.manual_seed(seed)
    BertForSequenceClassification(cfg).eval().save_pretrained(folder)
    return folder


def reference_logits(folder, texts=None, pairs=None):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    if pairs is not None:
        enc = tok([p for p, _ in pairs], [r for _, r in pairs], padding=True, return_tensors="pt")
    else:
        enc = tok(texts, padding=True, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits


def test_reward_model_pair_encoding(tmp_path):
    folder = save_tiny_classifier(tmp_path / "rm")
    rm = scorers.build("text-reward-model", model=str(folder), device="cpu", batch_size=2)
    responses, prompts = ["the cat is good", "bad dog", "hello world"], ["hello?", "hello?", "the world"]
    got = rm(responses, prompts, [{}] * 3)
    ref = reference_logits(folder, pairs=list(zip(prompts, responses)))[:, 0]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    assert rm.chat_template is False


def test_reward_model_chat_template(tmp_path):
    folder = save_tiny_classifier(tmp_path / "rm-chat", chat_template=TEMPLATE, seed=1)
    rm = SequenceClassificationReward(str(folder), device="cpu")
    got = rm(["the cat is good", "bad"], ["hello?", "the dog?"], None)
    assert rm.chat_template is True
    texts = ["[user] hello? [assistant] the cat is good ", "[user] the dog? [assistant] bad "]
    torch.testing.assert_close(got, reference_logits(folder, texts=texts)[:, 0], atol=1e-5, rtol=0)


def test_pipeline_reward_label_score(tmp_path):
    folder = save_tiny_classifier(tmp_path / "sentiment", num_labels=2, seed=2)
    pipe = scorers.build("text-pipeline", model=str(folder), label="POSITIVE", device="cpu")
    responses = ["the cat is good", "bad dog"]
    got = pipe(responses, ["p", "p"], None)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        probs = [model(**tok(r, return_tensors="pt")).logits.softmax(-1)[0, 1].item() for r in responses]
    torch.testing.assert_close(got, torch.tensor(probs), atol=1e-5, rtol=0)
    bad = scorers.build("text-pipeline", model=str(folder), label="JOY", device="cpu")
    with pytest.raises(ScorerError, match="JOY"):
        bad(responses, ["p", "p"], None)


def test_missing_reward_model_is_scorer_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ScorerError, match="reward model"):
        scorers.build("text-reward-model", model=str(tmp_path / "missing" / "dir"))(["a"], ["b"], None)


def helper_prompt_first(prompt, response, metadata):
    return float(len(prompt) - len(response) + metadata.get("bonus", 0))


def test_text_function_orders_and_reference():
    f = text_function(helper_prompt_first, prompt_first=True)
    assert f(["ab"], ["abcd"], [{"bonus": 1}]).tolist() == [3.0]
    g = text_function(lambda r, p, m: len(r))
    assert g(["abc", ""], ["x", "y"], None).tolist() == [3.0, 0.0]
    h = scorers.build("text-function", fn=f"{__name__}:helper_prompt_first", prompt_first=True)
    assert h(["a"], ["abc"], None).tolist() == [2.0]
    nan = text_function(lambda r, p, m: float("nan"), name="nan-fn")
    with pytest.raises(ScorerError, match="nan-fn"):
        nan(["a"], ["b"], None)


def test_length_and_contains():
    length = scorers.build("text-length", target=3)
    assert length(["one two three", "one", "a b c d e"], ["p"] * 3, None).tolist() == [0.0, -2.0, -2.0]
    assert scorers.build("text-length", unit="chars")(["abcd"], ["p"], None).tolist() == [4.0]
    contains = scorers.build("text-contains", keyword="Cat")
    assert contains(["cat CAT dog", "none"], ["p", "p"], None).tolist() == [2.0, 0.0]
    assert scorers.build("text-contains", keyword="Cat", case_sensitive=True)(["cat Cat"], ["p"], None).tolist() == [1.0]
    with pytest.raises(ScorerError):
        scorers.build("text-length", unit="lines")
