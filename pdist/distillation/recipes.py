"""Progressive Distillation's settings for a teacher's config (Salimans & Ho 2022, App. E), as config files
write them: :func:`for_distillation` turns a teacher's config into the distillation's, and
:func:`paper_distillation` does so for a teacher config file with the paper's or a fast budget of updates."""

from __future__ import annotations

import ml_collections

from pdist.config import from_file


def for_distillation(
    config: ml_collections.ConfigDict,
    *,
    start_steps: int,
    batch_size: int,
    learning_rate: float,
    updates_per_round: int = 50_000,
    updates_last_rounds: int = 100_000,
) -> ml_collections.ConfigDict:
    """A teacher's config turned into Progressive Distillation's settings (Salimans & Ho 2022, App. E).

    Every round: a fresh Adam whose learning rate falls linearly from
    ``learning_rate`` to 0, no warm-up, dropout 0, EMA off (the student is the
    last iterate; set ``config.train.ema_decay`` to keep one).
    """
    config.mode = "distill"
    config.distill.start_steps = start_steps
    config.distill.final_steps = 1
    config.distill.updates_per_round = updates_per_round
    config.distill.updates_last_rounds = updates_last_rounds
    config.model.dropout = 0.0
    config.optim.learning_rate = learning_rate
    config.optim.warmup_steps = 0
    config.optim.schedule = "linear"
    config.train.batch_size = batch_size
    config.train.ema_decay = 0.0
    config.train.checkpoint_every = min(config.train.checkpoint_every, updates_per_round)
    return config


PAPER_UPDATES = {"paper": (50_000, 100_000), "fast": (10_000, 10_000)}  # per round, and for 2 steps and 1


def paper_distillation(
    teacher_file: str, variant: str, *, start_steps: int, batch_size: int, learning_rate: float
) -> ml_collections.ConfigDict:
    """The paper's distillation of the teacher config in ``teacher_file``; ``variant`` 'paper' or 'fast'."""
    if variant not in PAPER_UPDATES:
        raise ValueError(f"Unknown distillation variant {variant!r}; choose one of {sorted(PAPER_UPDATES)}.")
    per_round, last_rounds = PAPER_UPDATES[variant]
    return for_distillation(
        from_file(teacher_file),
        start_steps=start_steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        updates_per_round=per_round,
        updates_last_rounds=last_rounds,
    )


def for_consistency(
    config: ml_collections.ConfigDict,
    *,
    updates: int,
    batch_size: int,
    learning_rate: float = 4e-4,
    ema_decay: float,
    solver: str = "heun",
) -> ml_collections.ConfigDict:
    """A teacher's config turned into consistency distillation's (Song et al. 2023, App. C; their JAX
    CIFAR-10 run, openai/consistency_models_cifar10 ``configs/cifar10_ve_cd.py``): one round of ``updates``,
    RAdam at ``learning_rate`` (4e-4) after a linear warm-up over the same share of the run as theirs (10M
    images of 800k x 512: 2.4%), constant after it, no gradient clipping, dropout 0, the student starting as
    the teacher, N = 18, mu = 0.95 (config.distill.consistency's defaults), and ``ema_decay`` for the students'
    sampling EMA (theirs: 0.9999). Its evaluation scores the multistep consistency sampler at 1, 2 and 4 steps."""
    config.mode = "distill"
    config.distill.method = "consistency"
    config.distill.consistency.updates = updates
    config.distill.consistency.solver = solver
    config.model.dropout = 0.0
    config.optim.optimizer = "radam"
    config.optim.learning_rate = learning_rate
    config.optim.warmup_steps = max(1, round(0.0244 * updates))
    config.optim.schedule = "constant"
    config.optim.grad_clip = 0.0
    config.train.batch_size = batch_size
    config.train.ema_decay = ema_decay
    config.train.checkpoint_every = min(config.train.checkpoint_every, updates)
    config.eval.samplers = "consistency:1,consistency:2,consistency:4"  # --config.mode=eval on its workdir
    return config
