"""Consistency distillation of the CIFAR-10 teacher (configs/cifar10.py), the paper's run (Song et al. 2023,
App. C; openai/consistency_models_cifar10 configs/cifar10_ve_cd.py): 800k updates at batch 512, RAdam at 4e-4
after a warm-up over 10M images, no clipping, N = 18 Karras levels in [0.002, 80], mu = 0.95, Heun's teacher
step, sampling EMA 0.9999. The paper's distance was LPIPS, which needs a VGG pdist does not ship: this uses the
squared L2 distance (their alternative; ``--config.distill.consistency.distance=pseudo_huber`` for the later
paper's). Students sample with the multistep consistency sampler.

python -m pdist.main --config=configs/cifar10_consistency.py --config.distill.teacher=runs/cifar10 \\
    --workdir=runs/cifar10_consistency
"""

import os

from pdist.config import from_file
from pdist.distillation.recipes import for_consistency


def get_config():
    teacher = from_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "cifar10.py"))
    config = for_consistency(teacher, updates=800_000, batch_size=512, ema_decay=0.9999, solver="heun")
    config.distill.start_steps = 1024  # the reports' reference: the teacher's 1024 DDIM steps
    return config
