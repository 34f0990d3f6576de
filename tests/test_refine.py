"""Schedules refined from gradient norms (pdist.refine): the paper's formula, linear decay from constant norms,
invariance to the norms' scale, a warm-up from norms that fall early, logs read back across resumes, a refined
run that resumes bit-identically, and one sentence for a source that cannot serve."""

import os
import shutil

import numpy as np
import pytest
from clu import metric_writers
from helpers import assert_same_tree, config_file, run_in_process, small_config

import pdist
from pdist import build, optim, refine
from pdist.jobs import train
from pdist.runtime import events


def _log(directory, steps, **series):
    """TensorBoard events as the train loop writes them (clu), one file per call (a process start)."""
    writer = metric_writers.create_default_writer(str(directory))
    for i, step in enumerate(steps):
        writer.write_scalars(int(step), {name: float(values[i]) for name, values in series.items()})
    writer.close()


def _source(directory, norms, log_every=5):
    """A workdir whose log holds ``norms`` (l1 and l2 alike) every ``log_every`` steps."""
    steps = log_every * np.arange(1, len(norms) + 1)
    _log(directory, steps, grad_l1=norms, grad_norm=norms)
    return str(directory)


def _by_definition(norms, optimizer):
    """eta_t = w_t * sum_{s > t} w_s, w = 1/G (Adam, l1 norms) or 1/G^2 (SGD), scaled to a maximum of 1."""
    w = [1 / g if optimizer == "adam" else 1 / g**2 for g in norms]
    eta = np.array([w[t] * sum(w[t + 1 :]) for t in range(len(w))])
    return eta / eta.max()


def _schedule(source: str, optimizer: str, total: int) -> np.ndarray:
    """The refined multipliers a run of ``total`` steps with ``optimizer`` reads from ``source``'s logs."""
    settings = config_file("digits").optim
    settings.schedule, settings.refine_from, settings.optimizer = "refined", source, optimizer
    return build.refined_schedule(settings, total)


def test_the_refined_schedule_is_the_papers_formula():
    norms = np.random.default_rng(0).uniform(0.5, 3.0, 40)
    for name in ("adam", "sgd"):
        np.testing.assert_allclose(refine.refined(norms, name), _by_definition(norms, name), rtol=1e-12)
        assert refine.refined(norms, name)[-1] == 0.0 and refine.refined(norms, name).max() == 1.0


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_constant_norms_give_exactly_the_linear_decay_and_scale_changes_nothing(tmp_path, name):
    settings = config_file("digits").optim
    settings.optimizer, settings.learning_rate, settings.warmup_steps = name, 3e-3, 0
    settings.schedule = "linear"
    for total in (10, 37, 200):
        linear = np.array([float(optim.optimizer(settings, total).learning_rate(s)) for s in range(total + 1)])
        refined = settings.copy_and_resolve_references()
        refined.schedule, refined.refine_from = "refined", _source(tmp_path / f"c{total}", np.full(30, 0.7))
        rates = np.asarray(build.optimizer(refined, total).args["table"])
        np.testing.assert_allclose(rates, linear, rtol=0, atol=1e-6 * 3e-3)  # the same numbers, both in float32
    norms = np.random.default_rng(1).uniform(0.5, 3.0, 40)
    a = _schedule(_source(tmp_path / "a", norms), name, 100)
    b = _schedule(_source(tmp_path / "b", 7.3 * norms), name, 100)
    np.testing.assert_allclose(a, b, rtol=1e-6)  # the events hold float32 values


def test_norms_that_fall_early_give_a_warm_up_and_a_spike_is_filtered_out(tmp_path):
    t = np.arange(50)
    falling = 1.0 + 9.0 * np.exp(-t / 3.0)  # large over the first tenth of the run, then flat
    s = _schedule(_source(tmp_path / "f", falling), "adam", 200)
    peak = int(np.argmax(s))
    assert s[0] < 0.3 and 5 < peak < 100, (s[0], peak)  # it rises over the first part of the run
    assert np.all(np.diff(s[peak:]) <= 0) and s[-1] == 0.0
    spiky = np.full(50, 0.7)
    spiky[20] = 50.0  # one bad window: the median filter (10% of the run) removes it
    flat = _schedule(_source(tmp_path / "flat", np.full(50, 0.7)), "adam", 100)
    np.testing.assert_allclose(_schedule(_source(tmp_path / "s", spiky), "adam", 100), flat, rtol=1e-12)


