"""Progressive distillation (Salimans & Ho, ICLR 2022): ``distill(config, workdir)``.

A frozen teacher's two DDIM steps become one student step
(:func:`pdist.losses.make_distillation_loss`); after a round the student
becomes the next teacher, from ``config.distill.start_steps`` down to
``final_steps``. Each round is the teacher-training step loop
(:func:`pdist.loop.run_steps`) with the distillation loss, the frozen teacher
parameters passed into the compiled step as an argument, a fresh optimizer
whose schedule spans the round, and the student initialized as a copy of the
teacher.

Workdir layout::

    <workdir>/teacher_<S>steps.npz           the teacher's S-step samples of the fixed noise
    <workdir>/round_01_<S/2>steps/checkpoints/<update>/   the round's student (tagged)
    <workdir>/round_01_<S/2>steps/round.json, samples.npz, TensorBoard events
    ...
    <workdir>/summary.json, summary.md, rounds.png

Rerunning the command resumes: finished rounds are read back, never
retrained, and an interrupted round continues from its newest checkpoint at
the same update, with the same data order and step keys.
"""

from __future__ import annotations

import functools
import json
import logging
import os

import jax
import ml_collections
import numpy as np
from clu import metric_writers

from pdist import build, data, files, images, loop, optim, parallel, train_step
from pdist import config as config_lib
from pdist.checkpoint import CHECKPOINTS, Checkpointer, locate
from pdist.config import validate
from pdist.errors import InputError
from pdist.sample import ImageSampler
from pdist.train import metadata

# Keys of the teacher's config the student must share (the network's shapes are checked separately).
SHARED_KEYS = (
    "data.image_size",
    "data.channels",
    "diffusion.schedule",
    "diffusion.num_timesteps",
    "diffusion.parameterization",
    "diffusion.learned_variance",
    "model.class_conditional",
)


class TeacherMismatchError(InputError, ValueError):
    pass


def student_steps(start_steps: int, final_steps: int) -> list[int]:
    """The students' sampling steps, one per round: start/2, start/4, ..., final."""
    steps, n = [], start_steps
    while n > final_steps:
        n //= 2
        steps.append(n)
    return steps


def round_updates(d: ml_collections.ConfigDict, num_steps: int) -> int:
    """Paper: 50k updates a round, 100k for the rounds that reach 2 steps and 1."""
    return d.updates_last_rounds if num_steps <= 2 else d.updates_per_round


def round_name(r: int, num_steps: int) -> str:
    return f"round_{r:02d}_{num_steps}steps"


def student_config(config: ml_collections.ConfigDict, num_steps: int) -> ml_collections.ConfigDict:
    """The config stored with a student: it samples with ``num_steps`` DDIM steps by default."""
    c = ml_collections.ConfigDict(config.to_dict())
    c.mode = "train"
    c.sample.method = "ddim"
    c.sample.num_steps = num_steps
    c.diffusion.importance_sampling = False  # the student's state has no timestep sampler
    return c


def load_teacher(config: ml_collections.ConfigDict, mesh) -> tuple[dict, dict]:
    """(teacher parameters replicated on ``mesh``, its checkpoint metadata); checks it fits ``config``."""
    directory, step = locate(config.distill.teacher)
    ckpt = Checkpointer(directory, asynchronous=False)
    try:
        meta = ckpt.metadata(step)
        teacher_config = config_lib.from_stored(meta["config"])
        check_teacher(config, teacher_config, f"{directory}/{meta['step']}")
        init_fn, _ = build.state_init(teacher_config)
        state, meta = ckpt.restore(train_step.abstract_state(init_fn, mesh), meta["step"])
    finally:
        ckpt.close()
    return (state.ema_params if config.distill.teacher_use_ema else state.params), meta


