"""Writing files whole or not at all, and where pdist caches what it computes once.

Every file pdist writes besides checkpoints (samples, grids, reports,
summaries) goes through :func:`atomic`: a temporary file beside the target,
renamed onto it once complete, so a run killed at any moment leaves the old
file or the new one, never half of one.

:func:`cache_dir` is the one cache folder (the digits evaluator's weights,
reference statistics): ``~/.cache/pdist``, or ``$PDIST_CACHE``.
"""

from __future__ import annotations

import contextlib
import json
import os

import numpy as np


@contextlib.contextmanager
def atomic(path: str, mode: str = "wb"):
    """``with atomic(path) as f:`` writes ``f`` and puts it at ``path`` when the block ends without error."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, mode) as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def cache_dir(*parts: str) -> str:
    """``$PDIST_CACHE`` (default ``~/.cache/pdist``), joined with ``parts``."""
    return os.path.join(os.environ.get("PDIST_CACHE", os.path.expanduser("~/.cache/pdist")), *parts)


def write_text(path: str, text: str) -> None:
    with atomic(path, "w") as f:
        f.write(text)


def write_json(path: str, obj) -> None:
    write_text(path, json.dumps(obj, indent=1))


def save_npz(path: str, **arrays) -> None:
    with atomic(path) as f:
        np.savez(f, **arrays)
