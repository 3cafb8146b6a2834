"""drlih_class_folder: the images of a class-folder tree, decoded with Pillow and stored as PNG."""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from drlih_jax import errors
from drlih_jax.data import folder_tree
from drlih_jax.data import image_io
from drlih_jax.data.tfds_builders import decode_config

_CHUNK = 2048  # Images decoded per thread-pool call.


class Builder(tfds.core.GeneratorBasedBuilder):
  """A class-folder tree: image (uint8 HxWx3, PNG), label (ClassLabel), id (int64), path (Text).

  Extra constructor argument: `num_workers`, the Pillow decoding threads (default 8).
  """

  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {
      "1.0.0": "Decoded with Pillow, stored as PNG; the tree's path in the config.",
      "2.0.0": "The tree comes in as manual_dir; configs name the decode settings; the relative path is a "
               "feature; the tree's fingerprint (relative paths and sizes) is in the metadata.",
  }
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Pass the tree as manual_dir (`tfds build ... --manual_dir=ROOT`, or
  `download_config=tfds.download.DownloadConfig(manual_dir=ROOT)`), laid out as

      ROOT/<split>/<class>/<image>      e.g. ROOT/train/cat/0001.jpg, ROOT/test/cat/0001.jpg

  Every sub-folder of ROOT is a split, every sub-folder of a split a class (the same classes in every
  split). ROOT may be a local folder or a gs:// URL.
  """
  BUILDER_CONFIGS = [decode_config.from_name(decode_config.DEFAULT_NAME)]

  def __init__(self, *, num_workers: int = 8, **kwargs):
    self._num_workers = num_workers
    super().__init__(**kwargs)

  @classmethod
  def get_builder_config(cls, name, version=None):
    """A predefined config, or the `<size>_<policy>` config the name describes (see `decode_config`)."""
    return super().get_builder_config(name, version) or decode_config.from_name(name)

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(size, size, 3) if size else (None, None, 3), dtype=np.uint8,
                                         encoding_format="png"),
            "label": tfds.features.ClassLabel(),  # Names: the tree's class folders, set when preparing.
            "id": tfds.features.Scalar(dtype=np.int64),
            "path": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    tree = folder_tree.list_tree(os.fspath(dl_manager.manual_dir))
    self.info.features["label"].names = list(tree.class_names)
    self.info.metadata.update(fingerprint=tree.fingerprint(self._num_workers), root=tree.root)
    return {split: self._generate_examples(tree, split) for split in tree.splits}

  def _generate_examples(self, tree: folder_tree.FolderTree, split: str):
    config = self.builder_config
    rels, labels, ids = tree.splits[split]
    files = tree.files(split)
    kept = 0
    for start in range(0, len(files), _CHUNK):
      result = image_io.load_images(files[start:start + _CHUNK], image_size=config.image_size,
                                    on_bad_image=config.on_bad_image, num_workers=self._num_workers,
                                    expected_hw=getattr(self, "_expected_hw", None))
      if config.image_size is None and len(result.images):
        self._expected_hw = result.images.shape[1:3]  # Native sizes must agree across chunks and splits.
      kept += len(result.kept)
      for image, k in zip(result.images, result.kept):
        i = start + int(k)
        yield int(ids[i]), {"image": image_io.encode_png(image), "label": int(labels[i]), "id": int(ids[i]),
                            "path": rels[i]}
    if not kept:
      raise errors.DataError(f"class-folder tree {tree.root}: source split {split!r} has no usable image (every "
                       "image was skipped)")
