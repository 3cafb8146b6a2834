"""drlih_digits: scikit-learn's bundled 8x8 digits (no download, no manual data)."""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from drlih_jax.data import digits


class Builder(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 digits (1,797 images, 10 classes), one split "train"."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=digits.NUM_CLASSES),
            "id": np.int64,
        }),
        supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Nothing to download: the data ships with scikit-learn.
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    images, labels = digits.digits_arrays()
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": image, "label": int(label), "id": i}
