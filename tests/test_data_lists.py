"""Tests for list files (drlih_jax.data.image_lists) and the nuswide_21 / mirflickr / list protocols."""

import logging
import os

import ml_collections
import numpy as np
from PIL import Image
import pytest

from drlih_jax.data import image_io
from drlih_jax.data import image_lists
from drlih_jax.data import protocols
from tests.helpers.data import LISTS
from tests.helpers.data import read_list_lines
from tests.helpers.data import require

REAL = {
    ("mirflickr", "train"): (4000, 38), ("mirflickr", "test"): (1000, 38), ("mirflickr", "database"): (20000, 38),
    ("nuswide_21", "train"): (10500, 21), ("nuswide_21", "test"): (2100, 21),
}


def _config(**kwargs):
  base = dict(name="list", source="list", root=None, list_dir=None, data_dir=None, split_seed=0, image_size=None,
              on_bad_image="error", loader="pillow", num_workers=2)
  base.update(kwargs)
  return ml_collections.ConfigDict(base)


@pytest.mark.parametrize("dataset,split", sorted(REAL))
def test_real_list_files_parse(dataset, split):
  path = require(os.path.join(LISTS, dataset, f"{split}.txt"))
  parsed = image_lists.parse_list_file(path, protocols.LABEL_WIDTHS[dataset])
  assert parsed.labels.shape == REAL[dataset, split] and parsed.labels.dtype == np.uint8
  names, rows = read_list_lines(path)
  assert parsed.image_paths == names
  np.testing.assert_array_equal(parsed.labels, rows)
  np.testing.assert_array_equal(parsed.line_numbers, np.arange(1, len(names) + 1))
  # Width inferred from the first line agrees.
  assert image_lists.parse_list_file(path).labels.shape == REAL[dataset, split]


def test_real_lists_index_and_protocol_ids(caplog):
  require(LISTS)
  mir = image_lists.index_lists(os.path.join(LISTS, "mirflickr"), "/nonexistent_images", 38,
                                 protocols.REQUIRED_LISTS["mirflickr"])
  assert len(mir.paths) == 25000  # The three mirflickr files are disjoint.
  ids = protocols.protocol_ids("mirflickr", {s: mir.labels[p] for s, p in mir.positions.items()},
                               {s: mir.ids[p] for s, p in mir.positions.items()}, 0)
  assert {k: len(v) for k, v in ids.items()} == {"train": 4000, "query": 1000, "database": 20000}
  _, test_rows = read_list_lines(os.path.join(LISTS, "mirflickr", "test.txt"))
  assert protocols.count_unlabelled(mir.labels[mir.positions["test"]]) == int((test_rows.sum(1) == 0).sum()) == 19
  nus = image_lists.index_lists(os.path.join(LISTS, "nuswide_21"), "/nonexistent_images", 21)
  assert sorted(nus.files) == ["test", "train"] and len(nus.paths) == 12600
  with caplog.at_level(logging.WARNING):
    ids = protocols.protocol_ids("nuswide_21", {s: nus.labels[p] for s, p in nus.positions.items()},
                                 {s: nus.ids[p] for s, p in nus.positions.items()}, 0)
  assert "no database.txt" in caplog.text
  np.testing.assert_array_equal(ids["database"], ids["train"])
  assert len(ids["train"]) == 10500 and len(ids["query"]) == 2100
  with pytest.raises(ValueError, match=r"nuswide_21/database\.txt not found"):
    image_lists.index_lists(os.path.join(LISTS, "nuswide_21"), "/x", 21, ("train", "test", "database"))


