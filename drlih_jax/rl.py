"""Rewards, returns and advantages of the sampled bit rollouts (ALGORITHM.md items 6-7).

Shapes: R rollouts, B images, K bits in num_groups = K / g action groups. Codes are float {0, 1} arrays [R, B, K].

The prefix hinge of anchor i, positive j, negative k after t groups is
    l_t(i, j, k) = max(0, alpha * t * g - (D_t(i, k) - D_t(i, j))),
with D_t the Hamming distance of the first t * g bits. The "batch" reward averages it over every valid
(positive, negative) pair of the anchor. Because prefix distances are integers in 0..t*g, that sum is
computed exactly from a per-anchor histogram hn_t[i, d] = #{negatives k of i : D_t(i, k) = d}:
    sum_{j, k} P_ij N_ik l_t(i, j, k) = sum_j P_ij F_t(i, D_t(i, j)),
    F_t(i, dp) = sum_dn relu(alpha t g + dp - dn) * hn_t[i, dn],
which costs O(B^2 K) per step instead of the O(B^3) of the direct triple sum.

Memory: `batch_rewards` never builds a [.., B, B, K + 1] tensor. Per chunk of anchors it scans over the num_groups
prefixes carrying int32 distances [R, chunk, B], and counts the histogram by a compare-and-sum; its
compiled temporaries are ~0.25 GiB at R = 4, B = 2048, K = 64 (BENCHMARKS.md, "Reward memory").

Precision: TPUs round float32 operands of DEFAULT-precision matrix products to bfloat16. Every contraction
on the reward path is either integer arithmetic or an explicit `precision=HIGHEST` product.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST


def prefix_distances(codes: jax.Array, group: int) -> jax.Array:
  """Hamming distances of every code prefix.

  Args:
    codes: [..., B, K] float {0, 1}.
    group: bits per step g.

  Returns:
    [..., num_groups, B, B] float: entry t-1 is the distance between the first t * g bits.
  """
  *lead, b, k = codes.shape
  grouped = codes.reshape(*lead, b, k // group, group)
  ones = jnp.einsum("...itg,...jtg->...tij", grouped, grouped, precision=HIGHEST)
  counts = jnp.sum(grouped, axis=-1)  # [..., B, num_groups]
  counts = jnp.swapaxes(counts, -1, -2)  # [..., num_groups, B]
  per_group = counts[..., :, None] + counts[..., None, :] - 2.0 * ones
  return jnp.cumsum(per_group, axis=-3)


def hinge_margins(num_groups: int, group: int, alpha: float) -> jax.Array:
  """The required ranking margin alpha * t * g of each prefix, t = 1..num_groups: [num_groups]."""
  return alpha * group * jnp.arange(1, num_groups + 1, dtype=jnp.float32)


def distance_histograms(dist: jax.Array, mask: jax.Array, num_levels: int) -> jax.Array:
  """Counts of the masked partners at each distance.

  Args:
    dist: [..., N] int distances to N partners, values in 0..num_levels-1.
    mask: [..., N] bool (broadcastable to `dist`), the partners to count.
    num_levels: the number of distance values (K + 1).

  Returns:
    [..., num_levels] int32: entry [.., d] = #{j : mask[.., j] and dist[.., j] = d}.

  The partner axis is summed in windows of 32 and then across windows: XLA:CPU then fuses the comparison
  into the sums, while one sum over all N partners is rewritten into a tree reduction that materialises
  the [..., num_levels, N] comparison (the same values either way; integer counts).
  """
  n = dist.shape[-1]
  width = 32
  pad = -n % width
  mask = jnp.broadcast_to(mask, dist.shape)
  if pad:
    dist = jnp.pad(dist, [(0, 0)] * (dist.ndim - 1) + [(0, pad)])
    mask = jnp.pad(mask, [(0, 0)] * (mask.ndim - 1) + [(0, pad)])
  dist = dist.reshape(*dist.shape[:-1], -1, width)
  mask = mask.reshape(*mask.shape[:-1], -1, width)
  levels = jnp.arange(num_levels, dtype=dist.dtype)[:, None, None]
  hits = (dist[..., None, :, :] == levels) & mask[..., None, :, :]
  return jnp.sum(jnp.sum(hits, axis=-1, dtype=jnp.int32), axis=-1)


# Anchors per chunk: at most this many bytes of the [R, chunk, K + 1, B] int32 compare-and-count, in case
# the compiler materialises it. One chunk when the whole batch fits.
_CHUNK_BYTES = 1 << 28


def anchor_chunk_size(num_rollouts: int, batch: int, num_bits: int) -> int:
  """Anchors processed together by `batch_rewards`: the whole batch if it fits `_CHUNK_BYTES`, else
  near-equal chunks that do."""
  per_anchor = 4 * num_rollouts * (num_bits + 1) * batch
  most = max(1, _CHUNK_BYTES // per_anchor)
  num_chunks = -(-batch // most)
  return -(-batch // num_chunks)


def batch_rewards(codes: jax.Array, pos_mask: jax.Array, neg_mask: jax.Array, group: int,
                  alpha: float, anchor_chunk: int | None = None) -> jax.Array:
  """Per-image step rewards r_t(i) = -(1/K) * mean over valid (j, k) of l_t(i, j, k).

  For each anchor i, a scan over the prefixes t carries its int32 Hamming distances D_t(i, .) [R, B],
  counts the negatives' distances into hn_t [R, K + 1], forms F_t(i, dp) = relu(alpha t g + dp - dn) . hn_t
  (a HIGHEST-precision product) and sums F_t(i, D_t(i, j)) over the positives j. Anchors go through in
  chunks (`jax.lax.map`), so the temporaries are O(R * chunk * B * K), at most ~`_CHUNK_BYTES`.

  Args:
    codes: [R, B, K] float {0, 1}.
    pos_mask: [B, B] bool, j is a positive of anchor i.
    neg_mask: [B, B] bool, k is a negative of anchor i.
    group: g.
    alpha: margin per bit.
    anchor_chunk: anchors per chunk (default `anchor_chunk_size`); values are the same for any chunk.

  Returns:
    [R, B, num_groups] rewards; anchors without a positive or a negative get 0.
  """
  num_rollouts, b, num_bits = codes.shape
  num_groups = num_bits // group
  bits = (codes > 0.5).reshape(num_rollouts, b, num_groups, group)
  bits = jnp.moveaxis(bits, 2, 0)  # [num_groups, R, B, g]
  margins = hinge_margins(num_groups, group, alpha)
  levels = jnp.arange(num_bits + 1, dtype=jnp.float32)
  pos_mask, neg_mask = pos_mask.astype(bool), neg_mask.astype(bool)

  def anchor_totals(anchor):
    """sum_{j, k} P_ij N_ik l_t(i, j, k) of one anchor i: [num_groups, R]."""
    anchor_bits, pos, neg = anchor  # [num_groups, R, g], [B], [B]

    def prefix_step(dist, inputs):
      group_bits, own_bits, margin = inputs  # [R, B, g], [R, g], scalar
      flips = group_bits != own_bits[:, None, :]
      dist = dist + jnp.sum(flips, axis=-1, dtype=jnp.int32)  # D_t(i, .): [R, B]
      hist_neg = distance_histograms(dist, neg, num_bits + 1).astype(jnp.float32)  # exact below 2^24
      hinge = jax.nn.relu(margin + levels[:, None] - levels[None, :])  # [dp, dn]
      # per_dp[r, dp] = sum_k N_ik relu(alpha t g + dp - D_t(i, k)): the hinge a positive at dp pays.
      per_dp = jnp.einsum("pn,rn->rp", hinge, hist_neg, precision=HIGHEST)
      paid = jnp.take_along_axis(per_dp, dist, axis=-1)  # [R, B]
      return dist, jnp.sum(jnp.where(pos, paid, 0.0), axis=-1)  # [R]

    init = jnp.zeros((num_rollouts, b), jnp.int32)
    _, totals = jax.lax.scan(prefix_step, init, (bits, anchor_bits, margins))
    return totals

  anchors = (jnp.moveaxis(bits, 2, 0), pos_mask, neg_mask)  # [B, num_groups, R, g], [B, B], [B, B]
  chunk = anchor_chunk or anchor_chunk_size(num_rollouts, b, num_bits)
  if chunk >= b:
    totals = jax.vmap(anchor_totals)(anchors)  # [B, num_groups, R]
  else:
    totals = jax.lax.map(anchor_totals, anchors, batch_size=chunk)
  total = jnp.transpose(totals, (2, 0, 1))  # [R, B, num_groups]
  pairs = jnp.sum(pos_mask, axis=1, dtype=jnp.int32) * jnp.sum(neg_mask, axis=1, dtype=jnp.int32)  # [B]
  mean = total / jnp.maximum(pairs, 1).astype(jnp.float32)[None, :, None]
  return jnp.where(pairs[None, :, None] > 0, -mean / num_bits, 0.0)


def triplet_rewards(codes: jax.Array, anchors: jax.Array, positives: jax.Array, negatives: jax.Array,
                    group: int, alpha: float) -> jax.Array:
  """Step rewards of sampled triplets: r_t = -(1/K) * l_t(a, p, n).

  Args:
    codes: [R, B, K] float {0, 1}.
    anchors, positives, negatives: [N] int indices into the batch.
    group: g.
    alpha: margin per bit.

  Returns:
    [R, N, num_groups] rewards, one row per triplet.
  """
  num_bits = codes.shape[-1]
  grouped = codes.reshape(codes.shape[0], codes.shape[1], num_bits // group, group)
  a, p, n = grouped[:, anchors], grouped[:, positives], grouped[:, negatives]
  d_ap = jnp.cumsum(jnp.sum(jnp.abs(a - p), axis=-1), axis=-1)
  d_an = jnp.cumsum(jnp.sum(jnp.abs(a - n), axis=-1), axis=-1)
  margins = hinge_margins(num_bits // group, group, alpha)
  return -jax.nn.relu(margins - (d_an - d_ap)) / num_bits


def discounted_returns(rewards: jax.Array, gamma: float) -> jax.Array:
  """G_t = sum_{k >= t} gamma^(k - t) r_k along the last axis."""
  num_groups = rewards.shape[-1]
  k = jnp.arange(num_groups)
  power = k[:, None] - k[None, :]  # [k, t]
  weights = jnp.where(power >= 0, jnp.power(gamma, jnp.maximum(power, 0)), 0.0)
  return jnp.einsum("...k,kt->...t", rewards, weights.astype(rewards.dtype), precision=HIGHEST)


def leave_one_out_advantages(returns: jax.Array) -> jax.Array:
  """A^m = G^m - mean of the other rollouts' returns (rollouts on axis 0; needs at least 2)."""
  num_rollouts = returns.shape[0]
  if num_rollouts < 2:
    raise ValueError("the leave-one-out baseline needs rl.rollouts >= 2")
  total = jnp.sum(returns, axis=0, keepdims=True)
  return returns - (total - returns) / (num_rollouts - 1)


def step_log_probs(actions: jax.Array, logits: jax.Array, group: int) -> jax.Array:
  """log pi(a_t | s_t) of each action group: [..., K] -> [..., num_groups] (bits independent given h_t)."""
  per_bit = actions * jax.nn.log_sigmoid(logits) + (1.0 - actions) * jax.nn.log_sigmoid(-logits)
  return jnp.sum(per_bit.reshape(*per_bit.shape[:-1], -1, group), axis=-1)


def bernoulli_entropy(logits: jax.Array) -> jax.Array:
  """Entropy of Bernoulli(sigmoid(z)), elementwise, in nats."""
  p = jax.nn.sigmoid(logits)
  return -(p * jax.nn.log_sigmoid(logits) + (1.0 - p) * jax.nn.log_sigmoid(-logits))
