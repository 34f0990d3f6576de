"""Classifier-free guidance: the guided prediction is one blend in x, eps and v alike; label dropout replaces
labels at its rate, once per batch, and trains the null class; guidance refuses a model that never saw it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import conditional_model, config_file, nonzero_params, small_model

from pdist import build, diffusion, guidance, losses
from pdist.errors import ConfigError
from pdist.jobs import validate
from pdist.sampling import ImageSampler, Sampling
from pdist.spec import ModelSpec


@pytest.fixture(scope="module")
def model():
    config = conditional_model()
    return config, nonzero_params(config)  # the class embedding shows in every output


def test_the_guided_prediction_is_the_same_blend_of_x_eps_and_v_and_stays_consistent(model):
    config, params = model
    z = jax.random.normal(jax.random.key(2), (4, 8, 8, 1))
    t = jnp.array([0.9, 0.6, 0.3, 0.1])
    label = jnp.array([1, 3, 5, 7])
    w = jnp.array([0.0, 0.5, 1.5, 4.0])
    guided = jax.jit(lambda p, lb, g: ModelSpec.of(config).bind(p, lb, g)(z, t))(params, label, w)
    unguided = jax.jit(lambda p, lb: ModelSpec.of(config).bind(p, lb)(z, t))
    cond, uncond = unguided(params, label), unguided(params, jnp.full_like(label, guidance.null_label(10)))
    logsnr = ModelSpec.of(config).schedule.logsnr(t)
    alpha, sigma = (diffusion.bcast(a, z) for a in diffusion.alpha_sigma_from_logsnr(logsnr))
    wb = diffusion.bcast(w, z)
    for get in (lambda p: p.x, lambda p: p.eps, lambda p: diffusion.to_v(p, logsnr)):
        np.testing.assert_allclose(get(guided), (1 + wb) * get(cond) - wb * get(uncond), atol=2e-5)
    np.testing.assert_allclose(alpha * guided.x + sigma * guided.eps, z, atol=2e-5)
    np.testing.assert_allclose(guided.x[0], cond.x[0], atol=1e-6)  # w = 0: the conditional model
    assert float(jnp.max(jnp.abs(cond.x - uncond.x))) > 1e-3  # the null class is a class of its own


def test_label_dropout_replaces_labels_at_its_rate_once_per_batch():
    n, p = 20_000, 0.25
    batch = {"image": jnp.zeros((n, 1)), "label": jnp.arange(n) % 10}
    drawn = jax.jit(losses.drawer(None, label_dropout=p, num_classes=10))(batch, jax.random.key(0))
    dropped = np.asarray(drawn["label_dropped"])
    assert abs(dropped.mean() - p) < 4 * np.sqrt(p * (1 - p) / n)
    np.testing.assert_array_equal(np.asarray(drawn["label"])[dropped], 10)
    np.testing.assert_array_equal(np.asarray(drawn["label"])[~dropped], np.asarray(batch["label"])[~dropped])
    again = losses.drawer(None, label_dropout=p, num_classes=10)(drawn, jax.random.key(1))  # a micro-batch
    np.testing.assert_array_equal(again["label"], drawn["label"])
    plain = losses.drawer(None)(batch, jax.random.key(0))
    assert "label_dropped" not in plain and plain["label"] is batch["label"]


@pytest.mark.parametrize("label_dropout", [0.0, 0.5])
def test_only_label_dropout_trains_the_null_class(model, label_dropout):
    config, params = model
    config = conditional_model(label_dropout)
    loss = build.loss(config, ModelSpec.of(config))
    batch = {"image": jax.random.uniform(jax.random.key(3), (32, 8, 8, 1), minval=-1), "label": jnp.arange(32) % 10}
    grads = jax.jit(jax.grad(lambda p: loss(p, batch, jax.random.key(4))[0]))(params)
    (table,) = [v for k, v in jax.tree_util.tree_leaves_with_path(grads) if "Embed" in jax.tree_util.keystr(k)]
    assert table.shape[0] == 11  # ten classes and the null class
    null_grad = float(jnp.abs(table[10]).max())
    assert null_grad > 0 if label_dropout else null_grad == 0.0


def test_guidance_needs_a_conditional_model_trained_with_label_dropout(model):
    config, params = model
    for bad in (conditional_model(0.0), small_model(config_file("digits"))):
        with pytest.raises(ConfigError, match="Guidance needs"):
            ModelSpec.of(bad).bind(params, jnp.zeros((1,), jnp.int32), 1.0)
    unconditional = small_model(config_file("digits"))
    unconditional.train.label_dropout = 0.1
    with pytest.raises(ConfigError, match="class_conditional=True"):
        validate(unconditional)
    validate(config_file("digits_cond"))
    config = conditional_model(1.0)
    with pytest.raises(ConfigError, match=r"must be in \[0, 1\)"):
        validate(config)


@pytest.mark.parametrize("method", ["ddim", "dpmpp_2m"])
def test_sampling_with_guidance_zero_is_the_conditional_model_and_a_weight_changes_it(model, method):
    config, params = model
    sampler = ImageSampler(ModelSpec.of(config))
    how = Sampling(method=method, num_steps=4, grid="uniform", seed=0, batch_size=6)  # two batches, one padded
    plain = sampler(params, 10, how)
    np.testing.assert_allclose(sampler(params, 10, how.replace(guidance=0.0)), plain, atol=2e-5)
    assert np.abs(sampler(params, 10, how.replace(guidance=3.0)) - plain).max() > 1e-3


def test_evaluation_scores_each_weight_with_the_requested_class_accuracy(model, tfds_dir, evaluator_cache):
    import ml_collections

    from pdist.data.pipeline import load_split
    from pdist.evaluation import DigitsEvaluator
    from pdist.evaluation.quality import evaluate_model
    from pdist.evaluation.report import markdown
    from pdist.evaluation.score import Reference
    from pdist.pretrained import Pretrained

    config, params = model
    pretrained = Pretrained(config, params, params, 0, {}, "nowhere")
    evaluator = DigitsEvaluator(data_dir=tfds_dir, cache_dir=evaluator_cache)
    ref = Reference.from_features(evaluator.features(load_split("digits", "train", tfds_dir, 8, 1)["image"]), 20)
    settings = ml_collections.ConfigDict(
        dict(seed=0, num_seeds=2, num_samples=20, pr_samples=20, is_splits=1, clip_x=True, use_ema=True, batch_size=20)
    )
    rows = evaluate_model(pretrained, evaluator, ref, [("ddim", 4, "uniform")], settings, weights=(None, 0.0, 2.0))
    assert [(r["guidance"], r["call_batch"], r["nfe"]) for r in rows] == [(None, 1, 4), (0.0, 2, 4), (2.0, 2, 4)]
    for plain, zero in zip(rows[0]["per_seed"], rows[1]["per_seed"], strict=True):
        assert zero["fd"] == pytest.approx(plain["fd"], rel=1e-3)  # w = 0 samples the conditional model
        assert zero["accuracy"] == plain["accuracy"]
    assert rows[2]["fd"]["values"] != rows[0]["fd"]["values"]
    assert all(0 <= v <= 1 for r in rows for v in r["accuracy"]["values"])
    table = markdown(rows, "t")
    assert "| ddim w=2 | 4 | uniform | 4 |" in table and "class accuracy" in table
    assert "calls the network NFE times on twice the batch" in table  # what w's NFE means, in a guided report
