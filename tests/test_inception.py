"""The Flax FID Inception-v3 against Keras' InceptionV3 (random weights), its FID-specific last block, the input
resize, and the weight converter (a PyTorch-format file read without PyTorch)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch_files
from flax import traverse_util

from pdist.evaluation.inception import BasicConv, FIDInceptionV3, InceptionE, preprocess
from pdist.interop import pytorch_fid as convert


def _conv_order(module, x) -> tuple[list[tuple[str, ...]], dict]:
    """The BasicConv paths in call order (torchvision's and Keras' creation order), and the variables' shapes
    (traced, not run: every one of them is then set from Keras)."""
    variables = jax.eval_shape(module.init, jax.random.key(0), x)
    order = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, BasicConv) and context.method_name == "__call__":
            order.append(context.module.path)
        return next_fun(*args, **kwargs)

    with __import__("flax").linen.intercept_methods(record):
        jax.eval_shape(module.apply, variables, x)
    return order, variables


def _keras_pairs(model):
    import keras

    def index(layer):
        tail = layer.name.rsplit("_", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    convs = sorted((la for la in model.layers if type(la) is keras.layers.Conv2D), key=index)
    bns = sorted((la for la in model.layers if type(la) is keras.layers.BatchNormalization), key=index)
    return list(zip(convs, bns, strict=True))


def _randomize_keras(pairs, rng):
    for conv, bn in pairs:
        (kernel,) = conv.get_weights()
        fan_in = np.prod(kernel.shape[:3])
        conv.set_weights([rng.normal(0, np.sqrt(2.0 / fan_in), kernel.shape).astype(np.float32)])
        c = kernel.shape[-1]
        bn.set_weights(
            [
                rng.normal(0, 0.1, c).astype(np.float32),  # beta (Keras' InceptionV3 has no gamma)
                rng.normal(0, 0.1, c).astype(np.float32),  # moving mean
                rng.uniform(0.5, 1.5, c).astype(np.float32),  # moving variance
            ]
        )


def _copy_to_flax(pairs, order, variables):
    flat = traverse_util.flatten_dict(variables)
    for (conv, bn), path in zip(pairs, order, strict=True):
        beta, mean, var = bn.get_weights()
        flat[("params", *path, "conv", "kernel")] = conv.get_weights()[0]
        flat[("params", *path, "bn", "scale")] = np.ones_like(beta)
        flat[("params", *path, "bn", "bias")] = beta
        flat[("batch_stats", *path, "bn", "mean")] = mean
        flat[("batch_stats", *path, "bn", "var")] = var
    return traverse_util.unflatten_dict(flat)


def test_flax_inception_matches_keras_inception_v3_with_random_weights():
    import keras

    size = 139
    rng = np.random.default_rng(0)
    base = keras.applications.InceptionV3(include_top=False, weights=None, input_shape=(size, size, 3), pooling="avg")
    inputs = keras.Input((size, size, 3))
    features = base(inputs)
    model = keras.Model(inputs, [features, keras.layers.Dense(1008)(features)])
    pairs = _keras_pairs(base)
    x = rng.uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
    net = FIDInceptionV3(fid_last_block=False)
    order, variables = _conv_order(net, jnp.asarray(x))
    assert len(order) == len(pairs) == 94
    _randomize_keras(pairs, rng)
    variables = _copy_to_flax(pairs, order, variables)
    dense = model.layers[-1]
    variables["params"]["fc"] = {"kernel": dense.get_weights()[0], "bias": rng.normal(size=1008).astype(np.float32)}
    dense.set_weights([variables["params"]["fc"]["kernel"], variables["params"]["fc"]["bias"]])
    want_features, want_logits = (np.asarray(a) for a in model(x))
    got_features, got_logits = jax.jit(net.apply)(variables, jnp.asarray(x))
    scale = np.abs(want_features).max()
    assert scale > 1e-3
    np.testing.assert_allclose(got_features, want_features, atol=1e-4 * scale)
    np.testing.assert_allclose(got_logits, want_logits, atol=1e-4 * np.abs(want_logits).max())
    # The FID network differs only in Mixed_7c's pool, and that changes the features.
    fid_features, _ = jax.jit(FIDInceptionV3().apply)(variables, jnp.asarray(x))
    assert np.abs(np.asarray(fid_features) - want_features).max() > 1e-3 * scale


def _keras_inception_e(x, max_pool: bool):
    import keras
    from keras import layers

    def conv_bn(h, filters, rows, cols):
        h = layers.Conv2D(filters, (rows, cols), padding="same", use_bias=False)(h)
        h = layers.BatchNormalization(scale=False, epsilon=1e-3)(h)
        return layers.Activation("relu")(h)

    b1 = conv_bn(x, 320, 1, 1)
    b3 = conv_bn(x, 384, 1, 1)
    b3 = layers.concatenate([conv_bn(b3, 384, 1, 3), conv_bn(b3, 384, 3, 1)])
    bd = conv_bn(x, 448, 1, 1)
    bd = conv_bn(bd, 384, 3, 3)
    bd = layers.concatenate([conv_bn(bd, 384, 1, 3), conv_bn(bd, 384, 3, 1)])
    pool = layers.MaxPooling2D(3, 1, padding="same") if max_pool else layers.AveragePooling2D(3, 1, padding="same")
    bp = conv_bn(pool(x), 192, 1, 1)
    return keras.Model(x, layers.concatenate([b1, b3, bd, bp]))


@pytest.mark.parametrize("max_pool", [True, False])
def test_inception_e_block_matches_keras_with_either_pool(max_pool):
    """Mixed_7c of the FID network is Keras' InceptionE block with its average pool replaced by a 3x3 max pool."""
    import keras

    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 5, 5, 64)).astype(np.float32)
    model = _keras_inception_e(keras.Input((5, 5, 64)), max_pool)
    pairs = _keras_pairs(model)
    block = InceptionE(max_pool=max_pool)
    order, variables = _conv_order(block, jnp.asarray(x))
    _randomize_keras(pairs, rng)
    variables = _copy_to_flax(pairs, order, variables)
    want = np.asarray(model(x))
    np.testing.assert_allclose(jax.jit(block.apply)(variables, jnp.asarray(x)), want, atol=1e-4 * np.abs(want).max())


