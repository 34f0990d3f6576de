"""The layout of a workdir: every path pdist reads or writes under it is named here.

A teacher's workdir::

    checkpoints/<step>/              Orbax: state and metadata (pdist.runtime.checkpoint)
    grids/step_<step>.png            sample grids during training
    samples.npz, samples.png         the final samples
    samples/<name>.npz|png           --config.mode=sample
    eval/<tag>/                      --config.mode=eval (tag: the checkpoint's run or round, and step)
    events.out.tfevents.*            TensorBoard (read back by :func:`scalars`)

A distillation's workdir::

    teacher_<S>steps.npz                       the teacher's S-step samples of the fixed noise
    round_<r>_<N>steps/checkpoints/<update>/   round r's N-step student
    round_<r>_<N>steps/round.json, samples.npz its report and fixed-noise samples; TensorBoard events
    summary.json, summary.md, rounds.png

:func:`locate` turns whatever a user points at (a workdir, its checkpoints
folder, one step's folder, a distillation workdir, one round) into a
checkpoints folder and a step.
"""

from __future__ import annotations

import glob
import os
import re

import numpy as np

from pdist.errors import InputError

CHECKPOINTS = "checkpoints"
ROUND = re.compile(r"round_(\d+)_(\d+)steps")
EDITS = "edits"  # --config.mode=edit's grids and npz files
SAMPLES = "samples"  # samples.npz and samples.png of a run; samples/ of the sample command; a round's samples.npz
ROUND_REPORT = "round.json"
SUMMARY = "summary"  # summary.json and summary.md
ROUNDS_PNG = "rounds.png"
EVENTS = "events.out.tfevents.*"  # TensorBoard event files, one per process start


class CheckpointNotFoundError(InputError, FileNotFoundError):
    pass


def check(path: str) -> None:
    """One sentence (InputError) unless ``path`` is a folder this process can write, or can create."""
    if re.match(r"[a-zA-Z][\w+.-]*://", path):
        raise InputError(
            f"--workdir={path} is on another filesystem, which pdist cannot write yet; pass a local folder (a "
            "bucket mounted with gcsfuse works)."
        )
    absolute = os.path.abspath(os.path.expanduser(path))
    existing = absolute
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = "is a file" if existing == absolute else f"is below {existing}, which is a file"
        raise InputError(f"--workdir={path} {where}; pass a folder (it is created if missing).")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(
            f"--workdir={path} cannot be written ({existing} is read-only to this user); pass a folder "
            "you can write to."
        )


def checkpoints(root: str) -> str:
    return os.path.join(root, CHECKPOINTS)


def step_folder(checkpoints_dir: str, step: int) -> str:
    return os.path.join(checkpoints_dir, str(step))


def grids(root: str) -> str:
    return os.path.join(root, "grids")


def grid(root: str, step: int) -> str:
    return os.path.join(grids(root), f"step_{step:08d}.png")


def samples_dir(root: str) -> str:
    return os.path.join(root, SAMPLES)


def edits_dir(root: str) -> str:
    return os.path.join(root, EDITS)


def eval_dir(root: str, checkpoints_dir: str, step: int) -> str:
    """``eval/<tag>/``, the tag naming the evaluated checkpoint's run (or round) and step."""
    return os.path.join(root, "eval", f"{os.path.basename(os.path.dirname(checkpoints_dir))}_step{step}")


def round_name(index: int, steps: int) -> str:
    return f"round_{index:02d}_{steps}steps"


def round_dir(root: str, index: int, steps: int) -> str:
    return os.path.join(root, round_name(index, steps))


def teacher_samples(root: str, steps: int) -> str:
    """The distillation's first target: the teacher's ``steps``-step samples of the fixed noise."""
    return os.path.join(root, f"teacher_{steps}steps.npz")


def locate(path: str) -> tuple[str, int | None]:
    """(checkpoints folder, step or None for the newest) for a workdir, checkpoints folder or step folder.

    A distillation workdir stands for its newest round's student.
    """
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        raise CheckpointNotFoundError(f"{path} does not exist; pass a training workdir or a checkpoint folder.")
    if os.path.isdir(checkpoints(path)):
        return checkpoints(path), None
    rounds = sorted(
        n for n in os.listdir(path) if ROUND.fullmatch(n) and _has_steps(checkpoints(os.path.join(path, n)))
    )
    if rounds:
        return checkpoints(os.path.join(path, rounds[-1])), None
    name = os.path.basename(path)
    if re.fullmatch(r"\d+", name) and os.path.isdir(os.path.join(path, "state")):
        return os.path.dirname(path), int(name)
    return path, None


def _has_steps(folder: str) -> bool:
    return os.path.isdir(folder) and any(re.fullmatch(r"\d+", n) for n in os.listdir(folder))


def scalars(directory: str, tag: str) -> tuple[np.ndarray, np.ndarray]:
    """Steps and values of the scalar ``tag`` in ``directory``'s TensorBoard event files (not its subfolders),
    one value per step: files are read in the order they were written, so a step logged again by a resumed
    run keeps its newest value."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    by_step = {}
    for path in sorted(glob.glob(os.path.join(directory, EVENTS)), key=_written):
        for event in EventFileLoader(path).Load():
            for value in event.summary.value:
                if value.tag == tag:
                    array = tensor_util.make_ndarray(value.tensor) if value.HasField("tensor") else value.simple_value
                    by_step[event.step] = float(np.asarray(array))
    steps = np.array(sorted(by_step), np.int64)
    return steps, np.array([by_step[s] for s in steps], np.float64)


def _written(path: str) -> tuple[float, str]:
    """An event file's creation time, from its name (``events.out.tfevents.<seconds>.<host>...``)."""
    try:
        return float(os.path.basename(path).split(".")[3]), path
    except (IndexError, ValueError):
        return os.path.getmtime(path), path
