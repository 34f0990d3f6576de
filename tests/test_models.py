"""The architectures: output shapes for every config family, variance/two-head channels, class conditioning,
every row of the architecture table."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import apply_fn, config_file, init_params, perturb, small_model

from pdist.models import ARCHITECTURES
from pdist.spec import ModelSpec

FAMILIES = [
    ("digits", None, 1),
    ("cifar10", None, 3),
    ("cifar10_iddpm", None, 6),  # eps + learned variance
    ("cifar10_iddpm", "vlb", 6),
    ("imagenet64", None, 6),  # x and eps heads
    ("lsun_bedroom128", None, 3),
    ("lsun_church128", None, 3),
]


@pytest.mark.parametrize("name,variant,out_channels", FAMILIES)
def test_output_shape_at_reduced_width(name, variant, out_channels):
    config = config_file(name, variant)
    config.model.ch = 16
    config.model.head_dim = 8
    if config.model.num_heads is not None:
        config.model.num_heads = 2
    size, channels = config.data.image_size, config.data.channels
    spec = ModelSpec.of(config)
    assert spec.network.out_channels == out_channels
    label = jnp.zeros((2,), jnp.int32) if spec.num_classes else None
    # one trace: the network's init runs its forward pass, whose output init_with_output returns
    out, _ = jax.eval_shape(
        lambda: spec.network.init_with_output(
            {"params": jax.random.key(0)}, jnp.zeros((2, size, size, channels)), spec.noise_input(jnp.full((2,), 0.5)),
            label, None,
        )
    )  # fmt: skip
    assert out.shape == (2, size, size, out_channels)


def test_class_embedding_changes_the_output():
    config = small_model(config_file("digits"))
    config.model.class_conditional = True
    params = perturb(init_params(config, jax.random.key(0)), jax.random.key(1))
    apply = apply_fn(config)
    z = jax.random.normal(jax.random.key(2), (1, 8, 8, 1))
    t = jnp.full((1,), 0.5)
    a = apply(params, z, t, jnp.array([3]), None)
    b = apply(params, z, t, jnp.array([7]), None)
    assert float(jnp.max(jnp.abs(a - b))) > 1e-3
    np.testing.assert_array_equal(a, apply(params, z, t, jnp.array([3]), None))


def test_output_layers_start_at_zero_and_dropout_needs_train():
    config = small_model(config_file("digits"))
    config.model.dropout = 0.5
    params = init_params(config, jax.random.key(0))
    apply = apply_fn(config)
    z = jax.random.normal(jax.random.key(2), (2, 8, 8, 1))
    t = jnp.full((2,), 0.3)
    np.testing.assert_array_equal(apply(params, z, t, None, None), 0.0)  # zero-initialized output conv
    params = perturb(params, jax.random.key(1))
    det = apply(params, z, t, None, None)
    np.testing.assert_array_equal(det, apply(params, z, t, None, None))
    assert float(jnp.max(jnp.abs(det - apply(params, z, t, None, jax.random.key(3))))) > 1e-4


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_architecture_builds_from_its_row_and_checks_its_settings(name):
    from pdist.errors import ConfigError
    from pdist.jobs import validate

    config = config_file("digits")
    config.model.name = name
    validate(config)
    net = ModelSpec.of(config).network
    params = init_params(config, jax.random.key(0))
    z = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    out = apply_fn(config)(params, z, jnp.array([-3.0, 5.0]), None, None)
    assert out.shape == (2, 8, 8, net.out_channels) and net.out_channels == 1  # v-parameterization, grey
    # The row's validation sees its own settings: a model that cannot halve an 8x8 image 4 times is refused.
    config.model.ch_mult = (1, 2, 2, 2, 2)
    with pytest.raises(ConfigError, match="must be divisible by"):
        validate(config)
    config.model.name = "no_such_network"
    with pytest.raises(ConfigError, match="config.model.name='no_such_network' is not valid"):
        validate(config)
