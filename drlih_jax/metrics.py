# Over 450 lines on purpose: the metric definitions (the docstring below), the device kernels that
# compute their sufficient statistics and the float64 algebra that turns those into numbers are one job
# and are read together; alternative kernels and convenience wrappers live in bench/metrics_variants.py.
"""Retrieval metrics for binary hash codes: mAP, precision within a Hamming radius, P@k, PR curves.

Inputs. Codes are {0,1} arrays of shape (n, K) of any integer or bool dtype (row i is the code of item
i). Labels are either class ids, shape (n,) of non-negative integers, or multi-hot, shape (n, C) of
{0,1}; query and database labels must have the same form. A database item is *relevant* to a query
when the two share at least one label (for class ids: the same class): `relevance`, the one definition
that the training triplets, the numba kernel and the retrieval grid also use. The ranking of a query is
the database ordered by Hamming distance, 0..K.

Ties. Hamming distances take only K+1 values, so ties are the rule, not the exception, and the tie rule
moves mAP by whole points at short code lengths. Two rules are offered:

* ``ties="stable"``: ties are broken by database index (the order of `np.argsort(kind="stable")`).
  This is the ranking most released hashing code produces *when its sort happens to be stable*.
* ``ties="average"``: the tie-aware AP of McSherry & Najork (ECIR 2008): the expectation of AP over
  all orders of the tied items, in closed form from the per-query counts of relevant and of all items
  at each distance. It does not depend on the database order, so it is the number to prefer when
  comparing methods; the stable number can be lower or higher.

Average precision. For one query with R relevant items in the database and the ranking cut at k
(k = database size for mAP@all, ``top_k=None``):

    AP@k = (1 / R_k) * sum over relevant items at rank r <= k of precision@r,

where R_k is the number of relevant items within the top k (R_all = R). A query with R_k = 0 counts
AP = 0 and stays in the mean (the count of queries with R = 0 is reported:
`MAPResult.num_queries_without_relevant`). Dividing by R_k, not by min(R, k), is what DeepHash-pytorch's
`CalcTopMap` does and what most hashing papers report as mAP@k; under this definition mAP@k is not
monotone in k. With ``ties="average"`` AP@k is the exact expectation over tie orders, including the
randomness of R_k at the boundary distance (a hypergeometric sum, evaluated exactly on the host).

Conventions. ``convention="default"`` is the definition above. ``convention="deephash"`` reproduces
DeepHash-pytorch's `CalcTopMap(rB, qB, retrievalL, queryL, topk)` (utils/tools.py): relevance is
`queryL @ retrievalL.T > 0` (for one-hot labels: the same class; for multi-hot: a shared label, so the
same as ours), distances are `0.5 * (K - qB @ rB.T)` on +-1 codes (equal to our popcount distances),
the ranking is `np.argsort(hamm)` and AP is averaged over the relevant items within `gnd[0:topk]`,
queries with none counting 0. `np.argsort` defaults to an *unstable* quicksort, so DeepHash's own
numbers depend on numpy's sort implementation within ties; we reproduce them given a stable tie order
(``ties`` must be "stable"). Its quirk is kept: `topk` follows Python slicing, so the `topK = -1` that
DeepHash's configs use for CIFAR-10, MIRFlickr and VOC2012 drops the last database item
(``top_k=-1`` here does the same); ``top_k=None`` is the whole database. For ``top_k >= 1`` or None,
"deephash" and "default" with stable ties give identical numbers. thulab/DeepHash (TensorFlow) differs:
its `get_mAPs` drops queries with no relevant item in the top R from the mean instead of counting 0,
so its numbers are higher whenever such queries exist; say which convention a number uses.

When numbers are comparable: same data split, same relevance, same cut-off k and definition of the
denominator, and the same tie rule. A "stable" number from code whose sort is not stable (numpy's
default quicksort, torch.argsort on GPU) is not exactly reproducible; "average" is.

Precision within Hamming radius r (default 2): per query, (#relevant with distance <= r) /
(#items with distance <= r); a query with nothing within the radius counts precision 0 and stays in the
mean. This is what thulab/DeepHash's `get_precision_recall_by_Hamming_Radius` does (`precX.append(0.0)`
for an empty ball); DeepHash-pytorch's utils/tools.py has no radius metric. Some papers instead
average only over queries with a non-empty ball; `radius_statistics` returns the per-query values and
the number of empty balls so that either can be computed.

Precision@k: (#relevant within the top k) / min(k, database size); with ``ties="average"`` the
expectation over tie orders. PR curve: for each radius r = 0..K the mean over queries of precision
(0 for an empty ball, as above) and recall (#relevant within r / R; 0 for queries with R = 0).

Implementation. Codes are bit-packed into uint32 words (32-bit words work without `jax_enable_x64`;
K need not be a multiple of 8 or 32: the padding bits are 0 in both codes). On the CPU the default is
`metrics_numba`: one pass per query over the database in index order (histograms and stable-rank
bookkeeping together, rank offsets applied after the walk; float64 sums), 0.06 s at
1,000 x 59,000 x 64 bits against 0.16 s for the XLA kernels. On accelerators (and with
``stable_method="pairwise"``) Hamming distances are `jax.lax.population_count` of XORs, computed on the
default JAX device in jit-compiled kernels that walk the database in fixed-size blocks for a batch of
queries, so memory is bounded by (query batch x block) and never holds an n_q x n_db matrix. Two kernels:

1. Histograms: for each query the number of all and of relevant items at each distance, (n_q, K+1)
   integers (a scatter-add). Everything except the stable tie rule follows from these counts exactly:
   tie-aware AP and AP@k, precision within a radius, PR curves, tie-aware P@k. That algebra runs on the
   host in float64.
2. Stable ranks: with the histogram known, a relevant item j at distance d has stable rank
   N(<d) + #(items at distance d with smaller index) + 1 and relevant-rank R(<d) + #(relevant items at
   distance d with smaller index) + 1. The kernel scans the database in index order in blocks of
   b items, keeps per-(query, distance) running counters of all and relevant items seen (initialised to
   N(<d) and R(<d)), reads them with a gather once per block, adds the within-block counts from pairwise
   comparisons inside the block (b^2 / 2 per query), and adds (relevant-rank / rank) for relevant items
   into per-query sums; cut-offs top k are masks on the rank. Ranks and relevant-ranks are integers
   below 2^24, exact in float32; each quotient is correctly rounded, the b quotients of a block are
   summed pairwise and the block sums are Kahan-compensated across blocks, so the relative error of a
   per-query sum (all terms are positive) is at most about (log2(b) + 3) * 2^-24, i.e. < 6e-7 for
   b <= 64, whatever the database size; the division by R happens on the host in float64. Tests compare
   with float64 references at 1e-6 (observed differences ~1e-9).

The alternatives measured against these kernels (a sequential stable kernel, one-hot histogram sums) and
the one-call convenience wrappers (`compute_map`, `precision_at_k`, ...) live in
`bench/metrics_variants.py`, used by the benchmarks and the tests; alternatives plug in through
`XlaKernels`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from drlih_jax import metrics_numba

TIES = ("stable", "average")
CONVENTIONS = ("default", "deephash")
# Ranks are carried as float32 in the stable kernel: keep them exact.
MAX_DATABASE = 2**24 - 1

__all__ = [
    "MAPResult", "HammingStatistics", "XlaKernels", "relevance", "pack_bits", "hamming_statistics",
    "map_from_statistics", "radius_statistics", "precision_at_k_from_statistics",
    "pr_curve_from_statistics", "full_report",
]


def relevance(labels_a, labels_b):
  """Whether item i of `labels_a` and item j of `labels_b` are relevant to each other: (n_a, n_b) bool.

  The one relevance rule of the package: two items are relevant when they share at least one label.
  Works on numpy and JAX arrays (also inside jit).

  Args:
    labels_a: class ids (n_a,): relevant means the same class; or label sets (n_a, W) of an integer or
      bool dtype, either multi-hot {0,1} rows (W = number of classes) or bit-packed multi-hot words
      (`pack_bits`): relevant means a nonzero bitwise AND in some column.
    labels_b: (n_b,) or (n_b, W), the same form as `labels_a`.

  Returns:
    (n_a, n_b) bool.
  """
  if labels_a.ndim == 1:
    return labels_a[:, None] == labels_b[None, :]
  return ((labels_a[:, None, :] & labels_b[None, :, :]) != 0).any(axis=-1)


# ----------------------------------------------------------------------------------------------
# Input handling.


def _as_codes(name: str, codes) -> np.ndarray:
  """Validates one code matrix; returns it as uint8 {0,1} of shape (n, K)."""
  arr = np.asarray(codes)
  if arr.ndim != 2:
    raise ValueError(f"{name}: expected codes of shape (n, K), got shape {arr.shape}")
  if arr.shape[1] < 1:
    raise ValueError(f"{name}: codes have K = 0 bits")
  if arr.dtype != np.bool_ and not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(f"{name}: codes must have an integer or bool dtype with values in {{0,1}}, got "
                     f"{arr.dtype}; convert e.g. sign outputs with (x > 0).astype(np.uint8)")
  if arr.dtype != np.bool_ and arr.size and (arr.min() < 0 or arr.max() > 1):
    raise ValueError(f"{name}: codes must be {{0,1}}, found values in [{arr.min()}, {arr.max()}]; "
                     "for +-1 codes pass (codes > 0)")
  return arr.astype(np.uint8, copy=False)


def pack_bits(codes) -> np.ndarray:
  """Packs {0,1} codes (n, K) into uint32 words (n, ceil(K/32)); bit i of the code is bit i % 32 of
  word i // 32 (little-endian bit order); padding bits are 0."""
  arr = _as_codes("codes", codes)
  n, k = arr.shape
  words = -(-k // 32)
  packed = np.packbits(arr, axis=1, bitorder="little")
  out = np.zeros((n, words * 4), np.uint8)
  out[:, :packed.shape[1]] = packed
  return out.view("<u4").astype(np.uint32, copy=False)


@dataclasses.dataclass(frozen=True)
class _Labels:
  """Labels in kernel form: class ids (int32, shape (n,)) or packed multi-hot (uint32, (n, words))."""
  multi: bool
  query: np.ndarray
  database: np.ndarray


def _prepare_labels(query_labels, db_labels, num_queries: int, num_database: int) -> _Labels:
  ql = np.asarray(query_labels)
  dl = np.asarray(db_labels)
  if ql.ndim != dl.ndim or ql.ndim not in (1, 2):
    raise ValueError("query_labels and db_labels must both be class ids of shape (n,) or both "
                     f"multi-hot of shape (n, C); got shapes {ql.shape} and {dl.shape}")
  if ql.shape[0] != num_queries:
    raise ValueError(f"query_labels has {ql.shape[0]} rows but query_codes has {num_queries}")
  if dl.shape[0] != num_database:
    raise ValueError(f"db_labels has {dl.shape[0]} rows but db_codes has {num_database}")
  for name, arr in (("query_labels", ql), ("db_labels", dl)):
    if arr.dtype != np.bool_ and not np.issubdtype(arr.dtype, np.integer):
      if not (np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr))):
        raise ValueError(f"{name}: labels must be integers (class ids or 0/1), got dtype {arr.dtype}")
  if ql.ndim == 1:
    for name, arr in (("query_labels", ql), ("db_labels", dl)):
      if arr.size and (arr.min() < 0 or arr.max() > np.iinfo(np.int32).max):
        raise ValueError(f"{name}: class ids must be non-negative int32 values, found range "
                         f"[{arr.min()}, {arr.max()}]")
    return _Labels(False, ql.astype(np.int32), dl.astype(np.int32))
  if ql.shape[1] != dl.shape[1]:
    raise ValueError(f"multi-hot labels disagree on the number of classes: query_labels has "
                     f"{ql.shape[1]}, db_labels has {dl.shape[1]}")
  for name, arr in (("query_labels", ql), ("db_labels", dl)):
    if arr.size and (arr.min() < 0 or arr.max() > 1):
      raise ValueError(f"{name}: multi-hot labels must be 0/1, found range [{arr.min()}, {arr.max()}]")
  return _Labels(True, pack_bits((ql > 0).astype(np.uint8)), pack_bits((dl > 0).astype(np.uint8)))


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _pad_rows(arr: np.ndarray, rows: int) -> np.ndarray:
  if arr.shape[0] == rows:
    return arr
  out = np.zeros((rows,) + arr.shape[1:], arr.dtype)
  out[:arr.shape[0]] = arr
  return out


