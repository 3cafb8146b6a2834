"""Tests of drlih_jax.reports (PNG plots, retrieval grid) and metrics.full_report."""

import io
import json
import os
import types
from unittest import mock

from etils import epath
from etils.epath import gpath
from etils.epath import testing as epath_testing
import ml_collections
import numpy as np
from PIL import Image
import pytest

from bench import metrics_variants as variants
from drlih_jax import evaluate
from drlih_jax import metrics
from drlih_jax import reports

SMALL = dict(stable_block=4, db_block=16, stable_chunk=64, query_batch=8)


def _open_png(path):
  with Image.open(path) as image:
    assert image.format == "PNG"
    image.load()
    return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def code_sets():
  rng = np.random.default_rng(0)
  centers = rng.integers(0, 2, (4, 16))
  ql, xl = rng.integers(0, 4, 30), rng.integers(0, 4, 200)
  ql[0] = 9  # no relevant item
  q = (centers[ql % 4] ^ (rng.random((30, 16)) < 0.15)).astype(np.uint8)
  x = (centers[xl] ^ (rng.random((200, 16)) < 0.15)).astype(np.uint8)
  return q, x, ql, xl


def test_full_report_layout_and_values(code_sets):
  q, x, ql, xl = code_sets
  report = metrics.full_report(q, x, ql, xl, prefix_lengths=[8, 16], ks=(10, 50), top_k=(20,),
                               **SMALL)
  json.dumps(report)  # serialisable as is
  assert set(report) >= {"map", "map_average_ties", "map_at_k", "map_at_k_average_ties",
                         "precision_radius2", "precision_at_k", "pr_curve", "num_queries",
                         "num_database", "queries_without_relevant"}
  assert report["num_queries"] == 30 and report["num_database"] == 200
  assert report["queries_without_relevant"] == 1
  assert set(report["map"]) == {"8", "16"} and set(report["map_at_k"]) == {"20"}
  assert set(report["precision_at_k"]) == {"10", "50"}
  for bits in (8, 16):
    key = str(bits)
    qb, xb = q[:, :bits], x[:, :bits]
    assert report["map"][key] == pytest.approx(
        variants.mean_average_precision(qb, xb, ql, xl, **SMALL), abs=1e-7)
    assert report["map_average_ties"][key] == pytest.approx(
        variants.mean_average_precision(qb, xb, ql, xl, ties="average", **SMALL), abs=1e-12)
    assert report["map_at_k"]["20"][key] == pytest.approx(
        variants.mean_average_precision(qb, xb, ql, xl, top_k=20, **SMALL), abs=1e-7)
    assert report["map_at_k_average_ties"]["20"][key] == pytest.approx(
        variants.mean_average_precision(qb, xb, ql, xl, top_k=20, ties="average", **SMALL),
        abs=1e-12)
    assert report["precision_radius2"][key] == pytest.approx(
        variants.precision_within_radius(qb, xb, ql, xl, **SMALL), abs=1e-12)
    p_at_k = variants.precision_at_k(qb, xb, ql, xl, ks=[10, 50], **SMALL)
    assert [report["precision_at_k"][k][key] for k in ("10", "50")] == pytest.approx(p_at_k)
    curve = report["pr_curve"][key]
    assert len(curve["precision"]) == len(curve["recall"]) == bits + 1
    assert curve["radius"] == list(range(bits + 1))
    assert all(isinstance(v, float) for v in curve["precision"])
  # Longer codes separate the four clusters better in this construction.
  assert report["map"]["16"] > report["map"]["8"]


def test_full_report_rejects_bad_prefix(code_sets):
  q, x, ql, xl = code_sets
  with pytest.raises(ValueError, match="prefix_lengths"):
    metrics.full_report(q, x, ql, xl, prefix_lengths=[32])


def test_metric_plots_are_valid_pngs(code_sets, tmp_path):
  q, x, ql, xl = code_sets
  report = metrics.full_report(q, x, ql, xl, prefix_lengths=[8, 16], ks=(10, 50), top_k=(20,),
                               **SMALL)
  paths = reports.write_plots(report, str(tmp_path / "plots"))
  assert [p.split("/")[-1] for p in paths] == ["pr_curve.png", "precision_at_k.png",
                                               "map_vs_bits.png"]
  for path in paths:
    pixels = _open_png(path)
    assert pixels.shape == (400, 550, 3)
    assert pixels.std() > 5  # something was drawn
  path = reports.plot_map_vs_bits({"a": {12: 0.5, 32: 0.7}}, str(tmp_path / "m.png"))
  assert _open_png(path).shape == (400, 550, 3)
  with pytest.raises(ValueError, match="precision"):
    reports.plot_pr_curves({8: ([0.1, 0.2], [0.3])}, str(tmp_path / "bad.png"))


