"""The Progressive Distillation CIFAR-10 teacher (Salimans & Ho 2022, Appendix E).

x-parameterization with truncated-SNR weighting, continuous time on the logSNR cosine. The network, diffusion
and optimizer are the official release's ``config/cifar_base.py`` (google-research ``diffusion_distillation``):
one attention head, its ``inv_cos`` noise-level embedding and weight decay 0.001, so that a teacher trained here
and the released one (``python -m pdist.interop import ... --source_config=cifar_base``) are the same network.
"""

from pdist.config import base_config


def get_config():
    config = base_config()
    config.data.name = "cifar10"
    config.data.image_size = 32
    config.data.channels = 3
    config.data.num_classes = 10
    config.data.random_flip = True

    config.model.ch = 256
    config.model.ch_mult = (1, 1, 1)
    config.model.num_res_blocks = 3
    config.model.attn_resolutions = (16, 8)
    config.model.num_heads = 1
    config.model.logsnr_input = "inv_cos"
    config.model.dropout = 0.2
    config.model.resblock_updown = True

    config.diffusion.schedule = "cosine_logsnr"
    config.diffusion.parameterization = "x"
    config.diffusion.weighting = "truncated_snr"

    config.optim.learning_rate = 2e-4
    config.optim.warmup_steps = 1000
    config.optim.grad_clip = 1.0
    config.optim.weight_decay = 0.001

    config.train.batch_size = 128
    config.train.num_steps = 800_000
    config.train.ema_decay = 0.9999
    config.train.log_every = 500
    config.train.checkpoint_every = 10_000
    config.train.sample_every = 50_000

    config.sample.method = "ddim"
    config.sample.num_steps = 1024
    config.sample.num_samples = 50_000
    return config
