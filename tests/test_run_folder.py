"""The run folder: --overwrite removes only what a run wrote, and only once the new run is built; a
resume that changes settings is refused or recorded (never rewriting config.yaml); models.json names
every model used; custom callables are logged by name."""

from __future__ import annotations

import json
import logging

import pytest
import yaml

from raft_diffusion import provenance, run_folder
from raft_diffusion.cli import main

FAST = ["--no-progress", "--raft.rounds", "1", "--raft.k", "2", "--raft.prompts_per_round", "1", "--sampling.steps", "1",
        "--train.steps_per_round", "1", "--prompts.eval", "null"]


def run(pipe, out, *extra):
    return main(["train", "tiny-demo", "--output", str(out), "--model.pretrained", str(pipe), *FAST, *extra])


@pytest.fixture
def done(tiny_pipeline_dir, tmp_path, one_thread):
    out = tmp_path / "run"
    assert run(tiny_pipeline_dir, out) == 0
    return out


def test_overwrite_removes_only_what_a_run_wrote(done, tiny_pipeline_dir, caplog):
    (done / "notes.txt").write_text("my notes")
    (done / "my-images").mkdir()
    (done / "my-images" / "0000.png").write_bytes(b"png")
    (done / "rounds" / "round-0009").mkdir()  # a round of the old run that the new one will not write
    (done / ".metrics.jsonl.tmp-4242").write_text("half")  # a write the old run never finished
    assert run(tiny_pipeline_dir, done, "--overwrite", "--raft.seed", "3") == 0
    assert (done / "notes.txt").read_text() == "my notes" and (done / "my-images" / "0000.png").is_file()
    assert not (done / "rounds" / "round-0009").exists() and not (done / ".metrics.jsonl.tmp-4242").exists()
    assert yaml.safe_load((done / "config.yaml").read_text())["raft"]["seed"] == 3
    assert [json.loads(line)["round"] for line in (done / "metrics.jsonl").read_text().splitlines()] == [1]
    warning = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("overwriting the run"))
    assert "notes.txt" in warning and "my-images" in warning, "the warning names what it kept"


def test_overwrite_keeps_a_readme_that_is_not_the_run_card(done, tiny_pipeline_dir):
    assert run_folder.is_our_card(done / "README.md")
    (done / "README.md").write_text("# my experiment\n\nwhat I was trying\n")
    assert run(tiny_pipeline_dir, done, "--overwrite") == 0
    assert (done / "README.md").read_text().startswith("# my experiment")
    assert run_folder.is_our_card(done / "MODEL_CARD.md"), "the new run's card goes beside it"


def test_overwrite_that_fails_to_build_leaves_the_old_run_whole(done, tiny_pipeline_dir, monkeypatch, capsys):
    from raft_diffusion import api

    before = {p: p.read_bytes() for p in done.rglob("*") if p.is_file()}

    def broken(cfg, progress=True):
        raise RuntimeError("no memory for the model")

    monkeypatch.setattr(api, "build_backend", broken)
    assert run(tiny_pipeline_dir, done, "--overwrite") == 1
    assert "no memory for the model" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in done.rglob("*") if p.is_file()} == before


def test_is_run_folder_needs_a_run_config(tmp_path):
    (tmp_path / "config.yaml").write_text("name: my project\n")
    assert run_folder.holds_run_files(tmp_path) and not run_folder.is_run_folder(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"round": 1}\n')
    assert run_folder.is_run_folder(tmp_path)