def test_retrieval_grid_frames_relevance(tmp_path):
  # Database image i is filled with grey level 10 * i; codes make the ranking of each query known.
  n_db, size = 12, 8
  db_images = np.stack([np.full((size, size, 3), 10 * i, np.uint8) for i in range(n_db)])
  db_codes = np.zeros((n_db, 4), np.uint8)
  db_codes[6:] = 1  # items 0-5 at distance 0 from query 0, items 6-11 at distance 4
  db_labels = np.array([0, 1, 0, 1, 0, 1, 2, 2, 2, 2, 2, 2])
  query_images = np.full((2, size, size), 200, np.uint8)  # grayscale queries are accepted
  query_codes = np.array([[0, 0, 0, 0], [1, 1, 1, 1]], np.uint8)
  query_labels = np.array([0, 2])
  path = reports.retrieval_grid(query_images, query_codes, query_labels, db_images, db_codes,
                                db_labels, str(tmp_path / "grid.png"), num_queries=8, top=3)
  pixels = _open_png(path)
  scale, border = 8, 4  # 8x8 images are enlarged to 64 px; border = 64 // 16
  tile = size * scale + 2 * border
  gap = 2 * border
  assert pixels.shape == (2 * tile + border, tile + gap + 3 * tile + 2 * border, 3)
  assert tuple(pixels[0, 0]) == reports.QUERY_FRAME
  expected_rows = [[0, 1, 2], [6, 7, 8]]  # stable ties: lowest database index first
  expected_rel = [[True, False, True], [True, True, True]]
  for row in range(2):
    y = row * (tile + border)
    for j in range(3):
      x = tile + gap + j * (tile + border)
      frame = tuple(pixels[y, x])
      assert frame == (reports.GREEN if expected_rel[row][j] else reports.RED)
      centre = pixels[y + tile // 2, x + tile // 2]
      assert centre[0] == 10 * expected_rows[row][j]


def test_retrieval_grid_input_errors(tmp_path):
  images = np.zeros((3, 4, 4, 3), np.uint8)
  codes = np.zeros((3, 8), np.uint8)
  labels = np.zeros(3, int)
  with pytest.raises(ValueError, match="uint8"):
    reports.retrieval_grid(images.astype(np.float32), codes, labels, images, codes, labels,
                           str(tmp_path / "g.png"))
  with pytest.raises(ValueError, match="db_labels has 2 rows"):
    reports.retrieval_grid(images, codes, labels, images, codes, labels[:2],
                           str(tmp_path / "g.png"))


# ----------------------------------------------------------------------------------------------
# Tie order of the grid, and remote (gs://) output paths.

GRID_SIZE, GRID_SCALE, GRID_BORDER = 8, 8, 4  # 8x8 images are enlarged to 64 px; border = 64 // 16
GRID_TILE = GRID_SIZE * GRID_SCALE + 2 * GRID_BORDER


def _class_sorted_database(n_db=40, classes=4):
  """Database image i has red level i; stored class by class; every code equal (all tied)."""
  images = np.zeros((n_db, GRID_SIZE, GRID_SIZE, 3), np.uint8)
  images[..., 0] = np.arange(n_db)[:, None, None]
  labels = np.repeat(np.arange(classes), n_db // classes)
  return images, np.zeros((n_db, 4), np.uint8), labels


def _grid_row(pixels, top, row=0):
  """(database indices, relevant flags) of the `top` tiles of one grid row."""
  y = row * (GRID_TILE + GRID_BORDER)
  indices, relevant = [], []
  for j in range(top):
    x = GRID_TILE + 2 * GRID_BORDER + j * (GRID_TILE + GRID_BORDER)
    frame = tuple(pixels[y, x])
    assert frame in (reports.GREEN, reports.RED)
    relevant.append(frame == reports.GREEN)
    indices.append(int(pixels[y + GRID_TILE // 2, x + GRID_TILE // 2][0]))
  return indices, relevant


def test_retrieval_grid_breaks_ties_in_the_database_order(tmp_path):
  db_images, db_codes, db_labels = _class_sorted_database()
  n_db = len(db_labels)
  q_images, q_codes, q_labels = db_images[:1], db_codes[:1], np.array([0])
  order = evaluate.database_order(n_db, "shuffled")
  path = reports.retrieval_grid(q_images, q_codes, q_labels, db_images, db_codes, db_labels,
                                str(tmp_path / "shuffled.png"), top=n_db, database_order=order)
  shown, relevant = _grid_row(_open_png(path), n_db)
  np.testing.assert_array_equal(shown, order)  # all tied: exactly the shuffled order
  assert len(set(db_labels[shown[:10]])) > 1  # not the first class only
  np.testing.assert_array_equal(relevant, db_labels[order] == 0)
  # The stable mAP of the same order is the AP of the row as shown.
  hits = np.flatnonzero(relevant) + 1.0
  row_ap = np.mean(np.arange(1, len(hits) + 1) / hits)
  report = evaluate.report_for_codes(q_codes, db_codes, q_labels, db_labels, [4], "shuffled")
  assert report["map"]["4"] == pytest.approx(row_ap, abs=1e-6)
  # Stored order (None, as evaluate.database_order returns for "stored"): the first class only.
  path = reports.retrieval_grid(q_images, q_codes, q_labels, db_images, db_codes, db_labels,
                                str(tmp_path / "stored.png"), top=10,
                                database_order=evaluate.database_order(n_db, "stored"))
  shown, relevant = _grid_row(_open_png(path), 10)
  assert shown == list(range(10)) and all(relevant)
  with pytest.raises(ValueError, match="permutation of the 40 database positions"):
    reports.retrieval_grid(q_images, q_codes, q_labels, db_images, db_codes, db_labels,
                           str(tmp_path / "bad.png"), database_order=np.zeros(n_db, int))


@pytest.mark.parametrize("order", ["shuffled", "stored"])
def test_write_report_grid_follows_eval_database_order(tmp_path, order):
  db_images, db_codes, db_labels = _class_sorted_database()
  split = lambda images, labels: types.SimpleNamespace(images=images, labels=labels)
  data = types.SimpleNamespace(query=split(db_images[:1], db_labels[:1]),
                               database=split(db_images, db_labels))
  config = ml_collections.ConfigDict(dict(objective="drlih", hash=dict(bits=4),
                                          dataset=dict(name="toy"),
                                          train=dict(eval_database_order=order)))
  report = evaluate.report_for_codes(db_codes[:1], db_codes, db_labels[:1], db_labels, [4], order)
  evaluate.write_report(str(tmp_path), "eval_3", 3, report, config, data, db_codes[:1], db_codes)
  shown, _ = _grid_row(_open_png(tmp_path / "eval_3" / "retrieval_grid.png"), 10)
  positions = evaluate.database_order(len(db_labels), order)
  expected = list(range(10)) if positions is None else list(positions[:10])
  assert shown == expected


def test_plots_and_grid_write_to_gs_paths(code_sets, tmp_path):
  # gs:// goes through epath; the mocked backend maps gs://<path> to tmp_path/<path> (TensorFlow's
  # gfile backend, which epath prefers when TensorFlow is installed, is switched off for the test).
  def local(path):
    return str(tmp_path / os.fspath(path).removeprefix("gs://"))

  q, x, ql, xl = code_sets
  report = metrics.full_report(q, x, ql, xl, prefix_lengths=[8, 16], ks=(10,), top_k=(20,),
                               **SMALL)
  images = np.zeros((len(x), 4, 4), np.uint8)
  with mock.patch.object(gpath, "_is_tf_installed", return_value=False), epath_testing.mock_epath(
      open=lambda fn, path, mode: fn(local(path), mode),
      makedirs=lambda fn, path, exist_ok: fn(local(path), exist_ok=exist_ok),
      mkdir=lambda fn, path, exist_ok: fn(local(path), exist_ok=exist_ok),
      exists=lambda fn, path: fn(local(path)), isdir=lambda fn, path: fn(local(path))):
    paths = reports.write_plots(report, "gs://bucket/run/eval_3")
    paths.append(reports.retrieval_grid(images[:len(q)], q, ql, images, x, xl,
                                        "gs://bucket/run/eval_3/grid/retrieval_grid.png"))
    assert epath.Path(paths[-1]).exists()
  assert paths == [f"gs://bucket/run/eval_3/{name}" for name in
                   ("pr_curve.png", "precision_at_k.png", "map_vs_bits.png", "grid/retrieval_grid.png")]
  for path in paths:
    with open(local(path), "rb") as f:
      assert _open_png(io.BytesIO(f.read())).size > 0
  assert not os.path.exists("gs:")  # nothing written under the working directory
