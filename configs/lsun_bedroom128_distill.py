"""Progressive distillation of configs/lsun_bedroom128.py: 1024 DDIM steps down to 1.

Salimans & Ho 2022, App. E: batch 2048, Adam at 1e-4 annealed linearly to 0 in
each round, 50k updates a round and 100k for the rounds reaching 2 steps and
1; ``configs/lsun_bedroom128_distill.py:fast`` takes 10k a round.

python -m pdist.main --config=configs/lsun_bedroom128_distill.py --config.distill.teacher=runs/lsun_bedroom128 \\
    --workdir=runs/lsun_bedroom128_distill
"""

import os

from pdist.distillation.recipes import paper_distillation


def get_config(variant: str = "paper"):
    teacher = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lsun_bedroom128.py")
    return paper_distillation(teacher, variant, start_steps=1024, batch_size=2048, learning_rate=1e-4)
