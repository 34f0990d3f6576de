"""The digits builder and the per-process TFDS pipeline."""

import numpy as np
import pytest
import tensorflow_datasets as tfds
from helpers import config_file
from sklearn.datasets import load_digits

from pdist.data import DatasetUnavailableError, builder, train_batches


def _all(b, split):
    return list(tfds.as_numpy(b.as_dataset(split=split, shuffle_files=False)))


def test_digits_builder_split_and_pixels(tfds_dir):
    b = builder("digits", tfds_dir)
    train, test = _all(b, "train"), _all(b, "test")
    assert (len(train), len(test)) == (1497, 300)
    reference = np.round(load_digits().images * 255 / 16).astype(np.uint8)
    # Every stored example is one of scikit-learn's images with its label, each exactly once.
    keys = {(r["image"][..., 0].tobytes(), int(r["label"])) for r in train + test}
    ref_keys = {(im.tobytes(), int(y)) for im, y in zip(reference, load_digits().target, strict=True)}
    assert keys == ref_keys
    # The split is fixed: the test split is scikit-learn's last 300 examples.
    tail = {im.tobytes() for im in reference[1497:]}
    assert {r["image"][..., 0].tobytes() for r in test} <= tail


def test_the_global_batches_are_the_same_on_any_number_of_processes(tfds_dir):
    """Elastic input: process i's rows of step s are rows i*L.. of the one-process batch of step s, flips included,
    also for a run that one process started and 2, 3 or 4 processes resume at step 7."""
    config = config_file("digits")
    config.data.data_dir, config.data.random_flip = tfds_dir, True
    one = train_batches(config, local_batch_size=48)
    reference = [next(one) for _ in range(40)]  # past one epoch (1497 / 48)
    for count in (2, 3, 4):
        streams = [train_batches(config, local_batch_size=48 // count, process_index=i, process_count=count,
                                 start_step=7) for i in range(count)]  # fmt: skip
        for batch in reference[7:]:
            rows = [next(s) for s in streams]
            for key in ("image", "label"):
                np.testing.assert_array_equal(np.concatenate([r[key] for r in rows]), batch[key])


def test_batches_are_scaled_and_resume_exactly(tfds_dir):
    config = config_file("digits")
    config.data.data_dir = tfds_dir
    config.data.random_flip = True
    it = train_batches(config, local_batch_size=64)
    first = [next(it) for _ in range(30)]  # past one epoch (1497 / 64)
    x = np.concatenate([b["image"] for b in first])
    assert x.shape[1:] == (8, 8, 1) and x.dtype == np.float32
    assert x.min() == -1.0 and x.max() == 1.0
    assert set(np.unique(first[0]["label"])) <= set(range(10))
    resumed = train_batches(config, local_batch_size=64, start_step=25)
    for b in first[25:]:
        r = next(resumed)
        np.testing.assert_array_equal(r["image"], b["image"])
        np.testing.assert_array_equal(r["label"], b["label"])


def test_missing_dataset_is_one_sentence(tmp_path):
    with pytest.raises(DatasetUnavailableError, match="no dataset 'not_a_dataset'"):
        builder("not_a_dataset", str(tmp_path))
