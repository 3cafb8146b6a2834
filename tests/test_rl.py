"""Rewards, returns, advantages and the policy-gradient estimator against independent references."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from drlih_jax import rl
from drlih_jax import triplets


def _reference_batch_rewards(codes, labels, group, alpha):
  """Direct O(B^3) float64 transcription of ALGORITHM.md item 6 (reward "batch")."""
  r_count, b, k = codes.shape
  t_count = k // group
  out = np.zeros((r_count, b, t_count))
  for r in range(r_count):
    for i in range(b):
      pos = [j for j in range(b) if j != i and labels[j] == labels[i]]
      neg = [j for j in range(b) if labels[j] != labels[i]]
      if not pos or not neg:
        continue
      for t in range(1, t_count + 1):
        prefix = codes[r, :, :t * group].astype(np.float64)
        total = 0.0
        for j, n in itertools.product(pos, neg):
          d_ij = np.sum(prefix[i] != prefix[j])
          d_in = np.sum(prefix[i] != prefix[n])
          total += max(0.0, alpha * t * group - (d_in - d_ij))
        out[r, i, t - 1] = -total / (len(pos) * len(neg)) / k
  return out


def test_prefix_distances_match_hamming():
  rng = np.random.default_rng(0)
  codes = rng.integers(0, 2, (2, 5, 12)).astype(np.float32)
  dist = np.asarray(rl.prefix_distances(jnp.asarray(codes), 3))
  for r in range(2):
    for t in range(4):
      p = codes[r, :, :3 * (t + 1)]
      expected = (p[:, None, :] != p[None, :, :]).sum(-1)
      np.testing.assert_array_equal(dist[r, t], expected)


@pytest.mark.parametrize("group,alpha", [(1, 0.5), (3, 0.5), (4, 1.0)])
def test_batch_rewards_match_triple_sum(group, alpha):
  rng = np.random.default_rng(group)
  labels = np.array([0, 0, 1, 1, 1, 2, 2, 0, 3])  # class 3 has no positive: reward 0
  codes = rng.integers(0, 2, (3, len(labels), 12)).astype(np.float32)
  pos, neg = triplets.relevance_masks(jnp.asarray(labels))
  got = np.asarray(rl.batch_rewards(jnp.asarray(codes), pos, neg, group, alpha))
  want = _reference_batch_rewards(codes, labels, group, alpha)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  assert np.all(got[:, -1] == 0.0)
  assert np.any(got < 0)


def test_hand_worked_reward():
  # Anchor 0, positive 1, negative 2, K = 2, g = 1, alpha = 1.
  # Codes: a = 00, p = 01, n = 00. Prefix 1: D(a,p) = 0, D(a,n) = 0 -> l_1 = max(0, 1 - 0) = 1.
  # Prefix 2: D(a,p) = 1, D(a,n) = 0 -> l_2 = max(0, 2 - (0 - 1)) = 3. r = -l / K = (-0.5, -1.5).
  codes = jnp.asarray([[[0, 0], [0, 1], [0, 0]]], jnp.float32)
  r = rl.triplet_rewards(codes, jnp.array([0]), jnp.array([1]), jnp.array([2]), group=1, alpha=1.0)
  np.testing.assert_allclose(np.asarray(r)[0, 0], [-0.5, -1.5])
  g = rl.discounted_returns(r, 0.5)
  np.testing.assert_allclose(np.asarray(g)[0, 0], [-0.5 - 0.75, -1.5])


def test_returns_and_leave_one_out():
  rewards = np.array([[1.0, 2.0, 3.0], [0.0, -1.0, 4.0], [2.0, 2.0, 2.0]])  # 3 rollouts, T = 3
  gamma = 0.9
  g = np.asarray(rl.discounted_returns(jnp.asarray(rewards), gamma))
  expected = np.zeros_like(rewards)
  for m in range(3):
    for t in range(3):
      expected[m, t] = sum(gamma ** (k - t) * rewards[m, k] for k in range(t, 3))
  np.testing.assert_allclose(g, expected, rtol=1e-6)
  adv = np.asarray(rl.leave_one_out_advantages(jnp.asarray(expected)))
  for m in range(3):
    others = [expected[o] for o in range(3) if o != m]
    np.testing.assert_allclose(adv[m], expected[m] - np.mean(others, axis=0), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="rollouts >= 2"):
    rl.leave_one_out_advantages(jnp.ones((1, 3)))


def test_step_log_probs():
  logits = jnp.asarray([[0.3, -1.2, 2.0, 0.1]])
  actions = jnp.asarray([[1.0, 0.0, 0.0, 1.0]])
  p = 1 / (1 + np.exp(-np.asarray(logits, np.float64)))
  per_bit = np.where(np.asarray(actions) > 0, np.log(p), np.log(1 - p))
  got = np.asarray(rl.step_log_probs(actions, logits, 2))
  np.testing.assert_allclose(got, [[per_bit[0, :2].sum(), per_bit[0, 2:].sum()]], rtol=1e-6)


def test_reinforce_with_loo_baseline_matches_bandit_gradient():
  """One-step Bernoulli bandit: E[grad] of the LOO REINFORCE loss equals the analytic gradient.

  Policy: one bit a ~ Bernoulli(sigmoid(z)), reward R(a) = 1 if a = 1 else -0.5 (+ rollout-independent
  offset 3, which the baseline must cancel). J(z) = p * 1 + (1 - p) * (-0.5) + 3, dJ/dz = 1.5 p (1 - p).
  """
  z0 = 0.4
  num_rollouts, num_images = 4, 200_000

  def surrogate(z, key):
    p = jax.nn.sigmoid(z)
    u = jax.random.uniform(key, (num_rollouts, num_images, 1))
    a = (u < p).astype(jnp.float32)
    rewards = jnp.where(a > 0, 1.0, -0.5) + 3.0  # [M, N, T=1]
    adv = jax.lax.stop_gradient(rl.leave_one_out_advantages(rl.discounted_returns(rewards, 1.0)))
    logp = rl.step_log_probs(a, jnp.full(a.shape, z), 1)
    return jnp.mean(adv * logp)  # The gradient of the negated PG loss, i.e. the ascent direction.

  grad = float(jax.grad(surrogate)(z0, jax.random.key(0)))
  p = 1 / (1 + np.exp(-z0))
  analytic = 1.5 * p * (1 - p)
  # Standard error of the mean over 800k samples is ~1.5/sqrt(800k) * 0.5 ~ 1e-3: allow 5e-3.
  assert abs(grad - analytic) < 5e-3, (grad, analytic)


def test_relevance_masks_multilabel_and_unlabelled():
  labels = jnp.asarray([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 0, 0]])
  pos, neg = triplets.relevance_masks(labels)
  np.testing.assert_array_equal(np.asarray(pos), [[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
  np.testing.assert_array_equal(np.asarray(neg), [[0, 0, 1, 0], [0, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]])


def test_sample_triplets_respect_masks():
  labels = jnp.asarray([0, 0, 1, 1, 2, 2, 2, 3])
  pos, neg = triplets.relevance_masks(labels)
  a, p, n, valid = triplets.sample_triplets(jax.random.key(3), pos, neg, per_anchor=50)
  a, p, n, valid = map(np.asarray, (a, p, n, valid))
  lab = np.asarray(labels)
  assert np.all(lab[a[valid]] == lab[p[valid]]) and np.all(a[valid] != p[valid])
  assert np.all(lab[a[valid]] != lab[n[valid]])
  np.testing.assert_array_equal(valid, np.repeat(lab != 3, 50))
  # Every positive of class-2 anchors is drawn (uniform sampling covers the two candidates).
  assert set(p[(a == 4)]) == {5, 6}