def test_resume_with_changes_needs_the_flag_and_is_recorded(done, tiny_pipeline_dir, capsys):
    first = (done / "config.yaml").read_bytes()
    assert run(tiny_pipeline_dir, done, "--resume", "--raft.rounds", "2", "--raft.k", "3") == 2
    assert "raft.k was 2, this config has 3" in capsys.readouterr().err
    assert not (done / "config-changes.jsonl").exists()

    assert run(tiny_pipeline_dir, done, "--resume", "--raft.rounds", "2", "--raft.k", "3", "--allow-changes") == 0
    assert (done / "config.yaml").read_bytes() == first, "config.yaml stays the run's first config"
    rows = [json.loads(line) for line in (done / "config-changes.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["from_round"] == 2 and rows[0]["allowed_by_flag"] is True
    assert rows[0]["changes"]["raft.k"] == {"before": 2, "now": 3}
    assert rows[0]["changes"]["raft.rounds"] == {"before": 1, "now": 2}
    assert yaml.safe_load((done / rows[0]["config"]).read_text())["raft"]["k"] == 3
    # the next resume compares with the newest config: the same settings change nothing
    assert run(tiny_pipeline_dir, done, "--resume", "--raft.rounds", "2", "--raft.k", "3") == 0
    assert len((done / "config-changes.jsonl").read_text().splitlines()) == 1


def test_resume_with_operational_changes_needs_no_flag(done, tiny_pipeline_dir):
    assert run(tiny_pipeline_dir, done, "--resume", "--raft.rounds", "2", "--output.keep_checkpoints", "5",
               "--sampling.batch_size", "4") == 0
    row = json.loads((done / "config-changes.jsonl").read_text())
    assert set(row["changes"]) == {"raft.rounds", "output.keep_checkpoints", "sampling.batch_size"}
    assert row["allowed_by_flag"] is False


def test_resume_with_the_same_config_records_nothing(done, tiny_pipeline_dir):
    assert run(tiny_pipeline_dir, done, "--resume") == 0
    assert not (done / "config-changes.jsonl").exists() and not list(done.glob("config.resume-*.yaml"))


def test_models_json_names_the_pipeline_folder(done, tiny_pipeline_dir):
    data = json.loads((done / "models.json").read_text())
    entry = next(e for e in data["models"] if e["role"] == "model.pretrained")
    assert entry["path"] == str(tiny_pipeline_dir.resolve()) and "commit" not in entry


def test_hub_models_are_recorded_with_their_commit(tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    cache = tmp_path / "hub"
    (cache / "models--org--model" / "refs").mkdir(parents=True)
    (cache / "models--org--model" / "refs" / "main").write_text(commit)
    assert provenance.describe("org/model", cache_dir=str(cache)) == {"hub_id": "org/model", "revision": None, "commit": commit}
    assert provenance.describe("org/model", revision="v2", cache_dir=str(cache))["commit"] is None, "an uncached revision"
    snap = f"{cache}/models--org--head/snapshots/{'f' * 40}/head.safetensors"
    assert provenance.describe(snap) == {"hub_id": "org/head", "commit": "f" * 40, "path": snap}


def test_custom_callables_are_logged_by_name(caplog):
    from scorers.custom import import_object

    with caplog.at_level(logging.INFO, logger="scorers"):
        fn = import_object("tests.fakes:sum_reward")
    assert fn.__name__ == "sum_reward"
    assert any("imported custom callable tests.fakes:sum_reward" in r.getMessage() for r in caplog.records)


def test_models_loaded_later_join_models_json_and_a_same_resume_keeps_it(tmp_path):
    from raft_diffusion.config import RaftConfig

    cfg = RaftConfig().replace({"model.vae": None})
    provenance.reset()
    provenance.record("model.pretrained", str(tmp_path))
    path = provenance.write(tmp_path, cfg)
    provenance.record("scorer clip", "org/clip-that-is-not-cached")
    provenance.update(path, cfg)
    entries = json.loads(path.read_text())["models"]
    assert [e["role"] for e in entries] == ["model.pretrained", "scorer clip"]
    assert entries[1]["hub_id"] == "org/clip-that-is-not-cached" and entries[1]["commit"] is None
    provenance.reset()  # a resume that loads the same models: models.json stays, no models.resume-N.json
    provenance.record("model.pretrained", str(tmp_path))
    assert provenance.write(tmp_path, cfg) == path and not list(tmp_path.glob("models.resume-*.json"))
    provenance.record("model.pretrained", "org/other-model")
    assert provenance.write(tmp_path, cfg).name == "models.resume-1.json"
    provenance.reset()
