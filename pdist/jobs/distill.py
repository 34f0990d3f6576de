"""``--config.mode=distill``: every round of ``config.distill.method``, starting from ``config.distill.teacher``.

The teacher is loaded through :func:`pdist.pretrained.restore` and checked to
be the network this config builds. Each round of the method
(:data:`pdist.distillation.DISTILLERS`) is one phase of the train step
(:mod:`pdist.runtime.phase`) with the round's student loss, the frozen
teacher parameters passed into the compiled step as an argument, a fresh
optimizer whose schedule spans the round, and the student initialized as a
copy of the teacher; after the round the student becomes the next teacher.

Every report is computed from the same fixed noise
(``config.distill.fidelity_samples`` images, DDIM, ``config.sample.seed``):
the teacher's samples at the first round's teacher steps, then each student's
at its own steps, each the next round's target. The folders are
:mod:`pdist.runtime.layout`'s. Rerunning the command resumes: finished rounds
are read back, never retrained, and an interrupted round continues from its
newest checkpoint at the same update, with the same data order and step keys.
"""

from __future__ import annotations

import functools
import os

import jax
import ml_collections
import numpy as np

from pdist import build, data, images, rng
from pdist import config as config_lib
from pdist.distillation import DISTILLERS, Round
from pdist.errors import ConfigError, InputError, check_one_of, check_positive
from pdist.jobs import sections, train
from pdist.pretrained import restore, stored
from pdist.runtime import console, files, layout, phase
from pdist.runtime import mesh as mesh_lib
from pdist.runtime.step import init_state
from pdist.sampling import ImageSampler, Sampling
from pdist.spec import ModelSpec

# Keys of the teacher's config the student must share (the network's shapes are checked separately).
SHARED_KEYS = (
    "data.image_size",
    "data.channels",
    "diffusion.schedule",
    "diffusion.num_timesteps",
    "diffusion.parameterization",
    "diffusion.learned_variance",
    "diffusion.consistency_sigma_min",
    "model.name",
    "model.class_conditional",
)


class TeacherMismatchError(InputError, ValueError):
    pass


# What an imported teacher (pdist.interop) decides for its students, whatever the distill config file says: the
# network (config.model but its dropout) and the diffusion it was trained with, and the image shape.
ADOPTED = ("data.image_size", "data.channels", "data.num_classes", "diffusion.schedule",
           "diffusion.num_timesteps", "diffusion.parameterization", "diffusion.learned_variance",
           "diffusion.loss")  # fmt: skip


def adopt_imported_teacher(config: ml_collections.ConfigDict, given=frozenset()) -> bool:
    """For a teacher imported from another project (its metadata has ``source``), the students take its
    network and diffusion (Progressive Distillation's student copies its teacher's structure): ``config`` is
    changed in place, except where the command line (``given``) set a key, which must then agree with the
    teacher (one sentence otherwise). True if the teacher was an imported one."""
    teacher_config, metadata = stored(config.distill.teacher)
    if "source" not in metadata:
        return False
    keys = list(ADOPTED) + [f"model.{k}" for k in teacher_config.model if k != "dropout"]
    for key in keys:
        theirs = config_lib.get(teacher_config, key)
        if key in given and config_lib.get(config, key) != theirs:
            raise ConfigError(
                f"--config.{key}={config_lib.get(config, key)!r} disagrees with the imported teacher at "
                f"{config.distill.teacher}, whose {key} is {theirs!r}; its students take the teacher's network."
            )
        config_lib.set_value(config, key, theirs)
    return True


def validate(config: ml_collections.ConfigDict) -> None:
    """``config.distill`` and the method's settings, on top of what training checks."""
    sections.validate_training(config)
    settings = config.distill
    if not settings.teacher:
        raise ConfigError(
            "config.distill.teacher is not set; pass --config.distill.teacher=PATH (a teacher workdir or checkpoint)."
        )
    check_one_of(settings.method, DISTILLERS, "distill.method")
    DISTILLERS[settings.method].validate(config)
    check_positive(settings.fidelity_samples, "distill.fidelity_samples")
    check_positive(settings.grid_samples, "distill.grid_samples")


def preflight(config: ml_collections.ConfigDict, workdir: str) -> None:
    """A teacher's training inputs (:func:`pdist.jobs.train.preflight`: the batch over the devices, the dataset),
    and the teacher: there and the network ``config`` builds, from its stored config (no array is read); one
    sentence each."""
    train.preflight(config, workdir)
    directory, _ = layout.locate(config.distill.teacher)
    teacher_config, metadata = stored(config.distill.teacher)
    check_teacher(config, teacher_config, layout.step_folder(directory, metadata["step"]))


