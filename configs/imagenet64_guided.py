"""Guided distillation (Meng et al. 2023) of a classifier-free guided ImageNet 64x64 teacher: 1024 DDIM steps
down to 1, one student for every guidance weight w in [0, 4] (the paper's range).

The teacher is configs/imagenet64.py trained with its labels dropped 10% of the time (the paper's
p_uncond = 0.1): ``configs/imagenet64_guided.py:teacher``. Distillation follows Progressive Distillation's
ImageNet 64 settings (Salimans & Ho 2022, App. E: batch 2048, Adam at 1e-4 annealed linearly to 0 in each
round, 50k updates a round, 100k for the rounds reaching 2 steps and 1; ``:fast`` takes 10k). Stage 1 gets one
round's budget (50k updates; 10k in ``:fast``): pdist's choice, the paper does not fix it for this setting.

python -m pdist.main --config=configs/imagenet64_guided.py:teacher --workdir=runs/imagenet64_cond
python -m pdist.main --config=configs/imagenet64_guided.py --config.distill.teacher=runs/imagenet64_cond \\
    --workdir=runs/imagenet64_guided
"""

import os

from pdist.config import from_file
from pdist.distillation.recipes import PAPER_UPDATES, paper_distillation

TEACHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet64.py")


def get_config(variant: str = "paper"):
    if variant == "teacher":
        config = from_file(TEACHER)
        config.train.label_dropout = 0.1
        return config
    config = paper_distillation(TEACHER, variant, start_steps=1024, batch_size=2048, learning_rate=1e-4)
    config.train.label_dropout = 0.1  # the teacher's: its null class is what stage 1 distills
    config.distill.method = "guided"
    config.distill.guidance_min, config.distill.guidance_max = 0.0, 4.0
    config.distill.stage1_updates = PAPER_UPDATES[variant][0]
    return config
