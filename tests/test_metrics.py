"""Tests of drlih_jax.metrics (and the kernels of bench/metrics_variants.py) against independent float64
references.

References: a per-query numpy brute force (stable argsort), scikit-learn's average_precision_score,
exhaustive enumeration of tie orders, and a transcription of DeepHash-pytorch's CalcTopMap.
`variants` supplies the one-call wrappers (`compute_map`, ...) and the alternative kernels by name.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from bench import metrics_variants as variants
from drlih_jax import metrics

# Small blocks keep compilation quick and exercise padding and multi-block scans on small data.
SMALL = dict(stable_block=4, db_block=16, stable_chunk=64, query_batch=8)


# ----------------------------------------------------------------------------------------------
# Independent references (float64 numpy).


def _hamming(q, x):
  return (q[:, None, :].astype(bool) != x[None, :, :].astype(bool)).sum(-1)


def _relevance(ql, xl):
  ql, xl = np.asarray(ql), np.asarray(xl)
  if ql.ndim == 1:
    return ql[:, None] == xl[None, :]
  return (ql.astype(np.int64) @ xl.astype(np.int64).T) > 0


def _ap_of_ranking(gnd):
  pos = np.flatnonzero(gnd) + 1.0
  if pos.size == 0:
    return 0.0
  return float(np.mean(np.arange(1, pos.size + 1) / pos))


def ref_stable(q, x, ql, xl, k=None):
  """Per-query stable-tie AP@k (k=None: all) and P@k, by argsort."""
  dist, rel = _hamming(q, x), _relevance(ql, xl)
  aps, precs = [], []
  for i in range(len(q)):
    gnd = rel[i][np.argsort(dist[i], kind="stable")]
    top = gnd if k is None else gnd[:k]
    aps.append(_ap_of_ranking(top))
    precs.append(top.sum() / len(top))
  return np.array(aps), np.array(precs)


def ref_permutation_mean(q, x, ql, xl, k=None):
  """Mean of stable AP@k and P@k over every order of the database (tiny databases only)."""
  n = len(x)
  total_ap, total_p = np.zeros(len(q)), np.zeros(len(q))
  count = 0
  for perm in itertools.permutations(range(n)):
    perm = np.array(perm)
    ap, p = ref_stable(q, x[perm], ql, np.asarray(xl)[perm], k)
    total_ap += ap
    total_p += p
    count += 1
  return total_ap / count, total_p / count


def calc_top_map(rB, qB, retrievalL, queryL, topk):
  """DeepHash-pytorch's CalcTopMap (utils/tools.py), with a stable argsort."""
  num_query = queryL.shape[0]
  topkmap = 0
  for it in range(num_query):
    gnd = (np.dot(queryL[it, :], retrievalL.transpose()) > 0).astype(np.float32)
    hamm = 0.5 * (qB.shape[1] - np.dot(qB[it, :], rB.transpose()))
    ind = np.argsort(hamm, kind="stable")
    gnd = gnd[ind]
    tgnd = gnd[0:topk]
    tsum = np.sum(tgnd).astype(int)
    if tsum == 0:
      continue
    count = np.linspace(1, tsum, tsum)
    tindex = np.asarray(np.where(tgnd == 1)) + 1.0
    topkmap = topkmap + np.mean(count / tindex)
  return topkmap / num_query


def tied_codes(rng, n, bits, prototypes=4, flip=0.08):
  """Codes clustered around a few prototypes: many exact distance ties."""
  protos = rng.integers(0, 2, (prototypes, bits))
  base = protos[rng.integers(0, prototypes, n)]
  return (base ^ (rng.random((n, bits)) < flip)).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# The relevance rule.


def test_relevance_rule_hand_worked():
  # Class ids: the same class.
  np.testing.assert_array_equal(metrics.relevance(np.array([0, 2]), np.array([2, 0, 0, 1])),
                                [[0, 1, 1, 0], [1, 0, 0, 0]])
  # Multi-hot: at least one shared label; a row without labels is relevant to nothing.
  a = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]], np.uint8)
  b = np.array([[1, 1, 0], [0, 0, 1], [1, 0, 0], [0, 0, 0]], np.uint8)
  expected = [[1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]]
  np.testing.assert_array_equal(metrics.relevance(a, b), expected)
  np.testing.assert_array_equal(metrics.relevance(a.astype(bool), b.astype(bool)), expected)
  # The same rule on JAX arrays, inside jit.
  np.testing.assert_array_equal(jax.jit(metrics.relevance)(jnp.asarray(a), jnp.asarray(b)), expected)


