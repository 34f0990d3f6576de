"""What a distillation round is, for every method."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Round:
    """Round ``index`` (from 1) trains a student that samples in ``student_steps`` DDIM steps to do what the
    teacher does in ``teacher_steps``, for ``updates`` optimizer updates."""

    index: int
    student_steps: int
    teacher_steps: int
    updates: int
