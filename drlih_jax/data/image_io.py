"""Image decoding with Pillow: RGB conversion, resizing, the bad-image policy and threaded loading.

This module is the one place where image files become pixels. Both the TensorFlow-free loader and the
tfds builders (`tfds_builders/drlih_class_folder`, `tfds_builders/drlih_image_list`) decode through
`decode_image`, and the builders store the decoded pixels losslessly (PNG), so the two paths give
bitwise-equal uint8 arrays. Local files are opened by Pillow directly; URLs (`gs://...`) are read as bytes
through `storage` (etils.epath).

Outcomes for bad data (the `on_bad_image` policy is "error" or "skip"):

* Missing image file (a list line naming a file that does not exist, a broken link): "error" raises
  `BadImageError` naming the file and, for list files, the list file and line; "skip" drops the example,
  counts it and logs it (absl logging, WARNING).
* Truncated or corrupt image (Pillow cannot identify or fully decode it): same as a missing file. Pillow's
  `ImageFile.LOAD_TRUNCATED_IMAGES` is never set, so a truncated JPEG is an error, not grey pixels.
* Grayscale, palette, RGBA, CMYK and 16-bit images: converted to RGB with `PIL.Image.convert("RGB")`
  (grey replicated into the three channels, alpha dropped). EXIF orientation is not applied (as
  `PIL.Image.open(...).convert("RGB")` in the DeepHash/DRLIH PyTorch code).
* Images of different sizes: with `image_size` set every image is resized to `image_size x image_size`
  (Pillow bilinear, aspect ratio not kept); with `image_size = None` every image must have the size of the
  first one, else `ImageSizeError` names the file, its size and the expected size (this is not skippable:
  set `dataset.image_size`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import os
from typing import Callable, Optional, Sequence, Union

from absl import logging
import numpy as np
from PIL import Image
from PIL import UnidentifiedImageError

from drlih_jax import errors
from drlih_jax.data import storage

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
ON_BAD_IMAGE_CHOICES = ("error", "skip")
# How many skipped files are logged one by one before only the count is logged.
_MAX_LOGGED_SKIPS = 20


class BadImageError(errors.DataError):
  """A missing, truncated or corrupt image (the message names the file and the list line)."""


class ImageSizeError(errors.DataError):
  """Images of different sizes while `image_size` is None."""


@dataclasses.dataclass(frozen=True)
class LoadResult:
  """Pixels of the images that decoded, and what was skipped.

  Attributes:
    images: uint8 [n_kept, H, W, 3].
    kept: int64 [n_kept], positions (in the input order) of the images that decoded.
    skipped: (position, reason) for every image skipped under `on_bad_image = "skip"`.
  """

  images: np.ndarray
  kept: np.ndarray
  skipped: list[tuple[int, str]]


def is_image_file(name: str) -> bool:
  """Whether a file name has one of the image extensions (case-insensitive) and is not hidden."""
  return not os.path.basename(name).startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def tensorflow_available() -> bool:
  """Whether tensorflow and tensorflow_datasets import (False also when `sys.modules[name]` is None)."""
  try:
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import,import-outside-toplevel
    import tensorflow_datasets  # pylint: disable=g-import-not-at-top,unused-import,import-outside-toplevel
  except ImportError:
    return False
  return True


def check_on_bad_image(value: str) -> str:
  if value not in ON_BAD_IMAGE_CHOICES:
    raise errors.ConfigError(f"dataset.on_bad_image must be one of {ON_BAD_IMAGE_CHOICES}, got {value!r}")
  return value


def decode_image(source: Union[str, os.PathLike, bytes], image_size: Optional[int] = None) -> np.ndarray:
  """Decodes one image file (or its bytes) to uint8 RGB pixels.

  Args:
    source: a local path, a URL (`gs://...`), or the encoded bytes.
    image_size: resize to this square size (Pillow bilinear); None keeps the native size.

  Returns:
    uint8 [H, W, 3].

  Raises:
    FileNotFoundError: the path does not exist.
    OSError, PIL.UnidentifiedImageError, ValueError: the data is not a decodable image (truncated,
      corrupt, unknown format).
  """
  if isinstance(source, bytes):
    fileobj = io.BytesIO(source)
  elif storage.is_url(os.fspath(source)):
    fileobj = io.BytesIO(storage.read_bytes(os.fspath(source)))
  else:
    fileobj = source  # Pillow reads the local file itself.
  with Image.open(fileobj) as image:
    image.load()  # Fails on truncated data (LOAD_TRUNCATED_IMAGES is left False).
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    if image_size is not None and rgb.size != (image_size, image_size):
      rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def resize_image(image: np.ndarray, image_size: int) -> np.ndarray:
  """Resizes uint8 [H, W, 3] pixels to [image_size, image_size, 3] exactly as `decode_image` does."""
  if image.shape[:2] == (image_size, image_size):
    return image
  resized = Image.fromarray(image).resize((image_size, image_size), Image.Resampling.BILINEAR)
  return np.asarray(resized, dtype=np.uint8)


def encode_png(image: np.ndarray) -> bytes:
  """Lossless PNG bytes of uint8 [H, W, 3] pixels (fast compression: the tfds builders store these)."""
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
  return buffer.getvalue()


def _describe_failure(exc: BaseException) -> str:
  if isinstance(exc, FileNotFoundError):
    return "image file not found"
  if isinstance(exc, UnidentifiedImageError):
    return "not a decodable image (unknown format or corrupt header)"
  return f"cannot decode image ({type(exc).__name__}: {exc})"


def load_images(
    paths: Sequence[str],
    *,
    image_size: Optional[int],
    on_bad_image: str = "error",
    num_workers: int = 4,
    describe: Optional[Callable[[int], str]] = None,
    expected_hw: Optional[tuple[int, int]] = None,
) -> LoadResult:
  """Decodes many image files with a thread pool, keeping the input order.

  Args:
    paths: image file paths.
    image_size: resize to this square size; None keeps native sizes, which must then all equal
      `expected_hw` (or the first decoded image's size when that is None).
    on_bad_image: "error" raises `BadImageError` for the first bad file (in input order); "skip" drops
      bad files, logs them and reports them in `LoadResult.skipped`.
    num_workers: threads; <= 1 decodes in the calling thread.
    describe: position -> text naming where the path came from (e.g. "list file /x/train.txt line 17"),
      prefixed to error messages.
    expected_hw: the (H, W) every image must have when image_size is None.

  Returns:
    The decoded images and which positions they came from.
  """
  check_on_bad_image(on_bad_image)
  n = len(paths)

  def where(i: int) -> str:
    prefix = f"{describe(i)}: " if describe is not None else ""
    return f"{prefix}image {paths[i]}"

  def try_decode(i: int):
    try:
      return decode_image(paths[i], image_size), None
    except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
      return None, _describe_failure(exc)

  failures: dict[int, str] = {}
  # The output shape: fixed by image_size, else by expected_hw or the first image that decodes.
  first = 0
  first_image = None
  if image_size is not None:
    shape = (image_size, image_size, 3)
  elif expected_hw is not None:
    shape = (*expected_hw, 3)
  else:
    shape = None
    while first < n and first_image is None:
      first_image, reason = try_decode(first)
      if first_image is None:
        failures[first] = reason
        if on_bad_image == "error":
          break
      first += 1
    if first_image is not None:
      shape = first_image.shape
  if failures and on_bad_image == "error":
    i = min(failures)
    raise BadImageError(f"{where(i)}: {failures[i]}")
  if shape is None:  # Every image is bad (or there are none).
    shape = (0, 0, 3)
  out = np.empty((n, *shape), np.uint8)
  if first_image is not None:
    out[first - 1] = first_image
  mismatched: dict[int, tuple[int, ...]] = {}

  def work(start: int, stop: int):
    for i in range(start, stop):
      image, reason = try_decode(i)
      if image is None:
        failures[i] = reason
        if on_bad_image == "error":
          return
      elif image.shape != shape:
        mismatched[i] = image.shape
        return
      else:
        out[i] = image

  start = first
  if num_workers <= 1 or n - start < 64:
    work(start, n)
  else:
    num_chunks = min(n - start, 8 * num_workers)
    bounds = np.linspace(start, n, num_chunks + 1).astype(int)
    with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
      for future in [pool.submit(work, a, b) for a, b in zip(bounds[:-1], bounds[1:])]:
        future.result()

  # Report the first problem in input order, whatever thread found it.
  first_failure = min(failures) if failures and on_bad_image == "error" else n
  first_mismatch = min(mismatched) if mismatched else n
  if first_mismatch < first_failure:
    i = first_mismatch
    h, w = mismatched[i][:2]
    raise ImageSizeError(
        f"{where(i)}: size {h}x{w} differs from {shape[0]}x{shape[1]} (the first image's size) and "
        "dataset.image_size is None; set dataset.image_size to resize every image")
  if first_failure < n:
    raise BadImageError(f"{where(first_failure)}: {failures[first_failure]}")

  skipped = sorted(failures.items())
  for count, (i, reason) in enumerate(skipped):
    if count == _MAX_LOGGED_SKIPS:
      logging.warning("... and %d more skipped images", len(skipped) - _MAX_LOGGED_SKIPS)
      break
    logging.warning("skipping %s: %s", where(i), reason)
  if skipped:
    logging.warning("skipped %d of %d images (dataset.on_bad_image = 'skip')", len(skipped), n)
  kept = np.setdiff1d(np.arange(n, dtype=np.int64), np.array([i for i, _ in skipped], np.int64))
  images = out if not skipped else out[kept]
  return LoadResult(images=images, kept=kept, skipped=skipped)
