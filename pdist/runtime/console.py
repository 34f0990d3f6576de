"""What a job shows in the terminal: a summary first, one progress line per long task, what it produced last.

- :func:`quiet` silences library noise at the default verbosity (JAX's TPU
  probe, TensorFlow's C++ notices, TFDS's warnings and bars, matplotlib's font
  cache, clu's hyperparameter dump); ``--verbosity=0`` (``-v 0``) or higher
  brings it all back.
- :class:`Progress` is one long task (a training phase, sampling, scoring):
  in a terminal one line rewritten in place (steps, rate, ETA, the loss);
  otherwise (CI, SLURM logs) a plain line every tenth of the task or minute,
  and always one at the end.
- :func:`produced` records what a job wrote; :func:`finish` prints it with the
  time taken and the next commands.

Only process 0 of a multi-process run prints. Everything goes to standard
output; errors stay on standard error (:mod:`pdist.main`).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import sys
import time

_state = {"enabled": True, "produced": [], "facts": []}
NOISY_LOGGERS = ("matplotlib", "tensorflow", "jax._src.xla_bridge", "h5py", "PIL")


def count(n: int, one: str, many: str | None = None) -> str:
    """``1 step``, ``2 steps``, ``1,000 images``: a number with its noun in the console's words."""
    return f"{n:,} {one if n == 1 else many or one + 's'}"


def quiet() -> None:
    """Silences library noise for this process. TensorFlow, when something first imports it (TFDS, clu's
    writers), is imported with the process's standard error closed (:class:`_QuietTensorFlow`): its C++ notices
    at import (oneDNN, absl's InitializeLog) ignore TF_CPP_MIN_LOG_LEVEL, and TF_ENABLE_ONEDNN_OPTS=0 would
    change its numerics. Not imported here: a command that stops at a bad input, or a job that reads no data and
    writes no TensorBoard events, never pays for it (about 4 CPU-s). Once per process (later calls do nothing)."""
    if _state.get("quiet"):
        return
    _state["quiet"] = True
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    if "tensorflow" not in sys.modules:
        sys.meta_path.insert(0, _QuietTensorFlow())
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    absl_logging.get_absl_handler().addFilter(_drop_library_warnings)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


@contextlib.contextmanager
def _no_stderr():
    """File descriptor 2 goes to /dev/null inside the block (C++ libraries write there directly)."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


class _QuietTensorFlow(importlib.abc.MetaPathFinder):
    """An import hook: the first import of ``tensorflow``, wherever it happens, runs with standard error closed
    (:func:`_no_stderr`); then the hook removes itself."""

    def find_spec(self, name, path, target=None):
        if name != "tensorflow" or name in sys.modules:
            return None
        sys.meta_path.remove(self)  # the other finders' spec (a look without importing keeps the hook: etils')
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is not None and spec.loader is not None:
            run = spec.loader.exec_module

            def exec_module(module):
                if self in sys.meta_path:
                    sys.meta_path.remove(self)
                with _no_stderr():
                    run(module)

            spec.loader.exec_module = exec_module
        return spec


_PDIST = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the pdist package, wherever installed


def _drop_library_warnings(record) -> bool:
    """Keeps pdist's warnings and every library's errors; drops the libraries' warnings (TFDS's missing
    dataset_info.json in a folder it is about to fill, Orbax's notes)."""
    return record.levelno >= logging.ERROR or os.path.abspath(record.pathname).startswith(_PDIST + os.sep)


def enable(on: bool) -> None:
    _state["enabled"] = on


def say(text: str = "") -> None:
    if _state["enabled"]:
        print(text, file=sys.stdout, flush=True)


def produced(label: str, path: str) -> None:
    """Records that the job wrote ``path`` (``label``: what it is); :func:`finish` lists them."""
    _state["produced"].append((label, path))


def fact(text: str) -> None:
    """Records a result worth a line at the end (the final loss, a score)."""
    _state["facts"].append(text)


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def finish(seconds: float, next_commands: list[str]) -> None:
    """The job's last lines: done, its results, what it wrote, and what to run next."""
    say(f"done in {duration(seconds)}" + (f": {'; '.join(_state['facts'])}" if _state["facts"] else ""))
    if _state["produced"]:
        width = max(len(label) for label, _ in _state["produced"])
        for label, path in _state["produced"]:
            say(f"  {label:<{width}}  {short(path)}")
    if next_commands:
        say("next:")
        for command in next_commands:
            say(f"  {command}")
    _state["produced"], _state["facts"] = [], []


def short(path: str) -> str:
    """``path`` relative to the working directory when it is below it (a URI, or a line holding one, as it is)."""
    if "://" in path:
        return path
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


class Progress:
    """One long task's progress: ``update(done, loss=...)`` as it goes, ``close()`` at the end. With no label it
    shows nothing."""

    def __init__(self, label: str | None, total: int, *, unit: str = "steps", done: int = 0, stream=None):
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream or sys.stdout
        self.shown = _state["enabled"] and label is not None
        self.live = self.shown and self.stream.isatty()
        self.began = time.time()
        self.first = None  # (done, time) at the first update: the rate leaves compilation out
        self.done = self.printed = done
        self.last_print = self.began
        self.fields: dict[str, float] = {}

    def update(self, done: int, **fields) -> None:
        now = time.time()
        self.done = done
        self.fields.update(fields)
        if self.first is None:
            self.first = (done, now)
        if not self.shown:
            return
        if self.live:
            if now - self.last_print >= 0.2:
                self._write("\r\x1b[K" + self._line(now), now)
        elif done < self.total and (done - self.printed >= max(1, self.total // 10) or now - self.last_print >= 60):
            self._write(self._line(now) + "\n", now)

    def close(self, **fields) -> None:
        now = time.time()
        self.fields.update(fields)
        if self.shown:
            took = duration(now - self.began)
            text = f"{self.label}  {self.done:,}/{self.total:,} {self.unit}{self._rate(now)}{self._fields()}  in {took}"
            self._write(("\r\x1b[K" if self.live else "") + text + "\n", now)
        self.shown = False

    def _write(self, text: str, now: float) -> None:
        self.stream.write(text)
        self.stream.flush()
        self.last_print, self.printed = now, self.done

    def _line(self, now: float) -> str:
        line = f"{self.label}  {self.done:,}/{self.total:,} {self.unit}{self._rate(now)}"
        if self.first is not None and self.done > self.first[0] and now > self.first[1]:
            rate = (self.done - self.first[0]) / (now - self.first[1])
            line += f"  ETA {duration((self.total - self.done) / rate)}"
        return line + self._fields()

    def _rate(self, now: float) -> str:
        """Units per second since the first update (which includes compiling)."""
        if self.first is None or self.done <= self.first[0] or now <= self.first[1]:
            return ""
        rate = (self.done - self.first[0]) / (now - self.first[1])
        return f"  {rate:,.0f} {self.unit}/s" if rate >= 1000 else f"  {rate:.3g} {self.unit}/s"

    def _fields(self) -> str:
        return "".join(f"  {k} {v:.4g}" for k, v in self.fields.items())
