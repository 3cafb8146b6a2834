"""Rewards, returns, advantages and the policy-gradient estimator against independent references."""

import itertools

import jax
from jax.extend import core as jcore
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from drlih_jax import input_pipeline
from drlih_jax import rl
from drlih_jax import triplets

# Compiled once per (shapes, group, alpha, chunk): much faster than op-by-op dispatch of the scan.
_batch_rewards = jax.jit(rl.batch_rewards, static_argnames=("group", "alpha", "anchor_chunk"))


def _reference_batch_rewards(codes, pos, neg, group, alpha):
  """Direct O(B^3) float64 transcription of ALGORITHM.md item 6 (reward "batch"), masks given."""
  r_count, b, k = codes.shape
  t_count = k // group
  out = np.zeros((r_count, b, t_count))
  for r in range(r_count):
    for t in range(1, t_count + 1):
      prefix = codes[r, :, :t * group]
      dist = (prefix[:, None, :] != prefix[None, :, :]).sum(-1).tolist()  # Hamming distances, ints
      for i in range(b):
        positives = [j for j in range(b) if pos[i, j]]
        negatives = [n for n in range(b) if neg[i, n]]
        if not positives or not negatives:
          continue
        total = 0.0
        for j, n in itertools.product(positives, negatives):
          total += max(0.0, alpha * t * group - (dist[i][n] - dist[i][j]))
        out[r, i, t - 1] = -total / (len(positives) * len(negatives)) / k
  return out


def _tied_codes(rng, r_count, b, k, prototypes=3, flip=0.1):
  """Codes near a few prototypes: many equal distances, and margins exactly at the hinge."""
  protos = rng.integers(0, 2, (prototypes, k))
  codes = protos[rng.integers(0, prototypes, (r_count, b))]
  return np.where(rng.random((r_count, b, k)) < flip, 1 - codes, codes).astype(np.float32)


def test_prefix_distances_match_hamming():
  rng = np.random.default_rng(0)
  codes = rng.integers(0, 2, (2, 5, 12)).astype(np.float32)
  dist = np.asarray(rl.prefix_distances(jnp.asarray(codes), 3))
  for r in range(2):
    for t in range(4):
      p = codes[r, :, :3 * (t + 1)]
      expected = (p[:, None, :] != p[None, :, :]).sum(-1)
      np.testing.assert_array_equal(dist[r, t], expected)


@pytest.mark.parametrize("group,alpha", [(1, 0.5), (3, 1.0), (2, 0.3)])
def test_batch_rewards_match_triple_sum(group, alpha):
  rng = np.random.default_rng(group)
  labels = np.array([0, 0, 1, 1, 1, 2, 2, 0, 3])  # class 3 has no positive: reward 0
  codes = rng.integers(0, 2, (3, len(labels), 12)).astype(np.float32)
  pos, neg = triplets.relevance_masks(jnp.asarray(labels))
  got = np.asarray(_batch_rewards(jnp.asarray(codes), pos, neg, group=group, alpha=alpha))
  want = _reference_batch_rewards(codes, np.asarray(pos), np.asarray(neg), group, alpha)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  assert np.all(got[:, -1] == 0.0)
  assert np.any(got < 0)


def test_batch_rewards_heavy_ties_multilabel():
  """Multi-hot labels (an unlabelled image, an anchor sharing a label with everyone), tied codes."""
  rng = np.random.default_rng(7)
  labels = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 1, 1], [0, 0, 1], [0, 0, 0], [1, 0, 0],
                     [0, 0, 1], [1, 1, 1], [0, 1, 0], [1, 0, 1]])
  pos, neg = map(np.asarray, triplets.relevance_masks(jnp.asarray(labels)))
  no_pos_or_neg = ~(pos.any(1) & neg.any(1))
  assert no_pos_or_neg[5] and no_pos_or_neg[8] and no_pos_or_neg.sum() == 2  # unlabelled; no negative
  codes = _tied_codes(rng, 4, len(labels), 12)
  for group, alpha, chunks in [(2, 0.5, (None, 3)), (3, 0.75, (None,))]:
    want = _reference_batch_rewards(codes, pos, neg, group, alpha)
    for chunk in chunks:  # 11 anchors in chunks of 3: the remainder path of jax.lax.map too
      got = np.asarray(_batch_rewards(jnp.asarray(codes), jnp.asarray(pos), jnp.asarray(neg), group=group,
                                      alpha=alpha, anchor_chunk=chunk))
      np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=f"g={group}, chunk={chunk}")
    assert np.all(got[:, no_pos_or_neg] == 0.0)
    assert np.all(got[:, ~no_pos_or_neg] < 0)  # tied codes: every valid anchor pays some hinge
    # Both sides of the hinge occur: some (positive, negative) pairs meet the margin exactly or better.
    assert np.any(want[..., -1] > -alpha)


