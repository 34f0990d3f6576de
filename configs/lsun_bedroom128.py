"""LSUN bedroom at 128x128 (center-cropped, area-resized), unconditional, v-parameterization; also the church config.

Needs TFDS ``lsun/bedroom`` prepared under config.data.data_dir (a large download).
"""

from pdist.config import base_config


def get_config():
    config = base_config()
    config.data.name = "lsun/bedroom"
    config.data.image_size = 128
    config.data.channels = 3
    config.data.num_classes = 0
    config.data.random_flip = True
    config.data.cache = False

    config.model.ch = 128
    config.model.ch_mult = (1, 1, 2, 3, 4)
    config.model.num_res_blocks = 2
    config.model.attn_resolutions = (16,)
    config.model.head_dim = 64
    config.model.dropout = 0.0
    config.model.resblock_updown = True

    config.diffusion.schedule = "cosine_logsnr"
    config.diffusion.parameterization = "v"
    config.diffusion.weighting = "snr_plus_one"

    config.optim.learning_rate = 1e-4
    config.optim.warmup_steps = 1000
    config.optim.grad_clip = 1.0

    config.train.batch_size = 256
    config.train.num_steps = 500_000
    config.train.ema_decay = 0.9999
    config.train.log_every = 500
    config.train.checkpoint_every = 10_000
    config.train.sample_every = 50_000

    config.sample.num_steps = 1024
    config.sample.num_samples = 50_000
    return config
