"""Streaming input mode: `tf.data` batches decoded and augmented on the host, in a resumable order.

The training images are read once from the tfds builders (`folder_builder`, `list_builder`, or the official
tfds `cifar10`) with image decoding skipped, so the host keeps only the encoded (PNG) bytes of its shard
(about 3 KB per 32x32 image); every step decodes and augments one batch in `tf.data` (parallel, in a
deterministic order) and prefetches the next ones. Use it where the decoded training set does not fit on
the device, or for the 224x224 VGG setting whose augmentation resizes.

Order: the protocol's training set (`protocols.protocol_ids`, same seed, same ids as
`load_retrieval_data(...).train`, in ascending id order) is split evenly over the processes: process p of P
takes the contiguous rows [p * m, (p + 1) * m), m = n // P (the last n - P * m rows are dropped when
P > 1). Process p's batch at step s is rows `train_indices_for_step(seed, s, batch_size // P, m)` of its
shard: a pure numpy function of (seed, step), so an iterator started at `start_step` continues a
checkpointed run exactly, and the device-resident mode can draw the same order from the same function.
With `sampler = "class_balanced"` (and `classes_per_batch`, `images_per_class`), process p's batch at step s
is `balanced_indices_for_step(seed * 1_000_003 + p, s, shard labels, classes_per_batch / P,
images_per_class)` instead: triplet-ready batches, equally resumable. Augmentation randomness is stateless, keyed by (seed, process, step, position in the batch), so it resumes
exactly as well.

`config` keys (a ConfigDict or dict): `dataset` (the dataset config of `protocols`), `batch_size` (global,
divisible by the process count), and optionally `seed` (data order, default 0), `augment` (one of
`AUGMENTS`, default "none"), `crop_size` (output size of the resize/random-resized crops, default 224),
`resize_size` (the resize before "resize_crop_flip", default 256), `pad` ("pad_crop_flip", default 4),
`image_dtype` ("uint8", default, or "float32" = pixels / 255), `sampler` ("epoch", default, or
"class_balanced" with `classes_per_batch` and `images_per_class`, whose product is `batch_size`).

Augmentations: "none" (the stored pixels), "flip" (random horizontal flip), "pad_crop_flip" (zero-pad by
`pad`, random crop back to the stored size, flip: the CIFAR recipe), "resize_crop_flip" (bilinear resize to
`resize_size`, random `crop_size` crop, flip: the DRLIH authors' 256 -> 224 recipe), and
"random_resized_crop_flip" (area 8-100 %, aspect 3/4-4/3, resized to `crop_size`, flip: Inception style).
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

import numpy as np

from drlih_jax.data import protocols

AUGMENTS = ("none", "flip", "pad_crop_flip", "resize_crop_flip", "random_resized_crop_flip")
SAMPLERS = ("epoch", "class_balanced")
_STEP_LIMIT = 2**62


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """The order of the n training rows in one epoch (numpy PCG64 seeded with (seed, epoch))."""
  return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def train_indices_for_step(seed: int, step: int, batch_size: int, n: int) -> np.ndarray:
  """Rows of the training set that make up batch `step` (a pure function: no state, any step).

  The rows are an endless sequence of epochs, each a fresh permutation of range(n); batch `step` is
  positions [step * batch_size, (step + 1) * batch_size) of that sequence (a batch may straddle two
  epochs).

  Args:
    seed: the data-order seed.
    step: the training step (>= 0).
    batch_size: rows per batch (per process).
    n: number of training rows.

  Returns:
    int64 [batch_size] row indices in [0, n).
  """
  if n <= 0 or batch_size <= 0 or step < 0:
    raise ValueError(f"need n > 0, batch_size > 0, step >= 0; got n={n}, batch_size={batch_size}, step={step}")
  positions = int(step) * int(batch_size) + np.arange(batch_size, dtype=np.int64)
  epochs = positions // n
  out = np.empty(batch_size, np.int64)
  for epoch in np.unique(epochs):
    mask = epochs == epoch
    out[mask] = epoch_permutation(seed, int(epoch), n)[positions[mask] % n]
  return out


def balanced_indices_for_step(seed: int, step: int, labels: np.ndarray, classes_per_batch: int,
                              images_per_class: int) -> np.ndarray:
  """Rows of a class-balanced batch for `step` (a pure function of seed, step and the labels).

  Draws `classes_per_batch` distinct classes among those with at least `images_per_class` members, then
  `images_per_class` distinct members of each (numpy PCG64 seeded with (seed, step)). Multi-label data:
  an image is a member of every class it carries (so it may appear twice in a batch); unlabelled images
  are never drawn.

  Args:
    seed: the data-order seed.
    step: the training step.
    labels: int [n] class ids or multi-hot [n, C].
    classes_per_batch: classes per batch.
    images_per_class: images per class.

  Returns:
    int64 [classes_per_batch * images_per_class] rows, grouped by class.
  """
  eligible = _eligible_classes(labels, classes_per_batch, images_per_class)
  return _balanced_draw(seed, step, eligible, classes_per_batch, images_per_class)


def _eligible_classes(labels, classes_per_batch: int, images_per_class: int) -> list[np.ndarray]:
  """Member rows of every class with at least `images_per_class` members, in class order."""
  labels = np.asarray(labels)
  if labels.ndim == 1:
    members = [np.flatnonzero(labels == c) for c in range(int(labels.max()) + 1)]
  else:
    members = [np.flatnonzero(labels[:, c] > 0) for c in range(labels.shape[1])]
  eligible = [m for m in members if len(m) >= images_per_class]
  if len(eligible) < classes_per_batch or images_per_class < 1:
    raise ValueError(f"{classes_per_batch} classes per batch with {images_per_class} images each: only "
                     f"{len(eligible)} classes have {images_per_class} training images")
  return eligible


def _balanced_draw(seed, step, eligible, classes_per_batch, images_per_class) -> np.ndarray:
  rng = np.random.default_rng([int(seed), int(step)])
  classes = rng.choice(len(eligible), classes_per_batch, replace=False)
  return np.concatenate([rng.choice(eligible[c], images_per_class, replace=False) for c in classes]).astype(np.int64)


def _read_encoded(builder, split: str, id_fn=None):
  """(encoded image bytes [n] object, labels, ids) of a prepared tfds split, images left encoded."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  from drlih_jax.data import folder_builder  # pylint: disable=import-outside-toplevel
  arrays = folder_builder.read_all(builder, split, decoders={"image": tfds.decode.SkipDecoding()})
  ids = arrays["id"]
  if id_fn is not None:
    ids = np.array([id_fn(t.decode() if isinstance(t, bytes) else str(t)) for t in ids], np.int64)
  return arrays["image"], arrays["label"], ids.astype(np.int64)


