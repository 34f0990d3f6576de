"""Progressive distillation of the digits teacher, 256 DDIM steps down to 1, on a CPU in minutes.

python -m pdist.main --config=configs/digits.py --workdir=runs/digits            # the teacher
python -m pdist.main --config=configs/digits_distill.py --workdir=runs/digits_distill

``configs/digits_distill.py:digits_cond`` is the same settings for the class-conditional teacher
(configs/digits_cond.py): its students distill the conditional model (w = 0), so without the teacher's label
dropout; configs/digits_cond_guided.py builds on it and distills the null class too.
"""

import os

from pdist.config import from_file
from pdist.distillation.recipes import for_distillation


def get_config(teacher: str = "digits"):
    config = from_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{teacher}.py"))
    config = for_distillation(
        config, start_steps=256, batch_size=128, learning_rate=3e-4, updates_per_round=400, updates_last_rounds=800
    )
    config.distill.teacher = f"runs/{teacher}"
    config.train.label_dropout = 0.0  # progressive students sample unguided: no null class to distill
    config.distill.fidelity_samples = 500
    config.distill.grid_samples = 36
    config.train.log_every = 50
    config.train.checkpoint_every = 200
    return config