# ----------------------------------------------------------------------------------------------
# Device kernels. Layout: database items on the leading axis, queries on the trailing (vector) axis.


def _distances(db_words, q_words):
  """Hamming distances (b, Q) int32 of db words (b, W) to query words (Q, W)."""
  d = jax.lax.population_count(db_words[:, None, 0] ^ q_words[None, :, 0])
  for w in range(1, q_words.shape[1]):
    d = d + jax.lax.population_count(db_words[:, None, w] ^ q_words[None, :, w])
  return d.astype(jnp.int32)


def _blocked(db_words, db_labels, block: int):
  """Database arrays reshaped to (n_blocks, block, ...)."""
  n_blocks = db_words.shape[0] // block
  return (db_words.reshape((n_blocks, block) + db_words.shape[1:]),
          db_labels.reshape((n_blocks, block) + db_labels.shape[1:]))


def _remove_padding(hist, q_words, n_pad):
  """Removes the all-zero padding rows (never relevant) from the `all` counts of (Q, 2, bins)."""
  own = jax.lax.population_count(q_words).astype(jnp.int32).sum(axis=1)  # distance to code 0
  rows = jnp.arange(q_words.shape[0])
  return hist.at[rows, 0, own].add(-n_pad)


def _scatter_counts(hist, dist, rel, bins: int):
  """Adds one block to the flat (Q * 2 * bins,) histogram with a scatter-add.

  `dist` (Q, b) int32 and `rel` (Q, b) bool; item (q, j) counts at [q, rel, dist] of the (Q, 2, bins)
  layout (non-relevant at [q, 0], relevant at [q, 1]).
  """
  num_q = dist.shape[0]
  offset = (jnp.arange(num_q, dtype=jnp.int32) * (2 * bins))[:, None]
  key = offset + rel.astype(jnp.int32) * bins + dist
  return hist.at[key.reshape(-1)].add(1, mode="promise_in_bounds")


