"""Distillation methods, looked up by ``config.distill.method`` in one table.

A method is everything that differs between ways of distilling a teacher
(:class:`Distiller`): its config checks, its rounds (how many, the student's
sampling steps and updates in each), the student's network (the teacher's, or
one with more inputs whose new parameters start it as the teacher), the
student loss of a round (the frozen teacher's parameters and the student's
step count are its arguments, never constants), the guidance weights of its fixed-noise samples, and its
report.
Everything else is shared by ``pdist.jobs.distill``: loading and checking the
teacher, running each round as a phase of the one train step
(``pdist.runtime.phase``), the round folders (``pdist.runtime.layout``), the
fixed-noise samples every report is computed from, resuming.

Adding a method is one module here and one row in :data:`DISTILLERS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import ml_collections

from pdist.distillation import consistency, guided, progressive
from pdist.distillation.rounds import Round
from pdist.losses import Loss
from pdist.spec import ModelSpec


@dataclasses.dataclass(frozen=True)
class Distiller:
    """One row of :data:`DISTILLERS`."""

    validate: Callable[[ml_collections.ConfigDict], None]  # the method's settings; one sentence (ConfigError)
    rounds: Callable[[ml_collections.ConfigDict], list[Round]]  # of config.distill
    # the teacher's config -> the student's (its network: ModelSpec.of reads it); applied once, by the job
    student: Callable[[ml_collections.ConfigDict], ml_collections.ConfigDict]
    # (the student's ModelSpec, config, round) -> the round's student loss, taking the teacher's params (after
    # round 1, the teacher is the previous student: the same network) and the round's student step count as
    # arguments; rounds whose losses have the same code share one compiled step, so a loss closes over
    # nothing that differs between rounds
    loss: Callable[[ModelSpec, ml_collections.ConfigDict, Round], Loss]
    # (config, n) -> the guidance weights [n] of the fixed-noise samples, or None (unguided)
    fixed_guidance: Callable[[ml_collections.ConfigDict, int], object]
    # (round, student, teacher, target, final_loss, seconds) -> the round's row of summary.json, from the fixed
    # noise's samples: the student's and the teacher's at round.student_steps, the teacher's at round.teacher_steps
    report: Callable[..., dict]
    summary: Callable[[list[dict]], str]  # summary.md of the rows
    # how its students sample (a pdist.samplers method): their stored config's, and the reports' fixed noise's
    sampler: str = "ddim"
    # (config, n) -> the guidance weights of the first teacher's fixed-noise samples where they are not the
    # students' (a student that distills one guided ODE samples it unguided); None: fixed_guidance's
    teacher_guidance: Callable[[ml_collections.ConfigDict, int], object] | None = None


DISTILLERS: dict[str, Distiller] = {
    "progressive": Distiller(
        validate=progressive.validate,
        rounds=progressive.rounds,
        student=progressive.student,
        loss=progressive.loss,
        fixed_guidance=progressive.fixed_guidance,
        report=progressive.report,
        summary=progressive.summary,
    ),
    "guided": Distiller(
        validate=guided.validate,
        rounds=guided.rounds,
        student=guided.student,
        loss=guided.loss,
        fixed_guidance=guided.fixed_guidance,
        report=progressive.report,
        summary=progressive.summary,
    ),
    "consistency": Distiller(
        validate=consistency.validate,
        rounds=consistency.rounds,
        student=consistency.student,
        loss=consistency.loss,
        fixed_guidance=consistency.fixed_guidance,
        report=consistency.report,
        summary=consistency.summary,
        sampler="consistency",
        teacher_guidance=consistency.teacher_guidance,
    ),
}


__all__ = ["DISTILLERS", "Distiller", "Round"]
