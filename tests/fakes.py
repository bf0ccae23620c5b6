"""A pure-torch backend for loop tests: a 'model' that is a mean vector; samples are mean + noise."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from raft_diffusion.core.backend import Samples
from raft_diffusion.core.ranking import group_ids

#: The fields in which ``RaftConfig()`` differed before the embedded default (the miniworld) became
#: every config's base: the tiny random model, CIFAR-10 prompts, the JPEG reward. Tests built on those
#: settings state them: ``RaftConfig().replace({**TINY_BASE, ...})``.
TINY_BASE: dict[str, Any] = {
    "model.pretrained": "tiny", "raft.prompts_per_round": 4, "raft.eval_samples_per_prompt": 1,
    "prompts.train": "cifar10", "prompts.template": "a photo of a {}", "prompts.eval": None,
    "sampling.scheduler": "ddim", "sampling.steps": 20, "sampling.guidance_scale": 7.5, "sampling.batch_size": 8,
    "reward.scorer": "jpeg-compressibility", "reward.eval_scorers": {}, "lora.rank": 4,
    "train.learning_rate": 1e-4, "train.steps_per_round": None, "output.dir": "runs/raft",
    "raft.k": 4, "raft.early_stop": None, "ranking.filter": None, "lora.target_modules": [], "train.batch_size": 8,
    "train.caption_dropout": 0.0, "train.kl_weight": 0.0, "train.latents": "sampled",
}


class VectorBackend:
    """generate: sample_i = theta + N(0, 1) drawn from seed_i; finetune: Adam steps pulling theta to the kept mean."""

    name = "vector"

    def __init__(self, dim: int = 3, lr: float = 0.3, seed: int = 0) -> None:
        self.theta = torch.nn.Parameter(torch.zeros(dim))
        self.opt = torch.optim.Adam([self.theta], lr=lr)
        self.gen = torch.Generator().manual_seed(seed)
        self.calls = {"generate": 0, "finetune": 0}

    def generate(self, prompts, k, seeds, ids) -> Samples:
        self.calls["generate"] += 1
        per = [p for p in prompts for _ in range(k)]
        with torch.no_grad():
            noise = torch.stack([torch.randn(self.theta.shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
            out = self.theta.detach() + noise
        return Samples(per, group_ids(len(prompts), k), list(ids), list(seeds), out)

    def finetune(self, samples: Samples, kept: Sequence[int]) -> dict[str, float]:
        self.calls["finetune"] += 1
        target = samples.outputs[list(kept)].mean(0)
        for _ in range(3):
            self.opt.zero_grad()
            jitter = torch.randn(self.theta.shape, generator=self.gen) * 0.01
            loss = ((self.theta - target - jitter) ** 2).sum()
            loss.backward()
            self.opt.step()
        return {"loss": float(loss.detach())}

    def save_model(self, out_dir: Path) -> None:
        torch.save({"theta": self.theta.detach().clone()}, Path(out_dir) / "vector.pt")

    def state_dict(self) -> dict[str, Any]:
        return {"theta": self.theta.detach().clone(), "opt": self.opt.state_dict(), "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.theta.copy_(state["theta"])
        self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["gen"])

    def write_round_artifacts(self, round_dir, samples, rewards, kept) -> dict[str, Any]:
        return {}


def sum_reward(outputs, prompts, metadata) -> torch.Tensor:
    """Reward = sum of the vector's coordinates."""
    return outputs.sum(dim=1)
