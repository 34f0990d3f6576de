"""The layout of a workdir: every path pdist reads or writes under it is named here.

A teacher's workdir::

    checkpoints/<step>/              Orbax: state and metadata (pdist.runtime.checkpoint)
    grids/step_<step>.png            sample grids during training
    samples.npz, samples.png         the final samples
    samples/<name>.npz|png           --config.mode=sample
    eval/<tag>/                      --config.mode=eval (tag: the checkpoint's run or round, and step)
    events.out.tfevents.*            TensorBoard (pdist.runtime.events)

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

import os
import re

from pdist.errors import InputError
from pdist.runtime import files

CHECKPOINTS = "checkpoints"
ROUND = re.compile(r"round_(\d+)_(\d+)steps")
EDITS = "edits"  # --config.mode=edit's grids and npz files
SAMPLES = "samples"  # samples.npz and samples.png of a run; samples/ of the sample command; a round's samples.npz
ROUND_REPORT = "round.json"
SUMMARY = "summary"  # summary.json and summary.md
ROUNDS_PNG = "rounds.png"


class CheckpointNotFoundError(InputError, FileNotFoundError):
    pass


def check_writable(path: str) -> None:
    """One sentence (InputError) unless ``path`` is a folder this process can write, or can create.

    A ``gs://`` URI is checked for what can be checked without writing: that its bucket exists and answers
    (credentials, network) and that it is not a file."""
    scheme = files.scheme(path)
    if scheme is not None:
        if scheme not in files.SCHEMES:
            raise InputError(
                f"--workdir={path} is on a filesystem pdist cannot write ({scheme}://); pass a local folder or a "
                f"{' or '.join(s + '://' for s in files.SCHEMES)} URI."
            )
        bucket = f"{scheme}://{path.split('://', 1)[1].split('/')[0]}"
        try:
            found, is_file = files.isdir(bucket), files.isfile(path)
        except Exception as e:  # the object store's client raises its own types (no credentials, no network)
            text = (str(e).splitlines() or [""])[0][:160]
            raise InputError(
                f"--workdir={path} cannot be reached ({type(e).__name__}: {text}); check the bucket's name and "
                "your credentials (gcloud auth application-default login)."
            ) from None
        if not found:
            raise InputError(
                f"--workdir={path}: the bucket {bucket} does not exist or these credentials cannot list it; create "
                "it (gcloud storage buckets create) or check its name."
            )
        if is_file:
            raise InputError(f"--workdir={path} is a file; pass a folder (it is created if missing).")
        return
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


def checkpoints(workdir: str) -> str:
    return os.path.join(workdir, CHECKPOINTS)


def step_folder(checkpoints_dir: str, step: int) -> str:
    return os.path.join(checkpoints_dir, str(step))


def grids(workdir: str) -> str:
    return os.path.join(workdir, "grids")


def grid(workdir: str, step: int) -> str:
    return os.path.join(grids(workdir), f"step_{step:08d}.png")


def samples_dir(workdir: str) -> str:
    return os.path.join(workdir, SAMPLES)


def edits_dir(workdir: str) -> str:
    return os.path.join(workdir, EDITS)


def eval_dir(workdir: str, checkpoints_dir: str, step: int) -> str:
    """``eval/<tag>/``, the tag naming the evaluated checkpoint's run (or round) and step."""
    return os.path.join(workdir, "eval", f"{os.path.basename(os.path.dirname(checkpoints_dir))}_step{step}")


def round_name(index: int, steps: int) -> str:
    return f"round_{index:02d}_{steps}steps"


def round_dir(workdir: str, index: int, steps: int) -> str:
    return os.path.join(workdir, round_name(index, steps))


def teacher_samples(workdir: str, steps: int) -> str:
    """The distillation's first target: the teacher's ``steps``-step samples of the fixed noise."""
    return os.path.join(workdir, f"teacher_{steps}steps.npz")


def locate(path: str) -> tuple[str, int | None]:
    """(checkpoints folder, step or None for the newest) for a workdir, checkpoints folder or step folder.

    A distillation workdir stands for its newest round's student.
    """
    path = files.absolute(path)
    if not files.isdir(path):
        raise CheckpointNotFoundError(f"{path} does not exist; pass a training workdir or a checkpoint folder.")
    names = files.listdir(path)
    if CHECKPOINTS in names and files.isdir(checkpoints(path)):
        return checkpoints(path), None
    rounds = [n for n in names if ROUND.fullmatch(n) and _has_steps(checkpoints(os.path.join(path, n)))]
    if rounds:
        return checkpoints(os.path.join(path, rounds[-1])), None
    name = os.path.basename(path.rstrip("/"))
    if re.fullmatch(r"\d+", name) and "state" in names:
        return os.path.dirname(path.rstrip("/")), int(name)
    return path, None


def _has_steps(folder: str) -> bool:
    return any(re.fullmatch(r"\d+", n) for n in files.listdir(folder))
