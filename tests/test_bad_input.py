"""The bad-input table (README "Bad input"): each case exits non-zero with one line naming the value and the fix."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from raft_diffusion.cli import main

WRONG_SHAPE_SCORER = """
import torch
def score(images, prompts, metadata):
    return torch.zeros(len(prompts) + 1)
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_pipeline_dir):
    """Files the cases refer to: {name} placeholders in the table below (built once)."""
    import sys

    tmp_path = tmp_path_factory.mktemp("bad-input")
    files = {"out": tmp_path / "run", "pipe": tiny_pipeline_dir}
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "bad-bytes.txt").write_bytes(b"a cat\n\xff\xfe dog\n")
    (tmp_path / "not-utf8.yaml").write_bytes(b"raft:\n  k: \xff\n")
    (tmp_path / "bad.yaml").write_text("raft: [1, 2\n")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "unknown.yaml").write_text("raft:\n  rounds: 2\n  kay: 3\n")
    (tmp_path / "confdir.yaml").mkdir()
    (tmp_path / "notpipe").mkdir()
    (tmp_path / "notpipe" / "weights.bin").write_bytes(b"x")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    (tmp_path / "scorer_mod.py").write_text(WRONG_SHAPE_SCORER)
    sys.path.insert(0, str(tmp_path))
    # a finished run (for "already holds a run" and for a mismatched resume)
    done = tmp_path / "done"
    assert main(["train", "tiny-demo", "--no-progress", "--output", str(done), "--model.pretrained", str(tiny_pipeline_dir),
                 "--raft.rounds", "1", "--raft.k", "2", "--raft.prompts_per_round", "1", "--sampling.steps", "1",
                 "--train.steps_per_round", "1", "--prompts.eval", "null"]) == 0
    # a LoRA of another architecture: same names, other shapes
    lora = load_file(done / "pytorch_lora_weights.safetensors")
    (tmp_path / "other").mkdir()
    save_file({k: torch.zeros(v.shape[0] + 3, *v.shape[1:]) for k, v in lora.items()},
              tmp_path / "other" / "pytorch_lora_weights.safetensors")
    files["tmp"] = tmp_path
    yield files
    sys.path.remove(str(tmp_path))


FAST = ["--raft.rounds", "1", "--raft.k", "2", "--raft.prompts_per_round", "1", "--sampling.steps", "1",
        "--train.steps_per_round", "1", "--prompts.eval", "null"]