def test_anchor_chunk_size():
  assert rl.anchor_chunk_size(4, 80, 32) == 80  # training sizes: one chunk
  chunk = rl.anchor_chunk_size(4, 2048, 64)
  assert chunk < 2048 and 4 * 4 * 65 * 2048 * chunk <= 2 ** 28  # int32 [R, chunk, K + 1, B] within 256 MiB
  assert -(-2048 // chunk) * chunk - 2048 < -(-2048 // chunk)  # near-equal chunks


# ----------------------------------------------------------------------------- exact on TPU
# TPUs compute a DEFAULT-precision float32 matrix product on bfloat16-rounded operands. The CPU does not,
# so `_bf16_default_dots` evaluates a function's jaxpr with the operands of every DEFAULT-precision float
# dot_general rounded to bfloat16, as a TPU would.


def _is_default(precision):
  if precision is None:
    return True
  return any(p is None or p == jax.lax.Precision.DEFAULT for p in (
      precision if isinstance(precision, tuple) else (precision,)))


def _all_dots(jaxpr):
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      yield eqn
    for sub in jcore.jaxprs_in_params(eqn.params):
      yield from _all_dots(sub)


def _emulate_params(value):
  if isinstance(value, jcore.ClosedJaxpr):
    if not any(True for _ in _all_dots(value.jaxpr)):
      return value
    avals = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in value.jaxpr.invars]
    return jax.make_jaxpr(lambda *a: _eval_bf16(value.jaxpr, value.consts, *a))(*avals)
  if isinstance(value, tuple) and any(isinstance(x, jcore.ClosedJaxpr) for x in value):
    return tuple(_emulate_params(x) for x in value)
  return value


_INLINE = {"jit": "jaxpr", "pjit": "jaxpr", "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr"}


def _eval_bf16(jaxpr, consts, *args):
  env = dict(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))
  read = lambda v: v.val if isinstance(v, jcore.Literal) else env[v]
  for eqn in jaxpr.eqns:
    invals = [read(v) for v in eqn.invars]
    if eqn.primitive.name in _INLINE:
      sub = eqn.params[_INLINE[eqn.primitive.name]]
      env.update(zip(eqn.outvars, _eval_bf16(sub.jaxpr, sub.consts, *invals)))
      continue
    params = {k: _emulate_params(v) for k, v in eqn.params.items()}
    if eqn.primitive.name == "dot_general" and _is_default(params["precision"]):
      invals = [x.astype(jnp.bfloat16).astype(x.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
                for x in invals]
    outs = eqn.primitive.bind(*invals, **params)
    env.update(zip(eqn.outvars, outs if eqn.primitive.multiple_results else [outs]))
  return [read(v) for v in jaxpr.outvars]


def _bf16_default_dots(fn, *args):
  """fn(*args), with every DEFAULT-precision float product computed on bfloat16-rounded operands."""
  closed = jax.make_jaxpr(fn)(*args)
  (out,) = jax.jit(lambda *a: _eval_bf16(closed.jaxpr, closed.consts, *a))(*args)
  return out


def test_bf16_emulation_catches_a_default_precision_product():
  x = jnp.asarray([[1.2345, 0.1], [0.3, 2.7182]], jnp.float32)
  default = _bf16_default_dots(lambda a: jnp.einsum("ij,jk->ik", a, a), x)
  highest = _bf16_default_dots(lambda a: jnp.einsum("ij,jk->ik", a, a, precision=rl.HIGHEST), x)
  want = np.asarray(x, np.float64) @ np.asarray(x, np.float64)
  np.testing.assert_allclose(np.asarray(highest), want, rtol=1e-6)
  assert np.max(np.abs(np.asarray(default) - want)) > 1e-3


def test_reward_contractions_are_highest_precision_or_integer():
  codes = jnp.zeros((3, 6, 8), jnp.float32)
  mask = jnp.zeros((6, 6), bool)
  rewards = jnp.zeros((3, 6, 4), jnp.float32)
  functions = {
      "prefix_distances": (lambda c: rl.prefix_distances(c, 2), (codes,)),
      "batch_rewards": (lambda c, p, n: rl.batch_rewards(c, p, n, 2, 0.5), (codes, mask, mask)),
      "batch_rewards chunked": (lambda c, p, n: rl.batch_rewards(c, p, n, 2, 0.5, anchor_chunk=4),
                                (codes, mask, mask)),
      "triplet_rewards": (lambda c: rl.triplet_rewards(c, jnp.arange(3), jnp.arange(3), jnp.arange(3), 2, 0.5),
                          (codes,)),
      "discounted_returns": (lambda r: rl.discounted_returns(r, 0.9), (rewards,)),
  }
  num_dots = 0
  for name, (fn, args) in functions.items():
    for eqn in _all_dots(jax.make_jaxpr(fn)(*args).jaxpr):
      num_dots += 1
      integer = all(jnp.issubdtype(v.aval.dtype, jnp.integer) for v in eqn.invars)
      assert integer or eqn.params["precision"] == (rl.HIGHEST, rl.HIGHEST), (name, eqn)
  assert num_dots >= 3  # prefix_distances, the histogram contraction, discounted_returns


def test_rewards_and_returns_exact_with_bf16_default_products():
  """Values match float64 references even where DEFAULT products would round to bfloat16.

  alpha = 0.3 makes the margins (1.2, 2.4, ...) and gamma = 0.9 the discounts inexact in bfloat16.
  """
  rng = np.random.default_rng(3)
  labels = np.array([0, 0, 1, 1, 1, 2, 2, 0, 3, 1])
  pos, neg = triplets.relevance_masks(jnp.asarray(labels))
  codes = rng.integers(0, 2, (3, len(labels), 12)).astype(np.float32)
  got = _bf16_default_dots(lambda c: rl.batch_rewards(c, pos, neg, 2, 0.3), jnp.asarray(codes))
  want = _reference_batch_rewards(codes, np.asarray(pos), np.asarray(neg), 2, 0.3)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-7)
  got = _bf16_default_dots(lambda c: rl.batch_rewards(c, pos, neg, 2, 0.3, anchor_chunk=3), jnp.asarray(codes))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-7)
  returns = _bf16_default_dots(lambda r: rl.discounted_returns(r, 0.9), jnp.asarray(want, jnp.float32))
  want_returns = np.stack([sum(0.9 ** (k - t) * want[..., k] for k in range(t, want.shape[-1]))
                           for t in range(want.shape[-1])], axis=-1)
  np.testing.assert_allclose(np.asarray(returns), want_returns, rtol=1e-6, atol=1e-7)
  dist = _bf16_default_dots(lambda c: rl.prefix_distances(c, 3), jnp.asarray(codes))
  np.testing.assert_array_equal(np.asarray(dist)[:, -1], (codes[:, :, None] != codes[:, None]).sum(-1))


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

  grad = float(jax.jit(jax.grad(surrogate))(z0, jax.random.key(0)))
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
  a, p, n, valid = jax.jit(triplets.sample_triplets, static_argnums=3)(jax.random.key(3), pos, neg, 50)
  a, p, n, valid = map(np.asarray, (a, p, n, valid))
  lab = np.asarray(labels)
  assert np.all(lab[a[valid]] == lab[p[valid]]) and np.all(a[valid] != p[valid])
  assert np.all(lab[a[valid]] != lab[n[valid]])
  np.testing.assert_array_equal(valid, np.repeat(lab != 3, 50))
  # Every positive of class-2 anchors is drawn (uniform sampling covers the two candidates).
  assert set(p[(a == 4)]) == {5, 6}


