"""On-device resizing and cropping of a batch, for backbones that want larger inputs than the stored split.

The paper's setting keeps CIFAR-10 at 32x32 on the device and feeds VGG-19-BN 224x224 views. The released
code reads images pre-resized on disk, takes a random 224 crop and a random horizontal flip in training and
the centre 224 crop at test (torchvision RandomCrop(224) + RandomHorizontalFlip / CenterCrop(224)). We do the
same on the device: bilinear resize to `input.resize` (256 in `configs/cifar.py`, torchvision's usual
256 -> 224 ratio; the size of the released code's pre-resized images is not stated), then a random
`input.crop` crop + flip for training and the centre crop for encoding. With `input.crop` unset (0/None)
the resized image is used whole and nothing random happens here.

The input is the normalised float batch: bilinear weights sum to one, so resizing commutes with the
per-channel affine normalisation (up to float rounding).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from drlih_jax import errors


def resize_images(images: jax.Array, size: int) -> jax.Array:
  """Bilinear resize of [B, H, W, C] to [B, size, size, C] (float32; half-pixel centres, like PIL/torch)."""
  b, _, _, c = images.shape
  return jax.image.resize(images.astype(jnp.float32), (b, size, size, c), "bilinear")


def random_crop_flip(rng: jax.Array, images: jax.Array, size: int) -> jax.Array:
  """Per image: a random size x size window (no padding) and a random horizontal flip."""
  b, h, w, c = images.shape
  if size > h or size > w:
    raise ValueError(f"input.crop={size} is larger than the resized image {h}x{w} (input.resize)")
  crop_key, flip_key = jax.random.split(rng)
  tops = jax.random.randint(crop_key, (b,), 0, h - size + 1)
  lefts = jax.random.randint(jax.random.fold_in(crop_key, 1), (b,), 0, w - size + 1)
  crop = lambda img, top, left: jax.lax.dynamic_slice(img, (top, left, 0), (size, size, c))
  cropped = jax.vmap(crop)(images, tops, lefts)
  flips = jax.random.bernoulli(flip_key, 0.5, (b,))
  return jnp.where(flips[:, None, None, None], cropped[:, :, ::-1, :], cropped)


def center_crop(images: jax.Array, size: int) -> jax.Array:
  """The centre size x size window (torchvision's CenterCrop offsets: round((H - size) / 2))."""
  _, h, w, _ = images.shape
  if size > h or size > w:
    raise ValueError(f"input.crop={size} is larger than the resized image {h}x{w} (input.resize)")
  top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
  return images[:, top:top + size, left:left + size, :]


def check_config(input_config) -> None:
  """Checks `input.resize` / `input.crop`: optional non-negative ints (0 or None: off), crop <= resize."""
  resize, crop = input_config.get("resize"), input_config.get("crop")
  for key, value in (("input.resize", resize), ("input.crop", crop)):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
      raise errors.ConfigError(f"{key} must be a non-negative int (0 or None: off), got {value!r}")
  if crop and not resize:
    raise errors.ConfigError(f"input.crop={crop} needs input.resize (the crop is taken from the resized image)")
  if crop and crop > resize:
    raise errors.ConfigError(f"input.crop={crop} is larger than input.resize={resize}")


def _sizes(input_config) -> tuple[int, int]:
  return int(input_config.get("resize") or 0), int(input_config.get("crop") or 0)


def train_view(rng: jax.Array, images: jax.Array, input_config) -> jax.Array:
  """Training view: resize to `input.resize`, then a random `input.crop` crop + flip (when crop is set)."""
  resize, crop = _sizes(input_config)
  images = resize_images(images, resize)
  return random_crop_flip(rng, images, crop) if crop else images


def eval_view(images: jax.Array, input_config) -> jax.Array:
  """Encoding view: resize to `input.resize`, then the centre `input.crop` crop (when crop is set)."""
  resize, crop = _sizes(input_config)
  images = resize_images(images, resize)
  return center_crop(images, crop) if crop else images