def test_preprocess_quantizes_and_resizes_like_tensorflow_half_pixel_bilinear():
    import tensorflow as tf

    x = np.random.default_rng(2).uniform(-1, 1, (2, 32, 32, 1)).astype(np.float32)
    quantized = np.round((x + 1) * 127.5) / 127.5 - 1
    want = tf.image.resize(np.repeat(quantized, 3, -1), (299, 299), method="bilinear").numpy()
    np.testing.assert_allclose(preprocess(jnp.asarray(x)), want, atol=1e-5)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_converter_round_trips_through_a_pytorch_format_file(tmp_path, legacy):
    from pdist.evaluation.inception import SIZE, load_variables

    shapes = jax.eval_shape(FIDInceptionV3().init, jax.random.key(0), jax.ShapeDtypeStruct((1, SIZE, SIZE, 3), "f4"))
    rng = np.random.default_rng(3)
    variables = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)
    state = convert.to_state_dict(variables)
    assert state["Mixed_7c.branch_pool.conv.weight"].shape == (192, 2048, 1, 1)  # torch's OIHW
    assert state["fc.weight"].shape == (1008, 2048)
    state["Mixed_5b.branch1x1.bn.num_batches_tracked"] = np.array(7, np.int64)
    obj, storages = torch_files.state_dict(state)
    (torch_files.write_legacy if legacy else torch_files.write_zip)(tmp_path / "weights.pth", obj, storages)
    convert.convert(str(tmp_path / "weights.pth"), str(tmp_path / "inception.npz"))
    back = load_variables(str(tmp_path / "inception.npz"))
    flat_a, flat_b = traverse_util.flatten_dict(variables), traverse_util.flatten_dict(back)
    assert flat_a.keys() == flat_b.keys()
    for k in flat_a:
        np.testing.assert_array_equal(flat_a[k], flat_b[k])
    del state["fc.bias"]
    np.savez(tmp_path / "broken.npz", **state)
    with pytest.raises(ValueError, match="do not match the FID Inception-v3"):
        convert.convert(str(tmp_path / "broken.npz"), str(tmp_path / "out.npz"))


def test_inception_evaluator_batches_grey_images_through_the_network(tmp_path):
    from pdist.evaluation.inception import SIZE, InceptionEvaluator

    shapes = jax.eval_shape(FIDInceptionV3().init, jax.random.key(0), jax.ShapeDtypeStruct((1, SIZE, SIZE, 3), "f4"))
    rng = np.random.default_rng(4)
    variables = jax.tree.map(lambda s: (0.05 * rng.normal(size=s.shape)).astype(np.float32), shapes)
    variables["batch_stats"] = jax.tree.map(np.abs, variables["batch_stats"])  # positive variances
    convert.save_npz(variables, str(tmp_path / "w.npz"))
    evaluator = InceptionEvaluator(str(tmp_path / "w.npz"), batch_size=2)
    x = rng.uniform(-1, 1, (3, 8, 8, 1)).astype(np.float32)
    features, probs = evaluator.outputs(x)  # batches of 2 and 1 (padded to 2)
    assert features.shape == (3, 2048) and probs.shape == (3, 1008)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    want, logits = jax.jit(FIDInceptionV3().apply)(variables, preprocess(jnp.asarray(x)))
    np.testing.assert_allclose(features, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    np.testing.assert_allclose(probs, jax.nn.softmax(logits), rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="takes \\[N, H, W, 1 or 3\\] images"):
        evaluator.outputs(np.zeros((2, 8, 8, 2)))
