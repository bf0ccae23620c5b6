"""Overhead of one RAFT round of the LLM backend against bare transformers + a bare peft SFT loop.

Prints, in one run on the same model and settings: the wall time of one RAFT round (generate,
score, rank, LoRA SFT, write records, checkpoint and adapter), the time of bare
``model.generate`` producing the same number of responses and tokens (every response runs to
max_new_tokens in both) plus a bare SFT loop of the same optimizer steps on the best response per
prompt, and their ratio (target <= 1.10). Rounds of the two variants alternate and the fastest
of each is reported, so a busy machine slows both alike.

    python benchmarks/llm_round.py [--model tiny|PATH] [--hidden 128] [--layers 4] [--k 8] [--prompts 8]
                                   [--new-tokens 32] [--train-steps 16] [--rounds 5]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def settings(args, model: str, out_dir: str) -> dict:
    return {
        "model.pretrained": model, "raft.rounds": 2 * args.rounds + 2, "raft.k": args.k, "raft.prompts_per_round": args.prompts,
        "generation.max_new_tokens": args.new_tokens, "generation.min_new_tokens": args.new_tokens,
        "generation.batch_size": args.k * args.prompts, "train.steps_per_round": args.train_steps,
        "train.batch_size": args.prompts, "prompts.eval": None, "output.dir": out_dir, "output.keep_checkpoints": 2,
    }


class Raft:
    def __init__(self, args, model: str, out_dir: str) -> None:
        from raft_diffusion.api import build_loop
        from raft_diffusion.config import load_config

        self.loop = build_loop(load_config("llm-tiny", settings(args, model, out_dir)), progress=False)
        self.r = 0

    def round(self) -> None:
        from raft_diffusion.core import checkpoint

        loop = self.loop
        self.r += 1
        loop.run_round(self.r)
        checkpoint.save_checkpoint(loop.run_dir / "checkpoints", self.r, loop.backend.state_dict(), loop._loop_state(), 2)
        loop.history.write(loop.run_dir)
        loop.backend.save_model(loop.run_dir)


class Bare:
    """Plain transformers + peft: sample, count the keyword, keep the best per prompt, SFT with masked prompts."""

    def __init__(self, args, model: str) -> None:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        import prompts
        from raft_diffusion.llm.model import tiny_lm_dir

        path = str(tiny_lm_dir()) if model == "tiny" else model
        self.args = args
        self.tok = AutoTokenizer.from_pretrained(path, padding_side="left")
        base = AutoModelForCausalLM.from_pretrained(path).requires_grad_(False)
        self.model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=5e-2)
        texts = [p.text for p in prompts.load("cifar10", template="what is a {} ?")]
        self.texts = [self.tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=False)
                      for t in texts]
        self.cursor = 0

    def round(self) -> None:
        import torch

        a, tok, model = self.args, self.tok, self.model
        batch = [self.texts[(self.cursor + i) % len(self.texts)] for i in range(a.prompts)]
        self.cursor += a.prompts
        enc = tok([t for t in batch for _ in range(a.k)], return_tensors="pt", padding=True, add_special_tokens=False)
        model.eval()
        with torch.inference_mode():
            seq = model.generate(**enc, do_sample=True, max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens,
                                 pad_token_id=tok.pad_token_id)
        width = enc["input_ids"].shape[1]
        responses = tok.batch_decode(seq[:, width:], skip_special_tokens=True)
        rewards = torch.tensor([float(r.lower().count("good")) for r in responses]).view(a.prompts, a.k)
        best = (rewards.argmax(1) + torch.arange(a.prompts) * a.k).tolist()
        rows = [seq[i][enc["attention_mask"][i].bool().nonzero()[0, 0]:] for i in best]  # drop left padding
        ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=tok.pad_token_id)
        mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(r) for r in rows], batch_first=True)
        labels = ids.masked_fill(mask == 0, -100)
        for j, i in enumerate(best):
            labels[j, : len(rows[j]) - a.new_tokens] = -100  # prompt tokens
        model.train()
        for _ in range(a.train_steps):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            self.opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.opt.step()
        model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="built", help="'built' (a random Llama of --hidden/--layers), 'tiny' (tiny-lm) or a folder")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--train-steps", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds of each variant (the fastest is reported)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model == "built":
            from raft_diffusion.llm.model import build_tiny_lm

            model = str(build_tiny_lm(f"{tmp}/model", hidden_size=args.hidden, layers=args.layers))
        raft, bare = Raft(args, "tiny-lm" if model == "tiny" else model, f"{tmp}/run"), Bare(args, model)
        raft.round()  # warm-up: first calls allocate
        bare.round()
        times: dict[str, list[float]] = {"raft": [], "bare": []}
        for _ in range(args.rounds):
            for name, variant in (("raft", raft), ("bare", bare)):
                t0 = time.perf_counter()
                variant.round()
                times[name].append(time.perf_counter() - t0)
        n_params = sum(p.numel() for p in bare.model.parameters())
    r, b = min(times["raft"]), min(times["bare"])
    print(f"model {args.model} ({n_params / 1e6:.2f}M params), {args.prompts} prompts x K={args.k}, {args.new_tokens} new tokens, "
          f"{args.train_steps} LoRA SFT steps, {torch.get_num_threads()} threads, device cpu")
    print(f"RAFT round                     {r:.3f} s  (median {sorted(times['raft'])[len(times['raft']) // 2]:.3f})")
    print(f"bare generate + LoRA SFT loop  {b:.3f} s  (median {sorted(times['bare'])[len(times['bare']) // 2]:.3f})")
    print(f"ratio {r / b:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()
