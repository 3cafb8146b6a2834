"""A numba CPU kernel for the Hamming statistics of `metrics`: histograms and stable ranks in one pass.

For each query (queries in parallel over the CPU's threads) the database is walked once in index order:
the distance of item j is a popcount of 64-bit XORs; a running count per distance gives j's position
among the earlier items at the same distance, and for a relevant j that position, the running count of
relevant items at that distance and the distance are recorded. After the walk the counts are the query's
full histograms, so N(<d) and R(<d) are known and every recorded relevant item's stable rank
N(<d) + position + 1 and relevant-rank R(<d) + relevant position + 1 follow exactly; their quotients are
summed in float64. One pass instead of the two the XLA kernels need (histograms first, then ranks),
because the rank offsets are applied after the walk instead of before it.

Relevance is `metrics.relevance` written out per pair for numba (the same rule: equal class ids, or a
nonzero AND of packed label words); tests/test_metrics.py checks that the two agree.

The default of `metrics.hamming_statistics` on the CPU (numba is a core dependency, imported lazily).
"""

from __future__ import annotations

import functools

import numpy as np


@functools.cache
def _kernels():
  """Compiles the kernels on first use (numba is imported lazily)."""
  import numba  # pylint: disable=g-import-not-at-top

  @numba.njit(inline="always")
  def popcount64(x):
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return (x * np.uint64(0x0101010101010101)) >> np.uint64(56)

  @numba.njit(inline="always")
  def relevant(q_labels, i, db_labels, j, multi):
    """`metrics.relevance` of query i and database item j (labels as in `statistics`)."""
    if not multi:
      return q_labels[i, 0] == db_labels[j, 0]
    for w in range(q_labels.shape[1]):
      if q_labels[i, w] & db_labels[j, w]:
        return True
    return False

  @numba.njit(parallel=True)
  def statistics(q_words, db_words, q_labels, db_labels, multi, bins, ks):
    num_q, num_words = q_words.shape
    num_db = db_words.shape[0]
    num_k = ks.shape[0]
    hist_all = np.zeros((num_q, bins), np.int64)
    hist_rel = np.zeros((num_q, bins), np.int64)
    sums = np.zeros(num_q, np.float64)
    sums_k = np.zeros((num_q, num_k), np.float64)
    rel_k = np.zeros((num_q, num_k), np.int64)
    for i in numba.prange(num_q):
      seen_all = np.zeros(bins, np.int64)
      seen_rel = np.zeros(bins, np.int64)
      rel_dist = np.empty(num_db, np.int32)
      rel_pos = np.empty(num_db, np.int64)
      rel_relpos = np.empty(num_db, np.int64)
      n = 0
      for j in range(num_db):
        d = 0
        for w in range(num_words):
          d += popcount64(q_words[i, w] ^ db_words[j, w])
        position = seen_all[d]
        seen_all[d] = position + 1
        if relevant(q_labels, i, db_labels, j, multi):
          rel_dist[n] = d
          rel_pos[n] = position
          rel_relpos[n] = seen_rel[d]
          seen_rel[d] += 1
          n += 1
      before_all = np.empty(bins, np.int64)
      before_rel = np.empty(bins, np.int64)
      total_all = 0
      total_rel = 0
      for b in range(bins):
        before_all[b] = total_all
        before_rel[b] = total_rel
        total_all += seen_all[b]
        total_rel += seen_rel[b]
        hist_all[i, b] = seen_all[b]
        hist_rel[i, b] = seen_rel[b]
      s = 0.0
      for t in range(n):
        d = rel_dist[t]
        rank = before_all[d] + rel_pos[t] + 1
        term = (before_rel[d] + rel_relpos[t] + 1) / rank
        s += term
        for k in range(num_k):
          if rank <= ks[k]:
            sums_k[i, k] += term
            rel_k[i, k] += 1
      sums[i] = s
    return hist_all, hist_rel, sums, sums_k, rel_k

  return statistics


def _words64(codes: np.ndarray) -> np.ndarray:
  """{0,1} (n, K) -> little-endian uint64 words (n, ceil(K/64)), padding bits 0."""
  n, k = codes.shape
  words = -(-k // 64)
  packed = np.packbits(codes, axis=1, bitorder="little")
  out = np.zeros((n, words * 8), np.uint8)
  out[:, :packed.shape[1]] = packed
  return out.view("<u8")


def statistics(query_codes: np.ndarray, db_codes: np.ndarray, query_labels: np.ndarray,
               db_labels: np.ndarray, multi: bool, ks: tuple[int, ...]):
  """(hist_all, hist_rel, stable_sum, stable_sum_at_k, stable_rel_at_k) for validated inputs.

  Args:
    query_codes, db_codes: uint8 {0,1} (n, K).
    query_labels, db_labels: int32 class ids (n,) or packed uint32 multi-hot words (n, words).
    multi: whether the labels are multi-hot words.
    ks: cut-offs (already clipped to the database size).
  """
  num_bits = query_codes.shape[1]
  q_labels = np.ascontiguousarray(query_labels.reshape(len(query_labels), -1))
  db_labels = np.ascontiguousarray(db_labels.reshape(len(db_labels), -1))
  return _kernels()(_words64(query_codes), _words64(db_codes), q_labels, db_labels, multi, num_bits + 1,
                    np.asarray(ks, np.int64).reshape(-1))
