"""drlih_class_folder: the images of a class-folder tree, decoded with Pillow and stored as PNG."""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from drlih_jax import errors
from drlih_jax.data import folder_tree
from drlih_jax.data import image_io
from drlih_jax.data.tfds_builders import decode_config

_CHUNK = 2048  # Images decoded per thread-pool call.


class Builder(decode_config.NamedDecodeConfigs, tfds.core.GeneratorBasedBuilder):
  """A class-folder tree: image (uint8 HxWx3, PNG), label (ClassLabel), id (int64), path (Text).

  Extra constructor argument: `num_workers`, the Pillow decoding threads (default 8).
  """

  RELEASE_NOTES = {"1.0.0": "Decoded with Pillow, stored as PNG; the tree's path in the config.",
                   "2.0.0": decode_config.VERSION_2_NOTE}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Pass the tree as manual_dir (`tfds build ... --manual_dir=ROOT`, or
  `download_config=tfds.download.DownloadConfig(manual_dir=ROOT)`), laid out as

      ROOT/<split>/<class>/<image>      e.g. ROOT/train/cat/0001.jpg, ROOT/test/cat/0001.jpg

  Every sub-folder of ROOT is a split, every sub-folder of a split a class (the same classes in every
  split). ROOT may be a local folder or a gs:// URL.
  """

  def __init__(self, *, num_workers: int = 8, **kwargs):
    self._num_workers = num_workers
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    # Label names: the tree's class folders, set when preparing.
    return self.dataset_info_from_configs(
        features=decode_config.features(self.builder_config, tfds.features.ClassLabel()),
        supervised_keys=("image", "label"), metadata=tfds.core.MetadataDict())

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
