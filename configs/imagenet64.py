"""Class-conditional ImageNet 64x64 in the Progressive Distillation setup: both-parameterization, truncated-SNR
weight. The network, diffusion and optimizer are the official release's ``config/imagenet64_base.py`` (its
``inv_cos`` noise-level embedding, learning rate 3e-4), so that a teacher trained here and the released one are
the same network.

Needs TFDS ``imagenet_resized/64x64`` prepared under config.data.data_dir.
"""

from pdist.config import base_config


def get_config():
    config = base_config()
    config.data.name = "imagenet_resized/64x64"
    config.data.image_size = 64
    config.data.channels = 3
    config.data.num_classes = 1000
    config.data.random_flip = True
    config.data.cache = False

    config.model.ch = 192
    config.model.ch_mult = (1, 2, 3, 4)
    config.model.num_res_blocks = 3
    config.model.attn_resolutions = (32, 16, 8)
    config.model.head_dim = 64
    config.model.logsnr_input = "inv_cos"
    config.model.dropout = 0.1
    config.model.resblock_updown = True
    config.model.class_conditional = True

    config.diffusion.schedule = "cosine_logsnr"
    config.diffusion.parameterization = "both"
    config.diffusion.weighting = "truncated_snr"

    config.optim.learning_rate = 3e-4
    config.optim.warmup_steps = 1000
    config.optim.grad_clip = 1.0

    config.train.batch_size = 2048
    config.train.num_steps = 500_000
    config.train.ema_decay = 0.9999
    config.train.log_every = 500
    config.train.checkpoint_every = 10_000
    config.train.sample_every = 50_000

    config.sample.num_steps = 1024
    config.sample.num_samples = 50_000
    return config
