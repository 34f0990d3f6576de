"""Progressive distillation of the CIFAR-10 teacher (configs/cifar10.py): 8192 DDIM steps down to 1.

Salimans & Ho 2022, App. E: batch 128, Adam at 5e-5 annealed linearly to 0 in
each round, 50k updates a round and 100k for the rounds reaching 2 steps and
1; ``configs/cifar10_distill.py:fast`` takes 10k a round.

python -m pdist.main --config=configs/cifar10_distill.py --config.distill.teacher=runs/cifar10 \\
    --workdir=runs/cifar10_distill
"""

import os

from pdist.distillation.recipes import paper_distillation


def get_config(variant: str = "paper"):
    teacher = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cifar10.py")
    return paper_distillation(teacher, variant, start_steps=8192, batch_size=128, learning_rate=5e-5)
