"""drlih_jax.evaluate: the database order of the stable metrics, against float64 references."""

import numpy as np
import pytest

from configs import default as default_config
from drlih_jax import validation
from drlih_jax import evaluate


def _stable_map_reference(q_codes, x_codes, q_labels, x_labels) -> float:
  """mAP@all with ties broken by database position: float64, one query at a time."""
  aps = []
  for code, label in zip(q_codes, q_labels):
    dist = np.sum(code[None, :] != x_codes, axis=1)
    order = np.argsort(dist, kind="stable")
    relevant = (x_labels[order] == label).astype(np.float64)
    hits = np.cumsum(relevant)
    ranks = np.arange(1, len(order) + 1, dtype=np.float64)
    aps.append(np.sum(relevant * hits / ranks) / max(relevant.sum(), 1.0))
  return float(np.mean(aps))


def _class_sorted(num_classes=4, per_class_db=50, per_class_query=3):
  x_labels = np.repeat(np.arange(num_classes), per_class_db)
  q_labels = np.repeat(np.arange(num_classes), per_class_query)
  return q_labels, x_labels


def test_stored_order_rewards_one_code_for_everything_and_shuffled_does_not():
  q_labels, x_labels = _class_sorted()
  q = np.zeros((len(q_labels), 8), np.uint8)
  x = np.zeros((len(x_labels), 8), np.uint8)
  stored = evaluate.report_for_codes(q, x, q_labels, x_labels, [8], "stored")
  # Hand-worked: a class-c query finds its 50 relevant items at positions 50c + 1 .. 50c + 50, so its AP
  # is mean_k k / (50c + k); chance (the tie-aware value) is a little above 1/4 (finite tie group).
  k = np.arange(1, 51, dtype=np.float64)
  expected = np.mean([np.mean(k / (50 * c + k)) for c in range(4)])
  assert stored["map"]["8"] == pytest.approx(expected, rel=1e-9)
  assert expected > 0.4
  assert 0.25 < stored["map_average_ties"]["8"] < 0.3
  assert stored["database_order"] == "stored"

  shuffled = evaluate.report_for_codes(q, x, q_labels, x_labels, [8], "shuffled")
  positions = np.random.default_rng(evaluate.DATABASE_ORDER_SEED).permutation(len(x_labels))
  assert shuffled["map"]["8"] == pytest.approx(
      _stable_map_reference(q, x[positions], q_labels, x_labels[positions]), rel=1e-9)
  assert shuffled["map"]["8"] < 0.35  # no longer rewarded: close to chance
  assert shuffled["map_average_ties"]["8"] == stored["map_average_ties"]["8"]
  assert shuffled["database_order"] == f"shuffled (seed {evaluate.DATABASE_ORDER_SEED})"


def test_shuffled_order_on_random_codes_matches_reference_and_keeps_order_free_metrics():
  rng = np.random.default_rng(3)
  q_labels, x_labels = _class_sorted(num_classes=3, per_class_db=40, per_class_query=4)
  q = rng.integers(0, 2, (len(q_labels), 6), dtype=np.uint8)
  x = rng.integers(0, 2, (len(x_labels), 6), dtype=np.uint8)
  positions = evaluate.database_order(len(x_labels), "shuffled")
  assert sorted(positions) == list(range(len(x_labels)))
  np.testing.assert_array_equal(positions, evaluate.database_order(len(x_labels)))  # fixed, not per call
  shuffled = evaluate.report_for_codes(q, x, q_labels, x_labels, [3, 6], "shuffled")
  stored = evaluate.report_for_codes(q, x, q_labels, x_labels, [3, 6], "stored")
  for length in (3, 6):
    key = str(length)
    assert shuffled["map"][key] == pytest.approx(_stable_map_reference(
        q[:, :length], x[positions, :length], q_labels, x_labels[positions]), rel=1e-9)
    assert stored["map"][key] == pytest.approx(_stable_map_reference(
        q[:, :length], x[:, :length], q_labels, x_labels), rel=1e-9)
    for name in ("map_average_ties", "precision_radius2"):
      assert shuffled[name][key] == pytest.approx(stored[name][key], rel=1e-12), name


def test_config_chooses_the_order_and_bad_values_name_the_key():
  config = default_config.get_config()
  assert config.train.eval_database_order == "shuffled"
  q_labels, x_labels = _class_sorted()
  codes_q = np.zeros((len(q_labels), config.hash.bits), np.uint8)
  codes_x = np.zeros((len(x_labels), config.hash.bits), np.uint8)
  assert evaluate.evaluate_codes(codes_q, codes_x, q_labels, x_labels, config)["database_order"].startswith(
      "shuffled")
  config.train.eval_database_order = "stored"
  assert evaluate.evaluate_codes(codes_q, codes_x, q_labels, x_labels, config)["database_order"] == "stored"
  config.train.eval_database_order = "sorted"
  with pytest.raises(ValueError, match="train.eval_database_order"):
    validation.validate(config)
  with pytest.raises(ValueError, match="train.eval_database_order"):
    evaluate.database_order(10, "sorted")


def test_code_usage_counts_distinct_codes_and_tie_groups_by_hand():
  codes = np.array([[0, 0, 1], [0, 0, 1], [0, 1, 0], [1, 1, 1], [0, 0, 1]], np.uint8)
  usage = evaluate.code_usage(codes, ["1", "2", "3"])
  # 1 bit: groups {0: 4 rows, 1: 1 row}; 2 bits: {00: 3, 01: 1, 11: 1}; 3 bits: {001: 3, 010: 1, 111: 1}.
  assert usage["1"] == {"distinct": 2, "mean_tie_group": (16 + 1) / 5}
  assert usage["2"] == {"distinct": 3, "mean_tie_group": (9 + 1 + 1) / 5}
  assert usage["3"] == {"distinct": 3, "mean_tie_group": (9 + 1 + 1) / 5}
  q_labels, x_labels = np.array([0]), np.array([0, 0, 1, 1, 0])
  report = evaluate.report_for_codes(codes[:1], codes, q_labels, x_labels, [2, 3])
  assert report["code_usage"] == {"2": usage["2"], "3": usage["3"]}


def test_code_usage_of_codes_longer_than_one_word_matches_row_counting():
  rng = np.random.default_rng(5)
  codes = rng.integers(0, 2, (400, 70), dtype=np.uint8)
  codes[200:] = codes[:200]             # every row appears at least twice
  codes[:50, 65:] = 0                   # rows that differ only past bit 64 in some pairs
  for length in (3, 64, 65, 70):
    _, counts = np.unique(codes[:, :length], axis=0, return_counts=True)
    usage = evaluate.code_usage(codes, [length])[str(length)]
    assert usage["distinct"] == len(counts)
    assert usage["mean_tie_group"] == pytest.approx(np.sum(counts.astype(np.float64) ** 2) / 400, rel=1e-12)