def run(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
    """Runs (or resumes) every round; returns the rows of ``summary.json``."""
    settings = config.distill
    method = DISTILLERS[settings.method]
    mesh = mesh_lib.data_mesh()
    mesh_lib.check_batch_size(config.train.batch_size, mesh, config.train.grad_accum_steps)
    workdir = files.absolute(workdir)
    restored = restore(settings.teacher, mesh=mesh, check=functools.partial(check_teacher, config))
    teacher = restored.state.ema_params if settings.teacher_use_ema else restored.state.params
    data.training_builder(config.data)  # a dataset that is not there fails here, before anything is written
    files.makedirs(workdir)
    # The teacher's network as this config describes it (check_teacher: the stored one), and the students'
    # config and network (the teacher's, or one with more inputs), each made once.
    teacher_spec, students = ModelSpec.of(config), method.student(config)
    spec = ModelSpec.of(students)
    # The parameters round 1 starts from and trains against: the teacher's, plus the student's new ones, which
    # start at the teacher's function (pdist.build.student_params).
    start = mesh_lib.put_replicated(build.student_params(spec, teacher, rng.init_key(config.seed)), mesh)
    weights = method.fixed_guidance(config, settings.fidelity_samples)
    fixed = functools.partial(_fixed_noise_samples, config=config, guidance=weights)
    # the first teacher's samples: at its own weights where the method gives them, else at the students'
    teacher_weights = (
        weights if method.teacher_guidance is None else method.teacher_guidance(config, settings.fidelity_samples)
    )
    teacher_fixed = functools.partial(_fixed_noise_samples, config=config, guidance=teacher_weights)
    teacher_sampler = ImageSampler(teacher_spec, mesh)
    student_sampler = teacher_sampler if spec == teacher_spec else ImageSampler(spec, mesh)
    rounds = method.rounds(settings)
    target = layout.teacher_samples(workdir, rounds[0].teacher_steps)
    if not files.exists(target):
        _save_samples(target, teacher_fixed(teacher_sampler, teacher, rounds[0].teacher_steps))
    console.say(
        f"teacher {settings.teacher} (step {restored.metadata['step']}); students' steps: "
        f"{', '.join(str(r.student_steps) for r in rounds)}"
    )

    rows, sampler = [], teacher_sampler  # the current teacher's
    for rnd in rounds:
        round_dir = layout.round_dir(workdir, rnd.index, rnd.student_steps)
        student = run_round(students, spec, round_dir, rnd, start, mesh, method.sampler)
        report = os.path.join(round_dir, layout.ROUND_REPORT)
        if files.exists(report):
            row = files.read_json(report)
        else:
            x_student = fixed(student_sampler, student.state.ema_params, rnd.student_steps, method=method.sampler)
            x_target = files.load_npz(target)["samples"]  # the teacher's samples at rnd.teacher_steps
            same_steps = rnd.student_steps == rnd.teacher_steps  # guided stage 1: the target is the teacher's own
            row = method.report(
                rnd,
                student=x_student,
                teacher=x_target if same_steps else teacher_fixed(sampler, teacher, rnd.student_steps),
                target=x_target,
                final_loss=student.metadata.get("loss"),
                seconds=student.metadata.get("seconds"),
            )
            _save_samples(os.path.join(round_dir, f"{layout.SAMPLES}.npz"), x_student)
            if jax.process_index() == 0:
                files.write_json(report, row)
            console.say(f"round {rnd.index}: {_brief(row)}")
        rows.append(row)
        write_summary(workdir, rows, rounds, method.summary(rows), settings.grid_samples)
        teacher, target = student.state.ema_params, os.path.join(round_dir, f"{layout.SAMPLES}.npz")
        start, sampler, teacher_fixed = teacher, student_sampler, fixed
    if jax.process_index() == 0 and rows:
        last = rounds[len(rows) - 1]
        console.produced("summary", os.path.join(workdir, f"{layout.SUMMARY}.md"))
        console.produced("fixed-noise grid", os.path.join(workdir, layout.ROUNDS_PNG))
        final = layout.round_dir(workdir, last.index, last.student_steps)
        console.produced(f"{last.student_steps}-step student", layout.checkpoints(final))
        console.say(method.summary(rows).rstrip())
    return rows


def student_config(config: ml_collections.ConfigDict, rnd: Round, sampler: str = "ddim") -> ml_collections.ConfigDict:
    """The config stored with a round's student (``config``: the method's student network's): it samples with
    the method's ``sampler`` in its own number of steps by default."""
    student = ml_collections.ConfigDict(config.to_dict())
    student.mode = "train"
    student.sample.method = sampler
    student.sample.num_steps = rnd.student_steps
    student.sample.grid = "uniform"  # the grid it was trained on (PD: t = i / N)
    student.diffusion.importance_sampling = False  # the student's state has no timestep sampler
    return student


def run_round(config, spec: ModelSpec, round_dir: str, rnd: Round, teacher, mesh, sampler="ddim") -> phase.Result:
    """Trains (or restores) round ``rnd``'s student (``config``: the students' config, ``spec`` their
    network; ``sampler``: how it samples), starting from a copy of ``teacher``, the parameters its loss takes
    as the frozen teacher (and its target network's, for a loss that has one)."""
    optimizer = build.optimizer(config.optim, rnd.updates)
    loss = build.distillation_loss(spec, config, rnd)
    return phase.run(
        phase.Phase(
            name=f"Round {rnd.index}: {rnd.teacher_steps} -> {rnd.student_steps} steps",
            directory=round_dir,
            config=student_config(config, rnd, sampler),
            loss=loss,
            init_fn=functools.partial(init_state, teacher, optimizer.tx, target=loss.target_decay is not None),
            optimizer=optimizer,
            num_steps=rnd.updates,
            batches=lambda start: data.process_batches(config, start, rnd.index),
            key=rng.phase_key(config.seed, rnd.index),
            step_args=(teacher, mesh_lib.put_replicated(np.int32(rnd.student_steps), mesh)),
            metadata={"round": rnd.index, "sampling_steps": rnd.student_steps, "teacher_steps": rnd.teacher_steps},
            # The step count is an argument: the rounds of a method share one program (and its loss's code)
            program=("distillation round", config.to_json()),
        ),
        mesh,
    )


def check_teacher(config: ml_collections.ConfigDict, teacher_config: ml_collections.ConfigDict, where: str) -> None:
    """Raises TeacherMismatchError (one sentence) when the teacher is not the network ``config`` builds."""
    for key in SHARED_KEYS:
        mine, theirs = config_lib.get(config, key), config_lib.get(teacher_config, key)
        if mine != theirs:
            raise TeacherMismatchError(
                f"The teacher at {where} has {key}={theirs!r} but this config has {mine!r}; "
                "distill with the config the teacher was trained with."
            )
    mine, theirs = ModelSpec.of(config).param_shapes(), ModelSpec.of(teacher_config).param_shapes()
    if jax.tree.structure(mine) != jax.tree.structure(theirs) or jax.tree.leaves(mine) != jax.tree.leaves(theirs):
        raise TeacherMismatchError(
            f"The teacher at {where} is another architecture than config.model builds; "
            "distill with the config the teacher was trained with."
        )


def _fixed_noise_samples(
    sampler: ImageSampler, params, num_steps: int, *, config, guidance, method: str = "ddim"
) -> np.ndarray:
    # DDIM on the student grid, for the teacher too (a consistency student: its own sampler): the fixed noise's
    # samples compare round by round
    sampling = Sampling.from_config(config.sample).replace(
        method=method, num_steps=num_steps, grid="uniform", guidance=guidance, ot=None
    )
    return sampler(params, config.distill.fidelity_samples, sampling)


def _brief(row: dict) -> str:
    """A round's report in a line, in words."""
    said = f"{row['teacher_steps']} -> {row['steps']} steps, {row['updates']:,} updates"
    if row.get("final_loss") is not None:
        said += f", final loss {row['final_loss']:.4g}"
    if row.get("rmse_student") is not None:
        said += f"; RMSE to the teacher's {row['teacher_steps']}-step samples {row['rmse_student']:.4g}"
        if row.get("rmse_teacher") is not None:
            said += f" (the teacher's own {console.count(row['steps'], 'step')}: {row['rmse_teacher']:.4g})"
    if row.get("seconds") is not None:
        said += f", {row['seconds']:.0f} s"
    return said


def _save_samples(path: str, x: np.ndarray) -> None:
    if jax.process_index() == 0:
        files.save_npz(path, samples=x)


def write_summary(workdir: str, rows: list[dict], rounds: list[Round], table: str, grid_samples: int = 16) -> None:
    """summary.json, summary.md and rounds.png (the fixed noise's samples, teacher then every round so far)."""
    if jax.process_index() > 0:
        return
    files.write_json(os.path.join(workdir, f"{layout.SUMMARY}.json"), rows)
    files.write_text(os.path.join(workdir, f"{layout.SUMMARY}.md"), table)
    panels = [files.load_npz(layout.teacher_samples(workdir, rounds[0].teacher_steps))["samples"]]
    titles = [f"teacher, {rounds[0].teacher_steps} steps"]
    for rnd in rounds[: len(rows)]:
        path = os.path.join(layout.round_dir(workdir, rnd.index, rnd.student_steps), f"{layout.SAMPLES}.npz")
        panels.append(files.load_npz(path)["samples"])
        titles.append(f"round {rnd.index}: {console.count(rnd.student_steps, 'step')}")
    images.save_panels(os.path.join(workdir, layout.ROUNDS_PNG), [p[:grid_samples] for p in panels], titles)
