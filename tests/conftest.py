"""Shared fixtures: offline mode, a tiny SD pipeline saved to disk once per session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    """Keep the tiny-pipeline cache inside the test session's temp folder."""
    path = tmp_path_factory.mktemp("raft-cache")
    os.environ["RAFT_DIFFUSION_CACHE"] = str(path)
    yield path


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    """A tiny random StableDiffusionPipeline written with save_pretrained (loaded back by the tests)."""
    from raft_diffusion.diffusion.tiny import write_tiny_pipeline

    return write_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd") / "pipe", seed=0)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one torch thread, and a shared CPU makes two threads thrash."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