@functools.partial(jax.jit, static_argnames=("num_bits", "block", "count_block"))
def _histogram_kernel(q_words, q_labels, db_words, db_labels, n_pad, *, num_bits: int, block: int,
                      count_block=_scatter_counts):
  """Per-query counts of all ([:, 0]) and relevant ([:, 1]) items at each distance: (Q, 2, K+1).

  The database may end with `n_pad` all-zero rows whose labels match no query; they are removed
  from the counts at the end. `count_block(hist, dist, rel, bins)` adds one block (`_scatter_counts`).
  """
  num_q = q_words.shape[0]
  bins = num_bits + 1

  def step(hist, xs):
    words, labels = xs
    dist = _distances(words, q_words).T  # (Q, b): queries on the leading axis for scatter locality
    rel = relevance(labels, q_labels).T
    return count_block(hist, dist, rel, bins), None

  hist0 = jnp.zeros((num_q * 2 * bins,), jnp.int32)
  hist, _ = jax.lax.scan(step, hist0, _blocked(db_words, db_labels, block))
  hist = hist.reshape(num_q, 2, bins)  # [:, 0] non-relevant, [:, 1] relevant
  hist = jnp.stack([hist[:, 0] + hist[:, 1], hist[:, 1]], axis=1)
  return _remove_padding(hist, q_words, n_pad)


def _pairwise_sum(terms):
  while len(terms) > 1:
    paired = [terms[i] + terms[i + 1] for i in range(0, len(terms) - 1, 2)]
    terms = paired + ([terms[-1]] if len(terms) % 2 else [])
  return terms[0]


def _kahan(total, comp, value):
  y = value - comp
  t = total + y
  return t, (t - total) - y


def _initial_counters(hist, packed: bool):
  """Running counters of the stable kernels, initialised to N(<d) and R(<d).

  Indexed by distance * Q + query; columns (all, relevant), or one int32 all | relevant << 16 when
  `packed`.
  """
  num_q, _, bins = hist.shape
  base = jnp.cumsum(hist, axis=2) - hist  # (Q, 2, bins) exclusive prefix over distance
  table0 = jnp.transpose(base, (2, 0, 1)).reshape(bins * num_q, 2)
  if packed:
    table0 = table0[:, 0] + (table0[:, 1] << 16)
  return table0


def _top_k_sums(terms, ranks, rel, ks, s_k, c_k, count_k):
  """Adds a block's relevant-rank / rank terms and relevant hits with rank <= k, for each k in `ks`."""
  masked, hits = [], []
  for term, rank, is_rel in zip(terms, ranks, rel):
    inside = rank[None, :] <= ks[:, None]  # (n_k, Q)
    masked.append(jnp.where(inside, term[None, :], 0.0))
    hits.append((inside & is_rel[None, :]).astype(jnp.int32))
  s_k, c_k = _kahan(s_k, c_k, _pairwise_sum(masked))
  return s_k, c_k, count_k + _pairwise_sum(hits)


