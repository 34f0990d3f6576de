"""The architectures: output shapes for every config family, variance/two-head channels, class conditioning,
every row of the architecture table."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import apply_fn, config_file, init_params, perturb, small_model

from pdist import cpu_defaults
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


_CONV_PATH = """
import jax, jax.numpy as jnp
import pdist  # before JAX starts its backend, as any program that uses pdist
conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                         dimension_numbers=("NHWC", "HWIO", "NHWC")))
print("ynn" in conv.lower(jnp.ones((2, 16, 16, 32)), jnp.ones((3, 3, 32, 32))).compile().as_text())
"""


@pytest.mark.skipif(not cpu_defaults.flags(), reason="pdist sets no CPU flag for this jaxlib")
def test_importing_pdist_sends_convolutions_through_xlas_own_kernels_unless_xla_flags_chooses():
    """pdist/cpu_defaults.py: a process that imports pdist compiles its convolutions without YNNPACK (faster on a
    CPU: docs/benchmarks.md); a ``ynn_fusion_type`` the user put in ``XLA_FLAGS`` is left as it is."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"

    def uses_ynn(flags: str | None) -> bool:
        run_env = env if flags is None else {**env, "XLA_FLAGS": flags}
        out = subprocess.run([sys.executable, "-c", _CONV_PATH], env=run_env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.strip().splitlines()[-1] == "True"

    assert not uses_ynn(None)
    assert uses_ynn("--xla_cpu_experimental_ynn_fusion_type=+individual_convolution")
    # the flag joins what XLA_FLAGS already holds, once
    environ = {"XLA_FLAGS": "--xla_backend_optimization_level=0"}
    cpu_defaults.apply(environ)
    cpu_defaults.apply(environ)
    assert environ["XLA_FLAGS"] == f"--xla_backend_optimization_level=0 {cpu_defaults.FLAG}"


def test_the_network_reads_checked_parameters_without_flax_rechecking_each_and_wrong_shapes_are_named():
    """pdist/models/checked_apply.py: ModelSpec.apply checks the whole parameter tree once and gives the same output
    as Flax's own apply; a wrong or missing parameter is named; Flax's per-parameter check still holds outside it."""
    import flax

    from pdist.models import checked_apply

    config = small_model(config_file("digits"))
    spec = ModelSpec.of(config)
    params = perturb(init_params(config, jax.random.key(0)), jax.random.key(1))
    z, t = jax.random.normal(jax.random.key(2), (2, 8, 8, 1)), jnp.array([0.2, 0.7])
    ours = jax.jit(spec.apply)(params, z, t, None, None)
    flaxs = jax.jit(lambda p: spec.network.apply({"params": p}, z, spec.noise_input(t), None, None))(params)
    np.testing.assert_array_equal(ours, flaxs)
    # Under pdist's apply no parameter's initializer is traced (Flax's check traces each one).
    traced = []
    real_param = checked_apply._flax_param

    def spy(self, name, init_fn, *args, **kwargs):
        traced.append(name)
        return real_param(self, name, init_fn, *args, **kwargs)

    checked_apply._flax_param = spy
    try:
        jax.make_jaxpr(lambda p: spec.apply(p, z, t, None, None))(params)
        assert traced == [] if checked_apply._SHORTCUT else len(traced) > 10
    finally:
        checked_apply._flax_param = real_param
    assert checked_apply._SHORTCUT == flax.__version__.startswith(checked_apply.TESTED)

    wrong = jax.tree.map(lambda x: x, params)
    wrong["Conv_0"]["kernel"] = jnp.zeros((3, 3, 1, 9))
    with pytest.raises(ValueError, match=r"Parameter Conv_0/kernel has shape \(3, 3, 1, 9\); the network expects "
                                         r"\(3, 3, 1, 8\)"):  # fmt: skip
        spec.apply(wrong, z, t, None, None)
    del wrong["Conv_0"]
    with pytest.raises(ValueError, match=r"lack Conv_0/bias"):
        spec.apply(wrong, z, t, None, None)
    with pytest.raises(flax.errors.ScopeParamShapeError):  # Flax's own check, outside pdist's apply
        bad = jax.tree.map(lambda x: x, params)
        bad["Conv_0"]["kernel"] = jnp.zeros((3, 3, 1, 9))
        spec.network.apply({"params": bad}, z, spec.noise_input(t), None, None)
