"""Progressive distillation of configs/lsun_church128.py: the LSUN bedroom distillation on another scene.

python -m pdist.main --config=configs/lsun_church128_distill.py --config.distill.teacher=runs/lsun_church128 \\
    --workdir=runs/lsun_church128_distill
"""

import os

from pdist.config import from_file


def get_config(variant: str = "paper"):
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lsun_bedroom128_distill.py")
    config = from_file(path, variant)
    config.data.name = "lsun/church_outdoor"
    return config