# (id, argv with {placeholders}, fragment of the one-line message)
CASES = [
    ("missing config", ["train", "{tmp}/nope.yaml"], "config file '{tmp}/nope.yaml' does not exist"),
    ("unreadable config", ["train", "{tmp}/confdir.yaml"], "cannot be read"),
    ("config not UTF-8", ["train", "{tmp}/not-utf8.yaml"], "is not UTF-8 text"),
    ("invalid YAML", ["train", "{tmp}/bad.yaml"], "is not valid YAML at line"),
    ("config not a mapping", ["train", "{tmp}/list.yaml"], "must hold a mapping of sections"),
    ("unknown key in file", ["train", "{tmp}/unknown.yaml"], "unknown config key 'raft.kay'"),
    ("unknown section", ["train", "--rafts.k", "3"], "unknown config section 'rafts'"),
    ("wrong type int", ["train", "--raft.k", "many"], "raft.k must be an integer, got 'many'"),
    ("wrong type bool", ["train", "--output.save_grids", "3"], "output.save_grids must be true or false, got 3"),
    ("override without value", ["train", "--raft.k"], "override '--raft.k' needs a value"),
    ("missing model folder", ["train", "--model.pretrained", "{tmp}/no-model", *FAST], "is neither an existing folder nor a hub id"),
    ("not a pipeline folder", ["train", "--model.pretrained", "{tmp}/notpipe", *FAST], "is not a diffusers pipeline folder (no model_index.json)"),
    ("model is a file", ["train", "--model.pretrained", "{tmp}/afile", *FAST], "is a file; give a diffusers pipeline folder"),
    ("unknown dtype", ["train", "--model.dtype", "float8"], "model.dtype 'float8' is not one of"),
    ("LoRA rank 0", ["train", "--lora.rank", "0"], "lora.rank must be >= 1, got 0"),
    ("LoRA target modules absent", ["train", "--model.pretrained", "{pipe}", "--lora.target_modules", "[q_proj]", *FAST],
     "lora.target_modules ['q_proj'] match no layer of the UNet2DConditionModel"),
    ("LoRA of another architecture on generate", ["generate", "--model", "{pipe}", "--lora", "{tmp}/other", "--prompt", "x",
                                                  "--steps", "1", "--out", "{tmp}/gen"], "does not fit this pipeline's denoiser"),
    ("resume with another LoRA shape", ["train", "tiny-demo", "--output", "{tmp}/done", "--resume", "--model.pretrained", "{pipe}",
                                        "--lora.rank", "8", *FAST], "cannot resume '{tmp}/done': it was trained with lora.rank = 4"),
    ("resume from a non-checkpoint", ["train", "tiny-demo", "--output", "{tmp}/done", "--resume", "{tmp}/busy", "--model.pretrained", "{pipe}", *FAST],
     "is not a complete checkpoint folder"),
    ("prompt file empty", ["train", "--prompts.train", "{tmp}/empty.txt"], "no prompts"),
    ("prompt file missing", ["train", "--prompts.train", "{tmp}/missing.txt"], "missing.txt"),
    ("prompt file undecodable", ["train", "--prompts.train", "{tmp}/bad-bytes.txt"], "UTF-8"),
    ("unknown prompt set", ["train", "--prompts.train", "cifar11"], "unknown prompt set 'cifar11'"),
    ("K < 1", ["train", "--raft.k", "0"], "raft.k must be >= 1"),
    ("K too large", ["train", "--raft.k", "100000"], "raft.k = 100000 is out of range"),
    ("b < 1", ["train", "--raft.prompts_per_round", "0"], "raft.prompts_per_round must be >= 1"),
    ("height not a multiple of 8", ["train", "--sampling.height", "100"], "sampling.height = 100 is not a positive multiple of 8"),
    ("width not a multiple of 8", ["train", "--sampling.width", "63"], "sampling.width = 63 is not a positive multiple of 8"),
    ("unknown scheduler", ["train", "--sampling.scheduler", "magic"], "unknown sampling.scheduler 'magic'; choose one of"),
    ("unknown strategy", ["train", "--ranking.strategy", "best"], "unknown ranking.strategy 'best'"),
    ("top_n above K", ["train", "--raft.k", "2", "--ranking.top_n", "3"], "ranking.top_n = 3 exceeds raft.k = 2"),
    ("learning rate <= 0", ["train", "--train.learning_rate", "0"], "train.learning_rate must be > 0"),
    ("unknown scorer", ["train", "--reward.scorer", "aesthetics"], "unknown scorer 'aesthetics'; known scorers:"),
    ("custom scorer not importable", ["train", "--reward.scorer", "no_such_module:score"], "cannot import module 'no_such_module'"),
    ("custom scorer lacks function", ["train", "--reward.scorer", "scorer_mod:nope"], "has no attribute 'nope'"),
    ("custom scorer wrong shape", ["train", "--model.pretrained", "{pipe}", "--reward.scorer", "scorer_mod:score", *FAST],
     "returned shape (3,) for 2 samples"),
    ("output folder not writable", ["train", "--output", "{tmp}/afile/run", "--model.pretrained", "{pipe}", *FAST], "is not writable"),
    ("output folder holds a run", ["train", "--output", "{tmp}/done", "--model.pretrained", "{pipe}", *FAST],
     "already holds a run; pass --resume latest to continue it, --overwrite to replace it"),
    ("output folder not empty", ["train", "--output", "{tmp}/busy", *FAST], "is not empty and holds no run"),
    ("overwrite and resume", ["train", "--overwrite", "--resume"], "output.overwrite and output.resume are both set"),
    ("CUDA asked, none present", ["train", "--model.device", "cuda", "--model.pretrained", "{pipe}", *FAST], "asks for CUDA but none is available"),
    ("generate height", ["generate", "--model", "{pipe}", "--prompt", "x", "--height", "30", "--out", "{tmp}/g"], "--height 30 is not a positive multiple of 8"),
]


@pytest.mark.parametrize("argv, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(argv, fragment, env, capsys):
    import shutil

    shutil.rmtree(env["out"], ignore_errors=True)
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    fill = {k: str(v) for k, v in env.items()}
    argv = [a.format(**fill) for a in argv]
    if argv[0] == "train" and "--output" not in argv:
        argv += ["--output", fill["out"]]
    before = (env["tmp"] / "done" / "metrics.jsonl").read_bytes()
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("raft-diffusion: error:")]
    assert code != 0
    assert len(lines) == 1, err
    assert fragment.format(**fill) in lines[0], lines[0]
    assert (env["tmp"] / "done" / "metrics.jsonl").read_bytes() == before, "an earlier run was damaged"


def test_table_has_at_least_25_cases():
    assert len(CASES) >= 25
