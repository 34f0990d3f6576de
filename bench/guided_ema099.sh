#!/bin/bash
# README's guided-distillation headline on the EMA-0.99 conditional teacher (the default since 2026-12-02):
# docs/results.md's 1,600-updates-a-round recipe (8,000 stage-1 updates, 20% of the weights at w = 0), then
# bench/guided_tradeoff.py into docs/digits_cond_guided_ema099.{md,json,png}. About 70 minutes on 2 CPU cores.
set -ex
cd "$(dirname "$0")/.."
T=runs/digits_cond; G=runs/digits_cond_guided
python -m pdist.main --config=configs/digits_cond.py --workdir=$T
python -m pdist.main --config=configs/digits_cond_guided.py --workdir=$G --config.distill.teacher=$T \
  --config.distill.stage1_updates=8000 --config.distill.final_steps=4 --config.distill.guidance_at_min=0.2 \
  --config.distill.updates_per_round=1600 --config.distill.updates_last_rounds=1600
python -m pdist.main --config=configs/digits_cond.py --workdir=$T --config.mode=eval \
  --config.eval.guidance=0,1,2,4 --config.eval.samplers=ddim:8,ddim:16,ddim:32,ddim:64 --config.eval.seed=1
for R in $G/round_*; do N=${R##*_}; N=${N%steps}
  python -m pdist.main --config=configs/digits_cond.py --workdir=$R --config.mode=eval \
    --config.eval.guidance=0,1,2,4 --config.eval.samplers=ddim:$N:uniform --config.eval.seed=1; done
python bench/guided_tradeoff.py --teacher $T --students $G --reference-steps 64 --out docs/digits_cond_guided_ema099
echo FINISHED
