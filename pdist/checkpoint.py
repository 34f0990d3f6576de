"""Orbax checkpoints: the train state pytree plus JSON metadata.

A checkpoint directory ``<workdir>/checkpoints/<step>/`` holds ``state``
(step, params, EMA params, optimizer state) and ``metadata`` (the config as a
dict, the step, the distillation round and the student's sampling steps).
Saves are asynchronous; the newest ``keep`` are kept. :func:`locate` accepts a
workdir, its ``checkpoints`` folder or one step's folder, so a user can point
:func:`pdist.load` at whatever they have.
"""

from __future__ import annotations

import os
import re

import orbax.checkpoint as ocp

CHECKPOINTS = "checkpoints"


class CheckpointNotFoundError(FileNotFoundError):
    pass


class Checkpointer:
    """One wrapper around ``ocp.CheckpointManager`` for saving, finding and restoring."""

    def __init__(self, directory: str, *, keep: int = 3, asynchronous: bool = True, create: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=asynchronous, create=create)
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "metadata"))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state, metadata: dict) -> None:
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), metadata=ocp.args.JsonSave(metadata)),
            force=True,
        )

    def metadata(self, step: int | None = None) -> dict:
        step = self._step(step)
        return self._manager.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))["metadata"]

    def restore(self, abstract_state, step: int | None = None):
        """(state, metadata) of ``step`` (default: the newest), laid out like ``abstract_state``."""
        step = self._step(step)
        out = self._manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), metadata=ocp.args.JsonRestore()),
        )
        return out["state"], out["metadata"]

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

    def _step(self, step: int | None) -> int:
        if step is None:
            step = self.latest_step()
        if step is None or step not in self.all_steps():
            raise CheckpointNotFoundError(
                f"No checkpoint{'' if step is None else f' at step {step}'} in {self.directory}; "
                f"train first or pass a folder holding one (steps here: {self.all_steps() or 'none'})."
            )
        return step


def locate(path: str) -> tuple[str, int | None]:
    """(checkpoints directory, step or None for the newest) for a workdir, checkpoints dir or step dir.

    A distillation workdir stands for its newest round's student.
    """
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        raise CheckpointNotFoundError(f"{path} does not exist; pass a training workdir or a checkpoint folder.")
    if os.path.isdir(os.path.join(path, CHECKPOINTS)):
        return os.path.join(path, CHECKPOINTS), None
    rounds = sorted(
        n for n in os.listdir(path) if re.fullmatch(r"round_\d+_\d+steps", n) and _has_steps(path, n, CHECKPOINTS)
    )
    if rounds:
        return os.path.join(path, rounds[-1], CHECKPOINTS), None
    name = os.path.basename(path)
    if re.fullmatch(r"\d+", name) and os.path.isdir(os.path.join(path, "state")):
        return os.path.dirname(path), int(name)
    return path, None


def _has_steps(*parts: str) -> bool:
    folder = os.path.join(*parts)
    return os.path.isdir(folder) and any(re.fullmatch(r"\d+", n) for n in os.listdir(folder))
