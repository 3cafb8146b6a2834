"""Tests for the tf.data streaming mode (drlih_jax.data.streaming) and the official tfds cifar10 source."""

import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from drlih_jax.data import image_io
from drlih_jax.data import protocols
from drlih_jax.data import streaming
from tests.helpers.data import cifar_subset


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
  pytest.importorskip("tensorflow_datasets", reason="tensorflow_datasets not installed")
  root = cifar_subset(tmp_path_factory)
  dataset = ml_collections.ConfigDict(dict(
      name="folder", source="folder", root=root, list_dir=None, data_dir=str(tmp_path_factory.mktemp("tfds")),
      split_seed=0, image_size=None, on_bad_image="error", loader="pillow", num_workers=2))
  data = protocols.load_retrieval_data(dataset)
  table = streaming.train_table(dataset)
  return dataset, data, table


def _config(dataset, seed=5, **input_values):
  """A run config as train.py passes it: dataset, input and seed."""
  base = dict(classes_per_batch=8, images_per_class=6, augment="", crop_padding=4, resize=0, crop=0)
  base.update(input_values)
  return ml_collections.ConfigDict(dict(dataset=dataset, seed=seed, input=base))


def _rows(step, labels, classes=8, per_class=6, process=0, seed=5):
  return streaming.balanced_indices_for_step(seed * 1_000_003 + process, step, labels, classes, per_class)


def test_train_table_is_the_protocol_training_set(subset):
  _, data, (encoded, labels, ids) = subset
  np.testing.assert_array_equal(ids, data.train.ids)
  np.testing.assert_array_equal(labels, data.train.labels)
  assert labels.dtype == np.int32 and ids.dtype == np.int64
  np.testing.assert_array_equal(image_io.decode_image(encoded[7]), data.train.images[7])


def test_stream_equals_device_resident_gather(subset):
  """No augmentation: the stream yields exactly a jitted on-device gather with the same index sequence."""
  dataset, data, table = subset
  images = jax.device_put(data.train.images)
  labels = jax.device_put(data.train.labels)
  gather = jax.jit(lambda x, y, i: (jnp.take(x, i, axis=0), jnp.take(y, i, axis=0)))
  stream = streaming.make_train_iterator(_config(dataset), 0, 1, 0, table=table)
  for step, batch in zip(range(6), stream):
    index = _rows(step, data.train.labels)
    ref_images, ref_labels = gather(images, labels, index)
    assert batch["image"].dtype == np.uint8 and batch["image"].shape == (48, 32, 32, 3)
    np.testing.assert_array_equal(batch["image"], np.asarray(ref_images))
    np.testing.assert_array_equal(batch["label"], np.asarray(ref_labels))
    np.testing.assert_array_equal(batch["id"], data.train.ids[index])
    assert np.all(np.asarray(ref_labels).reshape(8, 6) == np.asarray(ref_labels).reshape(8, 6)[:, :1])
  resumed = next(streaming.make_train_iterator(_config(dataset), 0, 1, 4, table=table))
  np.testing.assert_array_equal(resumed["id"], data.train.ids[_rows(4, data.train.labels)])


def test_processes_read_disjoint_shards(subset):
  dataset, data, table = subset
  seen = []
  for process in range(2):
    stream = streaming.make_train_iterator(_config(dataset, classes_per_batch=4, images_per_class=5), process, 2,
                                           0, table=table)
    shard = slice(process * 100, (process + 1) * 100)
    batches = [b["id"] for b in itertools.islice(stream, 20)]
    assert all(len(ids) == 10 for ids in batches)  # 2 classes x 5 images per process.
    np.testing.assert_array_equal(
        batches[3], data.train.ids[shard][_rows(3, data.train.labels[shard], 2, 5, process=process)])
    seen.append(set(np.concatenate(batches).tolist()))
    assert seen[-1] <= set(data.train.ids[shard].tolist())
  assert not seen[0] & seen[1]


def _is_crop_of_padded(image, original, pad):
  padded = np.pad(original, ((pad, pad), (pad, pad), (0, 0)))
  h, w = original.shape[:2]
  for flipped in (image, image[:, ::-1]):
    for dy in range(2 * pad + 1):
      for dx in range(2 * pad + 1):
        if np.array_equal(padded[dy:dy + h, dx:dx + w], flipped):
          return True
  return False


