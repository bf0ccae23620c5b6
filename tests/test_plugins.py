"""Plugins: the ``raft_diffusion.plugins`` entry-point group, model aliases, plugin CLI commands.

The miniworld registers its model alias, scorers, prompt sets and command through the group, as a
third-party package would; a plugin that fails to load is a warning, not a crash.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from raft_diffusion import models, plugins
from raft_diffusion.errors import ConfigError, ModelError

REGISTERED: list[str] = []


def record_register() -> None:
    """A plugin's register(), named by an entry point in these tests."""
    REGISTERED.append("good")


class FakeEntryPoint:
    """An entry point whose load() returns ``target`` or raises ``error``."""

    def __init__(self, name: str, target=None, error: Exception | None = None) -> None:
        self.name, self.value, self.group = name, f"fake.{name}:register", plugins.GROUP
        self._target, self._error = target, error

    def load(self):
        if self._error is not None:
            raise self._error
        return self._target


@pytest.fixture
def fresh(monkeypatch):
    """Plugins not loaded yet (and none installed), and scratch copies of the registries a plugin writes to."""
    import prompts
    import scorers

    plugins.load_plugins()  # the installed plugins register into the real registries first
    for registry in (models.MODEL_ALIASES, plugins.COMMANDS, scorers.REGISTRY, prompts.REGISTRY):
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
    monkeypatch.setattr(plugins, "_loaded", False)
    monkeypatch.setattr(plugins, "entry_points", lambda: [])  # tests that need entry points set their own
    REGISTERED.clear()


def test_miniworld_is_an_installed_entry_point():
    eps = {ep.name: ep.value for ep in plugins.entry_points()}
    assert eps.get("miniworld") == "raft_diffusion.miniworld.plugin:register", eps


def test_entry_point_registers_alias_scorers_prompt_sets_and_command():
    """In a fresh interpreter nothing of the miniworld exists until the plugins load."""
    code = """
import scorers, prompts
from raft_diffusion import models, plugins
assert 'miniworld' not in models.MODEL_ALIASES and 'miniworld-clip' not in scorers.REGISTRY
assert 'miniworld' not in prompts.REGISTRY and 'miniworld' not in plugins.COMMANDS
assert plugins.load_plugins() == ['miniworld']
assert plugins.load_plugins() == []  # once per process
assert {'miniworld-clip', 'miniworld-aesthetic', 'miniworld-fidelity'} <= set(scorers.REGISTRY.names())
assert {'miniworld', 'miniworld-ood'} <= set(prompts.REGISTRY.names())
assert 'miniworld' in plugins.COMMANDS
print(models.resolve_model('miniworld'))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    folder = Path(out.stdout.strip())
    assert (folder / "model_index.json").is_file(), folder


def test_registries_load_plugins_lazily():
    """An unknown name or a listing loads the plugins: no explicit load_plugins() call needed."""
    code = """
import prompts, scorers
from raft_diffusion import plugins
assert not plugins.plugins_loaded()
assert prompts.load('cifar10') and not plugins.plugins_loaded()  # a built-in set loads no plugin
assert len(prompts.load('miniworld-ood')) == 8 and plugins.plugins_loaded()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    code = "import scorers; assert 'miniworld-aesthetic' in scorers.available()"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_miniworld_command_and_listings_through_the_cli(capsys):
    from raft_diffusion.cli import build_parser, main

    args = build_parser().parse_args(["miniworld", "evaluate", "--quick"])
    assert args.miniworld_command == "evaluate" and args.quick and callable(args.func)
    assert main(["scorers"]) == 0
    assert "miniworld-fidelity" in capsys.readouterr().out
    assert main(["prompts"]) == 0
    assert "miniworld-ood" in capsys.readouterr().out
    assert main(["miniworld"]) == 2  # no action: its help


def test_failing_plugin_is_one_warning_and_the_others_load(fresh, monkeypatch, caplog):
    from importlib.metadata import EntryPoint

    eps = [
        EntryPoint("missing", "no_such_package_xyz.plugin:register", plugins.GROUP),
        FakeEntryPoint("raises", target=lambda: (_ for _ in ()).throw(RuntimeError("weights not found\nsecond line"))),
        FakeEntryPoint("good", target=record_register),
    ]
    monkeypatch.setattr(plugins, "entry_points", lambda: eps)
    with caplog.at_level(logging.WARNING, logger="raft_diffusion.plugins"):
        assert plugins.load_plugins() == ["good"]
    assert REGISTERED == ["good"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    missing, raises = warnings
    assert "'missing'" in missing and "no_such_package_xyz" in missing and "ModuleNotFoundError" in missing
    assert "'raises'" in raises and "weights not found" in raises and "\n" not in raises
    assert plugins.load_plugins() == [] and REGISTERED == ["good"]  # idempotent


def test_a_plugin_registering_a_taken_name_is_a_warning(fresh, monkeypatch, caplog):
    import scorers

    def clash() -> None:
        scorers.register("jpeg-compressibility", lambda **kw: None, "again")

    monkeypatch.setattr(plugins, "entry_points", lambda: [FakeEntryPoint("clash", target=clash)])
    with caplog.at_level(logging.WARNING, logger="raft_diffusion.plugins"):
        assert plugins.load_plugins() == []
    assert any("'clash'" in r.getMessage() and "already registered" in r.getMessage() for r in caplog.records)


def test_model_aliases(fresh, tmp_path):
    models.register_model_alias("my-sd", lambda: tmp_path, "a test folder")
    assert models.resolve_model("my-sd") == str(tmp_path)
    assert ("my-sd", "a test folder") in models.model_aliases()
    assert models.resolve_model("owner/model") == "owner/model"  # not an alias: unchanged
    assert models.resolve_model("tiny") == "tiny"
    with pytest.raises(ModelError, match="model alias 'my-sd' is already registered"):
        models.register_model_alias("my-sd", lambda: tmp_path)
    with pytest.raises(ModelError, match="factory must be a callable"):
        models.register_model_alias("other", str(tmp_path))  # type: ignore[arg-type]
    models.register_model_alias("broken", lambda: 3)
    with pytest.raises(ModelError, match="model alias 'broken' returned int"):
        models.resolve_model("broken")


def test_plugin_command_runs_and_a_clash_with_a_builtin_is_skipped(fresh, caplog, capsys):
    from raft_diffusion.cli import main

    def add_hello(sub) -> None:
        p = sub.add_parser("hello", help="say hello")
        p.set_defaults(func=lambda args: print("hello from a plugin") or 0)

    plugins.register_command("hello", add_hello, "say hello")
    plugins.register_command("train", add_hello, "clashes with the built-in")
    with pytest.raises(ConfigError, match="command 'hello' is already registered"):
        plugins.register_command("hello", add_hello)
    with caplog.at_level(logging.WARNING):
        assert main(["hello"]) == 0
    assert "hello from a plugin" in capsys.readouterr().out
    assert any("plugin command 'train' is skipped" in r.getMessage() for r in caplog.records)