def _multi_label_data(labels):
  table, sizes = input_pipeline.class_membership(labels, labels.shape[1])
  images = np.arange(len(labels), dtype=np.uint8)[:, None, None, None]  # the image is its own index
  return input_pipeline.DeviceData(images=jnp.asarray(images), labels=jnp.asarray(labels),
                                   class_members=jnp.asarray(table), class_sizes=jnp.asarray(sizes))


def test_multi_label_batches_never_repeat_an_image():
  """Images carrying two classes could be drawn once per class: two copies, each the other's positive."""
  labels = np.array([[1, 1, 0], [1, 1, 0], [1, 0, 1], [1, 0, 1], [0, 1, 1], [0, 1, 1], [1, 1, 1],
                     [1, 0, 0], [0, 0, 1], [0, 0, 0]], np.uint8)
  data = _multi_label_data(labels)
  cfg = ml_collections.ConfigDict({"classes_per_batch": 3, "images_per_class": 2, "augment": ""})
  dataset = ml_collections.ConfigDict({"mean": (0.0,), "std": (1.0,)})
  keys = jax.random.split(jax.random.key(0), 64)
  batches = jax.jit(lambda ks: jax.lax.map(lambda k: input_pipeline.sample_batch(k, data, cfg, dataset), ks))(keys)
  # Image i holds the pixel value i: the drawn positions are read off the pixels.
  index = np.rint(np.asarray(batches["image"])[..., 0, 0, 0] * 255).astype(np.int64)
  for row, lab in zip(index, np.asarray(batches["label"])):
    assert len(set(row.tolist())) == 6, row
    for block in row.reshape(3, 2):
      assert np.any(np.all(labels[block] > 0, axis=0)), block  # the two images share a drawn class
    np.testing.assert_array_equal(lab, labels[row])
  drawn = np.bincount(index.reshape(-1), minlength=len(labels))
  assert np.all(drawn[:9] > 0) and drawn[9] == 0  # every labelled image is drawn; the unlabelled never
