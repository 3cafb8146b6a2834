"""drlih_image_list: the images named by DeepHash-pytorch list files, decoded with Pillow, stored as PNG."""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
import tensorflow_datasets as tfds

from drlih_jax import errors
from drlih_jax.data import image_io
from drlih_jax.data import image_lists
from drlih_jax.data.tfds_builders import decode_config

_CHUNK = 2048  # Images decoded per thread-pool call.


class Builder(decode_config.NamedDecodeConfigs, tfds.core.GeneratorBasedBuilder):
  """List files: image (uint8 HxWx3, PNG), label (uint8 multi-hot [C]), id (int64), path (Text).

  Extra constructor arguments: `list_dir`, the folder of the list files when it is not manual_dir
  itself (a local path or a URL), and `num_workers`, the Pillow decoding threads (default 8).
  """

  RELEASE_NOTES = {"1.0.0": "Decoded with Pillow, stored as PNG; the list and image folders in the config.",
                   "2.0.0": decode_config.VERSION_2_NOTE + " (For lists, the list files' bytes too.)"}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Pass the image folder as manual_dir (`tfds build ... --manual_dir=ROOT`, or
  `download_config=tfds.download.DownloadConfig(manual_dir=ROOT)`). The list files train.txt and test.txt
  (and database.txt when there is one) are read from ROOT, or from the builder's `list_dir` argument.
  Each line is `<image path relative to ROOT> <0/1 labels>`. ROOT may be a local folder or a gs:// URL.
  """

  def __init__(self, *, list_dir: Optional[str] = None, num_workers: int = 8, **kwargs):
    self._list_dir = list_dir
    self._num_workers = num_workers
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    # Multi-hot labels; their width is metadata["num_labels"].
    label = tfds.features.Tensor(shape=(None,), dtype=np.uint8)
    return self.dataset_info_from_configs(features=decode_config.features(self.builder_config, label),
                                          metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = os.fspath(dl_manager.manual_dir)
    index = image_lists.index_lists(self._list_dir or root, root)
    self.info.metadata.update(fingerprint=index.fingerprint(self._num_workers), num_labels=index.num_labels,
                              root=index.root)
    # Images listed by several files are decoded once: id -> PNG bytes, kept for those images only.
    counts = np.bincount(np.concatenate([np.unique(p) for p in index.positions.values()]),
                         minlength=len(index.paths))
    self._shared = set(np.flatnonzero(counts > 1).tolist())
    self._decoded = {}
    return {split: self._generate_examples(index, split) for split in index.files}

  def _generate_examples(self, index: image_lists.ListIndex, split: str):
    config = self.builder_config
    ids = np.unique(index.positions[split])
    kept = 0
    for start in range(0, len(ids), _CHUNK):
      chunk = [int(i) for i in ids[start:start + _CHUNK]]
      todo = [i for i in chunk if i not in self._decoded]
      result = image_io.load_images(
          [index.paths[i] for i in todo], image_size=config.image_size, on_bad_image=config.on_bad_image,
          num_workers=self._num_workers, describe=lambda k, todo=todo: index.where[todo[k]],
          expected_hw=getattr(self, "_expected_hw", None))
      if config.image_size is None and len(result.images):
        self._expected_hw = result.images.shape[1:3]
      fresh = {todo[int(k)]: image_io.encode_png(image) for image, k in zip(result.images, result.kept)}
      self._decoded.update((i, png) for i, png in fresh.items() if i in self._shared)
      for i in chunk:
        png = fresh.get(i, self._decoded.get(i))
        if png is not None:  # None: skipped under on_bad_image = "skip".
          kept += 1
          yield i, {"image": png, "label": index.labels[i], "id": i, "path": index.listed[i]}
    if not kept:
      raise errors.DataError(f"list file {index.files[split].path}: source split {split!r} has no usable image "
                       "(every image was skipped)")
