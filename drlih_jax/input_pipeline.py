"""Device-resident input pipeline: the training split lives on the accelerator as uint8.

Each training step draws a class-balanced batch (`input.classes_per_batch` classes, then
`input.images_per_class` distinct images of each), gathers it from the resident array, augments it
(pad-and-crop and horizontal flip when `input.augment = "crop_flip"`) and normalises it, all inside the
jitted step: no host work per step. Multi-label data is balanced over labels: an image is a member of
every class it carries, only labelled images are drawn, and none twice in a batch.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np

from drlih_jax import errors
from drlih_jax import resize as resize_lib
from drlih_jax import sharding
from drlih_jax.data import types


@flax.struct.dataclass
class DeviceData:
  """A training split resident on the device.

  Attributes:
    images: uint8 [n, H, W, C].
    labels: int32 [n] or uint8 [n, C].
    class_members: int32 [C, max_members], positions of each class's members, padded with 0.
    class_sizes: int32 [C], the number of real entries of each row of `class_members`.
  """

  images: jax.Array
  labels: jax.Array
  class_members: jax.Array
  class_sizes: jax.Array


MODES = ("resident", "streaming")
AUGMENTATIONS = ("", "crop_flip")


def check_config(config) -> None:
  """Checks the `input` block (and the `dataset.mean`/`dataset.std` it normalises with).

  Raises:
    ConfigError: naming the key.
    MissingExtraError: `input.mode = "streaming"` without TensorFlow (names the pip command).
  """
  input_config = config.input
  mode = input_config.get("mode", "resident")
  if mode not in MODES:
    raise errors.ConfigError(f"input.mode must be one of {MODES}, got {mode!r}")
  if mode == "streaming":
    errors.require_module("tensorflow", "input.mode='streaming' (tf.data)", "pip install tensorflow-cpu")
  if input_config.augment not in AUGMENTATIONS:
    raise errors.ConfigError(f"input.augment must be one of {AUGMENTATIONS}, got {input_config.augment!r}")
  if input_config.classes_per_batch < 2:
    raise errors.ConfigError(f"input.classes_per_batch={input_config.classes_per_batch}: need at least 2 "
                             "classes per batch so that every anchor has negatives")
  if input_config.images_per_class < 2:
    raise errors.ConfigError(f"input.images_per_class={input_config.images_per_class}: need at least 2 so "
                             "that every anchor has a positive")
  if input_config.crop_padding < 0:
    raise errors.ConfigError(f"input.crop_padding must be >= 0, got {input_config.crop_padding!r}")
  resize_lib.check_config(input_config)
  if len(config.dataset.mean) != len(config.dataset.std):
    raise errors.ConfigError(f"dataset.mean {tuple(config.dataset.mean)} and dataset.std "
                             f"{tuple(config.dataset.std)} must have one entry per channel")


def class_membership(labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """Per-class member positions, padded to a rectangle: ([C, max], [C])."""
  if labels.ndim == 1:
    members = [np.flatnonzero(labels == c) for c in range(num_classes)]
  else:
    members = [np.flatnonzero(labels[:, c] > 0) for c in range(num_classes)]
  sizes = np.array([len(m) for m in members], np.int32)
  table = np.zeros((num_classes, max(1, sizes.max())), np.int32)
  for c, m in enumerate(members):
    table[c, :len(m)] = m
  return table, sizes


def check_batch_config(sizes: np.ndarray, input_config) -> None:
  """Raises ConfigError naming the config keys when the training split cannot give class-balanced batches."""
  classes_per_batch = input_config.classes_per_batch
  per_class = input_config.images_per_class
  usable = int(np.sum(sizes >= per_class))
  if usable < classes_per_batch:
    raise errors.ConfigError(
        f"the batch is not divisible into class-balanced groups: input.classes_per_batch={classes_per_batch} "
        f"groups of input.images_per_class={per_class} need {classes_per_batch} classes with at least "
        f"{per_class} training images, but only {usable} of {len(sizes)} classes have that many "
        f"(class sizes: {sizes.tolist()})")


def to_device(split: types.Split, num_classes: int, input_config, placement=None) -> DeviceData:
  """Puts a training split on the device (replicated over the sharding `placement` when given)."""
  table, sizes = class_membership(split.labels, num_classes)
  check_batch_config(sizes, input_config)
  data = DeviceData(images=np.asarray(split.images, np.uint8), labels=np.asarray(split.labels),
                    class_members=table, class_sizes=sizes)
  if placement is None:
    return jax.tree.map(jnp.asarray, data)
  return sharding.put_global(data, placement)


def sample_positions(rng: jax.Array, data: DeviceData, classes_per_batch: int,
                     images_per_class: int) -> jax.Array:
  """Class-balanced draw: distinct classes (with enough members), then distinct members of each.

  Multi-label data (`data.labels` [n, C]): an image is a member of each of its classes, so independent
  per-class draws could take it twice, and its two copies would be each other's positive. Here no image
  is drawn twice (`_distinct_multi_label_positions`). Single-label data keeps the one-shot draw.

  Returns:
    int32 [classes_per_batch * images_per_class] positions in the split, class by class.
  """
  if data.labels.ndim > 1:
    return _distinct_multi_label_positions(rng, data, classes_per_batch, images_per_class)
  return _class_wise_positions(rng, data, classes_per_batch, images_per_class)


def _class_wise_positions(rng, data, classes_per_batch, images_per_class):
  """Independent draws per class: distinct within a class (single-label data: distinct overall)."""
  class_key, member_key = jax.random.split(rng)
  num_classes, width = data.class_members.shape
  eligible = data.class_sizes >= images_per_class
  class_scores = jnp.where(eligible, jax.random.uniform(class_key, (num_classes,)), 2.0)
  classes = jnp.argsort(class_scores)[:classes_per_batch]
  member_scores = jax.random.uniform(member_key, (classes_per_batch, width))
  valid = jnp.arange(width)[None, :] < data.class_sizes[classes][:, None]
  member_scores = jnp.where(valid, member_scores, 2.0)
  picks = jnp.argsort(member_scores, axis=1)[:, :images_per_class]
  return jnp.take_along_axis(data.class_members[classes], picks, axis=1).reshape(-1)


def _distinct_multi_label_positions(rng, data, classes_per_batch, images_per_class):
  """Classes in random order, each drawing `images_per_class` of its members not drawn yet.

  A class with fewer undrawn members than that is skipped; the loop stops once `classes_per_batch` classes
  are filled. Only if the classes run out first (their members overlap so much that no such batch
  exists) do the unfilled slots keep the class-wise draw, repeats possible.
  """
  order_key, member_key, fallback_key = jax.random.split(rng, 3)
  num_classes, width = data.class_members.shape
  eligible = data.class_sizes >= images_per_class
  order = jnp.argsort(jnp.where(eligible, jax.random.uniform(order_key, (num_classes,)), 2.0))
  columns = jnp.arange(width)

  def unfilled(carry):
    visited, filled, _, _ = carry
    return (filled < classes_per_batch) & (visited < num_classes)

  def draw_class(carry):
    visited, filled, drawn, positions = carry
    c = order[visited]
    members = data.class_members[c]
    free = (columns < data.class_sizes[c]) & ~drawn[members]
    scores = jnp.where(free, jax.random.uniform(jax.random.fold_in(member_key, visited), (width,)), 2.0)
    _, picks = jax.lax.top_k(-scores, images_per_class)  # the lowest scores: free members first
    chosen = members[picks]
    accept = jnp.sum(free) >= images_per_class
    updated = jax.lax.dynamic_update_slice(positions, chosen, (filled * images_per_class,))
    positions = jnp.where(accept, updated, positions)
    drawn = jnp.where(accept, drawn.at[chosen].set(True), drawn)
    return visited + 1, filled + accept.astype(jnp.int32), drawn, positions

  fallback = _class_wise_positions(fallback_key, data, classes_per_batch, images_per_class)
  drawn = jnp.zeros((data.labels.shape[0],), bool)
  init = (jnp.int32(0), jnp.int32(0), drawn, fallback.astype(jnp.int32))
  return jax.lax.while_loop(unfilled, draw_class, init)[3]


def normalize(images: jax.Array, mean, std) -> jax.Array:
  """uint8 -> float32 (x / 255 - mean) / std, per channel."""
  x = images.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def crop_flip(rng: jax.Array, images: jax.Array, padding: int) -> jax.Array:
  """Per-image random crop of the zero-padded image back to its size, and a random horizontal flip."""
  b, h, w, c = images.shape
  crop_key, flip_key = jax.random.split(rng)
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  offsets = jax.random.randint(crop_key, (b, 2), 0, 2 * padding + 1)
  crop = lambda img, off: jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))
  cropped = jax.vmap(crop)(padded, offsets)
  flips = jax.random.bernoulli(flip_key, 0.5, (b,))
  return jnp.where(flips[:, None, None, None], cropped[:, :, ::-1, :], cropped)


def sample_batch(rng: jax.Array, data: DeviceData, input_config, dataset_config) -> dict[str, jax.Array]:
  """One class-balanced, augmented, normalised training batch, drawn on the device.

  Returns:
    {"image": float32 [B, H, W, C], "label": [B] or [B, C]}.
  """
  position_key, augment_key = jax.random.split(rng)
  positions = sample_positions(position_key, data, input_config.classes_per_batch,
                               input_config.images_per_class)
  images = data.images[positions]
  if input_config.augment == "crop_flip":
    images = crop_flip(augment_key, images, input_config.crop_padding)
  return {"image": normalize(images, dataset_config.mean, dataset_config.std), "label": data.labels[positions]}


def batch_size(input_config) -> int:
  """Global batch size B = classes_per_batch * images_per_class."""
  return input_config.classes_per_batch * input_config.images_per_class
