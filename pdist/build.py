"""Builds what a config names: the schedule, the network, the functions the
losses and samplers see (``apply_fn`` and ``denoise_fn``), and the initial
train state.

The one place where the Flax network meets the pure math modules: losses see
``apply_fn(params, z, t, label, key) -> raw output`` and samplers see
``denoise_fn(z, t) -> Prediction``; neither knows there is a UNet.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from pdist import diffusion, losses, optim, train_step
from pdist.importance import LossAwareSampler
from pdist.models import UNet
from pdist.schedules import Schedule, get_schedule

Array = jax.Array


def schedule(config: ml_collections.ConfigDict) -> Schedule:
    d = config.diffusion
    kwargs = {} if d.num_timesteps is None else {"num_timesteps": int(d.num_timesteps)}
    return get_schedule(d.schedule, **kwargs)


def network(config: ml_collections.ConfigDict) -> UNet:
    m, d = config.model, config.diffusion
    return UNet(
        out_channels=diffusion.output_channels(config.data.channels, d.parameterization, d.learned_variance),
        ch=m.ch,
        ch_mult=tuple(m.ch_mult),
        num_res_blocks=m.num_res_blocks,
        attn_resolutions=tuple(m.attn_resolutions),
        head_dim=m.head_dim,
        num_heads=m.num_heads,
        dropout=m.dropout,
        resblock_updown=m.resblock_updown,
        num_classes=config.data.num_classes if m.class_conditional else 0,
        dtype=jnp.dtype(m.dtype),
        remat=m.remat,
    )


def image_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
    return (config.data.image_size, config.data.image_size, config.data.channels)


def init_params(config: ml_collections.ConfigDict, key: Array):
    """The network's initial parameters (a plain nested dict)."""
    net = network(config)
    x = jnp.zeros((1, *image_shape(config)), jnp.float32)
    label = jnp.zeros((1,), jnp.int32) if config.model.class_conditional else None
    return net.init({"params": key}, x, jnp.zeros((1,)), label)["params"]


def apply_fn(config: ml_collections.ConfigDict) -> Callable:
    """``apply_fn(params, z, t, label, key)``; ``key`` None runs without dropout."""
    net, sched = network(config), schedule(config)
    conditional = config.model.class_conditional

    def apply(params, z, t, label, key):
        rngs = None if key is None else {"dropout": key}
        label = label if conditional else None
        return net.apply({"params": params}, z, sched.logsnr(t), label, train=key is not None, rngs=rngs)

    return apply


def denoiser(config: ml_collections.ConfigDict, params, label: Array | None = None) -> Callable:
    """``denoise_fn(z, t) -> Prediction`` of the network with ``params`` (and class ``label`` [B])."""
    apply, sched, d = apply_fn(config), schedule(config), config.diffusion

    def denoise_fn(z, t):
        out = apply(params, z, t, label, None)
        return diffusion.predict(
            out, z, sched.logsnr(t), parameterization=d.parameterization, learned_variance=d.learned_variance
        )

    return denoise_fn


def loss_fn(config: ml_collections.ConfigDict) -> Callable:
    """The teacher loss ``(params, batch, key) -> (loss, metrics)`` the config asks for."""
    d = config.diffusion
    return losses.make_diffusion_loss(
        apply_fn(config),
        schedule(config),
        parameterization=d.parameterization,
        weighting=d.weighting,
        loss_type=d.loss,
        learned_variance=d.learned_variance,
        num_timesteps=d.num_timesteps,
        vlb_weight=d.vlb_weight,
    )


def distillation_loss(config: ml_collections.ConfigDict, num_student_steps: int) -> Callable:
    """The student loss ``(params, batch, key, teacher_params) -> (loss, metrics)`` for an N-step student."""
    d = config.diffusion
    return losses.make_distillation_loss(
        apply_fn(config),
        schedule(config),
        parameterization=d.parameterization,
        weighting=d.weighting,
        num_student_steps=num_student_steps,
        learned_variance=d.learned_variance,
    )


def importance_sampler(config: ml_collections.ConfigDict) -> LossAwareSampler | None:
    d = config.diffusion
    return LossAwareSampler(int(d.num_timesteps)) if d.importance_sampling else None


def state_init(config: ml_collections.ConfigDict) -> tuple[Callable, optax.GradientTransformation]:
    """(``init_fn() -> TrainState``, optimizer) for the config; pure, for ``jit``/``eval_shape``."""
    tx = optim.optimizer(config.optim, config.train.num_steps)
    key = jax.random.fold_in(jax.random.key(config.seed), 0)
    sampler = importance_sampler(config)

    def init_fn():
        return train_step.init_state(init_params(config, key), tx, sampler)

    return init_fn, tx
