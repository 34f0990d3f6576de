"""Guided distillation of the class-conditional digits teacher (Meng et al. 2023), on a CPU in minutes.

Stage 1 trains a student that takes the guidance weight w in [0, 4] as an input to match the guided teacher
(two network calls a step, one student call); stage 2 halves its 64 DDIM steps down to 1, w drawn per example.
The rest is configs/digits_distill.py's (batch 128, Adam 3e-4 annealed per round, 400 updates a round, 800 for
the last two). Stage 1 takes 4,000 updates, 20% of its weights drawn at w = 0 (guidance_at_min; the paper draws
U[0, 4]). The measured trade-offs of these settings and of longer ones (8,000 stage-1 updates, 1,600 a round),
with the files that hold them: docs/results.md.

python -m pdist.main --config=configs/digits_cond.py --workdir=runs/digits_cond               # the teacher
python -m pdist.main --config=configs/digits_cond_guided.py --workdir=runs/digits_cond_guided
python -m pdist.main --config=configs/digits_cond.py --workdir=runs/digits_cond_guided/round_05_4steps \
    --config.mode=eval --config.eval.guidance=0,1,2,4 --config.eval.samplers=ddim:4:uniform
"""

import os

from pdist.config import from_file


def get_config():
    config = from_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits_distill.py"), "digits_cond")
    config.distill.method = "guided"
    config.train.label_dropout = 0.1  # the teacher's (configs/digits_cond.py): stage 1 distills its null class
    config.distill.start_steps = 64
    config.distill.guidance_min, config.distill.guidance_max = 0.0, 4.0
    config.distill.stage1_updates = 4000
    config.distill.guidance_at_min = 0.2
    return config
