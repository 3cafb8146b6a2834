"""Streaming input mode: `tf.data` batches decoded and augmented on the host, in a resumable order.

The training images are read once from the configured source's tfds dataset (`tfds_sources`: prepared
once, process 0 first) with image decoding skipped, so the host keeps only the encoded (PNG) bytes of its
shard (about 3 KB per 32x32 image); every step decodes and augments one batch in `tf.data` (parallel, in a
deterministic order) and prefetches the next ones. Use it where the decoded training set does not fit on
the device, or for the 224x224 VGG setting whose augmentation resizes.

It reads the run config as the device-resident mode does:

* `config.dataset`: the source and protocol (`protocols`). The training set is the protocol's
  (`protocols.protocol_ids`, same seed, same ids as `load_retrieval_data(...).train`, ascending ids).
* `config.input`: `classes_per_batch` x `images_per_class` images per global batch; `augment` ""
  (the stored pixels) or "crop_flip" (zero-pad by `crop_padding`, random crop back to the stored size,
  random horizontal flip: the CIFAR recipe); with `resize` and `crop` both set, a bilinear resize to
  `resize`, a random `crop` crop and a flip instead (the DRLIH authors' 256 -> 224 recipe).
* `config.seed`: the data order and augmentation seed.

Order: the training set is split evenly over the processes: process p of P takes the contiguous rows
[p * m, (p + 1) * m), m = n // P (the last n - P * m rows are dropped when P > 1). Process p's batch at
step s is rows `balanced_indices_for_step(seed * 1_000_003 + p, s, shard labels, classes_per_batch / P,
images_per_class)` of its shard: a pure numpy function of (seed, process, step), so an iterator started at
`start_step` continues a checkpointed run exactly. Augmentation randomness is stateless, keyed by (seed,
process, step, position in the batch), so it resumes exactly as well. Images stay uint8 (normalised on
the device).
"""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np

from drlih_jax import errors
from drlih_jax.data import protocols

AUGMENTS = ("", "crop_flip")
_STEP_LIMIT = 2**62


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
    raise errors.DataError(f"{classes_per_batch} classes per batch with {images_per_class} images each: only "
                     f"{len(eligible)} classes have {images_per_class} training images")
  return eligible


def _balanced_draw(seed, step, eligible, classes_per_batch, images_per_class) -> np.ndarray:
  rng = np.random.default_rng([int(seed), int(step)])
  classes = rng.choice(len(eligible), classes_per_batch, replace=False)
  return np.concatenate([rng.choice(eligible[c], images_per_class, replace=False) for c in classes]).astype(np.int64)


def train_table(dataset_config) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The protocol's training set as encoded images: (bytes [n] object, labels, int64 ids), id order.

  Prepares the tfds dataset of the configured source once (as `load_retrieval_data` with loader "tfds").
  """
  from drlih_jax.data import tfds_sources  # pylint: disable=import-outside-toplevel  (imports TensorFlow)
  values = protocols.validate_config(dataset_config)
  if values["name"] == "digits":
    raise errors.ConfigError("dataset.name 'digits' has no streaming mode (it is tiny: use the device-resident mode)")
  if values["source"] == "tfds" and values["image_size"] not in (None, 32):
    raise errors.ConfigError("streaming from dataset.source 'tfds' keeps cifar10's 32x32 pixels: set "
                     "dataset.image_size None and resize in the augmentation (input.resize, input.crop)")
  parts = tfds_sources.encoded_splits(values)
  ids = protocols.protocol_ids(values["name"], {s: p[1] for s, p in parts.items()},
                               {s: p[2] for s, p in parts.items()}, int(values["split_seed"]))["train"]
  encoded = np.concatenate([p[0] for p in parts.values()])
  labels = np.concatenate([p[1] for p in parts.values()])
  all_ids = np.concatenate([p[2] for p in parts.values()])
  _, first = np.unique(all_ids, return_index=True)  # Sorted ids, each once.
  position = first[np.searchsorted(all_ids[first], ids)]
  return encoded[position], labels[position], all_ids[position]


def make_train_iterator(config, process_index: int, process_count: int, start_step: int, *,
                        table: Optional[tuple[np.ndarray, np.ndarray, np.ndarray]] = None
                        ) -> Iterator[dict[str, np.ndarray]]:
  """Endless iterator of this process's training batches, starting at `start_step`.

  Args:
    config: the run config (reads `dataset`, `input` and `seed`; see the module docstring).
    process_index: this process (jax.process_index()).
    process_count: number of processes (jax.process_count()).
    start_step: the first step to yield (the checkpoint's step when resuming).
    table: the training table from `train_table` (read from `config.dataset` when None).

  Returns:
    An iterator of dicts: image (uint8 [B, S, S, 3]), label (int32 [B] or uint8 [B, C]), id (int64 [B]),
    with B = classes_per_batch * images_per_class // process_count.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  try:  # The accelerators belong to JAX.
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:
    pass
  input_config = config.input
  augment = input_config.get("augment", "")
  if augment not in AUGMENTS:
    raise errors.ConfigError(f"input.augment must be '' or 'crop_flip', got {augment!r}")
  resize, crop = int(input_config.get("resize") or 0), int(input_config.get("crop") or 0)
  pad = int(input_config.get("crop_padding", 4))
  classes_per_batch = int(input_config.classes_per_batch)
  images_per_class = int(input_config.images_per_class)
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  if classes_per_batch <= 0 or images_per_class <= 0 or classes_per_batch % process_count:
    raise errors.ConfigError(f"input.classes_per_batch ({classes_per_batch}) must be positive and divisible by the "
                     f"process count {process_count}, and input.images_per_class ({images_per_class}) positive")
  local_classes = classes_per_batch // process_count
  local_batch = local_classes * images_per_class

  encoded, labels, ids = table if table is not None else train_table(config.dataset)
  m = len(ids) // process_count
  if m == 0:
    raise errors.DataError(f"{len(ids)} training images cannot be split over {process_count} processes")
  rows = slice(process_index * m, (process_index + 1) * m)
  encoded_t = tf.constant(encoded[rows])
  labels_t = tf.constant(labels[rows])
  ids_t = tf.constant(ids[rows])
  seed_base = int(config.seed) * 1_000_003 + process_index  # Distinct streams per process.
  eligible = _eligible_classes(labels[rows], local_classes, images_per_class)

  def indices(step):  # = balanced_indices_for_step(seed_base, step, labels[rows], ...).
    return _balanced_draw(seed_base, int(step), eligible, local_classes, images_per_class)

  def expand(step):
    index = tf.numpy_function(indices, [step], tf.int64, stateful=False)
    index.set_shape([local_batch])
    positions = step * local_batch + tf.range(local_batch, dtype=tf.int64)
    return tf.data.Dataset.from_tensor_slices((index, positions))

  def load(index, position):
    key = tf.stack([tf.constant(seed_base, tf.int64), position])
    keys = tf.random.experimental.stateless_split(key, 2)
    image = tf.io.decode_png(tf.gather(encoded_t, index), channels=3)
    if resize and crop:
      resized = tf.image.resize(image, [resize, resize], antialias=True)
      image = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)
      image = tf.image.stateless_random_crop(image, [crop, crop, 3], seed=keys[1])
      image = tf.image.stateless_random_flip_left_right(image, seed=keys[0])
    elif augment == "crop_flip":
      padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
      image = tf.image.stateless_random_crop(padded, tf.shape(image), seed=keys[1])
      image = tf.image.stateless_random_flip_left_right(image, seed=keys[0])
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