def _walk_database(block_step, q_words, q_labels, hist, db_words, db_labels, ks, *, chunk: int, block: int,
                   packed: bool, with_distances: bool):
  """Runs a stable kernel's `block_step` over the database in index order; returns its sums.

  The database is walked in chunks of `chunk` items (distances and relevance materialised), each
  scanned in blocks of `block` items. `block_step(carry, xs)` gets the carry (counter table, sum_all,
  comp_all, sum_k, comp_k, count_k) and xs = (rel, index), or (distances, rel, index) when
  `with_distances`, each (block, Q); index = distance * Q + query is the counter of (distance, query).
  """
  num_q = q_words.shape[0]
  n_k = ks.shape[0]
  q_index = jnp.arange(num_q, dtype=jnp.int32)

  def chunk_step(carry, xs):
    words, labels = xs
    dist = _distances(words, q_words)  # (chunk, Q)
    rel = relevance(labels, q_labels)
    # Counter index distance * Q + query, computed once per chunk (cheaper than per block).
    index = dist * num_q + q_index[None, :]
    parts = (dist, rel, index) if with_distances else (rel, index)
    shape = (chunk // block, block, num_q)
    carry, _ = jax.lax.scan(block_step, carry, tuple(part.reshape(shape) for part in parts))
    return carry, None

  zeros_q = jnp.zeros((num_q,), jnp.float32)
  zeros_kq = jnp.zeros((n_k, num_q), jnp.float32)
  carry0 = (_initial_counters(hist, packed), zeros_q, zeros_q, zeros_kq, zeros_kq,
            jnp.zeros((n_k, num_q), jnp.int32))
  carry, _ = jax.lax.scan(chunk_step, carry0, _blocked(db_words, db_labels, chunk))
  _, s_all, c_all, s_k, c_k, count_k = carry
  return s_all, c_all, s_k, c_k, count_k


@functools.partial(jax.jit, static_argnames=("num_bits", "chunk", "block", "packed"))
def _stable_kernel(q_words, q_labels, hist, db_words, db_labels, ks, *, num_bits: int, chunk: int,
                   block: int, packed: bool):
  """Stable-tie sums per query.

  The database is walked in index order (`_walk_database`): chunks of `chunk` items, each scanned in
  blocks of `block` items whose items are resolved against each other by pairwise comparisons. Padding
  rows at the end (never relevant) only move counters after the last real item. With `packed` (padded
  database < 2^16 items) the two counters share one int32 (all | relevant << 16): one gather and one
  scatter per item instead of two-wide ones (~20% faster on CPU). Returns (sum_all, comp_all, sum_k,
  comp_k, count_k): the sum over relevant items of relevant-rank / rank (Kahan sum and compensation,
  float32, (Q,)), the same restricted to rank <= k for each k in `ks` ((n_k, Q)), and the number of
  relevant items with rank <= k ((n_k, Q) int32).
  """
  num_q = q_words.shape[0]

  def block_step(carry, xs):
    table, s_all, c_all, s_k, c_k, count_k = carry
    dist, rel, index = xs  # (b, Q) each
    seen = table.at[index].get(mode="promise_in_bounds")  # (b, Q) packed or (b, Q, 2)
    if packed:
      seen_all, seen_rel = seen & 0xFFFF, seen >> 16
    else:
      seen_all, seen_rel = seen[..., 0], seen[..., 1]
    # Within-block counts of earlier items at the same distance, packed all | relevant << 16.
    one_item = 1 + (rel.astype(jnp.int32) << 16)
    terms, ranks = [], []
    for t in range(block):
      within = jnp.zeros((num_q,), jnp.int32)
      for u in range(t):
        within = within + jnp.where(dist[t] == dist[u], one_item[u], 0)
      rank = seen_all[t] + (within & 0xFFFF) + 1
      rel_rank = seen_rel[t] + (within >> 16) + 1
      terms.append(jnp.where(rel[t], rel_rank.astype(jnp.float32) / rank.astype(jnp.float32), 0.0))
      ranks.append(rank)
    s_all, c_all = _kahan(s_all, c_all, _pairwise_sum(terms))
    if ks.shape[0]:
      s_k, c_k, count_k = _top_k_sums(terms, ranks, rel, ks, s_k, c_k, count_k)
    # The update reads `seen` (min(., 1) == 1) so that XLA orders the gather before the in-place
    # scatter instead of copying the whole table every block.
    ones = jnp.minimum(seen_all + 1, 1)
    if packed:
      update = ones + (rel.astype(jnp.int32) << 16)
    else:
      update = jnp.stack([ones, rel.astype(jnp.int32)], axis=-1)
    table = table.at[index].add(update, mode="promise_in_bounds")
    return (table, s_all, c_all, s_k, c_k, count_k), None

  return _walk_database(block_step, q_words, q_labels, hist, db_words, db_labels, ks, chunk=chunk,
                        block=block, packed=packed, with_distances=True)


STABLE_METHODS = ("pairwise", "numba")


@dataclasses.dataclass(frozen=True)
class XlaKernels:
  """The device kernels of `hamming_statistics`' XLA path (``stable_method="pairwise"``).

  The defaults are the package's kernels; alternatives with the same contracts (measured against them
  in bench/metrics_variants.py) can be passed to `hamming_statistics` instead.

  Attributes:
    count_block: `(hist, dist, rel, bins) -> hist`, adds one database block to the flat histogram
      inside the jitted scan (contract of `_scatter_counts`).
    stable_kernel: the jitted stable-rank kernel (signature and result of `_stable_kernel`).
  """
  count_block: Callable = _scatter_counts
  stable_kernel: Callable = _stable_kernel


# ----------------------------------------------------------------------------------------------
# Statistics.


@dataclasses.dataclass(frozen=True)
class HammingStatistics:
  """Per-query sufficient statistics of a ranking by Hamming distance.

  Attributes:
    num_bits: K.
    num_database: database size.
    hist_all: (n_q, K+1) int64, number of database items at each distance.
    hist_rel: (n_q, K+1) int64, number of relevant database items at each distance.
    ks: the cut-offs (clipped to the database size) the stable sums were computed for.
    stable_sum: (n_q,) float64, sum over relevant items of relevant-rank / rank under stable ties
      (None when not computed).
    stable_sum_at_k: (n_q, len(ks)) float64, the same over items with stable rank <= k.
    stable_rel_at_k: (n_q, len(ks)) int64, number of relevant items with stable rank <= k.
  """
  num_bits: int
  num_database: int
  hist_all: np.ndarray
  hist_rel: np.ndarray
  ks: tuple[int, ...] = ()
  stable_sum: np.ndarray | None = None
  stable_sum_at_k: np.ndarray | None = None
  stable_rel_at_k: np.ndarray | None = None

  @property
  def num_queries(self) -> int:
    return int(self.hist_all.shape[0])

  @property
  def num_relevant(self) -> np.ndarray:
    """(n_q,) int64: relevant items per query in the whole database."""
    return self.hist_rel.sum(axis=1)


def _default_sizes(backend: str):
  """(query batch, histogram block, stable chunk, stable block, stable method) on `backend`.

  Measured (BENCHMARKS.md): on one H200 at 10,000 x 1,000,000 x 64 bits, scatter histograms took
  0.21-0.24 s against 0.66 s for one-hot sums, and stable blocks of 32 items 0.86 s against 1.07 s
  for 16 (64 compiled for 29 s). On the 2-core CPU (1,000 x 59,000 x 64 bits) the one-pass numba
  kernel took 0.06 s against 0.16 s for the best XLA kernels (bench/bench_metrics.py).
  """
  if backend == "cpu":
    return 2048, 256, 1024, 32, "numba"
  return 16384, 256, 1024, 32, "pairwise"


def hamming_statistics(query_codes, db_codes, query_labels, db_labels, *, ks: Sequence[int] = (),
                       stable: bool = True, query_batch: int | None = None,
                       db_block: int | None = None, stable_chunk: int | None = None,
                       stable_block: int | None = None, stable_method: str | None = None,
                       xla_kernels: XlaKernels | None = None) -> HammingStatistics:
  """Computes the per-query distance histograms and (optionally) the stable-tie sums.

  Args:
    query_codes: (n_q, K) {0,1}.
    db_codes: (n_db, K) {0,1}.
    query_labels: (n_q,) class ids or (n_q, C) multi-hot.
    db_labels: (n_db,) class ids or (n_db, C) multi-hot.
    ks: cut-offs for the stable sums at k (values >= 1; clipped to n_db).
    stable: whether to run the stable-rank kernel (needed for ties="stable").
    query_batch: queries per kernel call (default 2048 on CPU, 16384 on accelerators).
    db_block: database items per histogram step (default 256; rounded up to a multiple of
      stable_block).
    stable_chunk: database items whose distances the stable kernel materialises at once
      (default 1024; rounded up to a multiple of db_block).
    stable_block: database items per stable-rank step, 1..64 (default 32); the step compares the
      items of a block pairwise (block^2 / 2 comparisons per query).
    stable_method: "numba" (default on CPU: histograms and stable ranks in one pass,
      `metrics_numba`; ignores the block and batch sizes) or "pairwise" (default on accelerators and
      when `xla_kernels` is given: the XLA kernels `_histogram_kernel` and `_stable_kernel`). Both
      compute the same statistics.
    xla_kernels: replaces the XLA kernels of "pairwise" (alternatives measured against them:
      bench/metrics_variants.py); default `XlaKernels()`.

  Returns:
    HammingStatistics.
  """
  q = _as_codes("query_codes", query_codes)
  x = _as_codes("db_codes", db_codes)
  if q.shape[1] != x.shape[1]:
    raise ValueError(f"query_codes have {q.shape[1]} bits but db_codes have {x.shape[1]}")
  num_q, num_bits = q.shape
  num_db = x.shape[0]
  if num_q == 0 or num_db == 0:
    raise ValueError(f"need at least one query and one database item, got {num_q} and {num_db}")
  if num_db > MAX_DATABASE:
    raise ValueError(f"database of {num_db} items exceeds {MAX_DATABASE} (ranks must stay exact "
                     "in float32); split the evaluation")
  labels = _prepare_labels(query_labels, db_labels, num_q, num_db)
  ks = tuple(int(k) for k in ks)
  if any(k < 1 for k in ks):
    raise ValueError(f"ks must be >= 1, got {ks}")
  ks = tuple(min(k, num_db) for k in ks)
  defaults = _default_sizes(jax.default_backend())
  sizes = []
  for key, value, default in zip(("query_batch", "db_block", "stable_chunk", "stable_block"),
                                 (query_batch, db_block, stable_chunk, stable_block), defaults):
    sizes.append(default if value is None else int(value))
    if sizes[-1] < 1:
      raise ValueError(f"{key} must be >= 1, got {value}")
  query_batch, db_block, stable_chunk, stable_block = sizes
  query_batch = min(query_batch, num_q)
  if stable_block > 64:
    raise ValueError(f"stable_block must be in 1..64, got {stable_block}")
  if stable_method is None:
    stable_method = defaults[-1] if xla_kernels is None else "pairwise"
  if stable_method not in STABLE_METHODS:
    raise ValueError(f"stable_method must be one of {STABLE_METHODS}, got {stable_method!r}")
  if xla_kernels is not None and stable_method != "pairwise":
    raise ValueError(f"xla_kernels replace the kernels of stable_method='pairwise', got "
                     f"stable_method={stable_method!r}")
  xla_kernels = xla_kernels or XlaKernels()
  # Block sizes nest (stable_block | db_block | stable_chunk) so that padding stays below one chunk;
  # small databases shrink the blocks instead of padding a lot.
  db_block = _round_up(min(db_block, num_db), stable_block)
  stable_chunk = _round_up(min(stable_chunk, num_db), db_block)

  if stable_method == "numba":
    hist_all, hist_rel, sums, sums_k, rel_k = metrics_numba.statistics(
        q, x, labels.query, labels.database, labels.multi, ks)
    return HammingStatistics(
        num_bits=num_bits, num_database=num_db, hist_all=hist_all, hist_rel=hist_rel, ks=ks,
        stable_sum=sums if stable else None, stable_sum_at_k=sums_k if stable else None,
        stable_rel_at_k=rel_k if stable else None)

  q_words = pack_bits(q)
  # Pad the database to a multiple of both block sizes with all-zero codes whose labels match no
  # query (class id -1, or no label bit); the histogram kernel subtracts them, and they come after
  # every real item in the stable scan.
  padded = _round_up(num_db, stable_chunk)
  pad_label = -1 if not labels.multi else 0
  db_labels_padded = np.full((padded,) + labels.database.shape[1:], pad_label,
                             labels.database.dtype)
  db_labels_padded[:num_db] = labels.database
  x_words = jnp.asarray(_pad_rows(pack_bits(x), padded))
  x_labels = jnp.asarray(db_labels_padded)
  n_pad = jnp.int32(padded - num_db)
  ks_arr = jnp.asarray(np.asarray(ks, np.int32).reshape(-1))

  # Dispatch every query batch first (JAX runs them asynchronously), then fetch the results.
  pending = []
  for start in range(0, num_q, query_batch):
    stop = min(start + query_batch, num_q)
    qw = jnp.asarray(_pad_rows(q_words[start:stop], query_batch))
    ql = jnp.asarray(_pad_rows(labels.query[start:stop], query_batch))
    hist = _histogram_kernel(qw, ql, x_words, x_labels, n_pad, num_bits=num_bits, block=db_block,
                             count_block=xla_kernels.count_block)
    out = None
    if stable:
      out = xla_kernels.stable_kernel(qw, ql, hist, x_words, x_labels, ks_arr, num_bits=num_bits,
                                      chunk=stable_chunk, block=stable_block, packed=padded < 2**16)
    pending.append((stop - start, hist, out))
  hist_parts, sums, sums_k, rels_k = [], [], [], []
  for rows, hist, out in pending:
    hist_parts.append(np.asarray(hist)[:rows].astype(np.int64))
    if stable:
      s, c, s_k, c_k, n_k = (np.asarray(a) for a in out)
      sums.append(s.astype(np.float64)[:rows] - c.astype(np.float64)[:rows])
      sums_k.append((s_k.astype(np.float64) - c_k.astype(np.float64))[:, :rows].T)
      rels_k.append(n_k.astype(np.int64)[:, :rows].T)
  hist = np.concatenate(hist_parts)
  return HammingStatistics(
      num_bits=num_bits, num_database=num_db, hist_all=hist[:, 0], hist_rel=hist[:, 1], ks=ks,
      stable_sum=np.concatenate(sums) if stable else None,
      stable_sum_at_k=np.concatenate(sums_k).reshape(num_q, len(ks)) if stable else None,
      stable_rel_at_k=np.concatenate(rels_k).reshape(num_q, len(ks)) if stable else None)


# ----------------------------------------------------------------------------------------------
# Closed forms on the host (float64).

_EULER_GAMMA = 0.57721566490153286061
_SMALL = 64
_H_SMALL = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, _SMALL + 1))])