def test_augmentations(subset):
  dataset, data, table = subset
  originals = data.train.images[_rows(0, data.train.labels)]
  config = _config(dataset, augment="crop_flip", crop_padding=4)
  first = next(streaming.make_train_iterator(config, 0, 1, 0, table=table))["image"]
  again = next(streaming.make_train_iterator(config, 0, 1, 0, table=table))["image"]
  np.testing.assert_array_equal(first, again)  # Stateless: the same seed and step give the same crops.
  assert all(_is_crop_of_padded(a, o, 4) for a, o in zip(first, originals))
  assert sum(np.array_equal(a, o) for a, o in zip(first, originals)) < 48
  big = next(streaming.make_train_iterator(_config(dataset, resize=40, crop=36, classes_per_batch=2,
                                                   images_per_class=4), 0, 1, 0, table=table))
  assert big["image"].shape == (8, 36, 36, 3) and big["image"].dtype == np.uint8
  # A 36 crop of the 40x40 bilinear resize (TF, antialiased), flipped or not: check against TF itself.
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  source = data.train.images[_rows(0, data.train.labels, 2, 4)]
  resized = np.asarray(tf.cast(tf.clip_by_value(tf.round(tf.image.resize(source, [40, 40], antialias=True)),
                                                0, 255), tf.uint8))
  for image, full in zip(big["image"], resized):
    assert any(np.array_equal(view[dy:dy + 36, dx:dx + 36], image)
               for view in (full, full[:, ::-1]) for dy in range(5) for dx in range(5))


def test_balanced_indices():
  labels = np.repeat(np.arange(5), [2, 8, 8, 1, 8]).astype(np.int32)
  for step in range(20):
    rows = streaming.balanced_indices_for_step(2, step, labels, 3, 3)
    groups = labels[rows].reshape(3, 3)
    assert np.all(groups == groups[:, :1]) and len(set(groups[:, 0])) == 3
    assert not set(groups[:, 0]) & {0, 3}  # Classes with fewer than 3 images are never drawn.
    assert all(len(set(g)) == 3 for g in rows.reshape(3, 3))
  np.testing.assert_array_equal(streaming.balanced_indices_for_step(2, 7, labels, 3, 3),
                                streaming.balanced_indices_for_step(2, 7, labels, 3, 3))
  multi = np.array([[1, 0], [1, 1], [0, 0], [0, 1], [1, 0], [0, 1]], np.uint8)
  for step in range(10):
    rows = streaming.balanced_indices_for_step(0, step, multi, 2, 3)
    assert 2 not in rows  # Unlabelled.
    assert np.all(multi[rows[:3]].sum(0) > 0)
  with pytest.raises(ValueError, match="only 1 classes have 3 training images"):
    streaming.balanced_indices_for_step(0, 0, np.array([0, 0, 0, 1]), 2, 3)


def test_config_errors(subset):
  dataset, _, table = subset
  with pytest.raises(ValueError, match="input.augment must be '' or 'crop_flip'"):
    streaming.make_train_iterator(_config(dataset, augment="flip"), 0, 1, 0, table=table)
  with pytest.raises(ValueError, match=r"divisible by the\s+process count 3"):
    streaming.make_train_iterator(_config(dataset, classes_per_batch=4), 0, 3, 0, table=table)
  with pytest.raises(ValueError, match="only 10 classes have 6 training images"):
    streaming.make_train_iterator(_config(dataset, classes_per_batch=12), 0, 1, 0, table=table)


def test_official_tfds_cifar10_source_with_mocked_builder():
  """The source "tfds" code path, on tfds' mock of the cifar10 builder (no download here)."""
  tfds = pytest.importorskip("tensorflow_datasets", reason="tensorflow_datasets not installed")
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  fake = {}
  for split, n in (("train", 30), ("test", 20)):
    numbers = rng.permutation(n)  # Stored order is shuffled, as in the real tfrecords.
    fake[split] = (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), (numbers * 7) % 10,
                   [f"{split}_{k:05d}" for k in numbers])

  def as_dataset_fn(self, split, decoders=None, read_config=None, shuffle_files=False):
    del self, read_config, shuffle_files
    images, labels, ids = fake[str(split)]
    if decoders:  # SkipDecoding: the stored PNG bytes.
      images = [image_io.encode_png(i) for i in images]
    return tf.data.Dataset.from_tensor_slices({"image": images, "label": labels.astype(np.int64), "id": ids})

  config = ml_collections.ConfigDict(dict(name="cifar10-2", source="tfds", split_seed=0, loader="auto"))
  with tfds.testing.mock_data(as_dataset_fn=as_dataset_fn):
    data = protocols.load_retrieval_data(config)
    table = streaming.train_table(config)
  np.testing.assert_array_equal(data.train.ids, np.arange(30))
  np.testing.assert_array_equal(data.query.ids, 50000 + np.arange(20))
  for split, part, offset in (("train", data.train, 0), ("test", data.query, 50000)):
    images, labels, ids = fake[split]
    for row, name in enumerate(ids):
      k = int(name.split("_")[1])
      np.testing.assert_array_equal(part.images[k], images[row])
      assert part.labels[k] == labels[row] and part.ids[k] == offset + k
  np.testing.assert_array_equal(table[2], data.train.ids)
  np.testing.assert_array_equal(image_io.decode_image(table[0][3]), data.train.images[3])
