"""What a run leaves besides its records: TensorBoard events, the model card, report.html and the
hub upload (HfApi mocked at its boundary: no network). One tiny 2-round run serves every test."""

from __future__ import annotations

import json
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from raft_diffusion.api import train
from raft_diffusion.config import RaftConfig, load_config
from raft_diffusion.core.records import History
from raft_diffusion.errors import ConfigError, RunError
from raft_diffusion.run_outputs import RunOutputs
from tests.fakes import TINY_BASE

REWARD, HELD_OUT = "jpeg-compressibility", "brightness"


def tiny_config(pipe_dir, out_dir, **overrides) -> RaftConfig:
    base = {
        "model.pretrained": str(pipe_dir), "raft.rounds": 2, "raft.k": 2, "raft.prompts_per_round": 2, "raft.seed": 3,
        "sampling.steps": 2, "sampling.batch_size": 4, "train.steps_per_round": 2, "train.batch_size": 2,
        "train.learning_rate": 1e-3, "prompts.eval": "cifar10", "prompts.eval_limit": 2,
        "reward.scorer": REWARD, "reward.eval_scorers": {HELD_OUT: {}},
        "output.dir": str(out_dir), "output.report_to": "tensorboard",
    }
    base.update(overrides)
    return RaftConfig().replace({**TINY_BASE, **base})


@pytest.fixture(scope="module")
def run(tiny_pipeline_dir, tmp_path_factory, one_thread):
    """(run folder, the History train returned, its config) of one tiny run tracked with TensorBoard."""
    out = tmp_path_factory.mktemp("outputs") / "raft-tiny"
    cfg = tiny_config(tiny_pipeline_dir, out)
    history = train(cfg, progress=False)
    return out, history, cfg


def copy_run(run_dir: Path, dest: Path) -> Path:
    """The run folder without its checkpoints (tests that rewrite the folder's outputs use a copy)."""
    return Path(shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("checkpoints", "logs")))


def expected_summary(run_dir: Path, history: History) -> dict:
    """summary.json when the run wrote one, else the reward / held-out scorer at eval rounds 0 and last."""
    path = run_dir / "summary.json"
    if path.is_file():
        return json.loads(path.read_text())
    first, last = history.evals[0], history.evals[-1]
    return {"reward_before": first[REWARD], "reward_after": last[REWARD],
            "fidelity_name": HELD_OUT, "fidelity_before": first[HELD_OUT], "fidelity_after": last[HELD_OUT]}


