"""Improved DDPM (Nichol & Dhariwal 2021) on the digits, in CPU minutes: the Improved-DDPM cosine at T = 1000.

python -m pdist.main --config=configs/digits_iddpm.py:hybrid --workdir=runs/iddpm_hybrid

Variants, at the same training budget (the digits default's):
  ``v_mse``:  the digits default's loss (v-parameterization, SNR+1 weight), fixed variances;
  ``simple``: L_simple (eps-MSE), fixed variances (Ho et al. 2020);
  ``hybrid``: L_simple + 0.001 L_vlb with learned variances (the default here);
  ``vlb``:    L_vlb alone with learned variances and importance-sampled levels.

Evaluation follows the paper: the NLL bound over all T levels with clipped x-hat
(``--config.mode=eval --config.eval.nll=True``), and samples on the respaced grid
(``ddpm:50`` and friends; the grid is ``auto``, which is ``respaced`` here).
"""

import os

from pdist.config import from_file

VARIANTS = ("v_mse", "simple", "hybrid", "vlb")


def get_config(variant: str = "hybrid"):
    if variant not in VARIANTS:
        raise ValueError(f"Unknown variant {variant!r}; use configs/digits_iddpm.py:VARIANT with one of {VARIANTS}.")
    config = from_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits.py"))
    config.diffusion.schedule = "cosine"
    config.diffusion.num_timesteps = 1000
    if variant == "v_mse":
        config.diffusion.parameterization, config.diffusion.weighting = "v", "snr_plus_one"
    else:
        config.diffusion.parameterization, config.diffusion.weighting = "eps", "snr"  # L_simple's eps-MSE
    config.diffusion.learned_variance = variant in ("hybrid", "vlb")
    config.diffusion.loss = "mse" if variant in ("v_mse", "simple") else variant
    config.diffusion.importance_sampling = variant == "vlb"

    config.sample.method = "ddpm"
    config.sample.num_steps = 50
    config.eval.samplers = "ddpm:25,ddpm:50,ddpm:100,ddpm:250,ddpm:1000"
    config.eval.nll_examples = 300
    config.eval.nll_batch_size = 300
    return config
