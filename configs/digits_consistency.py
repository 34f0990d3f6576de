"""Consistency distillation of the digits teacher (Song et al. 2023), on a CPU in minutes: the row beside
configs/digits_distill.py in docs/results.md's comparison.

python -m pdist.main --config=configs/digits.py --workdir=runs/digits                      # the teacher
python -m pdist.main --config=configs/digits_consistency.py --workdir=runs/digits_consistency

The paper's CIFAR-10 settings (pdist.distillation.recipes.for_consistency: RAdam at 4e-4, N = 18, mu = 0.95)
with DDIM as the teacher's step (one teacher call an update) and 8,000 updates: the teacher network calls of
configs/digits_distill.py (8 rounds, 4,000 updates of two teacher calls each). Batch 128 as there. The students'
sampling EMA is 0.99, the same share of the run (1/100 of 8,000 updates) as the paper's 0.9999 of 800,000, and
the teacher's. ``configs/digits_consistency.py:digits_cond`` distills the class-conditional teacher
(configs/digits_cond.py; its students sample the conditional model, w = 0).
"""

import os

from pdist.config import from_file
from pdist.distillation.recipes import for_consistency


def get_config(teacher: str = "digits"):
    config = from_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{teacher}.py"))
    config = for_consistency(config, updates=8000, batch_size=128, ema_decay=0.99, solver="ddim")
    config.distill.teacher = f"runs/{teacher}"
    config.distill.start_steps = 256  # the reports' reference: the teacher's 256 DDIM steps, as digits_distill's
    config.distill.fidelity_samples = 500
    config.distill.grid_samples = 36
    config.train.log_every = 50
    config.train.checkpoint_every = 1000
    return config
