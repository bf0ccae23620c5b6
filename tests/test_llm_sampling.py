"""LLM sampling: responses cut from the prompt by token position, per-sample seeds, stop strings, chat template."""

from __future__ import annotations

import pytest
import torch

from raft_diffusion.llm import sampling
from raft_diffusion.llm.model import load_causal_lm


pytestmark = pytest.mark.usefixtures("one_thread")



@pytest.fixture(scope="module")
def lm():
    return load_causal_lm("tiny-lm", device="cpu")


def ids_of(tok, text):
    return tok(text, add_special_tokens=False).input_ids


def test_cut_response_by_position_when_the_response_repeats_the_prompt(lm):
    _, tok = lm
    prompt = "a photo of a cat"
    new = ids_of(tok, prompt) + [tok.eos_token_id, tok.pad_token_id, tok.pad_token_id]
    text, ids, finished = sampling.cut_response(new, [tok.eos_token_id], tok)
    assert text == prompt and ids == ids_of(tok, prompt) and finished
    # what string replace would have produced from the decoded full sequence: nothing left
    full = tok.decode(ids_of(tok, prompt) + new, skip_special_tokens=True)
    assert full.replace(prompt, "").strip() == ""


def test_cut_response_unfinished_and_stop_string(lm):
    _, tok = lm
    new = ids_of(tok, "good dog runs fast")  # "runs" is unknown -> <unk>, dropped on decode
    text, ids, finished = sampling.cut_response(new, [tok.eos_token_id], tok)
    assert (text, finished) == ("good dog fast", False)
    text, ids, finished = sampling.cut_response(ids_of(tok, "good dog . bad cat"), [tok.eos_token_id], tok, stops=[".", "bad"])
    assert text == "good dog " and finished and ids == ids_of(tok, "good dog")


def test_generate_strips_the_prompt_by_token_position(lm):
    model, tok = lm
    # upper case and an unknown word: the decoded sequence does not contain the prompt text
    prompt_text = "A photo of a ZEBRA cat"
    (prompt,), _ = sampling.encode_prompts(tok, [prompt_text], use_chat_template=True)
    assert prompt == ids_of(tok, "user : a photo of a zebra cat assistant :") and tok.unk_token_id in prompt
    gen = sampling.generate(model, tok, [prompt], [123], max_new_tokens=8)
    sampler = sampling.SeededSampler([123])
    from transformers import GenerationConfig, LogitsProcessorList

    seq = model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         generation_config=GenerationConfig(do_sample=False, max_new_tokens=8, eos_token_id=tok.eos_token_id,
                                                            pad_token_id=tok.pad_token_id),
                         logits_processor=LogitsProcessorList([sampler]))
    new = seq[0, len(prompt):].tolist()
    expected, _, _ = sampling.cut_response(new, [tok.eos_token_id], tok)
    assert gen.responses == [expected] and gen.prompt_ids == [prompt]
    full = tok.decode(seq[0].tolist(), skip_special_tokens=True)
    assert prompt_text not in full and sampling.format_prompt(tok, prompt_text, True) not in full


def test_seeds_are_per_sample_not_per_batch(lm):
    model, tok = lm
    prompts, _ = sampling.encode_prompts(tok, ["what is a cat ?", "dog", "a big red truck on the road"] * 2, True)
    seeds = [11, 12, 13, 14, 15, 16]
    whole = sampling.generate(model, tok, prompts, seeds, max_new_tokens=10, batch_size=6)
    split = sampling.generate(model, tok, prompts, seeds, max_new_tokens=10, batch_size=4)
    one = sampling.generate(model, tok, prompts[3:4], seeds[3:4], max_new_tokens=10, batch_size=1)
    assert whole.responses == split.responses and one.responses == whole.responses[3:4]
    other = sampling.generate(model, tok, prompts, [s + 100 for s in seeds], max_new_tokens=10)
    assert other.responses != whole.responses
    assert all(1 <= len(r) <= 10 for r in whole.response_ids if r) and len(whole.responses) == 6


def test_stop_strings_and_lengths(lm):
    model, tok = lm
    prompts, _ = sampling.encode_prompts(tok, ["what is a cat ?"] * 8, True)
    free = sampling.generate(model, tok, prompts, list(range(8)), max_new_tokens=12, min_new_tokens=12)
    assert all(len(r) == 12 and not f for r, f in zip(free.response_ids, free.finished))
    words = [r.split()[2] for r in free.responses]
    stopped = sampling.generate(model, tok, prompts, list(range(8)), max_new_tokens=12, min_new_tokens=12, stop=words[:1])
    first = stopped.responses[0]
    assert words[0] not in first and free.responses[0].startswith(first) and stopped.finished[0]


def test_no_chat_template_when_disabled(lm):
    _, tok = lm
    (ids,), truncated = sampling.encode_prompts(tok, ["what is a cat ?"], use_chat_template=False)
    assert ids == ids_of(tok, "what is a cat ?") and truncated == 0
    (ids,), truncated = sampling.encode_prompts(tok, ["what is a cat ?"], use_chat_template=True, max_prompt_tokens=4)
    assert truncated == 1 and ids == ids_of(tok, "user : what is a cat ? assistant :")[-4:]
