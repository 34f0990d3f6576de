"""Orbax checkpoints: the train state pytree plus JSON metadata.

A checkpoint directory ``<workdir>/checkpoints/<step>/`` holds ``state``
(step, params, EMA params, optimizer state) and ``metadata`` (JSON: the
config as a dict, the step, pdist's version, what the phase adds such as the
distillation round and the student's sampling steps; see
:mod:`pdist.runtime.phase`). Saves are asynchronous; the newest ``keep`` are
kept. Where checkpoints live is :mod:`pdist.runtime.layout`'s business.

The metadata also records the versions of the stack that wrote it
(:func:`versions`: jax, jaxlib, flax, optax, orbax-checkpoint, pdist);
restoring a checkpoint written by another release series of any of them
(:func:`series`: the first non-zero version number and those before it, so
0.10.x and 0.11.x differ, 2.x and 3.x differ) logs one warning line.

Integrity: Orbax writes each step into a temporary folder and renames it when
complete, so a save cut short (``kill -9``) leaves no step folder: it is
ignored, and removed when the run starts again. The metadata also holds a checksum of every array of the state
(:func:`fingerprint`), checked on restore: a truncated, zeroed or bit-flipped
file raises :class:`CheckpointCorruptError` naming the folder. With
``fallback``, :meth:`Checkpointer.resume` moves such a folder aside to
``<step>.corrupt`` (nothing is deleted) and resumes from the one before.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import logging
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from pdist.errors import InputError
from pdist.runtime import files
from pdist.runtime.layout import CheckpointNotFoundError


class CheckpointCorruptError(InputError):
    pass


STACK = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint")  # the packages whose versions a checkpoint records
_warned: set[str] = set()  # folders whose version warning was logged


@functools.cache
def versions() -> dict[str, str]:
    """The installed versions of :data:`STACK` and pdist."""
    import pdist

    out = {}
    for name in STACK:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return {**out, "pdist": pdist.__version__}


def series(version: str) -> tuple[int, ...]:
    """The part of ``version`` whose change may break compatibility: up to its first non-zero number."""
    numbers = [int(n) for n in re.findall(r"\d+", version)[:3]]
    for i, n in enumerate(numbers):
        if n:
            return tuple(numbers[: i + 1])
    return tuple(numbers)


def version_mismatch(saved: dict | None, installed: dict[str, str] | None = None) -> str:
    """``name saved -> installed`` for every package in another release series than the one that wrote the
    checkpoint (``saved``: its metadata's ``versions``); empty when they agree or nothing was recorded."""
    installed = versions() if installed is None else installed
    changed = [
        f"{name} {old} -> {installed[name]}"
        for name, old in sorted((saved or {}).items())
        if name in installed and series(old) != series(installed[name])
    ]
    return ", ".join(changed)


def _words_of(w, xp):
    """Two order-sensitive uint32 sums of the unsigned words ``w`` (``xp``: numpy or jax.numpy; both wrap modulo
    2**32, so they agree bit for bit)."""
    w = xp.ravel(w).astype(xp.uint32)
    position = xp.arange(1, w.size + 1, dtype=xp.uint32)
    return xp.stack([xp.sum(w, dtype=xp.uint32), xp.sum(w * position, dtype=xp.uint32)])


@jax.jit
def _words_on_devices(x: jax.Array) -> jax.Array:
    """:func:`_words_of` an array's bits where it lives (one small program per shape and dtype, which the leaves of
    a state mostly share: one program over the whole state took seconds to compile)."""
    if x.dtype != jnp.bool_:
        x = jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{x.dtype.itemsize * 8}"))
    return _words_of(x, jnp)


def _words(x) -> jax.Array | np.ndarray:
    """:func:`_words_of` an array's bits: with NumPy for an array in this process's memory (no program to compile:
    a state's leaves cost a compile each, about 2 s for a UNet's first save), on the devices otherwise (an
    array spread over processes, or on an accelerator)."""
    if isinstance(x, jax.Array) and not (x.is_fully_addressable and all(d.platform == "cpu" for d in x.devices())):
        return _words_on_devices(x)
    x = np.asarray(x)
    x = x.astype(jax.dtypes.canonicalize_dtype(x.dtype), copy=False)  # as JAX would place it (float64: float32)
    return _words_of(x if x.dtype == np.bool_ else x.view(f"uint{x.dtype.itemsize * 8}"), np)


def _silence_abandoned_reads() -> None:
    """When a restore fails, the reads Orbax abandoned fail again as unraisable exceptions (garbage-collected
    futures, callbacks into its closed event loop); the error is reported once, so those are dropped."""
    if getattr(sys.unraisablehook, "pdist", False):
        return

    def unraisable(u, previous=sys.unraisablehook):
        text = str(u.exc_value)
        if not (text.startswith("Encountered error while reading") or text == "Event loop is closed"):
            previous(u)

    unraisable.pdist = True
    sys.unraisablehook = unraisable


def fingerprint(state) -> str:
    """A checksum of every array in ``state`` (bits, shapes and order), computed in this process's memory or on the
    devices (:func:`_words`)."""
    shapes = repr([(x.shape, str(x.dtype)) for x in jax.tree.leaves(state)]).encode()
    words = jax.device_get([_words(x) for x in jax.tree.leaves(state)]) or [np.zeros((0,), np.uint32)]
    return hashlib.sha256(np.concatenate(words).tobytes() + shapes).hexdigest()[:32]


class Checkpointer:
    """One wrapper around ``ocp.CheckpointManager`` for saving, finding and restoring.

    Nothing is created on disk until the first :meth:`save`. ``writer``: this
    run saves here, so the temporary folders of saves that a killed run left
    behind are removed (a reader must not: a running job may be saving).
    """

    def __init__(self, directory: str, *, keep: int = 3, asynchronous: bool = True, writer: bool = False):
        self.directory = files.absolute(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=asynchronous,
            create=False,
            cleanup_tmp_directories=writer,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "metadata"))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state, metadata: dict) -> None:
        files.makedirs(self.directory)
        metadata = {**metadata, "versions": versions(), "checksum": fingerprint(state)}
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), metadata=ocp.args.JsonSave(metadata)),
            force=True,
        )

    def metadata(self, step: int | None = None) -> dict:
        step = self._step(step)
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))
        except Exception as e:  # Orbax and TensorStore raise many types for damaged files
            raise self._corrupt(step, e) from e
        return out["metadata"]

    def restore(self, abstract_state, step: int | None = None):
        """(state, metadata) of ``step`` (default: the newest), laid out like ``abstract_state``.

        Raises CheckpointCorruptError if the files cannot be read or the arrays
        do not match the checksum saved with them.
        """
        step = self._step(step)
        _silence_abandoned_reads()
        try:
            out = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), metadata=ocp.args.JsonRestore()
                ),
            )
        except Exception as e:
            raise self._corrupt(step, e) from e
        expected = out["metadata"].get("checksum")
        if expected is not None and fingerprint(out["state"]) != expected:
            raise self._corrupt(step, None)
        changed = version_mismatch(out["metadata"].get("versions"))
        if changed and self.directory not in _warned:
            _warned.add(self.directory)
            logging.warning(
                "%s was written by another release series of %s; if it misbehaves, install the versions it "
                "records (its metadata's 'versions') or see README's tested stack.",
                self.directory,
                changed,
            )
        return out["state"], out["metadata"]

    def resume(self, abstract_state, *, fallback: bool):
        """(state, metadata) of the newest checkpoint, or (None, {}) when there is none.

        A corrupt newest checkpoint raises, or with ``fallback`` is renamed to
        ``<step>.corrupt`` and the one before it is tried.
        """
        while (step := self.latest_step()) is not None:
            try:
                return self.restore(abstract_state, step)
            except CheckpointCorruptError as e:
                if not fallback:
                    raise CheckpointCorruptError(
                        f"{str(e)[:-1]}, or set config.train.fallback_checkpoint=True to do that automatically."
                    ) from e
                folder = os.path.join(self.directory, str(step))
                files.rename(folder, f"{folder}.corrupt")
                logging.warning("%s; moved it to %s.corrupt and trying the checkpoint before it.", e, folder)
                self._manager.reload()
        return None, {}

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

    def _corrupt(self, step: int, error: Exception | None) -> CheckpointCorruptError:
        folder = os.path.join(self.directory, str(step))
        if error is None:
            why = "its arrays do not match the checksum saved with them"
        else:
            text = (str(error).splitlines() or ["unreadable"])[0].split(". See ")[0][:160]
            why = f"{type(error).__name__}: {text}"
        earlier = [s for s in self.all_steps() if s < step]
        return CheckpointCorruptError(
            f"The checkpoint {folder} is corrupt or truncated ({why}); move it out of {self.directory} to use "
            f"{f'step {max(earlier)} instead' if earlier else 'none (there is no earlier one)'}."
        )

    def _step(self, step: int | None) -> int:
        if step is None:
            step = self.latest_step()
        if step is None or step not in self.all_steps():
            raise CheckpointNotFoundError(
                f"No checkpoint{'' if step is None else f' at step {step}'} in {self.directory}; "
                f"train first or pass a folder holding one (steps here: {self.all_steps() or 'none'})."
            )
        return step


def save_once(directory: str, step: int, state, metadata: dict) -> None:
    """One checkpoint written and finished before returning (an import, a workdir made outside training)."""
    ckpt = Checkpointer(directory, asynchronous=False, writer=True)
    try:
        ckpt.save(step, state, metadata)
        ckpt.wait()
    finally:
        ckpt.close()