def _harmonic_tail(x):
  """H(x) - ln(x) - gamma for x >= 64 (asymptotic series, error < 1e-17)."""
  x2 = 1.0 / (x * x)
  return 1.0 / (2 * x) - x2 * (1.0 / 12 - x2 * (1.0 / 120 - x2 * (1.0 / 252)))


def _harmonic(n):
  n = np.asarray(n, np.float64)
  small = n <= _SMALL
  safe = np.where(small, _SMALL + 1.0, n)
  big = np.log(safe) + _EULER_GAMMA + _harmonic_tail(safe)
  return np.where(small, _H_SMALL[np.minimum(n, _SMALL).astype(np.int64)], big)


def _harmonic_diff(n0, m):
  """sum_{i=1}^{m} 1/(n0 + i) = H(n0 + m) - H(n0), without cancellation for large n0."""
  n0 = np.asarray(n0, np.float64)
  m = np.asarray(m, np.float64)
  large = n0 > _SMALL
  safe = np.where(large, n0, _SMALL + 1.0)
  via_log = np.log1p(m / safe) + _harmonic_tail(safe + m) - _harmonic_tail(safe)
  direct = _harmonic(n0 + m) - _harmonic(n0)
  return np.where(large, via_log, direct)


def _group_expectation(n0, r0, n, r):
  """E[sum over the r relevant items of a tie group of precision at their rank].

  The group holds n items (r relevant) at ranks n0+1..n0+n after r0 relevant items, in uniformly
  random order: sum_i (r/n) (r0 + 1 + (i-1)(r-1)/(n-1)) / (n0 + i).
  """
  n0, r0, n, r = (np.asarray(a, np.float64) for a in (n0, r0, n, r))
  h1 = _harmonic_diff(n0, n)
  h2 = n - (n0 + 1) * h1  # sum_i (i-1)/(n0+i)
  with np.errstate(divide="ignore", invalid="ignore"):
    frac = np.where(n > 1, (r - 1) / np.maximum(n - 1, 1), 0.0)
    value = (r / np.maximum(n, 1)) * ((r0 + 1) * h1 + frac * h2)
  return np.where((r > 0) & (n > 0), value, 0.0)


