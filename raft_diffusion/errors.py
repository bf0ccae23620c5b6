"""Exceptions shared by every package of the project.

All user-facing failures derive from :class:`RaftError`; the CLI turns them into a one-line
message and a non-zero exit. Messages name the offending value and the fix.
"""

from __future__ import annotations


class RaftError(Exception):
    """Base class of every error the project raises on purpose."""


class ConfigError(RaftError, ValueError):
    """A configuration value (file, field, CLI flag) is invalid."""


class ScorerError(RaftError, ValueError):
    """A scorer is unknown, cannot load its weights, or returned invalid rewards."""


class PromptError(RaftError, ValueError):
    """A prompt set is unknown, empty, missing or unreadable."""


class RankingError(RaftError, ValueError):
    """Rewards cannot be ranked (non-finite values, inconsistent groups)."""


class ModelError(RaftError, ValueError):
    """A model folder, hub id, LoRA file or adapter cannot be used."""


class RunError(RaftError, RuntimeError):
    """A run stopped: names the round and the cause; completed rounds stay on disk."""
