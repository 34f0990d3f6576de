"""The digits teacher, class-conditional and trained for classifier-free guidance, on a CPU in minutes.

python -m pdist.main --config=configs/digits_cond.py --workdir=runs/digits_cond
python -m pdist.main --config=configs/digits_cond.py --workdir=runs/digits_cond \
    --config.mode=sample --config.sample.guidance=2          # x = 3 x(z, c) - 2 x(z, null)
python -m pdist.main --config=configs/digits_cond.py --workdir=runs/digits_cond \
    --config.mode=eval --config.eval.guidance=0,1,2,4        # FD, class accuracy against w
"""

import os

from pdist.config import from_file


def get_config():
    config = from_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits.py"))
    config.model.class_conditional = True  # the samples' classes: 0, 1, 2, ... in turn
    config.train.label_dropout = 0.1  # the null class of classifier-free guidance (Ho & Salimans 2022)
    return config