def _reference_median(values, fraction=0.1):
    """The reference's filter written out (facebookresearch/adaptive_scheduling, README and visual.py): odd width
    ``2 * (int(fraction * n) // 2) + 1``, the end padded by reflection with twice the width (np.pad 'reflect',
    the edge not repeated), each value the median of its centred window, the start's window filled with the
    first value (scipy's mode='nearest'); here by explicit windows, no scipy."""
    n = len(values)
    width = 2 * (int(fraction * n) // 2) + 1
    half, pad = width // 2, 2 * width
    padded = np.concatenate([values, values[-2 : -pad - 2 : -1]])  # reflect: v[n-2], v[n-3], ...
    padded = np.concatenate([np.full(half, padded[0]), padded, np.full(half, padded[-1])])
    return np.array([np.median(padded[i : i + width]) for i in range(n)])


def test_the_median_filter_is_the_references_width_and_end_padding():
    rng = np.random.default_rng(3)
    for n in (37, 100, 201):
        values = rng.lognormal(size=n)
        np.testing.assert_array_equal(refine.median_filtered(values), _reference_median(values))
    # The definition pins both: a rising end reads lower under reflection than under edge padding, and a burst
    # of half the width (5 of 100 values: width 11) is removed where one value longer (6) survives.
    ramp = np.concatenate([np.ones(80), np.linspace(1.0, 3.0, 20)])
    edge = np.array([np.median(np.pad(ramp, 5, mode="edge")[i : i + 11]) for i in range(100)])
    assert refine.median_filtered(ramp)[-1] < edge[-1]
    for length, survives in ((5, False), (6, True)):
        burst = np.ones(100)
        burst[40 : 40 + length] = 50.0
        assert (refine.median_filtered(burst).max() == 50.0) == survives, length


def test_a_log_written_across_resumes_keeps_the_newest_value_of_each_step(tmp_path):
    _log(tmp_path, [5, 10, 15, 20], grad_l1=[1.0, 2.0, 3.0, 4.0])
    _log(tmp_path, [15, 20, 25], grad_l1=[30.0, 40.0, 50.0])  # a resumed run logs its windows again
    steps, values = events.scalars(str(tmp_path), "grad_l1")
    assert steps.tolist() == [5, 10, 15, 20, 25] and values.tolist() == [1.0, 2.0, 30.0, 40.0, 50.0]


@pytest.mark.heavy
def test_a_refined_run_uses_its_table_and_resumes_bit_identically(tfds_dir, tmp_path):
    falling = 1.0 + 9.0 * np.exp(-np.arange(40) / 4.0)
    config = small_config(tfds_dir, num_steps=12, checkpoint_every=6, log_every=3, batch_size=16)
    config.optim.schedule, config.optim.refine_from = "refined", _source(tmp_path / "source", falling)
    whole = train.run(config, str(tmp_path / "whole"))
    cut = tmp_path / "cut" / "checkpoints"
    os.makedirs(cut)
    shutil.copytree(tmp_path / "whole" / "checkpoints" / "6", cut / "6")
    assert_same_tree(whole, train.run(config, str(tmp_path / "cut")))
    # The run applied its table's rates, warm-up included: the loop logs the mean over each window, a step late
    # (it never waits on the running step), so its windows hold counts 0-1, 2-4, 5-7 and, at the end, 8-11.
    table = np.float32(config.optim.learning_rate * _schedule(config.optim.refine_from, "adam", 12))
    steps, logged = events.scalars(str(tmp_path / "whole"), "learning_rate")
    expected = [table[a:b].mean() for a, b in ((0, 2), (2, 5), (5, 8), (8, 12))]
    assert steps.tolist() == [3, 6, 9, 12]
    np.testing.assert_allclose(logged, expected, rtol=1e-6)
    assert logged[0] < logged[1] and logged[-1] < logged[1]
    # Its own log serves as the next run's source: it logged the l1 norm every window.
    assert len(events.scalars(str(tmp_path / "whole"), "grad_l1")[0]) == 4
    assert pdist.load(str(tmp_path / "whole")).config.optim.schedule == "refined"


@pytest.mark.parametrize(
    "source,expected",
    [
        ("missing", "is not a folder"),
        ("short", "holds 4 logged values of grad_l1 (at least 10 needed)"),
        ("empty", "holds 0 logged values of grad_l1"),
    ],
)
def test_a_source_that_cannot_serve_is_one_sentence_before_anything_runs(tmp_path, tfds_dir, source, expected):
    path = tmp_path / source
    if source == "short":
        _source(path, np.ones(4))
    elif source == "empty":
        path.mkdir()
    out = tmp_path / "w"
    status, message, _ = run_in_process(
        f"--workdir={out}", f"--config.data.data_dir={tfds_dir}", "--config.optim.schedule=refined",
        f"--config.optim.refine_from={path}",
    )  # fmt: skip
    assert status == 2 and message.startswith("error: ") and expected in message, message
    assert message.count(". ") == 0 and not out.exists()


def test_every_writer_method_writes_what_tensorboard_reads_back(tmp_path):
    import io
    import wave

    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    writer = events.EventWriter(str(tmp_path))
    rng = np.random.default_rng(0)
    value = rng.normal(size=(3, 2)).astype(np.float32)
    writer.write_summaries(2, {"tensor": value})
    video = rng.integers(0, 256, size=(5, 4, 6, 3), dtype=np.uint8)  # T, H, W, C
    writer.write_videos(3, {"video": video})
    clips = np.stack([np.linspace(-1, 1, 80), np.sin(np.arange(80.0))])[:, :, None]  # N=2, T=80, C=1
    writer.write_audios(4, {"audio": clips}, sample_rate=8000)
    writer.close()

    log = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "tensors": 0, "audio": 0})
    log.Reload()
    (event,) = log.Tensors("tensor")
    assert event.step == 2
    np.testing.assert_array_equal(events.tensor_util.make_ndarray(event.tensor_proto), value)
    (image,) = log.Images("video")
    gif = Image.open(io.BytesIO(image.encoded_image_string))
    assert image.step == 3 and gif.format == "GIF" and gif.n_frames == 5 and gif.size == (6, 4)
    (audio,) = log.Tensors("audio")  # the audio plugin's tensor form: [N, 2] encoded clips and labels
    encoded = events.tensor_util.make_ndarray(audio.tensor_proto)
    assert audio.step == 4 and encoded.shape == (2, 2)
    with wave.open(io.BytesIO(encoded[1, 0])) as f:
        assert (f.getframerate(), f.getnchannels(), f.getnframes()) == (8000, 1, 80)
        pcm = np.frombuffer(f.readframes(80), "<i2")
    np.testing.assert_allclose(pcm / 32767, np.sin(np.arange(80.0)), atol=1 / 32767)