def check_teacher(config: ml_collections.ConfigDict, teacher_config: ml_collections.ConfigDict, where: str) -> None:
    """Raises TeacherMismatchError (one sentence) when the teacher is not the network ``config`` builds."""
    for key in SHARED_KEYS:
        mine, theirs = _get(config, key), _get(teacher_config, key)
        if mine != theirs:
            raise TeacherMismatchError(
                f"The teacher at {where} has {key}={theirs!r} but this config has {mine!r}; "
                "distill with the config the teacher was trained with."
            )
    key = jax.random.key(0)
    mine = jax.eval_shape(functools.partial(build.init_params, config), key)
    theirs = jax.eval_shape(functools.partial(build.init_params, teacher_config), key)
    if jax.tree.structure(mine) != jax.tree.structure(theirs) or jax.tree.leaves(mine) != jax.tree.leaves(theirs):
        raise TeacherMismatchError(
            f"The teacher at {where} is another architecture than config.model builds; "
            "distill with the config the teacher was trained with."
        )


def _get(config, dotted: str):
    for part in dotted.split("."):
        config = config[part]
    return config


def distill(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
    """Runs (or resumes) every round; returns the per-round summary rows."""
    validate(config)
    d = config.distill
    mesh = parallel.data_mesh()
    parallel.check_batch_size(config.train.batch_size, mesh, config.train.grad_accum_steps)
    workdir = os.path.abspath(workdir)
    teacher, teacher_meta = load_teacher(config, mesh)
    data.training_builder(config.data)  # a dataset that is not there fails here, before anything is written
    os.makedirs(workdir, exist_ok=True)
    sampler = ImageSampler(config)
    fixed = functools.partial(_fixed_noise_samples, sampler, config)
    previous = os.path.join(workdir, f"teacher_{d.start_steps}steps.npz")
    if not os.path.exists(previous):
        _save_samples(previous, fixed(teacher, d.start_steps))
    rounds = student_steps(d.start_steps, d.final_steps)
    logging.info("Teacher %s (step %d); students' steps: %s", d.teacher, teacher_meta["step"], rounds)

    rows = []
    for r, n in enumerate(rounds, start=1):
        rdir = os.path.join(workdir, round_name(r, n))
        state, last = run_round(config, rdir, r, n, teacher, mesh)
        report = os.path.join(rdir, "round.json")
        if os.path.exists(report):
            with open(report) as f:
                row = json.load(f)
        else:
            row = _fidelity_report(config, rdir, r, n, teacher, state.ema_params, last, previous, fixed)
        rows.append(row)
        write_summary(workdir, rows, d.grid_samples)
        teacher, previous = state.ema_params, os.path.join(rdir, "samples.npz")
    return rows


def run_round(config, rdir: str, r: int, n: int, teacher, mesh) -> tuple[train_step.TrainState, dict]:
    """Trains (or restores) round ``r``'s ``n``-step student; returns its state and final checkpoint metadata."""
    t = config.train
    updates = round_updates(config.distill, n)
    scfg = student_config(config, n)
    tx = optim.optimizer(config.optim, updates)
    init_fn = functools.partial(lambda p: train_step.init_state(p, tx), teacher)
    ckpt = Checkpointer(os.path.join(rdir, CHECKPOINTS), keep=t.keep_checkpoints, writer=True)
    state, last = ckpt.resume(train_step.abstract_state(init_fn, mesh), fallback=t.fallback_checkpoint)
    start = last.get("step", 0)
    if not start:
        state = train_step.create_state(init_fn, mesh)
    if start < updates:
        logging.info("Round %d: %d -> %d steps, updates %d..%d", r, 2 * n, n, start + 1, updates)
        step_fn = train_step.compile_step(
            train_step.make_train_step(
                build.distillation_loss(config, n),
                tx,
                ema_decay=t.ema_decay,
                learning_rate=optim.learning_rate(config.optim, updates),
                accum_steps=t.grad_accum_steps,
                skip_nonfinite=t.skip_nonfinite > 0,
            ),
            mesh,
        )
        batches = data.train_batches(
            config,
            local_batch_size=t.batch_size // jax.process_count(),
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            start_step=start,
            seed=config.seed + 1000 * r,
        )
        key = jax.random.fold_in(jax.random.key(config.seed), 1000 + r)
        before = last.get("seconds", 0.0)

        def meta(step, scalars, seconds):
            return metadata(
                scfg, step, round=r, sampling_steps=n, teacher_steps=2 * n, loss=scalars.get("loss"),
                seconds=before + seconds,
            )  # fmt: skip

        writer = metric_writers.create_default_writer(rdir, just_logging=jax.process_index() > 0)
        with metric_writers.ensure_flushes(writer):
            result = loop.run_steps(
                step_fn, state, batches, key, mesh=mesh, start=start, num_steps=updates, writer=writer,
                ckpt=ckpt, metadata=meta, log_every=t.log_every, checkpoint_every=t.checkpoint_every,
                step_args=(teacher,), resumed=last, skip_limit=t.skip_nonfinite,
            )  # fmt: skip
        state = result.state
        last = meta(updates, result.last_scalars, result.seconds)
    ckpt.wait()
    ckpt.close()
    return state, last


def _fixed_noise_samples(sampler: ImageSampler, config, params, num_steps: int) -> np.ndarray:
    return sampler(
        params,
        config.distill.fidelity_samples,
        method="ddim",
        num_steps=num_steps,
        seed=config.sample.seed,
        clip_x=config.sample.clip_x,
        batch_size=config.sample.batch_size,
    )


def _save_samples(path: str, x: np.ndarray) -> None:
    if jax.process_index() == 0:
        files.save_npz(path, samples=x)


def _save_json(path: str, obj) -> None:
    if jax.process_index() == 0:
        files.write_json(path, obj)


def _rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))