def test_relevance_of_packed_words_equals_unpacked():
  # 70 labels: three 32-bit words, shared labels in each word and in none.
  rng = np.random.default_rng(22)
  a = (rng.random((40, 70)) < 0.03).astype(np.uint8)
  b = (rng.random((50, 70)) < 0.03).astype(np.uint8)
  a[0] = 0
  b[:3] = 0
  b[3, 69] = a[1, 69] = 1  # a label in the last (partial) word only
  rule = metrics.relevance(a, b)
  np.testing.assert_array_equal(rule, _relevance(a, b))  # the independent reference
  np.testing.assert_array_equal(metrics.relevance(metrics.pack_bits(a), metrics.pack_bits(b)), rule)
  assert 0 < rule.sum() < rule.size


@pytest.mark.parametrize("labels", ["single", "multi"])
def test_numba_relevance_equals_the_rule(labels):
  # metrics_numba writes the rule out per pair; its relevant counts per distance must be those of
  # metrics.relevance (multi-hot: three label words, unlabelled rows included).
  rng = np.random.default_rng(23)
  q, x = tied_codes(rng, 15, 20), tied_codes(rng, 300, 20)
  if labels == "single":
    ql, xl = rng.integers(0, 4, 15), rng.integers(0, 4, 300)
  else:
    ql = (rng.random((15, 70)) < 0.04).astype(np.uint8)
    xl = (rng.random((300, 70)) < 0.04).astype(np.uint8)
    ql[0], xl[:5] = 0, 0
  stats = metrics.hamming_statistics(q, x, ql, xl, stable=False, stable_method="numba")
  rel, dist = metrics.relevance(ql, xl), _hamming(q, x)
  for i in range(len(q)):
    np.testing.assert_array_equal(stats.hist_rel[i], np.bincount(dist[i][rel[i]], minlength=21))
  assert 0 < stats.hist_rel.sum() < len(q) * len(x)


# ----------------------------------------------------------------------------------------------
# Packing and histograms.


def test_pack_bits_word_layout():
  codes = np.zeros((3, 65), np.uint8)
  codes[0, 0] = 1
  codes[1, 31] = 1
  codes[1, 32] = 1
  codes[2, 64] = 1
  words = metrics.pack_bits(codes)
  assert words.dtype == np.uint32 and words.shape == (3, 3)
  np.testing.assert_array_equal(words, [[1, 0, 0], [2**31, 1, 0], [0, 0, 1]])


@pytest.mark.parametrize("method", ["scatter", "onehot"])
def test_histograms_match_bincount(method):
  rng = np.random.default_rng(0)
  q, x = tied_codes(rng, 11, 65), tied_codes(rng, 203, 65)
  ql, xl = rng.integers(0, 3, 11), rng.integers(0, 3, 203)
  stats = variants.hamming_statistics(q, x, ql, xl, stable=False, hist_method=method, **SMALL)
  dist, rel = _hamming(q, x), _relevance(ql, xl)
  for i in range(len(q)):
    np.testing.assert_array_equal(stats.hist_all[i], np.bincount(dist[i], minlength=66))
    np.testing.assert_array_equal(stats.hist_rel[i], np.bincount(dist[i][rel[i]], minlength=66))


# ----------------------------------------------------------------------------------------------
# mAP, stable ties.


@pytest.mark.parametrize("bits", [12, 33, 48, 64, 65])
def test_stable_map_matches_bruteforce(bits):
  rng = np.random.default_rng(bits)
  q, x = tied_codes(rng, 21, bits), tied_codes(rng, 301, bits)
  ql, xl = rng.integers(0, 5, 21), rng.integers(0, 5, 301)
  for k in (None, 37):
    result = variants.compute_map(q, x, ql, xl, top_k=k, **SMALL)
    ref_ap, _ = ref_stable(q, x, ql, xl, k)
    np.testing.assert_allclose(result.average_precision, ref_ap, rtol=0, atol=1e-6)
    assert result.map == pytest.approx(ref_ap.mean(), abs=1e-6)


