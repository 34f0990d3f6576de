"""Every file pdist reads or writes, on a local disk or an object store, and where it caches what it computes once.

Paths are strings: a local path, or a URI of an object store that
``etils.epath`` (pdist's files, Orbax's metadata) and Orbax's TensorStore
(checkpoint arrays) both reach: :data:`SCHEMES`, ``gs://`` (Google Cloud
Storage). ``s3://`` is left out: with TensorFlow installed, epath sends it to
TensorFlow's filesystem layer, which has no S3 (it moved to tensorflow-io), and it
is untested. :func:`remote` tells a URI from a local path. All file
operations go through ``etils.epath``, which is what Orbax uses: where
TensorFlow is installed (pdist's case) a ``gs://`` path is served by
TensorFlow's GCS client, or by ``gcsfs`` with ``EPATH_USE_TF=false``.

Atomicity. Every file pdist writes besides checkpoints (samples, grids,
reports, summaries, TensorBoard events) goes through :func:`atomic`, so a run
killed at any moment leaves the old file or the new one, never half of one:

* on a local disk, a temporary file beside the target, renamed onto it once
  complete (``os.replace`` is atomic on POSIX filesystems);
* on an object store, the content is built in memory and sent in one upload:
  Cloud Storage makes an object visible only once its upload completes, and
  replaces an existing one in one step. Renames on object stores are copies
  followed by deletes, so pdist never relies on one there (Orbax marks a
  finished checkpoint with a ``commit_success`` file instead of a rename).

:func:`cache_dir` is the one cache folder (the digits evaluator's weights,
reference statistics): ``~/.cache/pdist``, or ``$PDIST_CACHE``; it is local.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re

import numpy as np
from etils import epath

SCHEMES = ("gs",)  # object stores a workdir may be on (TensorStore, epath and TensorBoard reach them)
_URI = re.compile(r"([a-zA-Z][\w+.-]*)://")


def scheme(path: str) -> str | None:
    """The URI scheme of ``path`` (``gs`` for ``gs://bucket/run``), or None for a local path."""
    match = _URI.match(str(path))
    return match.group(1).lower() if match else None


def remote(path: str) -> bool:
    return scheme(path) is not None


def absolute(path: str) -> str:
    """A local path made absolute (``~`` expanded); a URI unchanged."""
    path = str(path)
    return path if remote(path) else os.path.abspath(os.path.expanduser(path))


def exists(path: str) -> bool:
    return epath.Path(path).exists()


def isdir(path: str) -> bool:
    return epath.Path(path).is_dir()


def isfile(path: str) -> bool:
    return epath.Path(path).is_file()


def listdir(path: str) -> list[str]:
    """The names in folder ``path`` (an empty list if it does not exist)."""
    folder = epath.Path(path)
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def makedirs(path: str) -> None:
    epath.Path(path).mkdir(parents=True, exist_ok=True)


def rename(source: str, target: str) -> None:
    """Moves ``source`` to ``target`` (on an object store, a copy of every object and then a delete)."""
    epath.Path(source).rename(target)


def open_file(path: str, mode: str = "rb"):
    return epath.Path(path).open(mode)


def read_bytes(path: str) -> bytes:
    return epath.Path(path).read_bytes()


def read_text(path: str) -> str:
    return epath.Path(path).read_text()


def read_json(path: str):
    return json.loads(read_text(path))


def load_npz(path: str) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` file at ``path``."""
    with open_file(path) as f, np.load(f) as data:
        return {name: data[name] for name in data.files}


@contextlib.contextmanager
def atomic(path: str, mode: str = "wb"):
    """``with atomic(path) as f:`` writes ``f`` and puts it at ``path`` when the block ends without error."""
    path = str(path)
    if remote(path):
        buffer = io.StringIO() if "b" not in mode else io.BytesIO()
        yield buffer
        data = buffer.getvalue()
        epath.Path(path).write_bytes(data.encode() if isinstance(data, str) else data)
        return
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


def write_bytes(path: str, data: bytes) -> None:
    with atomic(path) as f:
        f.write(data)


def write_text(path: str, text: str) -> None:
    with atomic(path, "w") as f:
        f.write(text)


def write_json(path: str, obj) -> None:
    write_text(path, json.dumps(obj, indent=1))


def save_npz(path: str, **arrays) -> None:
    with atomic(path) as f:
        np.savez(f, **arrays)