def _fidelity_report(config, rdir, r, n, teacher, student, last, previous, fixed) -> dict:
    """Round ``r``'s row: the student's N-step samples of the fixed noise against the teacher's 2N-step ones."""
    target = np.load(previous)["samples"]
    x_student = fixed(student, n)
    x_teacher = fixed(teacher, n)
    row = {
        "round": r,
        "steps": n,
        "teacher_steps": 2 * n,
        "updates": round_updates(config.distill, n),
        "final_loss": last.get("loss"),
        "rmse_student": _rmse(x_student, target),  # student N steps vs teacher 2N steps
        "rmse_teacher": _rmse(x_teacher, target),  # teacher N steps vs teacher 2N steps
        "seconds": last.get("seconds"),
    }
    _save_samples(os.path.join(rdir, "samples.npz"), x_student)
    _save_json(os.path.join(rdir, "round.json"), row)
    logging.info("Round %d: %s", r, row)
    return row


def write_summary(workdir: str, rows: list[dict], grid_samples: int = 16) -> None:
    """summary.json, summary.md and rounds.png (the fixed noise's samples, teacher then every round)."""
    if jax.process_index() > 0:
        return
    _save_json(os.path.join(workdir, "summary.json"), rows)
    lines = [
        "| round | steps | updates | final loss | RMSE student N vs teacher 2N | RMSE teacher N vs teacher 2N "
        "| minutes |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for w in rows:
        loss = "-" if w["final_loss"] is None else f"{w['final_loss']:.4g}"
        minutes = "-" if w["seconds"] is None else f"{w['seconds'] / 60:.1f}"
        lines.append(
            f"| {w['round']} | {w['teacher_steps']} -> {w['steps']} | {w['updates']} | {loss} "
            f"| {w['rmse_student']:.4f} | {w['rmse_teacher']:.4f} | {minutes} |"
        )
    files.write_text(os.path.join(workdir, "summary.md"), "\n".join(lines) + "\n")
    first = rows[0]["teacher_steps"]
    panels = [np.load(os.path.join(workdir, f"teacher_{first}steps.npz"))["samples"]]
    panels += [
        np.load(os.path.join(workdir, round_name(w["round"], w["steps"]), "samples.npz"))["samples"] for w in rows
    ]
    write_rounds_png(os.path.join(workdir, "rounds.png"), [p[:grid_samples] for p in panels])


def write_rounds_png(path: str, panels: list[np.ndarray], gap: int = 4) -> None:
    """One PNG: a grid per panel ([n, H, W, C] in [-1, 1]), side by side, separated by white columns."""
    grids = [images.grid(p) for p in panels]
    h = max(g.shape[0] for g in grids)
    sep = np.full((h, gap, grids[0].shape[2]), 255, np.uint8)
    parts = []
    for g in grids:
        parts += [np.pad(g, ((0, h - g.shape[0]), (0, 0), (0, 0))), sep]
    strip = np.concatenate(parts[:-1], axis=1)
    images.save_png(path, strip, scale=max(1, 128 // h))
