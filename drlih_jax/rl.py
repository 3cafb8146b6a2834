"""Rewards, returns and advantages of the sampled bit rollouts (ALGORITHM.md items 6-7).

Shapes: R rollouts, B images, K bits in T = K / g groups. Codes are float {0, 1} arrays [R, B, K].

The prefix hinge of anchor i, positive j, negative k after t groups is
    l_t(i, j, k) = max(0, alpha * t * g - (D_t(i, k) - D_t(i, j))),
with D_t the Hamming distance of the first t * g bits. The "batch" reward averages it over every valid
(positive, negative) pair of the anchor. Because prefix distances are integers in 0..t*g, that average is
computed exactly from per-anchor histograms of positive and negative distances:
    sum_{j, k} P_ij N_ik l_t(i, j, k) = sum_{dp, dn} hp_t[i, dp] * relu(alpha t g + dp - dn) * hn_t[i, dn],
which costs O(B^2 K) per step instead of the O(B^3) of the direct triple sum.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def prefix_distances(codes: jax.Array, group: int) -> jax.Array:
  """Hamming distances of every code prefix.

  Args:
    codes: [..., B, K] float {0, 1}.
    group: bits per step g.

  Returns:
    [..., T, B, B] float: entry t-1 is the distance between the first t * g bits.
  """
  *lead, b, k = codes.shape
  grouped = codes.reshape(*lead, b, k // group, group)
  ones = jnp.einsum("...itg,...jtg->...tij", grouped, grouped)
  counts = jnp.sum(grouped, axis=-1)  # [..., B, T]
  counts = jnp.swapaxes(counts, -1, -2)  # [..., T, B]
  per_group = counts[..., :, None] + counts[..., None, :] - 2.0 * ones
  return jnp.cumsum(per_group, axis=-3)


def hinge_margins(num_steps: int, group: int, alpha: float) -> jax.Array:
  """The required ranking margin alpha * t * g of each prefix, t = 1..T: [T]."""
  return alpha * group * jnp.arange(1, num_steps + 1, dtype=jnp.float32)


def batch_rewards(codes: jax.Array, pos_mask: jax.Array, neg_mask: jax.Array, group: int,
                  alpha: float) -> jax.Array:
  """Per-image step rewards r_t(i) = -(1/K) * mean over valid (j, k) of l_t(i, j, k).

  Args:
    codes: [R, B, K] float {0, 1}.
    pos_mask: [B, B] bool, j is a positive of anchor i.
    neg_mask: [B, B] bool, k is a negative of anchor i.
    group: g.
    alpha: margin per bit.

  Returns:
    [R, B, T] rewards; anchors without a positive or a negative get 0.
  """
  num_bits = codes.shape[-1]
  num_steps = num_bits // group
  dist = prefix_distances(codes, group).astype(jnp.int32)  # [R, T, B, B]
  one_hot = jax.nn.one_hot(dist, num_bits + 1, dtype=jnp.float32)  # [R, T, B, B, K+1]
  pos = pos_mask.astype(jnp.float32)
  neg = neg_mask.astype(jnp.float32)
  hist_pos = jnp.einsum("rtijd,ij->rtid", one_hot, pos)
  hist_neg = jnp.einsum("rtijd,ij->rtid", one_hot, neg)
  d = jnp.arange(num_bits + 1, dtype=jnp.float32)
  margins = hinge_margins(num_steps, group, alpha)
  hinge = jax.nn.relu(margins[:, None, None] + d[None, :, None] - d[None, None, :])  # [T, dp, dn]
  total = jnp.einsum("rtip,tpn,rtin->rit", hist_pos, hinge, hist_neg)
  pairs = jnp.sum(pos, axis=1) * jnp.sum(neg, axis=1)  # [B]
  mean = total / jnp.maximum(pairs, 1.0)[None, :, None]
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
    [R, N, T] rewards, one row per triplet.
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
  num_steps = rewards.shape[-1]
  k = jnp.arange(num_steps)
  power = k[:, None] - k[None, :]  # [k, t]
  weights = jnp.where(power >= 0, jnp.power(gamma, jnp.maximum(power, 0)), 0.0)
  return jnp.einsum("...k,kt->...t", rewards, weights.astype(rewards.dtype))


def leave_one_out_advantages(returns: jax.Array) -> jax.Array:
  """A^m = G^m - mean of the other rollouts' returns (rollouts on axis 0; needs at least 2)."""
  num_rollouts = returns.shape[0]
  if num_rollouts < 2:
    raise ValueError("the leave-one-out baseline needs rl.rollouts >= 2")
  total = jnp.sum(returns, axis=0, keepdims=True)
  return returns - (total - returns) / (num_rollouts - 1)


def step_log_probs(actions: jax.Array, logits: jax.Array, group: int) -> jax.Array:
  """log pi(a_t | s_t) of each action group: [..., K] -> [..., T] (bits independent given h_t)."""
  per_bit = actions * jax.nn.log_sigmoid(logits) + (1.0 - actions) * jax.nn.log_sigmoid(-logits)
  return jnp.sum(per_bit.reshape(*per_bit.shape[:-1], -1, group), axis=-1)


def bernoulli_entropy(logits: jax.Array) -> jax.Array:
  """Entropy of Bernoulli(sigmoid(z)), elementwise, in nats."""
  p = jax.nn.sigmoid(logits)
  return -(p * jax.nn.log_sigmoid(logits) + (1.0 - p) * jax.nn.log_sigmoid(-logits))
