"""``python -m pdist.main --config=configs/digits.py --workdir=runs/digits [--config.a.b=value]``.

``config.mode`` picks the job: ``train`` (resumes from the workdir's newest
checkpoint), ``distill`` (progressive distillation of ``config.distill.teacher``,
resuming likewise), ``sample`` (``config.sample.*`` from a checkpoint),
``eval`` (``config.eval.*``: sample quality, and optionally NLL, of a checkpoint)
``edit`` (``config.edit.*``: test images edited into other classes) or
``show`` (the resolved config: every key, its default and what it is for; no
workdir needed).

The same command runs on every host of a multi-process run; ``--distributed``,
``--coordinator_address``, ``--num_processes`` and ``--process_id`` say how
to join it (:mod:`pdist.runtime.multihost`; ``launch/`` has the scripts).

Exit status: 0 when the job is done; 2 with one sentence on bad input
(flags, config keys and values, datasets, checkpoints, teachers), found before
anything is compiled or written; 1 with one sentence when the loss or
gradient norm became NaN or inf; 128 + the signal number after SIGTERM or
SIGINT, once the checkpoint at the current step is saved. Rerunning the same
command resumes in every case.
"""

from __future__ import annotations

import gc
import os
import re
import shlex
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

from pdist.errors import ConfigError, InputError, NonFiniteError, Preempted
from pdist.runtime import console, preemption


def define_flags(fv: flags.FlagValues, argv: list[str] | None = None) -> None:
    """Defines pdist's flags on ``fv``; the ``--config.*`` overrides are read from ``argv`` (default sys.argv)."""
    config_flags.DEFINE_config_file(
        "config", None, "A file in configs/ returning an ml_collections config.", flag_values=fv, sys_argv=argv
    )
    flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and samples go.", flag_values=fv)
    flags.DEFINE_enum(
        "distributed",
        "auto",
        ["auto", "on", "off"],
        "Join a multi-process run (jax.distributed); see pdist.runtime.multihost.",
        flag_values=fv,
    )
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).", flag_values=fv)
    flags.DEFINE_integer("num_processes", None, "Processes in the run (default: from the cluster).", flag_values=fv)
    flags.DEFINE_integer("process_id", None, "This process's index (default: from the cluster).", flag_values=fv)
    flags.mark_flags_as_required(["config"], flag_values=fv)  # --workdir: every mode but show (run checks)


define_flags(flags.FLAGS)


def parse(argv: list[str], fv: flags.FlagValues = flags.FLAGS) -> list[str]:
    """Parses the command line into ``fv``; a bad flag or config override raises ConfigError (one sentence)."""
    try:
        rest = fv(argv)
    except (flags.Error, KeyError, AttributeError, TypeError, ValueError, OSError, SyntaxError, ImportError) as e:
        raise ConfigError(_flag_sentence(argv, e)) from None
    _check_loaded(fv)
    return rest


def _check_loaded(fv: flags.FlagValues) -> None:
    """ml_collections defers a config file's load errors until the config is first used; this uses it now."""
    file = config_flags.get_config_filename(fv["config"])
    try:
        fv.config.mode  # noqa: B018 (a config that failed to load raises here)
    except Exception as e:
        raise ConfigError(_load_sentence(file, e)) from None


def _load_sentence(file: str, error: Exception) -> str:
    """What is wrong with the config file ``file`` (``path[:variant]``) that raised ``error`` when loaded."""
    path = file.split(":", 1)[0]
    if not os.path.isfile(path):
        what = "is a folder" if os.path.isdir(path) else "does not exist"
        return f"--config={file}: {path} {what}; pass a config file such as configs/digits.py."
    cause = " ".join(str(error).split())[:200] or "no message"
    return (
        f"--config={file} could not be loaded ({type(error).__name__}: {cause.rstrip('.')}); fix the file or pass "
        "another, such as configs/digits.py."
    )


def _flag_sentence(argv: list[str], error: Exception) -> str:
    from pdist import config as config_lib

    file = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if file is not None:
        try:
            config = config_lib.from_file(*file.split(":", 1))
        except Exception as e:
            return _load_sentence(file, e)
        for arg in argv:
            m = re.fullmatch(r"--config\.([\w.]+)(=.*)?", arg)
            if m:
                config_lib.check_key(config, m.group(1))
    text = " ".join(str(error.args[0] if isinstance(error, KeyError) and error.args else error).split())
    text = text or type(error).__name__
    return f"{text.rstrip('.')}; fix that flag ({SHOW} lists every config key with its default)."


SHOW = "python -m pdist.main --config=FILE --config.mode=show"


class _QuietOrbax:
    """Drops Orbax's per-save INFO chatter from the log; its warnings and errors still show."""

    def filter(self, record) -> bool:
        return record.levelno > 20 or "/orbax/" not in record.pathname