def train_table(dataset_config) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The protocol's training set as encoded images: (bytes [n] object, labels, int64 ids), id order.

  Prepares the tfds builder of the configured source once (like `load_retrieval_data` with loader "tfds").
  """
  values = protocols.validate_config(dataset_config)
  if values["name"] == "digits":
    raise ValueError("dataset.name 'digits' has no streaming mode (it is tiny: use the device-resident mode)")
  common = dict(data_dir=values["data_dir"], image_size=values["image_size"],
                on_bad_image=values["on_bad_image"], num_workers=int(values["num_workers"]))
  id_fn = None
  if values["source"] == "tfds":
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top,import-outside-toplevel
    if values["image_size"] not in (None, 32):
      raise ValueError("streaming from dataset.source 'tfds' keeps cifar10's 32x32 pixels: set "
                       "dataset.image_size None and resize in the augmentation (config.augment)")
    builder = tfds.builder("cifar10", data_dir=values["data_dir"])
    builder.download_and_prepare()
    split_names = ("train", "test")
    id_fn = protocols._cifar10_tfds_id  # pylint: disable=protected-access
  elif values["source"] == "folder":
    from drlih_jax.data import folder_builder  # pylint: disable=import-outside-toplevel
    tree = folder_builder.list_tree(values["root"])
    builder = folder_builder.make_builder(tree, **common)
    folder_builder.prepare(builder)
    split_names = tuple(tree.splits)
  else:
    from drlih_jax.data import folder_builder  # pylint: disable=import-outside-toplevel
    from drlih_jax.data import list_builder  # pylint: disable=import-outside-toplevel
    required = protocols.REQUIRED_LISTS[values["name"]]
    index = list_builder.index_lists(values["list_dir"], values["root"],
                                     protocols.LABEL_WIDTHS.get(values["name"]), required)
    builder = list_builder.make_builder(index, required=required, **common)
    folder_builder.prepare(builder)
    split_names = tuple(index.files)
  parts = {s: _read_encoded(builder, s, id_fn) for s in split_names}
  ids = protocols.protocol_ids(values["name"], {s: p[1] for s, p in parts.items()},
                               {s: p[2] for s, p in parts.items()}, int(values["split_seed"]))["train"]
  encoded = np.concatenate([p[0] for p in parts.values()])
  labels = np.concatenate([p[1] for p in parts.values()])
  all_ids = np.concatenate([p[2] for p in parts.values()])
  _, first = np.unique(all_ids, return_index=True)  # Sorted ids, each once.
  position = first[np.searchsorted(all_ids[first], ids)]
  label_dtype = np.uint8 if labels.ndim == 2 else np.int32
  return encoded[position], labels[position].astype(label_dtype), all_ids[position]


def _get(config, key: str, default: Any) -> Any:
  if isinstance(config, dict):
    return config.get(key, default)
  return config.get(key, default) if hasattr(config, "get") else getattr(config, key, default)


def make_train_iterator(config, process_index: int = 0, process_count: int = 1, start_step: int = 0,
                        table: Optional[tuple[np.ndarray, np.ndarray, np.ndarray]] = None
                        ) -> Iterator[dict[str, np.ndarray]]:
  """Endless iterator of this process's training batches, starting at `start_step`.

  Args:
    config: see the module docstring.
    process_index: this process (jax.process_index()).
    process_count: number of processes (jax.process_count()).
    start_step: the first step to yield (the checkpoint's step when resuming).
    table: the training table from `train_table` (read from `config.dataset` when None).

  Returns:
    An iterator of dicts: image (uint8 or float32 [B, S, S, 3]), label (int32 [B] or uint8 [B, C]),
    id (int64 [B]), with B = batch_size // process_count.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  try:  # The accelerators belong to JAX.
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:
    pass
  augment = _get(config, "augment", "none")
  if augment not in AUGMENTS:
    raise ValueError(f"config.augment must be one of {AUGMENTS}, got {augment!r}")
  image_dtype = _get(config, "image_dtype", "uint8")
  if image_dtype not in ("uint8", "float32"):
    raise ValueError(f"config.image_dtype must be 'uint8' or 'float32', got {image_dtype!r}")
  batch_size = int(_get(config, "batch_size", 0))
  if batch_size <= 0 or batch_size % process_count:
    raise ValueError(f"config.batch_size {batch_size} must be positive and divisible by the process count "
                     f"{process_count}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  sampler = _get(config, "sampler", "epoch")
  if sampler not in SAMPLERS:
    raise ValueError(f"config.sampler must be one of {SAMPLERS}, got {sampler!r}")
  seed = int(_get(config, "seed", 0))
  crop_size = int(_get(config, "crop_size", 224))
  resize_size = int(_get(config, "resize_size", 256))
  pad = int(_get(config, "pad", 4))
  local_batch = batch_size // process_count

  encoded, labels, ids = table if table is not None else train_table(_get(config, "dataset", None))
  m = len(ids) // process_count
  if m == 0:
    raise ValueError(f"{len(ids)} training images cannot be split over {process_count} processes")
  rows = slice(process_index * m, (process_index + 1) * m)
  encoded_t = tf.constant(encoded[rows])
  labels_t = tf.constant(labels[rows])
  ids_t = tf.constant(ids[rows])
  seed_base = seed * 1_000_003 + process_index  # Distinct augmentation streams per process.

  if sampler == "epoch":
    def indices(step):
      return train_indices_for_step(seed, int(step), local_batch, m)
  else:
    classes_per_batch = int(_get(config, "classes_per_batch", 0))
    images_per_class = int(_get(config, "images_per_class", 0))
    if (classes_per_batch <= 0 or classes_per_batch % process_count
        or classes_per_batch * images_per_class != batch_size):
      raise ValueError(f"config.sampler 'class_balanced' needs config.classes_per_batch ({classes_per_batch}) "
                       f"divisible by the process count {process_count} and classes_per_batch * "
                       f"config.images_per_class ({images_per_class}) = config.batch_size ({batch_size})")
    local_classes = classes_per_batch // process_count
    eligible = _eligible_classes(labels[rows], local_classes, images_per_class)

    def indices(step):  # = balanced_indices_for_step(seed_base, step, labels[rows], ...).
      return _balanced_draw(seed_base, int(step), eligible, local_classes, images_per_class)

  def expand(step):
    index = tf.numpy_function(indices, [step], tf.int64, stateful=False)
    index.set_shape([local_batch])
    positions = step * local_batch + tf.range(local_batch, dtype=tf.int64)
    return tf.data.Dataset.from_tensor_slices((index, positions))

  def flip(image, key):
    return tf.image.stateless_random_flip_left_right(image, seed=key)

  def load(index, position):
    key = tf.stack([tf.constant(seed_base, tf.int64), position])
    keys = tf.random.experimental.stateless_split(key, 2)
    image = tf.io.decode_png(tf.gather(encoded_t, index), channels=3)
    if augment == "flip":
      image = flip(image, keys[0])
    elif augment == "pad_crop_flip":
      shape = tf.shape(image)
      padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
      image = flip(tf.image.stateless_random_crop(padded, shape, seed=keys[1]), keys[0])
    elif augment == "resize_crop_flip":
      resized = tf.image.resize(image, [resize_size, resize_size], antialias=True)
      resized = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)
      image = flip(tf.image.stateless_random_crop(resized, [crop_size, crop_size, 3], seed=keys[1]), keys[0])
    elif augment == "random_resized_crop_flip":
      begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
          tf.shape(image), tf.zeros([0, 0, 4], tf.float32), seed=keys[1], min_object_covered=0.0,
          aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0), max_attempts=10,
          use_image_if_no_bounding_boxes=True)
      crop = tf.slice(image, begin, size)
      resized = tf.image.resize(crop, [crop_size, crop_size], antialias=True)
      image = flip(tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8), keys[0])
    if image_dtype == "float32":
      image = tf.cast(image, tf.float32) / 255.0
    return {"image": image, "label": tf.gather(labels_t, index), "id": tf.gather(ids_t, index)}

  options = tf.data.Options()
  options.deterministic = True
  dataset = (tf.data.Dataset.range(int(start_step), _STEP_LIMIT)
             .flat_map(expand)
             .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
             .batch(local_batch, drop_remainder=True)
             .prefetch(tf.data.AUTOTUNE)
             .with_options(options))
  return dataset.as_numpy_iterator()
