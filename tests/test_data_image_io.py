"""Tests for drlih_jax.data.image_io: decoding, RGB conversion, resizing, bad images, threads."""

import io
import logging
import os

import numpy as np
from PIL import Image
import pytest

from drlih_jax.data import image_io


def _save(path, array, fmt=None, **kwargs):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path, format=fmt, **kwargs)
  return str(path)


def _random_rgb(rng, h, w):
  return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_png_roundtrip_is_exact(tmp_path):
  rng = np.random.default_rng(0)
  pixels = _random_rgb(rng, 7, 5)
  path = _save(tmp_path / "a.png", pixels)
  np.testing.assert_array_equal(image_io.decode_image(path), pixels)
  # encode_png is lossless too, and bytes decode like paths.
  np.testing.assert_array_equal(image_io.decode_image(image_io.encode_png(pixels)), pixels)


def test_grayscale_becomes_rgb_with_equal_channels(tmp_path):
  gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
  path = _save(tmp_path / "g.png", gray)
  with Image.open(path) as im:
    assert im.mode == "L"
  out = image_io.decode_image(path)
  assert out.shape == (3, 4, 3) and out.dtype == np.uint8
  for c in range(3):
    np.testing.assert_array_equal(out[..., c], gray)


def test_rgba_and_palette_become_rgb(tmp_path):
  rgba = np.zeros((2, 2, 4), np.uint8)
  rgba[..., 0] = 200
  rgba[..., 3] = 10  # Alpha is dropped, not blended.
  path = _save(tmp_path / "a.png", rgba)
  np.testing.assert_array_equal(image_io.decode_image(path), np.broadcast_to([200, 0, 0], (2, 2, 3)))
  palette = Image.new("P", (3, 2))
  palette.putpalette([10, 20, 30] + [0] * 765)
  palette.save(tmp_path / "p.png")
  np.testing.assert_array_equal(image_io.decode_image(str(tmp_path / "p.png")),
                                np.broadcast_to([10, 20, 30], (2, 3, 3)))


def test_resize_constant_image_stays_constant_and_matches_pillow(tmp_path):
  const = np.full((10, 6, 3), (17, 99, 230), np.uint8)
  out = image_io.decode_image(_save(tmp_path / "c.png", const), image_size=4)
  np.testing.assert_array_equal(out, np.full((4, 4, 3), (17, 99, 230), np.uint8))
  rng = np.random.default_rng(1)
  pixels = _random_rgb(rng, 9, 13)
  path = _save(tmp_path / "r.png", pixels)
  expected = np.asarray(Image.fromarray(pixels).resize((5, 5), Image.Resampling.BILINEAR))
  np.testing.assert_array_equal(image_io.decode_image(path, 5), expected)
  np.testing.assert_array_equal(image_io.resize_image(pixels, 5), expected)


def test_missing_file_error_and_skip(tmp_path, caplog):
  rng = np.random.default_rng(2)
  good = [_save(tmp_path / f"{i}.png", _random_rgb(rng, 4, 4)) for i in range(3)]
  paths = [good[0], str(tmp_path / "nope.jpg"), good[1], good[2]]
  with pytest.raises(image_io.BadImageError, match=r"line 2: image .*nope\.jpg: image file not found"):
    image_io.load_images(paths, image_size=None, num_workers=1, describe=lambda i: f"line {i + 1}")
  with caplog.at_level(logging.WARNING):
    result = image_io.load_images(paths, image_size=None, on_bad_image="skip", num_workers=1)
  np.testing.assert_array_equal(result.kept, [0, 2, 3])
  assert [i for i, _ in result.skipped] == [1]
  assert result.images.shape == (3, 4, 4, 3)
  np.testing.assert_array_equal(result.images[1], image_io.decode_image(good[1]))
  assert "nope.jpg" in caplog.text and "skipped 1 of 4 images" in caplog.text


def test_truncated_jpeg_is_an_error_not_grey_pixels(tmp_path):
  rng = np.random.default_rng(3)
  buffer = io.BytesIO()
  Image.fromarray(_random_rgb(rng, 64, 64)).save(buffer, format="JPEG", quality=90)
  data = buffer.getvalue()
  path = tmp_path / "trunc.jpg"
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(image_io.BadImageError, match=r"trunc\.jpg: cannot decode image .*truncated"):
    image_io.load_images([str(path)], image_size=None, num_workers=1)
  result = image_io.load_images([str(path)], image_size=8, on_bad_image="skip", num_workers=1)
  assert result.images.shape == (0, 8, 8, 3) and len(result.skipped) == 1


def test_corrupt_file_is_an_error(tmp_path):
  path = tmp_path / "junk.jpg"
  path.write_bytes(b"\xff\xd8 this is not a jpeg at all" * 3)
  with pytest.raises(image_io.BadImageError, match=r"junk\.jpg: not a decodable image"):
    image_io.load_images([str(path)], image_size=None, num_workers=1)


def test_different_sizes_need_image_size(tmp_path):
  rng = np.random.default_rng(4)
  paths = [_save(tmp_path / "a.png", _random_rgb(rng, 4, 4)), _save(tmp_path / "b.png", _random_rgb(rng, 4, 4)),
           _save(tmp_path / "c.png", _random_rgb(rng, 5, 4))]
  with pytest.raises(image_io.ImageSizeError, match=r"c\.png: size 5x4 differs from 4x4"):
    image_io.load_images(paths, image_size=None, num_workers=1)
  # Not skippable: sizes are a configuration matter.
  with pytest.raises(image_io.ImageSizeError):
    image_io.load_images(paths, image_size=None, on_bad_image="skip", num_workers=1)
  result = image_io.load_images(paths, image_size=3, num_workers=1)
  assert result.images.shape == (3, 3, 3, 3)


def test_threads_keep_order_and_report_the_first_bad_file(tmp_path):
  rng = np.random.default_rng(5)
  arrays = [_random_rgb(rng, 3, 3) for _ in range(300)]
  paths = [_save(tmp_path / f"{i:03d}.png", a) for i, a in enumerate(arrays)]
  threaded = image_io.load_images(paths, image_size=None, num_workers=4)
  np.testing.assert_array_equal(threaded.images, np.stack(arrays))
  for bad in (250, 100):
    os.remove(paths[bad])
  with pytest.raises(image_io.BadImageError, match=r"100\.png"):
    image_io.load_images(paths, image_size=None, num_workers=4)
  skipped = image_io.load_images(paths, image_size=None, on_bad_image="skip", num_workers=4)
  np.testing.assert_array_equal(skipped.kept, np.setdiff1d(np.arange(300), [100, 250]))
  np.testing.assert_array_equal(skipped.images, np.stack(arrays)[skipped.kept])


def test_first_images_bad_under_skip_still_fix_the_shape(tmp_path):
  rng = np.random.default_rng(6)
  paths = [str(tmp_path / "missing.png"), _save(tmp_path / "b.png", _random_rgb(rng, 2, 6))]
  result = image_io.load_images(paths, image_size=None, on_bad_image="skip", num_workers=1)
  assert result.images.shape == (1, 2, 6, 3)
  np.testing.assert_array_equal(result.kept, [1])


def test_on_bad_image_values_are_checked():
  with pytest.raises(ValueError, match="dataset.on_bad_image"):
    image_io.load_images([], image_size=None, on_bad_image="ignore")


def test_is_image_file():
  assert image_io.is_image_file("a/B.JPG") and image_io.is_image_file("x.png")
  assert not image_io.is_image_file(".hidden.jpg") and not image_io.is_image_file("notes.txt")
