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
def boom(images, prompts, metadata):
    raise RuntimeError("the scorer's server is down")
def short_filter(samples, rewards):
    return [True]
def broken_filter(samples, rewards):
    raise KeyError("caption")
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
    (tmp_path / "dup.yaml").write_text("raft:\n  k: 2\n  k: 4\n")
    (tmp_path / "dupsection.yaml").write_text("raft:\n  k: 2\nsampling:\n  steps: 2\nraft:\n  rounds: 1\n")
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "comments.yaml").write_text("# raft:\n#   k: 4\n")
    (tmp_path / "scalar-section.yaml").write_text("raft: 3\n")
    (tmp_path / "nan.yaml").write_text("train:\n  weight_decay: .nan\n")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "config.yaml").write_text("name: my project\nversion: 2\n")
    (tmp_path / "badindex").mkdir()
    (tmp_path / "badindex" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline",')
    (tmp_path / "confdir.yaml").mkdir()
    (tmp_path / "notpipe").mkdir()
    (tmp_path / "notpipe" / "weights.bin").write_bytes(b"x")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    (tmp_path / "scorer_mod.py").write_text(WRONG_SHAPE_SCORER)
    (tmp_path / "syntax_mod.py").write_text("def score(:\n")
    import json
    import shutil

    shutil.copytree(tiny_pipeline_dir, tmp_path / "mismatch")
    unet_config = tmp_path / "mismatch" / "unet" / "config.json"
    unet_config.write_text(json.dumps({**json.loads(unet_config.read_text()), "block_out_channels": [16, 32]}))
    (tmp_path / "raising_mod.py").write_text("raise RuntimeError('boom at import')\n")
    sys.path.insert(0, str(tmp_path))
    # a finished run (for "already holds a run" and for a mismatched resume)
    done = tmp_path / "done"
    assert main(["train", "tiny-demo", "--no-progress", "--output", str(done), "--model.pretrained", str(tiny_pipeline_dir),
                 *DONE]) == 0
    # a LoRA of another architecture: same names, other shapes
    lora = load_file(done / "pytorch_lora_weights.safetensors")
    (tmp_path / "other").mkdir()
    save_file({k: torch.zeros(v.shape[0] + 3, *v.shape[1:]) for k, v in lora.items()},
              tmp_path / "other" / "pytorch_lora_weights.safetensors")
    files["tmp"] = tmp_path
    yield files
    sys.path.remove(str(tmp_path))


FAST = ["--raft.rounds", "1", "--raft.k", "2", "--raft.prompts_per_round", "1", "--sampling.steps", "1",
        "--train.steps_per_round", "1", "--prompts.eval", "null", "--raft.early_stop", "null"]  # no eval: no guard
#: the finished run "done" (two rounds); a resume of it with these settings changes nothing
DONE = [*FAST, "--raft.rounds", "2"]
#: the exit status of each class: bad input 2, a run that failed mid-way 1
EXIT = {"mid-run failure": 1}

# (class, id, argv with {placeholders}, fragment of the one-line message)
CASES = [
    ("config file", "missing config", ["train", "{tmp}/nope.yaml"], "config file '{tmp}/nope.yaml' does not exist"),
    ("config file", "config is a folder", ["train", "{tmp}/confdir.yaml"], "is a folder; give a YAML file or a preset"),
    ("config file", "config not UTF-8", ["train", "{tmp}/not-utf8.yaml"], "is not UTF-8 text"),
    ("config file", "invalid YAML", ["train", "{tmp}/bad.yaml"], "is not valid YAML at line"),
    ("config file", "config not a mapping", ["train", "{tmp}/list.yaml"], "must hold a mapping of sections"),
    ("config file", "unknown key in file", ["train", "{tmp}/unknown.yaml"], "unknown config key 'raft.kay'"),
    ("config value", "unknown section", ["train", "--rafts.k", "3"], "unknown config section 'rafts'"),
    ("config value", "wrong type int", ["train", "--raft.k", "many"], "raft.k must be an integer, got 'many'"),
    ("config value", "wrong type bool", ["train", "--output.save_grids", "3"], "output.save_grids must be true or false, got 3"),
    ("config value", "override without value", ["train", "--raft.k"], "override '--raft.k' needs a value"),
    ("model", "missing model folder", ["train", "--model.pretrained", "{tmp}/no-model", *FAST], "is neither an existing folder nor a hub id"),
    ("model", "not a pipeline folder", ["train", "--model.pretrained", "{tmp}/notpipe", *FAST], "is not a diffusers pipeline folder (no model_index.json)"),
    ("model", "model is a file", ["train", "--model.pretrained", "{tmp}/afile", *FAST], "is a file; give a diffusers pipeline folder"),
    ("model", "unknown dtype", ["train", "--model.dtype", "float8"], "model.dtype 'float8' is not one of"),
    ("LoRA", "LoRA rank 0", ["train", "--lora.rank", "0"], "lora.rank must be >= 1, got 0"),
    ("LoRA", "LoRA target modules absent", ["train", "--model.pretrained", "{pipe}", "--lora.target_modules", "[q_proj]", *FAST],
     "lora.target_modules ['q_proj'] match no layer of the UNet2DConditionModel"),
    ("LoRA", "LoRA of another architecture on generate", ["generate", "--model", "{pipe}", "--lora", "{tmp}/other", "--prompt", "x",
                                                  "--steps", "1", "--out", "{tmp}/gen"], "does not fit this pipeline's denoiser"),
    ("resume", "resume with another LoRA shape", ["train", "tiny-demo", "--output", "{tmp}/done", "--resume", "--model.pretrained", "{pipe}",
                                        "--lora.rank", "8", *DONE], "cannot resume '{tmp}/done': it was trained with lora.rank = 4"),
    ("resume", "resume from a non-checkpoint", ["train", "tiny-demo", "--output", "{tmp}/done", "--resume", "{tmp}/busy", "--model.pretrained", "{pipe}", *DONE],
     "is not a complete checkpoint folder"),
    ("prompts", "prompt file empty", ["train", "--prompts.train", "{tmp}/empty.txt"], "no prompts"),
    ("prompts", "prompt file missing", ["train", "--prompts.train", "{tmp}/missing.txt"], "missing.txt"),
    ("prompts", "prompt file undecodable", ["train", "--prompts.train", "{tmp}/bad-bytes.txt"], "UTF-8"),
    ("prompts", "unknown prompt set", ["train", "--prompts.train", "cifar11"], "unknown prompt set 'cifar11'"),
    ("config value", "K < 1", ["train", "--raft.k", "0"], "raft.k must be >= 1"),
    ("config value", "K too large", ["train", "--raft.k", "100000"], "raft.k = 100000 is out of range"),
    ("config value", "b < 1", ["train", "--raft.prompts_per_round", "0"], "raft.prompts_per_round must be >= 1"),
    ("config value", "height not a multiple of 8", ["train", "--sampling.height", "100"], "sampling.height = 100 is not a positive multiple of 8"),
    ("config value", "width not a multiple of 8", ["train", "--sampling.width", "63"], "sampling.width = 63 is not a positive multiple of 8"),
    ("config value", "unknown scheduler", ["train", "--sampling.scheduler", "magic"], "unknown sampling.scheduler 'magic'; choose one of"),
    ("config value", "unknown strategy", ["train", "--ranking.strategy", "best"], "unknown ranking.strategy 'best'"),
    ("config value", "top_n above K", ["train", "--raft.k", "2", "--ranking.top_n", "3"], "ranking.top_n = 3 exceeds raft.k = 2"),
    ("config value", "learning rate <= 0", ["train", "--train.learning_rate", "0"], "train.learning_rate must be > 0"),
    ("scorer", "unknown scorer", ["train", "--reward.scorer", "aesthetics"], "unknown scorer 'aesthetics'; known scorers:"),
    ("scorer", "custom scorer not importable", ["train", "--reward.scorer", "no_such_module:score"], "cannot import module 'no_such_module'"),
    ("scorer", "custom scorer lacks function", ["train", "--reward.scorer", "scorer_mod:nope"], "has no attribute 'nope'"),
    ("model", "model config does not match its weights", ["train", "--model.pretrained", "{tmp}/mismatch", *FAST],
     "its config.json files and weights do not match"),
    ("scorer", "custom scorer with a syntax error", ["train", "--reward.scorer", "syntax_mod:score"],
     "module 'syntax_mod' has a syntax error"),
    ("scorer", "custom scorer raising on import", ["train", "--reward.scorer", "raising_mod:score"],
     "importing module 'raising_mod' raised RuntimeError: boom at import; fix the module"),
    ("scorer", "custom scorer without a module", ["train", "--reward.scorer", ":foo"], "must look like 'package.module:function'"),
    ("scorer", "custom scorer relative module", ["train", "--reward.scorer", ".mod:f"], "relative and empty names cannot be imported"),
    ("scorer", "unexpected scorer kwargs", ["train", "--reward.scorer", "jpeg-compressibility", "--reward.kwargs", "{{bogus: 1}}"],
     "scorer 'jpeg-compressibility' takes no argument 'bogus' (reward.kwargs); it takes: quality"),
    ("scorer", "custom scorer wrong shape", ["train", "--model.pretrained", "{pipe}", "--reward.scorer", "scorer_mod:score", *FAST],
     "returned shape (3,) for 2 samples"),
    ("output folder", "output folder not writable", ["train", "--output", "{tmp}/afile/run", "--model.pretrained", "{pipe}", *FAST], "is not writable"),
    ("output folder", "output folder holds a run", ["train", "--output", "{tmp}/done", "--model.pretrained", "{pipe}", *FAST],
     "already holds a run; pass --resume latest to continue it, --overwrite to replace it"),
    ("output folder", "output folder not empty", ["train", "--output", "{tmp}/busy", *FAST], "is not empty and holds no run"),
    ("output folder", "overwrite and resume", ["train", "--overwrite", "--resume"], "output.overwrite and output.resume are both set"),
    ("device", "CUDA asked, none present", ["train", "--model.device", "cuda", "--model.pretrained", "{pipe}", *FAST], "asks for CUDA but none is available"),
    ("generate", "generate height", ["generate", "--model", "{pipe}", "--prompt", "x", "--height", "30", "--out", "{tmp}/g"], "--height 30 is not a positive multiple of 8"),
    # config files: repeated keys, empty files, sections that are no mapping, NaN
    ("config file", "duplicate key in file", ["train", "{tmp}/dup.yaml"], "repeats the key 'k' at line 3 (first at line 2)"),
    ("config file", "duplicate section in file", ["train", "{tmp}/dupsection.yaml"], "repeats the key 'raft' at line 5 (first at line 1)"),
    ("config file", "empty config file", ["train", "{tmp}/empty.yaml"], "is empty (no settings)"),
    ("config file", "config of comments only", ["train", "{tmp}/comments.yaml"], "is empty (no settings)"),
    ("config file", "section not a mapping", ["train", "{tmp}/scalar-section.yaml"], "raft must be a mapping of fields, got 3"),
    ("config file", "NaN in a file", ["train", "{tmp}/nan.yaml"], "train.weight_decay must be a finite number, got nan"),
    # config values: NaN / inf in any float, optimizer ranges, types
    ("config value", "NaN learning rate", ["train", "--train.learning_rate", "nan"], "train.learning_rate must be a finite number, got 'nan'"),
    ("config value", "infinite guidance", ["train", "--sampling.guidance_scale", ".inf"], "sampling.guidance_scale must be a finite number, got inf"),
    ("config value", "minus infinity tolerance", ["train", "--raft.early_stop_tolerance=-.inf"], "raft.early_stop_tolerance must be a finite number"),
    ("config value", "NaN LoRA alpha", ["train", "--lora.alpha", ".nan"], "lora.alpha must be a finite number"),
    ("config value", "adam beta1 = 1", ["train", "--train.adam_beta1", "1"], "train.adam_beta1 must be in [0, 1), got 1.0"),
    ("config value", "adam beta2 < 0", ["train", "--train.adam_beta2=-0.5"], "train.adam_beta2 must be in [0, 1), got -0.5"),
    ("config value", "adam epsilon 0", ["train", "--train.adam_epsilon", "0"], "train.adam_epsilon must be > 0, got 0.0"),
    ("config value", "negative weight decay", ["train", "--train.weight_decay=-0.01"], "train.weight_decay must be >= 0"),
    ("config value", "negative warmup", ["train", "--train.warmup_steps=-1"], "train.warmup_steps must be >= 0, got -1"),
    ("config value", "wrong type float", ["train", "--train.learning_rate", "fast"], "train.learning_rate must be a number, got 'fast'"),
    ("config value", "list for an integer", ["train", "--raft.k", "[1, 2]"], "raft.k must be an integer, got [1, 2]"),
    ("config value", "sampling steps 0", ["train", "--sampling.steps", "0"], "sampling.steps must be >= 1, got 0"),
    ("config value", "DDIM eta out of range", ["train", "--sampling.eta", "2"], "sampling.eta must be in [0, 1]"),
    ("config value", "keep no checkpoint", ["train", "--output.keep_checkpoints", "0"], "output.keep_checkpoints must be >= 1 or null"),
    ("config value", "duplicate key in an override", ["train", "--reward.kwargs", "{{a: 1, a: 2}}"], "repeats the key 'a'"),
    # models and LoRAs
    ("model", "empty model name", ["train", "--model.pretrained=''"], "model.pretrained is empty"),
    ("model", "damaged model_index.json", ["train", "--model.pretrained", "{tmp}/badindex", *FAST], "the pipeline folder is damaged"),
    ("LoRA", "LoRA dropout 1", ["train", "--lora.dropout", "1"], "lora.dropout must be in [0, 1), got 1.0"),
    ("LoRA", "LoRA path missing on generate", ["generate", "--model", "{pipe}", "--lora", "{tmp}/no-lora", "--prompt", "x", "--steps", "1",
                                               "--out", "{tmp}/gen"], "LoRA '{tmp}/no-lora' does not exist"),
    ("LoRA", "LoRA folder without weights on generate", ["generate", "--model", "{pipe}", "--lora", "{tmp}/busy", "--prompt", "x",
                                                         "--steps", "1", "--out", "{tmp}/gen"], "holds no pytorch_lora_weights.safetensors"),
    # resume with settings that change what the completed rounds mean (refused without --allow-changes)
    ("resume", "resume changing K", ["train", "tiny-demo", "--output", "{tmp}/done", "--resume", "--model.pretrained", "{pipe}", *DONE,
                                     "--raft.k", "3"], "raft.k was 2, this config has 3; that changes what its completed rounds mean"),
    ("resume", "resume changing the seed", ["train", "tiny-demo", "--output", "{tmp}/done", "--resume", "--model.pretrained", "{pipe}", *DONE,
                                            "--raft.seed", "7"], "raft.seed was 0, this config has 7"),
    ("resume", "resume changing the ranking", ["train", "tiny-demo", "--output", "{tmp}/done", "--resume", "--model.pretrained", "{pipe}",
                                               *DONE, "--ranking.strategy", "global"], "ranking.strategy was 'per_prompt', this config has 'global'"),
    ("resume", "resume changing the prompts", ["train", "tiny-demo", "--output", "{tmp}/done", "--resume", "--model.pretrained", "{pipe}",
                                               *DONE, "--prompts.train", "cifar100"], "prompts.train was 'cifar10', this config has 'cifar100'"),
    ("resume", "resume with fewer rounds than done", ["train", "tiny-demo", "--output", "{tmp}/done", "--resume", "--model.pretrained", "{pipe}",
                                                      *FAST], "raft.rounds = 1 is fewer than the 2 rounds already done"),
    ("resume", "resume from a folder that is no run", ["train", "--output", "{tmp}/foreign", "--resume", *FAST], "is not empty and holds no run"),
    # output folders: --overwrite only replaces a run, and only once the new run is built
    ("output folder", "output folder is a file", ["train", "--output", "{tmp}/afile", *FAST], "output.dir '{tmp}/afile' is a file; choose a folder"),
    ("output folder", "overwrite a folder that is no run", ["train", "--overwrite", "--output", "{tmp}/busy", *FAST],
     "--overwrite replaces only a raft-diffusion run"),
    ("output folder", "overwrite a folder with a foreign config.yaml", ["train", "--overwrite", "--output", "{tmp}/foreign", *FAST],
     "--overwrite replaces only a raft-diffusion run"),
    ("output folder", "overwrite with a model that fails", ["train", "tiny-demo", "--overwrite", "--output", "{tmp}/done", "--model.pretrained",
                                                            "{tmp}/no-model", *FAST], "is neither an existing folder nor a hub id"),
    ("output folder", "overwrite with a scorer that fails", ["train", "tiny-demo", "--overwrite", "--output", "{tmp}/done", "--model.pretrained",
                                                             "{pipe}", "--reward.scorer", "no_such_module:score", *FAST], "cannot import module 'no_such_module'"),
    # scorers, filters and prompts
    ("scorer", "unknown eval scorer", ["train", "--reward.eval_scorers", "{{nope: {{}}}}", "--raft.early_stop", "null"], "unknown scorer 'nope'"),
    ("scorer", "custom filter not importable", ["train", "--ranking.filter", "no_such_module:keep"], "cannot import module 'no_such_module'"),
    ("scorer", "custom filter returns too few flags", ["train", "--model.pretrained", "{pipe}", "--ranking.filter", "scorer_mod:short_filter",
                                                       *FAST], "filter returned 1 flags for 2 samples"),
    ("prompts", "eval prompt file missing", ["train", "--prompts.eval", "{tmp}/missing-eval.txt"], "missing-eval.txt"),
    ("prompts", "eval_limit 0", ["train", "--prompts.eval_limit", "0"], "prompts.eval_limit must be >= 1 or null, got 0"),
    ("device", "unknown device", ["train", "--model.device", "tpu0", "--model.pretrained", "{pipe}", *FAST], "model.device 'tpu0' is not a device"),
    ("generate", "generate steps 0", ["generate", "--model", "{pipe}", "--prompt", "x", "--steps", "0", "--out", "{tmp}/g"], "--steps must be >= 1, got 0"),
    ("generate", "generate guidance NaN", ["generate", "--model", "{pipe}", "--prompt", "x", "--guidance-scale", "nan", "--out", "{tmp}/g"],
     "--guidance-scale must be a finite number >= 0, got nan"),
    ("generate", "generate batch size 0", ["generate", "--model", "{pipe}", "--prompt", "x", "--batch-size", "0", "--out", "{tmp}/g"],
     "--batch-size must be >= 1, got 0"),
    ("generate", "generate without prompts", ["generate", "--model", "{pipe}", "--out", "{tmp}/g"], "no prompts given"),
    # a run that fails mid-way: exit 1, the round and the cause
    ("mid-run failure", "scorer raises mid-run", ["train", "--model.pretrained", "{pipe}", "--reward.scorer", "scorer_mod:boom", *FAST],
     "round 1, scoring with 'scorer_mod:boom' failed: RuntimeError: the scorer's server is down"),
    ("mid-run failure", "filter raises mid-run", ["train", "--model.pretrained", "{pipe}", "--ranking.filter", "scorer_mod:broken_filter", *FAST],
     "round 1, ranking failed: KeyError"),
]


def _digest(folder):
    """Every file under ``folder`` with its bytes: a case must leave the earlier run exactly as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kind, argv, fragment", [(c[0], *c[2:]) for c in CASES], ids=[c[1] for c in CASES])
def test_bad_input(kind, argv, fragment, env, capsys):
    import shutil

    shutil.rmtree(env["out"], ignore_errors=True)
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    fill = {k: str(v) for k, v in env.items()}
    argv = [a.format(**fill) for a in argv]
    if argv[0] == "train" and "--output" not in argv:
        argv += ["--output", fill["out"]]
    before = _digest(env["tmp"] / "done")
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("raft-diffusion: error:")]
    assert code == EXIT.get(kind, 2), err
    assert len(lines) == 1, err
    assert fragment.format(**fill) in lines[0], lines[0]
    assert "Traceback" not in err, "a traceback only with -v"
    assert _digest(env["tmp"] / "done") == before, "an earlier run was damaged"


def test_table_has_at_least_25_cases():
    assert len(CASES) >= 25


def test_every_case_has_a_class_and_a_unique_id():
    ids = [c[1] for c in CASES]
    assert len(ids) == len(set(ids))
    assert all(len(c) == 4 and c[0] for c in CASES)