def test_wrong_label_width_names_file_and_line(tmp_path):
  lines = [f"img{i}.jpg " + " ".join(["0"] * 21) for i in range(20)]
  lines[16] = "img16.jpg " + " ".join(["1"] * 20)
  path = tmp_path / "train.txt"
  path.write_text("\n".join(lines) + "\n")
  with pytest.raises(ValueError) as info:
    image_lists.parse_list_file(str(path), 21)
  assert str(info.value) == f"list file {path} line 17: expected 21 labels, got 20"
  with pytest.raises(ValueError, match=r"line 17: expected 21 labels \(the width of line 1\), got 20"):
    image_lists.parse_list_file(str(path))


def test_other_list_errors(tmp_path):
  bad_value = tmp_path / "a.txt"
  bad_value.write_text("x.jpg 0 1\n\ny.jpg 0 2\n")
  with pytest.raises(ValueError, match=r"a\.txt line 3: labels must be 0 or 1, got '2'"):
    image_lists.parse_list_file(str(bad_value))
  empty = tmp_path / "e.txt"
  empty.write_text("\n\n")
  with pytest.raises(ValueError, match=r"e\.txt lists no images"):
    image_lists.parse_list_file(str(empty))
  only_path = tmp_path / "p.txt"
  only_path.write_text("x.jpg\n")
  with pytest.raises(ValueError, match=r"p\.txt line 1: no labels"):
    image_lists.parse_list_file(str(only_path))
  lists = tmp_path / "lists"
  lists.mkdir()
  (lists / "train.txt").write_text("x.jpg 0 1\ny.jpg 1 0\n")
  (lists / "test.txt").write_text("z.jpg 1 1\nx.jpg 1 1\n")
  with pytest.raises(ValueError, match=r"test\.txt line 2: image x\.jpg is also listed at .*train\.txt line 1"):
    image_lists.index_lists(str(lists), str(tmp_path))


def _make_images(root, names, rng, sizes=((8, 8),), gray_every=0):
  """Writes a small JPEG or PNG at every listed path; returns path -> pixels as saved (PNG) or None."""
  pixels = {}
  for k, name in enumerate(names):
    h, w = sizes[k % len(sizes)]
    path = os.path.join(root, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if gray_every and k % gray_every == 0:
      array = rng.integers(0, 256, (h, w), dtype=np.uint8)
    else:
      array = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(array).save(path, format="PNG" if k % 2 else "JPEG", quality=90)
    pixels[name] = array
  return pixels


@pytest.fixture(scope="module")
def mirflickr_subset(tmp_path_factory):
  """Real mirflickr lines (first 30 of each file plus every unlabelled test line) with generated images."""
  src = require(os.path.join(LISTS, "mirflickr"))
  base = tmp_path_factory.mktemp("mir")
  list_dir, root = base / "lists", base / "images"
  list_dir.mkdir()
  rng = np.random.default_rng(0)
  names = []
  for split in ("train", "test", "database"):
    with open(os.path.join(src, f"{split}.txt")) as f:
      lines = f.read().splitlines()
    keep = lines[:30] + ([l for l in lines[30:] if set(l.split()[1:]) == {"0"}][:5] if split == "test" else [])
    (list_dir / f"{split}.txt").write_text("\n".join(keep) + "\n")
    names += [l.split()[0] for l in keep]
  _make_images(str(root), names, rng, sizes=((10, 12), (6, 6)), gray_every=7)
  return str(list_dir), str(root)


def test_mirflickr_protocol_on_generated_images(mirflickr_subset, caplog, tmp_path):
  list_dir, root = mirflickr_subset
  config = _config(name="mirflickr", root=root, list_dir=list_dir, image_size=8)
  with caplog.at_level(logging.WARNING):
    data = protocols.load_retrieval_data(config)
  assert (len(data.train), len(data.query), len(data.database)) == (30, 35, 30)
  assert data.num_classes == 38 and data.multi_label and data.query.labels.dtype == np.uint8
  assert data.query.images.shape == (35, 8, 8, 3) and data.query.images.dtype == np.uint8
  for split, part in (("train", data.train), ("test", data.query), ("database", data.database)):
    names, rows = read_list_lines(os.path.join(list_dir, f"{split}.txt"))
    # Ids are given in order of appearance over train, test, database; each split is in id order.
    order = np.argsort(part.ids)
    np.testing.assert_array_equal(part.labels[order], rows)
    expected = image_io.decode_image(os.path.join(root, names[0]), 8)
    np.testing.assert_array_equal(part.images[order[0]], expected)
    assert part.paths[order].tolist() == names  # Each id leads back to its listed file.
  n_unlabelled = protocols.count_unlabelled(data.query.labels)
  assert n_unlabelled >= 5
  assert f"{n_unlabelled} of 35 query images have no label" in caplog.text
  mask = protocols.labelled_mask(data.train.labels)
  np.testing.assert_array_equal(mask, data.train.labels.sum(1) > 0)


def test_list_tfds_builder_gives_the_same_pixels(mirflickr_subset, tmp_path):
  pytest.importorskip("tensorflow_datasets", reason="tensorflow_datasets not installed")
  list_dir, root = mirflickr_subset
  config = _config(name="mirflickr", root=root, list_dir=list_dir, image_size=8)
  pillow = protocols.load_retrieval_data(config)
  config.loader = "tfds"
  config.data_dir = str(tmp_path / "tfds")
  via_tfds = protocols.load_retrieval_data(config)
  for split in ("train", "query", "database"):
    a, b = getattr(pillow, split), getattr(via_tfds, split)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.ids, b.ids)
    assert b.labels.dtype == np.uint8 and b.ids.dtype == np.int64


