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
from tests.test_data_support import cifar_subset


def test_indices_follow_seeded_epoch_permutations():
  seed, n, batch = 11, 10, 4
  sequence = np.concatenate([streaming.train_indices_for_step(seed, s, batch, n) for s in range(8)])
  for epoch in range(3):  # Positions 0-29: three whole epochs (steps straddle epoch ends).
    expected = np.random.default_rng([seed, epoch]).permutation(n)
    np.testing.assert_array_equal(sequence[10 * epoch:10 * (epoch + 1)], expected)
    assert sorted(sequence[10 * epoch:10 * (epoch + 1)]) == list(range(n))
  np.testing.assert_array_equal(streaming.train_indices_for_step(seed, 5, batch, n), sequence[20:24])
  assert not np.array_equal(streaming.train_indices_for_step(seed + 1, 0, batch, n), sequence[:4])
  assert streaming.train_indices_for_step(seed, 10**12, 3, 7).dtype == np.int64
  with pytest.raises(ValueError, match="need n > 0"):
    streaming.train_indices_for_step(seed, 0, 4, 0)


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


def _config(dataset, **kwargs):
  base = dict(dataset=dataset, batch_size=48, seed=5, augment="none")
  base.update(kwargs)
  return ml_collections.ConfigDict(base)


def test_train_table_is_the_protocol_training_set(subset):
  _, data, (encoded, labels, ids) = subset
  np.testing.assert_array_equal(ids, data.train.ids)
  np.testing.assert_array_equal(labels, data.train.labels)
  assert labels.dtype == np.int32 and ids.dtype == np.int64
  np.testing.assert_array_equal(image_io.decode_image(encoded[7]), data.train.images[7])


def test_stream_equals_device_resident_gather(subset):
  """No augmentation: the stream yields exactly a jitted on-device gather with the same index sequence."""
  dataset, data, table = subset
  n = len(data.train)
  images = jax.device_put(data.train.images)
  labels = jax.device_put(data.train.labels)
  gather = jax.jit(lambda x, y, i: (jnp.take(x, i, axis=0), jnp.take(y, i, axis=0)))
  stream = streaming.make_train_iterator(_config(dataset), 0, 1, 0, table=table)
  for step, batch in zip(range(6), stream):  # 6 x 48 > 200: crosses an epoch boundary.
    index = streaming.train_indices_for_step(5, step, 48, n)
    ref_images, ref_labels = gather(images, labels, index)
    assert batch["image"].dtype == np.uint8 and batch["image"].shape == (48, 32, 32, 3)
    np.testing.assert_array_equal(batch["image"], np.asarray(ref_images))
    np.testing.assert_array_equal(batch["label"], np.asarray(ref_labels))
    np.testing.assert_array_equal(batch["id"], data.train.ids[index])
  resumed = next(streaming.make_train_iterator(_config(dataset), 0, 1, start_step=4, table=table))
  np.testing.assert_array_equal(resumed["id"], data.train.ids[streaming.train_indices_for_step(5, 4, 48, n)])


def test_processes_read_disjoint_shards(subset):
  dataset, data, table = subset
  seen = []
  for process in range(2):
    stream = streaming.make_train_iterator(_config(dataset, batch_size=16), process, 2, 0, table=table)
    shard_ids = data.train.ids[process * 100:(process + 1) * 100]
    ids = np.concatenate([b["id"] for b in itertools.islice(stream, 13)])  # 13 x 8 > 100: a whole epoch.
    np.testing.assert_array_equal(ids[:8], shard_ids[streaming.train_indices_for_step(5, 0, 8, 100)])
    assert set(ids[:100]) == set(shard_ids.tolist())
    seen.append(set(ids.tolist()))
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
  n = len(data.train)
  originals = data.train.images[streaming.train_indices_for_step(5, 0, 48, n)]
  flipped = next(streaming.make_train_iterator(_config(dataset, augment="flip"), table=table))["image"]
  mirrored = [np.array_equal(f, o[:, ::-1]) for f, o in zip(flipped, originals)]
  same = [np.array_equal(f, o) for f, o in zip(flipped, originals)]
  assert all(m or s for m, s in zip(mirrored, same)) and any(mirrored) and any(same)
  config = _config(dataset, augment="pad_crop_flip", pad=4)
  first = next(streaming.make_train_iterator(config, table=table))["image"]
  again = next(streaming.make_train_iterator(config, table=table))["image"]
  np.testing.assert_array_equal(first, again)  # Stateless: the same seed and step give the same crops.
  assert all(_is_crop_of_padded(a, o, 4) for a, o in zip(first, originals))
  assert sum(np.array_equal(a, o) for a, o in zip(first, originals)) < 48
  big = next(streaming.make_train_iterator(
      _config(dataset, augment="resize_crop_flip", resize_size=40, crop_size=36, batch_size=8), table=table))
  assert big["image"].shape == (8, 36, 36, 3) and big["image"].dtype == np.uint8
  inception = next(streaming.make_train_iterator(
      _config(dataset, augment="random_resized_crop_flip", crop_size=24, batch_size=8, image_dtype="float32"),
      table=table))
  assert inception["image"].shape == (8, 24, 24, 3) and inception["image"].dtype == np.float32
  assert 0.0 <= inception["image"].min() and inception["image"].max() <= 1.0
  floats = next(streaming.make_train_iterator(_config(dataset, image_dtype="float32"), table=table))["image"]
  np.testing.assert_allclose(floats, originals.astype(np.float32) / 255.0, rtol=0, atol=1e-7)


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


def test_class_balanced_stream(subset):
  dataset, data, table = subset
  config = _config(dataset, sampler="class_balanced", classes_per_batch=4, images_per_class=4, batch_size=16)
  stream = streaming.make_train_iterator(config, start_step=2, table=table)
  for step, batch in zip(range(2, 5), stream):
    rows = streaming.balanced_indices_for_step(5 * 1_000_003, step, data.train.labels, 4, 4)
    np.testing.assert_array_equal(batch["id"], data.train.ids[rows])
    np.testing.assert_array_equal(batch["image"], data.train.images[rows])
  with pytest.raises(ValueError, match="config.sampler 'class_balanced' needs"):
    streaming.make_train_iterator(_config(dataset, sampler="class_balanced", classes_per_batch=4,
                                          images_per_class=3, batch_size=16), table=table)


def test_config_errors(subset):
  dataset, _, table = subset
  with pytest.raises(ValueError, match="config.augment must be one of"):
    streaming.make_train_iterator(_config(dataset, augment="mixup"), table=table)
  with pytest.raises(ValueError, match="divisible by the process count 3"):
    streaming.make_train_iterator(_config(dataset, batch_size=16), 0, 3, table=table)


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