def test_stable_map_multilabel_matches_bruteforce():
  rng = np.random.default_rng(1)
  q, x = tied_codes(rng, 17, 24), tied_codes(rng, 250, 24)
  ql = (rng.random((17, 38)) < 0.08).astype(np.uint8)
  xl = (rng.random((250, 38)) < 0.08).astype(np.uint8)
  ql[0] = 0  # a query without labels has no relevant item
  for k in (None, 50):
    result = variants.compute_map(q, x, ql, xl, top_k=k, **SMALL)
    ref_ap, _ = ref_stable(q, x, ql, xl, k)
    np.testing.assert_allclose(result.average_precision, ref_ap, rtol=0, atol=1e-6)
  assert result.average_precision[0] == 0.0
  assert result.num_queries_without_relevant == int(np.sum(~_relevance(ql, xl).any(axis=1)))
  assert result.num_queries_without_relevant >= 1


def test_stable_ap_equals_sklearn_with_index_tiebreak():
  # Scores -(distance * n + index) are distinct and order items exactly as the stable rule does,
  # so scikit-learn's AP (no ties to handle) must agree for every query with a relevant item.
  rng = np.random.default_rng(2)
  q, x = tied_codes(rng, 15, 16), tied_codes(rng, 400, 16)
  ql, xl = rng.integers(0, 4, 15), rng.integers(0, 4, 400)
  result = variants.compute_map(q, x, ql, xl, **SMALL)
  dist, rel = _hamming(q, x), _relevance(ql, xl)
  checked = 0
  for i in range(len(q)):
    if rel[i].any():
      score = -(dist[i] * len(x) + np.arange(len(x))).astype(np.float64)
      expected = average_precision_score(rel[i], score)
      assert result.average_precision[i] == pytest.approx(expected, abs=1e-6)
      checked += 1
  assert checked >= 10


def test_default_kernel_sizes_and_onehot_agree_with_bruteforce():
  # The defaults of this backend (on CPU the numba kernel; elsewhere a 1024-item chunk and 32-item
  # pairwise blocks) with a database that needs padding.
  rng = np.random.default_rng(3)
  q, x = tied_codes(rng, 40, 32), tied_codes(rng, 2500, 32)
  ql, xl = rng.integers(0, 10, 40), rng.integers(0, 10, 2500)
  ref_ap, ref_p = ref_stable(q, x, ql, xl, 100)
  stats = metrics.hamming_statistics(q, x, ql, xl, ks=(100,))
  np.testing.assert_allclose(metrics.map_from_statistics(stats, top_k=100).average_precision,
                             ref_ap, rtol=0, atol=1e-6)
  np.testing.assert_allclose(metrics.precision_at_k_from_statistics(stats, [100])[:, 0], ref_p,
                             rtol=0, atol=1e-12)
  onehot = variants.hamming_statistics(q, x, ql, xl, stable=False, hist_method="onehot")
  np.testing.assert_array_equal(onehot.hist_all, stats.hist_all)
  np.testing.assert_array_equal(onehot.hist_rel, stats.hist_rel)


@pytest.mark.parametrize("method", ["pairwise", "sequential", "numba"])
def test_stable_methods_match_bruteforce(method):
  # Every stable kernel, explicitly (the default depends on the backend), on single-label and
  # multi-label data with a cut-off, including a block size that does not divide the database.
  rng = np.random.default_rng(13)
  q, x = tied_codes(rng, 19, 40), tied_codes(rng, 277, 40)
  ql, xl = rng.integers(0, 4, 19), rng.integers(0, 4, 277)
  mq = (rng.random((19, 9)) < 0.2).astype(np.uint8)
  mx = (rng.random((277, 9)) < 0.2).astype(np.uint8)
  options = dict(SMALL, stable_block=8, stable_method=method)
  for labels_q, labels_x in ((ql, xl), (mq, mx)):
    stats = variants.hamming_statistics(q, x, labels_q, labels_x, ks=(1, 45, 277), **options)
    for k in (None, 1, 45):
      ref_ap, ref_p = ref_stable(q, x, labels_q, labels_x, k)
      got = metrics.map_from_statistics(stats, top_k=k).average_precision
      np.testing.assert_allclose(got, ref_ap, rtol=0, atol=1e-6)
      if k is not None:
        p = metrics.precision_at_k_from_statistics(stats, [k])[:, 0]
        np.testing.assert_allclose(p, ref_p, rtol=0, atol=1e-12)