def test_list_streaming_table_and_batches(mirflickr_subset, tmp_path):
  pytest.importorskip("tensorflow_datasets", reason="tensorflow_datasets not installed")
  from drlih_jax.data import streaming  # pylint: disable=import-outside-toplevel
  list_dir, root = mirflickr_subset
  config = _config(name="mirflickr", root=root, list_dir=list_dir, image_size=8, data_dir=str(tmp_path))
  data = protocols.load_retrieval_data(config)
  table = streaming.train_table(config)
  np.testing.assert_array_equal(table[2], data.train.ids)
  np.testing.assert_array_equal(table[1], data.train.labels)
  assert table[1].dtype == np.uint8 and table[1].shape == (30, 38)
  run = ml_collections.ConfigDict(dict(dataset=config, seed=1, input=dict(
      classes_per_batch=2, images_per_class=3, augment="", crop_padding=4, resize=0, crop=0)))
  stream = streaming.make_train_iterator(run, 0, 1, 0, table=table)
  for step in range(4):
    batch = next(stream)
    rows = streaming.balanced_indices_for_step(1_000_003, step, data.train.labels, 2, 3)
    assert np.all(data.train.labels[rows].reshape(2, 3, 38).min(axis=1).max(axis=1) == 1)  # Shared label.
    np.testing.assert_array_equal(batch["image"], data.train.images[rows])
    np.testing.assert_array_equal(batch["label"], data.train.labels[rows])
    np.testing.assert_array_equal(batch["id"], data.train.ids[rows])


def test_list_without_database_uses_train_and_shares_ids(tmp_path):
  rng = np.random.default_rng(1)
  list_dir = tmp_path / "lists"
  list_dir.mkdir()
  (list_dir / "train.txt").write_text("a.png 1 0 0\nsub/b.png 0 1 0\nc.png 0 0 1\n")
  (list_dir / "test.txt").write_text("d.png 1 1 0\n/ABS/e.png 0 0 0\n".replace("/ABS", str(tmp_path / "abs")))
  _make_images(str(tmp_path / "img"), ["a.png", "sub/b.png", "c.png", "d.png"], rng)
  _make_images(str(tmp_path / "abs"), ["e.png"], rng)
  data = protocols.load_retrieval_data(_config(root=str(tmp_path / "img"), list_dir=str(list_dir)))
  np.testing.assert_array_equal(data.train.ids, [0, 1, 2])
  np.testing.assert_array_equal(data.database.ids, [0, 1, 2])
  np.testing.assert_array_equal(data.query.ids, [3, 4])
  np.testing.assert_array_equal(data.query.labels, [[1, 1, 0], [0, 0, 0]])
  assert data.num_classes == 3
  assert data.train.paths.tolist() == ["a.png", "sub/b.png", "c.png"]
  assert data.query.paths.tolist() == ["d.png", str(tmp_path / "abs" / "e.png")]