def _cumulative(stats: HammingStatistics):
  c, r = stats.hist_all.astype(np.float64), stats.hist_rel.astype(np.float64)
  n_lt = np.cumsum(c, axis=1) - c
  r_lt = np.cumsum(r, axis=1) - r
  return c, r, n_lt, r_lt


def _boundary(stats: HammingStatistics, k: int):
  """Per query: boundary distance d*, items before it, its size, relevant before / in it, m."""
  c, r, n_lt, r_lt = _cumulative(stats)
  n_le = n_lt + c
  d_star = np.argmax(n_le >= k, axis=1)
  rows = np.arange(c.shape[0])
  return d_star, n_lt[rows, d_star], c[rows, d_star], r_lt[rows, d_star], r[rows, d_star]


def _tie_aware_ap(stats: HammingStatistics, k: int | None) -> np.ndarray:
  """Per-query tie-aware AP@k (k=None: whole database), float64."""
  c, r, n_lt, r_lt = _cumulative(stats)
  groups = _group_expectation(n_lt, r_lt, c, r)  # (n_q, K+1)
  total_rel = r.sum(axis=1)
  if k is None or k >= stats.num_database:
    with np.errstate(divide="ignore", invalid="ignore"):
      return np.where(total_rel > 0, groups.sum(axis=1) / np.maximum(total_rel, 1), 0.0)
  d_star, n0, n, r0, rb = _boundary(stats, k)
  before = np.cumsum(groups, axis=1) - groups
  t_full = before[np.arange(c.shape[0]), d_star]
  m = k - n0
  ap = np.zeros(c.shape[0])
  lo = np.maximum(0.0, m - (n - rb))
  hi = np.minimum(m, rb)
  # Boundary sums of (i-1)/(n0+i) and 1/(n0+i) over the m included positions.
  h1 = _harmonic_diff(n0, m)
  h2 = m - (n0 + 1) * h1
  max_support = int(np.max(hi - lo)) + 1
  chunk = max(1, 1_000_000 // max_support)
  for s in range(0, c.shape[0], chunk):
    sl = slice(s, s + chunk)
    y = lo[sl, None] + np.arange(max_support)[None, :]
    inside = y <= hi[sl, None]
    y = np.where(inside, y, lo[sl, None])
    # Hypergeometric pmf of y (relevant among m draws from n with rb successes) by its ratio recurrence.
    nb, mb, rbb = n[sl, None], m[sl, None], rb[sl, None]
    with np.errstate(divide="ignore", invalid="ignore"):
      log_ratio = (np.log(np.maximum(rbb - y, 1e-300)) + np.log(np.maximum(mb - y, 1e-300))
                   - np.log(y + 1) - np.log(np.maximum(nb - rbb - mb + y + 1, 1e-300)))
    log_p = np.concatenate([np.zeros((y.shape[0], 1)), np.cumsum(log_ratio[:, :-1], axis=1)], axis=1)
    log_p = np.where(inside, log_p, -np.inf)
    log_p -= log_p.max(axis=1, keepdims=True)
    p = np.exp(log_p)
    p /= p.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
      frac = np.where(mb > 1, (y - 1) / np.maximum(mb - 1, 1), 0.0)
      b = (y / mb) * ((r0[sl, None] + 1) * h1[sl, None] + frac * h2[sl, None])
      denom = r0[sl, None] + y
      val = np.where(denom > 0, (t_full[sl, None] + b) / np.maximum(denom, 1), 0.0)
    ap[sl] = np.sum(p * val, axis=1)
  return ap


def _resolve_top_k(top_k, convention: str, num_database: int) -> int | None:
  if top_k is None:
    return None
  top_k = int(top_k)
  if convention == "deephash" and top_k < 0:
    top_k = max(num_database + top_k, 0)  # Python slice semantics of gnd[0:topk]
  elif top_k < 1 and convention != "deephash":
    raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
  if top_k >= num_database:
    return None
  return top_k


def _check_rules(ties: str, convention: str):
  if ties not in TIES:
    raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
  if convention not in CONVENTIONS:
    raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
  if convention == "deephash" and ties != "stable":
    raise ValueError("convention='deephash' ranks with a sort (reproduced given stable tie order); "
                     "use ties='stable'")


@dataclasses.dataclass(frozen=True)
class MAPResult:
  """mAP with its per-query values.

  Attributes:
    map: mean over all queries of `average_precision`.
    average_precision: (n_q,) float64 per-query AP (0 for queries without a relevant item).
    num_queries: number of queries.
    num_queries_without_relevant: queries with no relevant item in the whole database.
    num_queries_without_relevant_in_top_k: (stable ties, top_k set) queries with no relevant item in
      the top k; None otherwise.
    top_k: the effective cut-off (None: whole database).
    ties: tie rule.
    convention: "default" or "deephash".
  """
  map: float
  average_precision: np.ndarray
  num_queries: int
  num_queries_without_relevant: int
  num_queries_without_relevant_in_top_k: int | None
  top_k: int | None
  ties: str
  convention: str


def map_from_statistics(stats: HammingStatistics, *, top_k: int | None = None, ties: str = "stable",
                        convention: str = "default") -> MAPResult:
  """mAP@top_k with per-query AP and the count of queries without a relevant item.

  Args:
    stats: from `hamming_statistics` (with the stable sums and `top_k` among its ks for
      ties="stable").
    top_k: cut-off k (None: whole database; k > n_db acts as None). With convention="deephash" a
      negative k follows Python slicing (n_db + k), as `gnd[0:topk]` does.
    ties: "stable" (database index breaks ties) or "average" (tie-aware expectation).
    convention: "default" or "deephash" (see the module docstring).

  Returns:
    MAPResult.
  """
  _check_rules(ties, convention)
  k = _resolve_top_k(top_k, convention, stats.num_database)
  total_rel = stats.num_relevant
  without = int(np.sum(total_rel == 0))
  in_top = None
  if k == 0:
    ap = np.zeros(stats.num_queries)
    in_top = stats.num_queries if ties == "stable" else None
  elif ties == "average":
    ap = _tie_aware_ap(stats, k)
  else:
    if stats.stable_sum is None:
      raise ValueError("these statistics were computed with stable=False; ties='stable' needs them")
    if k is None:
      with np.errstate(divide="ignore", invalid="ignore"):
        ap = np.where(total_rel > 0, stats.stable_sum / np.maximum(total_rel, 1), 0.0)
    else:
      if k not in stats.ks:
        raise ValueError(f"top_k={k} was not among the ks {stats.ks} of these statistics")
      j = stats.ks.index(k)
      rel_k = stats.stable_rel_at_k[:, j]
      with np.errstate(divide="ignore", invalid="ignore"):
        ap = np.where(rel_k > 0, stats.stable_sum_at_k[:, j] / np.maximum(rel_k, 1), 0.0)
      in_top = int(np.sum(rel_k == 0))
  return MAPResult(map=float(np.mean(ap)), average_precision=ap, num_queries=stats.num_queries,
                   num_queries_without_relevant=without,
                   num_queries_without_relevant_in_top_k=in_top, top_k=k, ties=ties,
                   convention=convention)


def radius_statistics(stats: HammingStatistics, radius: int = 2):
  """(mean precision, per-query precision (n_q,), number of queries with an empty ball) at radius.

  Queries with nothing within the radius count precision 0 (see the module docstring); the mean over
  non-empty balls only is `per_query.sum() / (n_q - empty)`.
  """
  radius = int(radius)
  if radius < 0:
    raise ValueError(f"radius must be >= 0, got {radius}")
  r = min(radius, stats.num_bits)
  inside = stats.hist_all[:, :r + 1].sum(axis=1)
  rel = stats.hist_rel[:, :r + 1].sum(axis=1)
  with np.errstate(divide="ignore", invalid="ignore"):
    prec = np.where(inside > 0, rel / np.maximum(inside, 1), 0.0)
  return float(prec.mean()), prec, int(np.sum(inside == 0))


def precision_at_k_from_statistics(stats: HammingStatistics, ks: Sequence[int],
                                   ties: str = "stable") -> np.ndarray:
  """Per-query P@k, shape (n_q, len(ks)): relevant within the top k / min(k, n_db)."""
  _check_rules(ties, "default")
  out = np.zeros((stats.num_queries, len(ks)))
  for j, k in enumerate(ks):
    k = int(k)
    if k < 1:
      raise ValueError(f"ks must be >= 1, got {k}")
    k_eff = min(k, stats.num_database)
    if ties == "average":
      _, n0, n, r0, rb = _boundary(stats, k_eff)
      out[:, j] = (r0 + (k_eff - n0) * rb / np.maximum(n, 1)) / k_eff
    else:
      if stats.stable_rel_at_k is None or k_eff not in stats.ks:
        raise ValueError(f"k={k} was not among the ks {stats.ks} of these statistics")
      out[:, j] = stats.stable_rel_at_k[:, stats.ks.index(k_eff)] / k_eff
  return out


def pr_curve_from_statistics(stats: HammingStatistics):
  """(precision, recall), each (K+1,) float64: means over queries at Hamming radius 0..K."""
  inside = np.cumsum(stats.hist_all, axis=1)
  rel = np.cumsum(stats.hist_rel, axis=1)
  total = rel[:, -1:]
  with np.errstate(divide="ignore", invalid="ignore"):
    prec = np.where(inside > 0, rel / np.maximum(inside, 1), 0.0)
    rec = np.where(total > 0, rel / np.maximum(total, 1), 0.0)
  return prec.mean(axis=0), rec.mean(axis=0)


# ----------------------------------------------------------------------------------------------
# Full report.


def full_report(query_codes, db_codes, query_labels, db_labels, prefix_lengths: Sequence[int] = (),
                ks: Sequence[int] = (100, 500, 1000), top_k: Sequence[int] = (1000,),
                radius: int = 2, **kernel_options) -> dict:
  """Every metric for every code prefix, JSON-serialisable (python floats/ints, string keys).

  Args:
    query_codes, db_codes, query_labels, db_labels: as in `hamming_statistics`.
    prefix_lengths: code lengths L to evaluate on the first L bits (default: the full length K).
    ks: cut-offs for P@k.
    top_k: cut-offs for mAP@k.
    radius: Hamming radius of the precision-within-radius entry (stored under "precision_radius2"
      when 2, else "precision_radius<r>").
    **kernel_options: passed to `hamming_statistics`.

  Returns:
    {"map": {"L": mAP@all stable ties}, "map_average_ties": {...},
     "map_at_k": {"k": {"L": ...}}, "map_at_k_average_ties": {"k": {"L": ...}},
     "precision_radius2": {"L": ...}, "queries_empty_radius2": {"L": int},
     "precision_at_k": {"k": {"L": ...}}, "precision_at_k_average_ties": {"k": {"L": ...}},
     "pr_curve": {"L": {"radius": [...], "precision": [...], "recall": [...]}},
     "num_queries": int, "num_database": int, "queries_without_relevant": int}
  """
  q = _as_codes("query_codes", query_codes)
  x = _as_codes("db_codes", db_codes)
  num_bits = q.shape[1]
  lengths = sorted({int(L) for L in prefix_lengths}) or [num_bits]
  bad = [L for L in lengths if not 1 <= L <= num_bits]
  if bad:
    raise ValueError(f"prefix_lengths {bad} must lie in 1..{num_bits} (the code length)")
  ks = [int(k) for k in ks]
  top_k = [int(k) for k in top_k]
  radius_key = "precision_radius2" if radius == 2 else f"precision_radius{radius}"
  empty_key = "queries_empty_radius2" if radius == 2 else f"queries_empty_radius{radius}"
  report = {"map": {}, "map_average_ties": {}, "map_at_k": {str(k): {} for k in top_k},
            "map_at_k_average_ties": {str(k): {} for k in top_k}, radius_key: {}, empty_key: {},
            "precision_at_k": {str(k): {} for k in ks},
            "precision_at_k_average_ties": {str(k): {} for k in ks}, "pr_curve": {},
            "num_queries": int(q.shape[0]), "num_database": int(x.shape[0])}
  without = None
  for length in lengths:
    key = str(length)
    stats = hamming_statistics(q[:, :length], x[:, :length], query_labels, db_labels,
                               ks=tuple(top_k) + tuple(ks), stable=True, **kernel_options)
    stable_all = map_from_statistics(stats, ties="stable")
    without = stable_all.num_queries_without_relevant
    report["map"][key] = stable_all.map
    report["map_average_ties"][key] = map_from_statistics(stats, ties="average").map
    for k in top_k:
      report["map_at_k"][str(k)][key] = map_from_statistics(stats, top_k=k, ties="stable").map
      report["map_at_k_average_ties"][str(k)][key] = map_from_statistics(
          stats, top_k=k, ties="average").map
    mean_radius, _, empty = radius_statistics(stats, radius)
    report[radius_key][key] = mean_radius
    report[empty_key][key] = empty
    p_stable = precision_at_k_from_statistics(stats, ks, "stable").mean(axis=0) if ks else []
    p_avg = precision_at_k_from_statistics(stats, ks, "average").mean(axis=0) if ks else []
    for j, k in enumerate(ks):
      report["precision_at_k"][str(k)][key] = float(p_stable[j])
      report["precision_at_k_average_ties"][str(k)][key] = float(p_avg[j])
    prec, rec = pr_curve_from_statistics(stats)
    report["pr_curve"][key] = {"radius": list(range(length + 1)),
                               "precision": [float(v) for v in prec],
                               "recall": [float(v) for v in rec]}
  report["queries_without_relevant"] = int(without)
  return report