@pytest.mark.parametrize("key,value", [("stable_method", "sort"), ("stable_method", "sequential"),
                                       ("stable_block", 65), ("stable_block", 0), ("query_batch", 0),
                                       ("db_block", -1), ("stable_chunk", 0)])
def test_kernel_options_are_refused_naming_the_key(key, value):
  # "sequential" lives in bench/metrics_variants.py, not in the package. Zero sizes are refused rather
  # than silently replaced by the defaults.
  q, x = np.zeros((2, 8), np.uint8), np.zeros((5, 8), np.uint8)
  with pytest.raises(ValueError, match=f"^{key} must be"):
    metrics.hamming_statistics(q, x, np.zeros(2, int), np.zeros(5, int), **{key: value})


def test_xla_kernels_need_the_xla_path():
  q, x = np.zeros((2, 8), np.uint8), np.zeros((5, 8), np.uint8)
  with pytest.raises(ValueError, match="xla_kernels replace the kernels of stable_method='pairwise'"):
    metrics.hamming_statistics(q, x, np.zeros(2, int), np.zeros(5, int), stable_method="numba",
                               xla_kernels=metrics.XlaKernels())
  with pytest.raises(ValueError, match="hist_method must be one of"):
    variants.hamming_statistics(q, x, np.zeros(2, int), np.zeros(5, int), hist_method="sort")


@pytest.mark.parametrize("method", ["pairwise", "sequential", "numba"])
def test_both_stable_methods_unpacked_counters(method):
  # A padded database of >= 2^16 items switches both kernels to unpacked (two-column) counters.
  rng = np.random.default_rng(14)
  q, x = tied_codes(rng, 3, 6, flip=0.3), tied_codes(rng, 70_000, 6, flip=0.3)
  ql, xl = rng.integers(0, 3, 3), rng.integers(0, 3, 70_000)
  ref_ap, _ = ref_stable(q, x, ql, xl)
  got = variants.compute_map(q, x, ql, xl, stable_method=method).average_precision
  np.testing.assert_allclose(got, ref_ap, rtol=0, atol=1e-6)