def test_bad_images_in_lists(tmp_path, caplog):
  rng = np.random.default_rng(2)
  list_dir = tmp_path / "lists"
  list_dir.mkdir()
  (list_dir / "train.txt").write_text("a.png 1 0\nmissing.png 0 1\nb.png 0 1\n")
  (list_dir / "test.txt").write_text("c.png 1 0\ntrunc.jpg 0 1\n")
  _make_images(str(tmp_path / "img"), ["a.png", "b.png", "c.png", "trunc.jpg"], rng)
  trunc = tmp_path / "img" / "trunc.jpg"
  trunc.write_bytes(trunc.read_bytes()[:100])
  config = _config(root=str(tmp_path / "img"), list_dir=str(list_dir))
  with pytest.raises(image_io.BadImageError,
                     match=r"list file .*train\.txt line 2: image .*missing\.png: image file not found"):
    protocols.load_retrieval_data(config)
  config.on_bad_image = "skip"
  with caplog.at_level(logging.WARNING):
    data = protocols.load_retrieval_data(config)
  np.testing.assert_array_equal(data.train.ids, [0, 2])
  np.testing.assert_array_equal(data.query.ids, [3])
  assert "skipped 2 of 5 images" in caplog.text and "test.txt line 2" in caplog.text


def test_protocol_width_is_enforced(tmp_path):
  list_dir = tmp_path / "lists"
  list_dir.mkdir()
  (list_dir / "train.txt").write_text("a.png " + " ".join(["0"] * 21) + "\n")
  (list_dir / "test.txt").write_text("b.png " + " ".join(["0"] * 20) + "\n")
  config = _config(name="nuswide_21", root=str(tmp_path), list_dir=str(list_dir))
  with pytest.raises(ValueError, match=r"test\.txt line 1: expected 21 labels, got 20"):
    protocols.load_retrieval_data(config)


@pytest.mark.parametrize("name,width", [("coco", 80), ("imagenet100", 100), ("voc2012", 20)])
def test_other_list_presets(tmp_path, name, width):
  """MS-COCO, ImageNet-100 and VOC2012 presets: label width enforced, database.txt required and used."""
  rng = np.random.default_rng(width)
  list_dir = tmp_path / "lists"
  list_dir.mkdir()
  names = {split: [f"img/{split}_{k}.png" for k in range(count)]
           for split, count in (("train", 4), ("test", 2), ("database", 5))}
  labels = {}
  for split, files in names.items():
    rows = np.zeros((len(files), width), np.uint8)
    rows[np.arange(len(files)), rng.integers(0, width, len(files))] = 1
    labels[split] = rows
    (list_dir / f"{split}.txt").write_text(
        "".join(f"{f} {' '.join(map(str, r))}\n" for f, r in zip(files, rows)))
  _make_images(str(tmp_path), [f for files in names.values() for f in files], rng)
  data = protocols.load_retrieval_data(_config(name=name, root=str(tmp_path), list_dir=str(list_dir)))
  assert (len(data.train), len(data.query), len(data.database)) == (4, 2, 5)
  assert data.num_classes == width and data.database.labels.shape == (5, width)
  np.testing.assert_array_equal(data.database.labels, labels["database"])
  (list_dir / "database.txt").unlink()
  with pytest.raises((ValueError, FileNotFoundError), match="database"):
    protocols.load_retrieval_data(_config(name=name, root=str(tmp_path), list_dir=str(list_dir)))
