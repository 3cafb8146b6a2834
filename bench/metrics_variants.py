"""Metric kernels and one-call wrappers that only the benchmarks and the tests use.

`drlih_jax.metrics` keeps the kernels the package runs (numba on the CPU, the pairwise XLA kernels on
accelerators). This module holds what was measured against them and the conveniences tests call:

* `onehot_counts`: histogram counts as one-hot sums instead of a scatter-add. On one H200 at
  10,000 x 1,000,000 x 64 bits it took 0.66 s against 0.21-0.24 s for the scatter (BENCHMARKS.md).
* `stable_kernel_sequential`: the stable-rank kernel applying the items of a block one after the other
  instead of comparing them pairwise. On the 2-core CPU at 1,000 x 59,000 x 64 bits it took ~0.7x the
  pairwise kernel's time with blocks of 32 (64: same speed but 3.7 s to compile against 2.1 s; 128:
  2.7x slower; 8: 1.7x slower); the numba kernel is faster still (0.06 s against 0.16 s), so the package
  no longer runs it. Unmeasured on accelerators.
* `hamming_statistics`: `metrics.hamming_statistics` with these selectable by name
  (``hist_method="scatter" | "onehot"``, ``stable_method="pairwise" | "sequential" | "numba"``).
* `compute_map`, `mean_average_precision`, `precision_within_radius`, `precision_at_k`,
  `precision_recall_curve`: statistics and one metric in one call (any `hamming_statistics` option).

Both kernels plug into `metrics.hamming_statistics` through `metrics.XlaKernels` and reuse the private
building blocks of `metrics` (`_walk_database`, `_kahan`, ...), whose contracts they follow.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp

from drlih_jax import metrics

# pylint: disable=protected-access  (the kernels follow the contracts of metrics' building blocks)

HIST_METHODS = ("scatter", "onehot")
STABLE_METHODS = ("pairwise", "sequential", "numba")


def onehot_counts(hist, dist, rel, bins: int):
  """`metrics._scatter_counts` as one-hot sums: adds one block to the flat (Q * 2 * bins,) histogram."""
  onehot = dist[:, :, None] == jnp.arange(bins, dtype=jnp.int32)
  all_counts = jnp.sum(onehot, axis=1, dtype=jnp.int32)
  rel_counts = jnp.sum(onehot & rel[:, :, None], axis=1, dtype=jnp.int32)
  return hist + jnp.stack([all_counts - rel_counts, rel_counts], axis=1).reshape(-1)


@functools.partial(jax.jit, static_argnames=("num_bits", "chunk", "block", "packed"))
def stable_kernel_sequential(q_words, q_labels, hist, db_words, db_labels, ks, *, num_bits: int,
                             chunk: int, block: int, packed: bool):
  """Stable-tie sums per query, one database item at a time (contract of `metrics._stable_kernel`).

  Instead of resolving the items of a block by pairwise comparisons, the `block` items of a scan
  step are applied one after the other (unrolled): item t gathers its counters (all, relevant) at
  (distance, query) and adds itself back before item t+1 reads. Within one item the Q indices
  distance * Q + query are distinct, so each gather / scatter has unique indices. Costs 2 memory ops
  per (item, query) pair instead of block / 2 comparisons.
  """
  del num_bits  # the contract's static argument; the counters are sized from `hist`

  def block_step(carry, xs):
    table, s_all, c_all, s_k, c_k, count_k = carry
    rel, index = xs  # (b, Q) each
    rel_int = rel.astype(jnp.int32)
    terms, ranks = [], []
    for t in range(block):
      seen = table.at[index[t]].get(mode="promise_in_bounds", unique_indices=True)
      if packed:
        rank, rel_rank = (seen & 0xFFFF) + 1, (seen >> 16) + 1
      else:
        rank, rel_rank = seen[:, 0] + 1, seen[:, 1] + 1
      terms.append(jnp.where(rel[t], rel_rank.astype(jnp.float32) / rank.astype(jnp.float32), 0.0))
      ranks.append(rank)
      # min(rank, 1) == 1 makes the update read the gather, so that XLA keeps the order gather ->
      # in-place scatter instead of copying the table.
      ones = jnp.minimum(rank, 1)
      update = ones + (rel_int[t] << 16) if packed else jnp.stack([ones, rel_int[t]], axis=-1)
      table = table.at[index[t]].add(update, mode="promise_in_bounds", unique_indices=True)
    s_all, c_all = metrics._kahan(s_all, c_all, metrics._pairwise_sum(terms))
    if ks.shape[0]:
      s_k, c_k, count_k = metrics._top_k_sums(terms, ranks, rel, ks, s_k, c_k, count_k)
    return (table, s_all, c_all, s_k, c_k, count_k), None

  return metrics._walk_database(
      block_step, q_words, q_labels, hist, db_words, db_labels, ks, chunk=chunk, block=block,
      packed=packed, with_distances=False)


def hamming_statistics(query_codes, db_codes, query_labels, db_labels, *, hist_method: str | None = None,
                       stable_method: str | None = None, **options) -> metrics.HammingStatistics:
  """`metrics.hamming_statistics` with the histogram and stable kernels chosen by name.

  Args:
    query_codes, db_codes, query_labels, db_labels: as in `metrics.hamming_statistics`.
    hist_method: "scatter" or "onehot" (XLA paths only; default "scatter").
    stable_method: "pairwise", "sequential" or "numba" (default: the package's default on this backend,
      "pairwise" when `hist_method` is given).
    **options: the other options of `metrics.hamming_statistics` (ks, stable, block sizes).
  """
  if hist_method is not None and hist_method not in HIST_METHODS:
    raise ValueError(f"hist_method must be one of {HIST_METHODS}, got {hist_method!r}")
  if stable_method is not None and stable_method not in STABLE_METHODS:
    raise ValueError(f"stable_method must be one of {STABLE_METHODS}, got {stable_method!r}")
  if hist_method is None and stable_method in (None, "pairwise", "numba"):
    return metrics.hamming_statistics(query_codes, db_codes, query_labels, db_labels,
                                      stable_method=stable_method, **options)
  if stable_method == "numba":
    raise ValueError(f"hist_method={hist_method!r} needs an XLA stable_method, not 'numba'")
  kernels = metrics.XlaKernels()
  if hist_method == "onehot":
    kernels = dataclasses.replace(kernels, count_block=onehot_counts)
  if stable_method == "sequential":
    kernels = dataclasses.replace(kernels, stable_kernel=stable_kernel_sequential)
  return metrics.hamming_statistics(query_codes, db_codes, query_labels, db_labels,
                                    stable_method="pairwise", xla_kernels=kernels, **options)


# ----------------------------------------------------------------------------------------------
# One-call wrappers: statistics and one metric.


def compute_map(query_codes, db_codes, query_labels, db_labels, *, top_k: int | None = None,
                ties: str = "stable", convention: str = "default", **options) -> metrics.MAPResult:
  """`metrics.map_from_statistics` of freshly computed statistics (arguments as there)."""
  num_db = len(db_codes)
  k = top_k if top_k is None or top_k >= 1 else num_db + top_k  # deephash: Python slice semantics
  ks = (k,) if ties == "stable" and k is not None and k >= 1 else ()
  stats = hamming_statistics(query_codes, db_codes, query_labels, db_labels, ks=ks,
                             stable=(ties == "stable"), **options)
  return metrics.map_from_statistics(stats, top_k=top_k, ties=ties, convention=convention)


def mean_average_precision(query_codes, db_codes, query_labels, db_labels, **options) -> float:
  """mAP as a float; see `compute_map`."""
  return compute_map(query_codes, db_codes, query_labels, db_labels, **options).map


def precision_within_radius(query_codes, db_codes, query_labels, db_labels, *, radius: int = 2,
                            **options) -> float:
  """Mean precision within Hamming radius `radius` (`metrics.radius_statistics`)."""
  stats = hamming_statistics(query_codes, db_codes, query_labels, db_labels, stable=False, **options)
  return metrics.radius_statistics(stats, radius)[0]


def precision_at_k(query_codes, db_codes, query_labels, db_labels, *, ks: Sequence[int] = (100,),
                   ties: str = "stable", **options):
  """Mean P@k over queries for each k in ks (`metrics.precision_at_k_from_statistics`)."""
  stats = hamming_statistics(query_codes, db_codes, query_labels, db_labels, ks=ks,
                             stable=(ties == "stable"), **options)
  return metrics.precision_at_k_from_statistics(stats, ks, ties).mean(axis=0)


def precision_recall_curve(query_codes, db_codes, query_labels, db_labels, **options):
  """(precision, recall) at Hamming radius 0..K (`metrics.pr_curve_from_statistics`)."""
  stats = hamming_statistics(query_codes, db_codes, query_labels, db_labels, stable=False, **options)
  return metrics.pr_curve_from_statistics(stats)
