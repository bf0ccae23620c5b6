"""Sub-commands of the ``raft-diffusion`` CLI, one module each.

Every module here defines ``register(subparsers) -> None``, which adds its parser and sets
``func=run`` (``run(args) -> int``). :mod:`raft_diffusion.cli` discovers them, so adding a
command is adding a file. Modules import heavy libraries inside ``run`` only. Another package
adds a command with :func:`raft_diffusion.plugins.register_command` (the miniworld's is one).
"""
