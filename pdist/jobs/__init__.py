"""The jobs ``python -m pdist.main`` runs, one module per ``config.mode``.

Each module's ``run(config, workdir)`` does one job: ``train`` (a teacher),
``distill`` (every round of ``config.distill.method``), ``sample`` (images
from a checkpoint), ``eval`` (``evaluate``: sample quality and NLL of a
checkpoint) and ``edit`` (images of one class edited into others). Modules
are imported when their job runs, so that the math core and ``pdist.load``
stay light. :func:`validate` checks a config for its job: the shared sections
(:mod:`pdist.jobs.sections`), then the job module's own ``validate(config)``
where it has settings of its own. :func:`run` reads the checkpoint of the modes that take one, and runs the
job's ``preflight(config, workdir)`` where it reads other inputs (a dataset, a teacher), so that a missing input
is one sentence before the job's summary is printed.
"""

from __future__ import annotations

import importlib

import ml_collections

from pdist.errors import check_one_of

# config.mode -> its module in pdist.jobs
JOBS = {"train": "train", "distill": "distill", "sample": "sample", "eval": "evaluate", "edit": "edit", "show": "show"}
# the modes that read config.<mode>.checkpoint (default: the workdir's newest)
READS_A_CHECKPOINT = ("sample", "eval", "edit")


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks ``config`` for the job ``config.mode`` names, before anything is built or compiled; ConfigError
    with one sentence on the first problem."""
    from pdist.jobs import sections

    check_one_of(config.mode, JOBS, "mode")
    sections.validate(config)
    check = getattr(job(config.mode), "validate", None)
    if check is not None:
        check(config)


def job(mode: str):
    """The module of the job ``mode``."""
    return importlib.import_module(f"pdist.jobs.{JOBS[mode]}")


def run(config: ml_collections.ConfigDict, workdir: str, given: frozenset[str] = frozenset()):
    """Checks ``config`` and the workdir, says what the job will do (:func:`summary`), then runs the job
    ``config.mode`` names in this process (which has joined the run). ``given``: the keys the command line set
    (``sample.num_steps``, ...); the others may follow the model (:func:`own_sampling`)."""
    from pdist.pretrained import stored
    from pdist.runtime import console, layout

    if config.mode == "show":  # what the config holds, even a config that other modes would refuse
        return job("show").run(config, workdir)
    validate(config)
    if config.mode == "distill" and job("distill").adopt_imported_teacher(config, given):
        validate(config)  # the teacher's network and diffusion, from another project (pdist.interop)
    layout.check_writable(workdir)
    if config.mode in READS_A_CHECKPOINT:  # it is there and readable, or one sentence before anything is said
        model_config, metadata = stored(config[config.mode].checkpoint or workdir)
        if own_sampling(config, model_config, metadata, given):
            validate(config)
    check = getattr(job(config.mode), "preflight", None)
    if check is not None:  # the other inputs a job reads (dataset, teacher): refused before anything is said
        check(config, workdir)
    console.say(summary(config, workdir))
    return job(config.mode).run(config, workdir)


def own_sampling(config: ml_collections.ConfigDict, model_config, metadata: dict, given=frozenset()) -> bool:
    """Sample and eval modes on a distilled student (``model_config`` and ``metadata``: its checkpoint's,
    :func:`pdist.pretrained.stored`) sample it as it was distilled to be sampled, as ``pdist.load(...).sample()``
    does: DDIM with its own step count on its grid, unless ``given`` holds ``sample.num_steps`` / ``sample.grid``
    (sample mode) or ``eval.samplers`` (eval mode); asked for another sampler, it says in one line what the
    student was distilled for. Changes ``config`` in place; True if it did.
    """
    from pdist.runtime import console

    steps = metadata.get("sampling_steps")
    if config.mode not in ("sample", "eval") or steps is None:  # a teacher: the config's sampler
        return False
    grid = model_config.sample.grid
    own = f"ddim:{steps}:{grid}"
    changed = False
    if config.mode == "sample":
        s = config.sample
        if "sample.num_steps" not in given:
            s.num_steps, changed = steps, True
        if "sample.grid" not in given:
            s.grid, changed = grid, True
        asked = f"{s.method}:{s.num_steps}:{s.grid}"
    else:
        if "eval.samplers" not in given:
            config.eval.samplers, changed = own, True
        asked = config.eval.samplers
    if asked != own:
        console.say(f"note: this student was distilled for {steps} DDIM steps on the {grid} grid ({own}); "
                    f"sampling it with {asked} as asked")  # fmt: skip
    return changed


def summary(config, workdir: str) -> str:
    """The job's first lines: what it does, on what, where it writes."""
    import jax

    import pdist
    from pdist.runtime import console

    data = config.data
    shape = f"{data.image_size}x{data.image_size}x{data.channels}"
    mode = config.mode
    if mode == "train":
        what = (
            f"train a teacher ({config.model.name}, {config.diffusion.parameterization}-parameterization) on "
            f"{data.name} {shape}, {config.train.num_steps:,} steps of batch {config.train.batch_size}"
        )
    elif mode == "distill":
        d = config.distill
        what = f"distill {d.teacher} ({d.method}) from {d.start_steps} sampling steps to {d.final_steps}"
    elif mode == "sample":
        s = config.sample
        steps = console.count(s.num_steps, "step")
        what = f"sample {s.num_samples} images from {s.checkpoint or workdir} ({s.method}, {steps})"
    elif mode == "eval":
        e = config.eval
        what = f"evaluate {e.checkpoint or workdir} ({e.samplers}; {e.num_samples} samples x {e.num_seeds} seeds)"
    else:
        into = f"classes {config.edit.targets}" if config.edit.targets else "every other class"
        what = f"edit {console.count(config.edit.num_images, 'image')} of {data.name} into {into}"
    devices = jax.devices()
    return (
        f"pdist {pdist.__version__}: {what}\n"
        f"on {console.count(len(devices), devices[0].platform.upper() + ' device')} in "
        f"{console.count(jax.process_count(), 'process', 'processes')}; writing to {workdir}"
    )