# ------------------------------------------------------------------ trackers
def test_tensorboard_events_hold_every_round_the_evals_and_images(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, history, _ = run
    acc = EventAccumulator(str(run_dir / "logs" / "raft-diffusion"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    rounds = [r["round"] for r in history.rounds]
    for key in ("reward_unbiased", "reward_kept", "train_loss", "time_round_s"):
        events = acc.Scalars(key)
        assert [e.step for e in events] == rounds, key
        assert [e.value for e in events] == pytest.approx([r[key] for r in history.rounds], rel=1e-5), key
    for name in (REWARD, HELD_OUT):
        events = acc.Scalars(f"eval/{name}")
        assert [e.step for e in events] == [e["round"] for e in history.evals], "round 0 is before training"
        assert [e.value for e in events] == pytest.approx([e[name] for e in history.evals], rel=1e-5)
    assert not [t for t in acc.Tags()["scalars"] if "per_prompt" in t or t.endswith("stop_reason")], "numbers only"
    assert [i.step for i in acc.Images("grid")] == rounds
    if (run_dir / "before_after.png").is_file():
        assert acc.Images("before_after"), "the before/after grid is logged at eval rounds"


def test_a_tracker_that_is_not_installed_is_named_with_its_install(run, monkeypatch, tmp_path):
    import raft_diffusion.trackers as trackers

    run_dir, _, cfg = run
    monkeypatch.setattr(trackers, "_installed", lambda package: package != "wandb")
    for report_to in ("wandb", "all"):
        with pytest.raises(ConfigError, match=r"output.report_to '\w+' needs wandb, which is not installed; "
                                              r"run `pip install wandb`"):
            RunOutputs(cfg.replace({"output.report_to": report_to}), tmp_path, REWARD)


def test_wandb_runs_offline_without_a_network(run, monkeypatch, tmp_path):
    pytest.importorskip("wandb")
    run_dir, history, cfg = run
    folder = copy_run(run_dir, tmp_path / "copy")
    monkeypatch.setenv("WANDB_MODE", "online")  # recorded, so the variable is restored after the test
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_SILENT", "true")
    outputs = RunOutputs(cfg.replace({"output.report_to": "wandb", "output.dir": str(folder)}), folder, REWARD)
    assert os.environ["WANDB_MODE"] == "offline"
    for i, row in enumerate(history.rounds):
        outputs.on_round(row["round"], History(history.rounds[:i + 1], history.evals, folder))
    outputs.finish(History.load(folder))
    assert list((folder / "wandb").glob("offline-run-*")), "an offline run folder for `wandb sync`"


# ------------------------------------------------------------------ model card
def front_matter(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def test_model_card_front_matter_and_body(run):
    from huggingface_hub import ModelCard

    run_dir, history, cfg = run
    meta, body = front_matter((run_dir / "README.md").read_text())
    assert meta["base_model"] == cfg.model.pretrained, "a local base is named as given"
    assert meta["library_name"] == "diffusers" and meta["pipeline_tag"] == "text-to-image"
    assert {"raft", "lora", "text-to-image", "diffusers", "sd"} <= set(meta["tags"])
    assert ModelCard.load(run_dir / "README.md").data.base_model == cfg.model.pretrained
    summary = expected_summary(run_dir, history)
    for key in ("reward_before", "reward_after", "fidelity_before", "fidelity_after"):
        assert f"{summary[key]:.4f}" in body, key
    assert REWARD in body and summary["fidelity_name"] in body
    assert f'pipe = DiffusionPipeline.from_pretrained("{cfg.model.pretrained}")' in body
    assert f'pipe.load_lora_weights("{run_dir}")' in body
    assert f"raft-diffusion generate --model {cfg.model.pretrained} --lora {run_dir}" in body
    if (run_dir / "before_after.png").is_file():
        assert "](before_after.png)" in body


def test_llm_model_card_is_a_peft_card(tmp_path):
    from raft_diffusion.model_card import card_text

    cfg = load_config("llm-tiny", {"output.dir": str(tmp_path)})
    history = History([{"round": 1, "best_per_prompt": {"what is a cat ?": 1.0}}], [], tmp_path)
    meta, body = front_matter(card_text(cfg, history, "text-contains", {}, lora_ref=str(tmp_path), run_dir=tmp_path))
    assert meta["library_name"] == "peft" and {"raft", "lora", "text-generation", "peft"} <= set(meta["tags"])
    assert f'PeftModel.from_pretrained(base, "{tmp_path / "adapter"}")' in body and "load_lora_weights" not in body


def test_model_card_lists_a_multi_rewards_raw_parts(tmp_path):
    """A z-scored multi reads 0 before and after; the card shows its parts' raw readings."""
    from raft_diffusion.model_card import card_text

    cfg = load_config("llm-tiny", {"output.dir": str(tmp_path)})
    history = History([{"round": 1}], [], tmp_path)
    summary = {"reward_name": "multi", "reward_before": 0.0, "reward_after": 0.0,
               "reward_parts": {"clip": {"before": 12.5, "after": 31.25}, "shape": {"before": -0.5, "after": 0.125}}}
    _, body = front_matter(card_text(cfg, history, "multi", summary, lora_ref=str(tmp_path), run_dir=tmp_path))
    rows = [line for line in body.splitlines() if line.startswith("| reward part")]
    assert len(rows) == 2 and "`clip`" in rows[0] and "12.5" in rows[0] and "31.25" in rows[0], rows
    assert "`shape`" in rows[1] and "-0.5" in rows[1], rows


@pytest.mark.parametrize("pretrained, expected", [
    ("stable-diffusion-v1-5/stable-diffusion-v1-5", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
    ("/cache/hub/models--stabilityai--sdxl-turbo/snapshots/abc123", "stabilityai/sdxl-turbo"),
    ("tiny", None), ("./my/pipe", None),
])
def test_base_model_hub_id(pretrained, expected):
    from raft_diffusion.model_card import hub_id

    assert hub_id(pretrained) == expected


def test_license_comes_from_the_base_models_own_card(tmp_path):
    from raft_diffusion.model_card import base_license

    (tmp_path / "README.md").write_text("---\nlicense: creativeml-openrail-m\n---\n# a pipeline\n")
    assert base_license(str(tmp_path)) == "creativeml-openrail-m"
    assert base_license(str(tmp_path / "nowhere")) is None


# ------------------------------------------------------------------ report.html
class Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


def test_report_html_images_exist_and_it_shows_every_round(run):
    run_dir, history, cfg = run
    text = (run_dir / "report.html").read_text()
    page = Images()
    page.feed(text)
    missing = [s for s in page.srcs if not s.startswith("data:") and not (run_dir / s).is_file()]
    assert page.srcs and not missing, missing
    grids = [s for s in page.srcs if s.endswith("grid.png") and s.startswith("rounds/")]
    assert len(grids) == len(history.rounds), "one grid per round"
    assert ("before_after.png" in page.srcs) == (run_dir / "before_after.png").is_file()
    assert page.tags.count("svg") >= 2, "the reward curve and the held-out scorer's curve"
    assert page.tags.count("tr") >= len(history.rounds) + 1
    assert f"held-out: {HELD_OUT}" in text and f"pretrained: {cfg.model.pretrained}" in text


def test_chart_skips_missing_points():
    from raft_diffusion.svg_chart import line_chart

    svg = line_chart({"a": [(0, 1.0), (1, None), (2, float("nan")), (3, 2.0)], "b": [(0, None)]}, "t")
    assert svg.count("<circle") == 2 and ">b<" not in svg, "None/NaN points and empty series are left out"
    assert "no data" in line_chart({"a": [(1, None)]}, "t")


# ------------------------------------------------------------------ the hub
@pytest.fixture
def hub_calls(monkeypatch):
    """HfApi.create_repo / upload_folder recorded instead of sent; a login and network mode faked."""
    from huggingface_hub import HfApi, constants

    calls: dict[str, list] = {"create_repo": [], "upload_folder": []}

    def create_repo(self, repo_id, **kw):
        calls["create_repo"].append((repo_id, kw))
        return SimpleNamespace(repo_id=repo_id if "/" in repo_id else f"someone/{repo_id}")

    def upload_folder(self, **kw):
        calls["upload_folder"].append(kw)

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_fake")
    return calls


def push_config(cfg: RaftConfig, folder: Path, **over) -> RaftConfig:
    return cfg.replace({"output.push_to_hub": True, "output.report_to": "none", "output.dir": str(folder), **over})


def test_push_to_hub_uploads_the_lora_card_grid_and_report(run, hub_calls, tmp_path):
    from huggingface_hub.utils import filter_repo_objects

    run_dir, history, cfg = run
    folder = copy_run(run_dir, tmp_path / "copy")
    RunOutputs(push_config(cfg, folder, **{"output.hub_model_id": "me/raft-tiny"}), folder, REWARD).finish(
        History.load(folder))
    (repo_id, kw), = hub_calls["create_repo"]
    assert repo_id == "me/raft-tiny" and kw["exist_ok"] is True
    (up,) = hub_calls["upload_folder"]
    assert up["repo_id"] == "me/raft-tiny" and Path(up["folder_path"]) == folder
    files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    sent = set(filter_repo_objects(files, allow_patterns=up["allow_patterns"]))
    expected = {"pytorch_lora_weights.safetensors", "README.md", "report.html", "before_after.png"}
    assert sent == {f for f in expected if (folder / f).is_file()} and "README.md" in sent
    meta, body = front_matter((folder / "README.md").read_text())
    assert 'pipe.load_lora_weights("me/raft-tiny")' in body, "the pushed card loads the LoRA from the hub"
    assert "hf download me/raft-tiny --local-dir raft-lora" in body, "generate reads a local folder"
    assert "base_model" not in meta, "a local base path is no hub id: the hub would refuse it"


def test_push_default_repo_is_the_folder_name_under_the_account(run, hub_calls, tmp_path):
    run_dir, _, cfg = run
    folder = copy_run(run_dir, tmp_path / "my-run")
    RunOutputs(push_config(cfg, folder), folder, REWARD).finish(History.load(folder))
    assert hub_calls["create_repo"][0][0] == "my-run"
    assert hub_calls["upload_folder"][0]["repo_id"] == "someone/my-run", "the full id create_repo returned"
    assert 'load_lora_weights("someone/my-run")' in (folder / "README.md").read_text()


def test_push_is_checked_before_training_and_a_failed_upload_says_how_to_retry(run, hub_calls, monkeypatch, tmp_path):
    import huggingface_hub
    from huggingface_hub import HfApi, constants

    run_dir, _, cfg = run
    folder = copy_run(run_dir, tmp_path / "copy")
    with pytest.raises(ConfigError, match=r"output.hub_model_id 'a/b/c' is not a hub repository id"):
        RunOutputs(push_config(cfg, folder, **{"output.hub_model_id": "a/b/c"}), folder, REWARD)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(ConfigError, match=r"needs a Hugging Face login; run `hf auth login` or set HF_TOKEN"):
        RunOutputs(push_config(cfg, folder), folder, REWARD)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match=r"output.push_to_hub needs the network but HF_HUB_OFFLINE is set"):
        RunOutputs(push_config(cfg, folder), folder, REWARD)
    monkeypatch.undo()

    def offline(self, **kw):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: SimpleNamespace(repo_id=repo_id))
    monkeypatch.setattr(HfApi, "upload_folder", offline)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_fake")
    outputs = RunOutputs(push_config(cfg, folder, **{"output.hub_model_id": "me/x"}), folder, REWARD)
    with pytest.raises(RunError, match=r"pushing the run to the hub repo 'me/x' failed \(no route to host\); .* "
                                       r"upload it later with `hf upload me/x "):
        outputs.finish(History.load(folder))
    assert (folder / "report.html").is_file() and (folder / "README.md").is_file(), "written before the push"
