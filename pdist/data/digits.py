"""``digits``: scikit-learn's bundled handwritten digits as a TFDS dataset.

1,797 grey 8x8 images (UCI optical digits, values 0..16, stored here as
uint8 0..255) with labels 0..9. The split is fixed: the first 1,497 examples
in scikit-learn's order are ``train``, the last 300 ``test``. The data ships
inside scikit-learn, so preparing this dataset needs no network.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

NUM_TRAIN = 1497


class Digits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's ``load_digits`` as 8x8x1 uint8 images with labels."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1)),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {"train": self._generate_examples(0, NUM_TRAIN), "test": self._generate_examples(NUM_TRAIN, None)}

    def _generate_examples(self, start, stop):
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
        for i in range(start, stop if stop is not None else len(images)):
            yield i, {"image": images[i], "label": int(digits.target[i])}
