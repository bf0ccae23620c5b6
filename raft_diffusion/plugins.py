"""Plugins: packages that add models, rewards, prompt sets, ranking strategies and CLI commands.

A plugin is any installed distribution that declares an entry point in the group
``raft_diffusion.plugins`` naming a zero-argument ``register()`` function::

    # pyproject.toml of your package
    [project.entry-points."raft_diffusion.plugins"]
    mypkg = "mypkg.raft_plugin:register"

    # mypkg/raft_plugin.py
    def register() -> None:
        import prompts, scorers
        from raft_diffusion.models import register_model_alias
        from raft_diffusion.plugins import register_command

        register_model_alias("my-sd", lambda: "/path/to/pipeline", "my fine-tuned SD")
        scorers.register("my-reward", my_reward_factory, "what it measures")
        prompts.register("my-prompts", my_prompt_loader, "what they ask for")
        register_command("my-tool", my_module.register, "what it does")

:func:`load_plugins` calls every ``register()`` once per process. The registries call it lazily
(on an unknown name, or when listing), so plugins cost nothing until they are needed; a plugin
that fails to load is one warning naming it and the error, never a crash. The bundled miniworld
(:mod:`raft_diffusion.miniworld.plugin`) registers itself this way.
"""

from __future__ import annotations

import argparse
import logging
from importlib import metadata
from typing import Callable

from raft_diffusion.errors import ConfigError
from raft_diffusion.registry import Registry

GROUP = "raft_diffusion.plugins"

logger = logging.getLogger(__name__)

#: What a plugin's CLI command provides: ``register(subparsers)`` adds its parser and sets ``func``.
CommandRegistrar = Callable[[argparse._SubParsersAction], None]

COMMANDS: Registry[None] = Registry("command", ConfigError)

_loaded = False


def register_command(name: str, register: CommandRegistrar, description: str = "") -> CommandRegistrar:
    """Add a ``raft-diffusion NAME`` sub-command: ``register(subparsers)`` adds its parser (as the
    modules of :mod:`raft_diffusion.commands` do). Duplicates are refused."""
    if not callable(register):
        raise ConfigError(f"command {name!r}: register must be a callable taking the subparsers, got {register!r}")
    return COMMANDS.register(name, register, description)


def entry_points() -> list[metadata.EntryPoint]:
    """The installed entry points of the :data:`GROUP` group, sorted by name."""
    return sorted(metadata.entry_points(group=GROUP), key=lambda ep: ep.name)


def load_plugins() -> list[str]:
    """Call every plugin's ``register()`` once per process; returns the names that loaded this call.

    A plugin that fails (import error, an exception in ``register()``) logs one warning and is skipped.
    """
    global _loaded
    if _loaded:
        return []
    _loaded = True  # before loading, so a plugin that lists a registry does not load plugins again
    loaded = []
    for ep in entry_points():
        try:
            ep.load()()
        except Exception as exc:  # a broken plugin must not stop the program
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            logger.warning("raft-diffusion plugin %r (%s) failed to load: %s%s; it is skipped (fix or uninstall it)",
                           ep.name, ep.value, type(exc).__name__, f": {first}" if first else "")
            continue
        loaded.append(ep.name)
        logger.debug("loaded raft-diffusion plugin %r (%s)", ep.name, ep.value)
    return loaded


def plugins_loaded() -> bool:
    """Whether :func:`load_plugins` already ran in this process."""
    return _loaded


__all__ = ["COMMANDS", "GROUP", "entry_points", "load_plugins", "plugins_loaded", "register_command"]