def _stop(status: int, message: str):
    """Prints ``message`` and exits at once: writers are flushed and saves waited for by now, and leftover
    background reads of a damaged checkpoint must not print tracebacks after the message."""
    logging.flush()
    print(message, file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(status)


def _parse_or_stop(argv: list[str]) -> list[str]:
    try:
        return parse(argv)
    except ConfigError as e:
        _stop(*outcome(e))


def run(fv: flags.FlagValues = flags.FLAGS) -> None:
    """Joins the multi-process run the flags ask for, then runs the job ``fv.config.mode`` names."""
    from pdist.runtime import multihost

    began = time.time()
    multihost.initialize(
        fv.distributed, coordinator_address=fv.coordinator_address, num_processes=fv.num_processes,
        process_id=fv.process_id,
    )  # fmt: skip
    import jax

    from pdist import jobs

    config, workdir = fv.config, fv.workdir
    if workdir is None and config.mode != "show":
        raise ConfigError(
            f"--workdir is not set; pass the folder mode {config.mode!r} writes to (--workdir=runs/NAME), or "
            "--config.mode=show to see the config."
        )
    console.enable(jax.process_index() == 0)
    given = frozenset(config_flags.get_override_values(fv["config"]))
    if config.mode == "show":
        jobs.run(config, workdir, given)
        return
    with preemption.guard():
        jobs.run(config, workdir, given)
    console.finish(time.time() - began, next_commands(config, config_flags.get_config_filename(fv["config"]), workdir))


def next_commands(config, config_file: str, workdir: str) -> list[str]:
    """What to run after this job, each a command that works for the run that just ended: more samples,
    distillation (guided distillation for a teacher trained with a null class), evaluation, ``pdist.load``."""
    q = shlex.quote
    main = f"python -m pdist.main --config={q(config_file)} --workdir={q(workdir)}"
    load = f"python -c \"import pdist; print(pdist.load('{workdir}').sample(16).shape)\""
    from pdist.spec import has_null_class  # a job has run: JAX is loaded already

    guided = has_null_class(config)
    low, high = config.distill.guidance_min, config.distill.guidance_max  # the weights a guided model is used at
    middle = f"{(low + high) / 2:g}"
    weights = f"{low:g},{middle},{high:g}"
    if config.mode == "train":
        out = [f"{main} --config.mode=sample --config.sample.num_steps=16"
               + (f" --config.sample.guidance={middle}" if guided else "")]  # fmt: skip
        distill = _guided_config(config_file) if guided else _distill_config(config_file)
        if distill:
            out.append(
                f"python -m pdist.main --config={q(distill)} --workdir={q(workdir.rstrip('/') + '_distill')} "
                f"--config.distill.teacher={q(workdir)}{_start_steps(distill, config)}"
            )
        out.append(f"{main} --config.mode=eval" + (f" --config.eval.guidance={weights}" if guided else ""))
        return [*_inception(config, out), load]
    if config.mode == "distill":  # the student samples and evaluates with its own steps by default
        if config.distill.method == "guided":  # it takes the weight as an input, in its range
            commands = [f"{main} --config.mode=sample --config.sample.guidance={middle}",
                        f"{main} --config.mode=eval --config.eval.guidance={weights}"]  # fmt: skip
        else:
            commands = [f"{main} --config.mode=sample", f"{main} --config.mode=eval"]
        return [*_inception(config, commands), load]
    return [load] if config.mode == "sample" else []  # show: nothing


def _start_steps(distill_file: str, teacher) -> str:
    """``--config.distill.start_steps=N`` where a discrete-time teacher's T does not hold the distillation config's
    first grid: the largest power of two below it that divides T (the rounds halve down to 1), else ""."""
    from pdist import config as config_lib

    T = teacher.diffusion.num_timesteps
    start = config_lib.from_file(*distill_file.split(":", 1)).distill.start_steps
    if T is None or T % start == 0:
        return ""
    n = start
    while n > 1 and T % n:
        n //= 2
    return f" --config.distill.start_steps={n}"


def _inception(config, commands: list[str]) -> list[str]:
    """An eval command on a dataset scored with the FID Inception needs its weights converted once: that
    command first, and the eval given the file."""
    from pdist.evaluation.evaluators import resolve

    if resolve(config.eval.evaluator, config.data.name) != "inception" or config.eval.inception_weights:
        return commands
    convert = "python -m pdist.interop.pytorch_fid pt_inception-2015-12-05-6726825d.pth inception.npz"
    out = [f"{c} --config.eval.inception_weights=inception.npz" if "--config.mode=eval" in c else c for c in commands]
    i = next(i for i, c in enumerate(out) if "--config.mode=eval" in c)
    return [*out[:i], convert, *out[i:]]


def _guided_config(config_file: str) -> str | None:
    """The guided-distillation config of a teacher trained with a null class: ``X_guided.py`` beside ``X.py``,
    or ``P.py`` itself for its ``teacher`` variant (``configs/imagenet64_guided.py:teacher``); None if none."""
    path, _, variant = config_file.partition(":")
    if variant == "teacher":
        return path
    stem = path[:-3] if path.endswith(".py") else path
    return f"{stem}_guided.py" if not variant and os.path.isfile(f"{stem}_guided.py") else None


def _distill_config(config_file: str) -> str | None:
    """The distillation config beside a teacher's: ``X_distill.py`` for ``X.py``, or ``P_distill.py:X`` (the
    teacher as its variant, as ``configs/digits_distill.py:digits_cond``); None if there is none."""
    path, _, variant = config_file.partition(":")
    folder, name = os.path.split(path)
    stem = name[:-3] if name.endswith(".py") else name
    if variant:
        return None
    if os.path.isfile(os.path.join(folder, f"{stem}_distill.py")):
        return os.path.join(folder, f"{stem}_distill.py")
    prefix = os.path.join(folder, stem.split("_")[0])
    if prefix.endswith(stem) or not os.path.isfile(f"{prefix}_distill.py"):
        return None
    from pdist import config as config_lib

    try:  # a distillation config that takes its teacher as the variant
        config_lib.from_file(f"{prefix}_distill.py", stem)
    except Exception:
        return None
    return f"{prefix}_distill.py:{stem}"


def outcome(error: Exception) -> tuple[int, str]:
    """The exit status and the message of a run that ``error`` ended (any other exception is re-raised)."""
    if isinstance(error, InputError):
        return 2, f"error: {error}"
    if isinstance(error, NonFiniteError):
        return 1, f"error: {error}"
    if isinstance(error, Preempted):
        return 128 + error.signum, str(error)
    raise error


def invoke(args: list[str]) -> tuple[int, str, flags.FlagValues]:
    """``python -m pdist.main ARGS`` through the same parse, job and outcome in this process:
    ``(exit status, its one-line message or "", the parsed flags)``. :func:`cli` prints the message."""
    argv = ["pdist.main", *args]
    fv = flags.FlagValues()
    define_flags(fv, argv)
    try:
        parse(argv, fv)
        run(fv)
    except (InputError, NonFiniteError, Preempted) as e:
        return (*outcome(e), fv)
    return 0, "", fv


def cli(args: list[str]) -> int:
    """``python -m pdist.main ARGS`` in this process, for a notebook or a script: the same job, output, message
    and exit status (returned), and what it compiled stays compiled for what runs next here. The libraries'
    notices are silenced as on the command line."""
    console.quiet()
    status, message, _ = invoke(list(args))
    if message:
        print(message, file=sys.stderr, flush=True)
    return status


def main(argv):
    logging.get_absl_handler().addFilter(_QuietOrbax())
    if not flags.FLAGS["verbosity"].present:  # -v / --verbosity brings the libraries' logs back
        console.quiet()
    if len(argv) > 1:
        _stop(2, f"error: unexpected arguments {argv[1:]}; the options are --config, --workdir and --config.*.")
    try:
        run()
    except (InputError, NonFiniteError, Preempted) as e:
        _stop(*outcome(e))


def fewer_collections() -> None:
    """Python's cycle collector with a young generation of 50,000 objects instead of 700, for a process that traces
    and compiles programs (the command line, the tests' workers and scripts). At the default thresholds (700, 10,
    10) a 20-step run of a small digits UNet spent 2.2 s of its 27 CPU-s in collections, 0.4 s with this; a test
    worker over tests/test_guided_distill.py 7.0 s, 1.4 s with this (docs/benchmarks.md, stop 55)."""
    gc.set_threshold(50_000, 50, 1_000)


def usage() -> str:
    """``--help``: this module's description as plain text, and the flags."""
    text = re.sub(r"``([^`]+)``", r"\1", __doc__).replace(":mod:", "")
    text = re.sub(r"`([^`]+)`", r"\1", text)
    return (
        f"{text.strip()}\n\nFlags:\n"
        "  --config=FILE[:VARIANT]   a config file (configs/); --config.KEY=VALUE overrides a key\n"
        "  --workdir=FOLDER          where the job writes (every mode but show)\n"
        "  --distributed=auto|on|off, --coordinator_address, --num_processes, --process_id: multi-process runs\n"
        "  -v 0 (--verbosity)        the libraries' logs too\n"
        f"\nEvery config key, its default and what it is for: {SHOW}\n"
    )


if __name__ == "__main__":
    fewer_collections()
    if any(a in ("--help", "-h", "--helpshort", "--helpfull", "-?") for a in sys.argv[1:]):
        print(usage())
        sys.exit(0)
    app.run(main, flags_parser=_parse_or_stop)