def test_float32_sums_are_accurate_on_a_large_tied_database():
  # 120k items at 9 distances: ~40k relevant items per query, each adding relevant-rank / rank.
  rng = np.random.default_rng(4)
  q, x = tied_codes(rng, 4, 8, flip=0.3), tied_codes(rng, 120_000, 8, flip=0.3)
  ql, xl = rng.integers(0, 3, 4), rng.integers(0, 3, 120_000)
  for k in (None, 50_000):
    ref_ap, _ = ref_stable(q, x, ql, xl, k)
    got = variants.compute_map(q, x, ql, xl, top_k=k).average_precision
    np.testing.assert_allclose(got, ref_ap, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Tie-aware AP and P@k: the exact mean over all tie orders.


def test_tie_aware_equals_mean_over_all_orders():
  rng = np.random.default_rng(5)
  q = rng.integers(0, 2, (4, 3)).astype(np.uint8)
  x = rng.integers(0, 2, (7, 3)).astype(np.uint8)  # 7 items, 4 distances: heavy ties
  ql = np.array([0, 1, 2, 0])
  xl = np.array([0, 1, 0, 0, 1, 2, 1])
  stats = metrics.hamming_statistics(q, x, ql, xl, ks=(3,), **SMALL)
  for k in (None, 3, 5):
    ref_ap, ref_p = ref_permutation_mean(q, x, ql, xl, k)
    got = metrics.map_from_statistics(stats, top_k=k, ties="average").average_precision
    np.testing.assert_allclose(got, ref_ap, rtol=0, atol=1e-12)
    if k is not None:
      p_avg = metrics.precision_at_k_from_statistics(stats, [k], ties="average")[:, 0]
      np.testing.assert_allclose(p_avg, ref_p, rtol=0, atol=1e-12)


def _expected_group_sum(n0, r0, m, y):
  """E[sum of precision over y relevant items placed at random among positions n0+1..n0+m]."""
  if y == 0:
    return 0.0
  i = np.arange(1, m + 1, dtype=np.float64)
  frac = (y - 1) / (m - 1) if m > 1 else 0.0
  return float(np.sum((y / m) * (r0 + 1 + (i - 1) * frac) / (n0 + i)))


def test_tie_aware_large_database_matches_direct_summation():
  # Large tie groups (n0 in the thousands) exercise the asymptotic harmonic numbers and, at a
  # cut-off, the hypergeometric law of the relevant count (checked against scipy.stats.hypergeom).
  from scipy.stats import hypergeom
  rng = np.random.default_rng(12)
  q, x = tied_codes(rng, 6, 10, flip=0.2), tied_codes(rng, 3000, 10, flip=0.2)
  ql, xl = rng.integers(0, 3, 6), rng.integers(0, 3, 3000)
  stats = metrics.hamming_statistics(q, x, ql, xl, stable=False, **SMALL)
  for k in (None, 1234):
    got = metrics.map_from_statistics(stats, top_k=k, ties="average").average_precision
    for i in range(len(q)):
      c, r = stats.hist_all[i], stats.hist_rel[i]
      n_lt, r_lt = np.cumsum(c) - c, np.cumsum(r) - r
      if k is None:
        expected = sum(_expected_group_sum(n_lt[d], r_lt[d], c[d], r[d]) for d in range(11))
        expected /= r.sum()
      else:
        d_star = int(np.argmax(np.cumsum(c) >= k))
        t_full = sum(_expected_group_sum(n_lt[d], r_lt[d], c[d], r[d]) for d in range(d_star))
        n0, r0, n, rb = n_lt[d_star], r_lt[d_star], c[d_star], r[d_star]
        m = k - n0
        expected = 0.0
        for y in range(0, min(m, rb) + 1):
          p = hypergeom(n, rb, m).pmf(y)
          if p > 0 and r0 + y > 0:
            expected += p * (t_full + _expected_group_sum(n0, r0, m, y)) / (r0 + y)
      assert got[i] == pytest.approx(expected, abs=1e-10)


def test_everything_tied_hand_worked():
  # One query, four identical database codes, relevant pattern 1 0 1 0.
  q = np.zeros((1, 5), np.uint8)
  x = np.zeros((4, 5), np.uint8)
  ql, xl = np.array([1]), np.array([1, 0, 1, 0])
  stable = variants.mean_average_precision(q, x, ql, xl, **SMALL)
  assert stable == pytest.approx((1 / 1 + 2 / 3) / 2, abs=1e-7)
  # Tie-aware: relevant pair positions over the 6 equally likely placements.
  placements = list(itertools.combinations(range(1, 5), 2))
  expected = np.mean([(1 / a + 2 / b) / 2 for a, b in placements])
  average = variants.mean_average_precision(q, x, ql, xl, ties="average", **SMALL)
  assert average == pytest.approx(expected, abs=1e-12)
  assert expected == pytest.approx(0.6805555555555556, abs=1e-12)


# ----------------------------------------------------------------------------------------------
# DeepHash convention.


@pytest.mark.parametrize("topk", [-1, 10, 1000, None])
def test_deephash_convention_matches_calc_top_map(topk):
  rng = np.random.default_rng(6)
  q, x = tied_codes(rng, 12, 16), tied_codes(rng, 90, 16)
  ql, xl = rng.integers(0, 4, 12), rng.integers(0, 4, 90)
  one_hot = np.eye(4)
  expected = calc_top_map(2.0 * x - 1, 2.0 * q - 1, one_hot[xl], one_hot[ql], topk)
  got = variants.mean_average_precision(q, x, ql, xl, top_k=topk, convention="deephash", **SMALL)
  assert got == pytest.approx(expected, abs=1e-6)
  got_multi = variants.mean_average_precision(q, x, one_hot[ql], one_hot[xl], top_k=topk,
                                             convention="deephash", **SMALL)
  assert got_multi == pytest.approx(expected, abs=1e-6)


def test_deephash_topk_minus_one_drops_the_last_item():
  # The last-ranked item is the only relevant one: CalcTopMap with topK=-1 never sees it.
  q = np.zeros((1, 4), np.uint8)
  x = np.array([[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]], np.uint8)
  ql, xl = np.array([0]), np.array([1, 1, 0])
  assert variants.mean_average_precision(q, x, ql, xl, top_k=-1, convention="deephash") == 0.0
  assert variants.mean_average_precision(q, x, ql, xl, convention="deephash") == pytest.approx(1 / 3)


# ----------------------------------------------------------------------------------------------
# Edge cases.


def test_no_relevant_item_counts_zero_and_is_reported():
  rng = np.random.default_rng(7)
  q, x = tied_codes(rng, 6, 12), tied_codes(rng, 50, 12)
  ql = np.array([0, 1, 9, 2, 9, 0])  # class 9 is absent from the database
  xl = rng.integers(0, 3, 50)
  for ties in ("stable", "average"):
    result = variants.compute_map(q, x, ql, xl, ties=ties, **SMALL)
    assert result.num_queries_without_relevant == 2
    assert result.average_precision[2] == 0.0 and result.average_precision[4] == 0.0
    assert result.map == pytest.approx(result.average_precision.sum() / 6)
  ref_ap, _ = ref_stable(q, x, ql, xl)
  np.testing.assert_allclose(variants.compute_map(q, x, ql, xl, **SMALL).average_precision, ref_ap,
                             atol=1e-6)


def test_top_k_larger_than_database_equals_map_all():
  rng = np.random.default_rng(8)
  q, x = tied_codes(rng, 9, 20), tied_codes(rng, 40, 20)
  ql, xl = rng.integers(0, 3, 9), rng.integers(0, 3, 40)
  for ties in ("stable", "average"):
    full = variants.mean_average_precision(q, x, ql, xl, ties=ties, **SMALL)
    big = variants.mean_average_precision(q, x, ql, xl, top_k=1000, ties=ties, **SMALL)
    exact = variants.mean_average_precision(q, x, ql, xl, top_k=40, ties=ties, **SMALL)
    assert big == full and exact == full
    if ties == "stable":
      assert full == pytest.approx(ref_stable(q, x, ql, xl)[0].mean(), abs=1e-6)


def test_single_query_and_single_bit():
  q = np.array([[1]], np.uint8)
  x = np.array([[0], [1], [1], [0], [1]], np.uint8)
  ql, xl = np.array([3]), np.array([3, 0, 3, 3, 0])
  # Stable ranking: items 1, 2, 4 (distance 0) then 0, 3; relevant at ranks 2, 4, 5.
  expected = (1 / 2 + 2 / 4 + 3 / 5) / 3
  assert variants.mean_average_precision(q, x, ql, xl) == pytest.approx(expected, abs=1e-7)


def test_input_validation():
  q, x = np.zeros((2, 8), np.uint8), np.zeros((5, 8), np.uint8)
  ql, xl = np.zeros(2, int), np.zeros(5, int)
  with pytest.raises(ValueError, match="query_codes: codes must be"):
    variants.mean_average_precision(q + 2, x, ql, xl)
  with pytest.raises(ValueError, match="integer or bool dtype"):
    variants.mean_average_precision(q.astype(np.float32), x, ql, xl)
  with pytest.raises(ValueError, match="bits"):
    variants.mean_average_precision(q[:, :7], x, ql, xl)
  with pytest.raises(ValueError, match="db_labels has 4 rows"):
    variants.mean_average_precision(q, x, ql, xl[:4])
  with pytest.raises(ValueError, match="both be class ids"):
    variants.mean_average_precision(q, x, ql, np.zeros((5, 3), int))
  with pytest.raises(ValueError, match="ties must be"):
    variants.mean_average_precision(q, x, ql, xl, ties="random")
  with pytest.raises(ValueError, match="use ties='stable'"):
    variants.mean_average_precision(q, x, ql, xl, ties="average", convention="deephash")
  with pytest.raises(ValueError, match="top_k must be >= 1"):
    variants.mean_average_precision(q, x, ql, xl, top_k=0)


# ----------------------------------------------------------------------------------------------
# Precision within a radius, P@k, PR curve.


def test_precision_within_radius_matches_bruteforce():
  rng = np.random.default_rng(9)
  q, x = tied_codes(rng, 25, 24, flip=0.1), tied_codes(rng, 120, 24, flip=0.1)
  ql, xl = rng.integers(0, 4, 25), rng.integers(0, 4, 120)
  dist, rel = _hamming(q, x), _relevance(ql, xl)
  stats = metrics.hamming_statistics(q, x, ql, xl, stable=False, **SMALL)
  for radius in (0, 2, 5):
    inside = dist <= radius
    per_query = np.where(inside.sum(1) > 0,
                         (inside & rel).sum(1) / np.maximum(inside.sum(1), 1), 0.0)
    mean, values, empty = metrics.radius_statistics(stats, radius)
    np.testing.assert_allclose(values, per_query, atol=1e-12)
    assert empty == int(np.sum(inside.sum(1) == 0))
    assert mean == pytest.approx(per_query.mean(), abs=1e-12)
  assert metrics.radius_statistics(stats, 0)[2] > 0  # some empty balls were exercised
  assert variants.precision_within_radius(q, x, ql, xl, **SMALL) == pytest.approx(
      metrics.radius_statistics(stats, 2)[0], abs=1e-12)


def test_precision_at_k_matches_bruteforce():
  rng = np.random.default_rng(10)
  q, x = tied_codes(rng, 13, 16), tied_codes(rng, 150, 16)
  ql, xl = rng.integers(0, 3, 13), rng.integers(0, 3, 150)
  ks = [1, 10, 77, 150, 400]
  got = variants.precision_at_k(q, x, ql, xl, ks=ks, **SMALL)
  expected = [ref_stable(q, x, ql, xl, k)[1].mean() for k in ks]
  np.testing.assert_allclose(got, expected, atol=1e-12)


def test_precision_recall_curve_matches_bruteforce():
  rng = np.random.default_rng(11)
  q, x = tied_codes(rng, 14, 12), tied_codes(rng, 90, 12)
  ql, xl = rng.integers(0, 3, 14), rng.integers(0, 3, 90)
  ql[0] = 7  # no relevant item: recall counts 0
  dist, rel = _hamming(q, x), _relevance(ql, xl)
  precision, recall = variants.precision_recall_curve(q, x, ql, xl, **SMALL)
  assert precision.shape == recall.shape == (13,)
  for r in range(13):
    inside = dist <= r
    hits = (inside & rel).sum(1)
    p = np.where(inside.sum(1) > 0, hits / np.maximum(inside.sum(1), 1), 0.0)
    rc = np.where(rel.sum(1) > 0, hits / np.maximum(rel.sum(1), 1), 0.0)
    assert precision[r] == pytest.approx(p.mean(), abs=1e-12)
    assert recall[r] == pytest.approx(rc.mean(), abs=1e-12)
  assert recall[-1] == pytest.approx(13 / 14)


def test_numba_statistics_equal_xla_kernels():
  """The one-pass numba kernel gives the XLA kernels' histograms exactly and their sums to 1e-6."""
  rng = np.random.default_rng(21)
  for bits in (12, 65):  # one word and a partial second 64-bit word
    q, x = tied_codes(rng, 23, bits), tied_codes(rng, 501, bits)
    for ql, xl in ((rng.integers(0, 5, 23), rng.integers(0, 5, 501)),
                   ((rng.random((23, 7)) < 0.3).astype(np.uint8), (rng.random((501, 7)) < 0.3).astype(np.uint8))):
      fast = metrics.hamming_statistics(q, x, ql, xl, ks=(1, 50, 501), stable_method="numba")
      xla = variants.hamming_statistics(q, x, ql, xl, ks=(1, 50, 501), stable_method="sequential")
      np.testing.assert_array_equal(fast.hist_all, xla.hist_all)
      np.testing.assert_array_equal(fast.hist_rel, xla.hist_rel)
      np.testing.assert_array_equal(fast.stable_rel_at_k, xla.stable_rel_at_k)
      np.testing.assert_allclose(fast.stable_sum, xla.stable_sum, rtol=1e-6)
      np.testing.assert_allclose(fast.stable_sum_at_k, xla.stable_sum_at_k, rtol=1e-6, atol=1e-9)
