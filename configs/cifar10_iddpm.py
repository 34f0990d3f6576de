"""The Improved-DDPM CIFAR-10 model (Nichol & Dhariwal 2021): cosine T = 4000, learned variances, L_hybrid.

Variant ``--config=configs/cifar10_iddpm.py:vlb``: L_vlb alone with importance-sampled t.
"""

from pdist.config import base_config


def get_config(variant: str = "hybrid"):
    if variant not in ("hybrid", "vlb"):
        raise ValueError(f"Unknown variant {variant!r}; use configs/cifar10_iddpm.py or configs/cifar10_iddpm.py:vlb.")
    config = base_config()
    config.data.name = "cifar10"
    config.data.image_size = 32
    config.data.channels = 3
    config.data.num_classes = 10
    config.data.random_flip = True

    config.model.ch = 128
    config.model.ch_mult = (1, 2, 2, 2)
    config.model.num_res_blocks = 3
    config.model.attn_resolutions = (16, 8)
    config.model.num_heads = 4
    config.model.dropout = 0.3

    config.diffusion.schedule = "cosine"
    config.diffusion.num_timesteps = 4000
    config.diffusion.parameterization = "eps"
    config.diffusion.weighting = "snr"  # L_simple
    config.diffusion.learned_variance = True
    config.diffusion.loss = variant
    config.diffusion.importance_sampling = variant == "vlb"

    config.optim.learning_rate = 1e-4
    config.optim.warmup_steps = 0
    config.optim.grad_clip = 0.0

    config.train.batch_size = 128
    config.train.num_steps = 500_000
    config.train.ema_decay = 0.9999
    config.train.log_every = 500
    config.train.checkpoint_every = 10_000
    config.train.sample_every = 50_000

    config.sample.method = "ddpm"
    config.sample.num_steps = 4000
    config.sample.num_samples = 50_000
    return config
