"""The objective (losses.py, the rewards of rl.py, the assembly `losses.objective_loss` that
`steps.train_step` calls) against independent float64 numpy references: values and gradients with respect
to the logits, and the direction of one SGD step on problems whose better policy is known.

The references are written from ALGORITHM.md items 6-9 and the released code's formulas, not from the
code under test: explicit loops and sums, float64, gradients by central finite differences.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import default
from drlih_jax import losses
from drlih_jax import steps as steps_lib
from drlih_jax import triplets as triplets_lib

EPS = 1e-6  # inside the triplet distances' norm

# ----------------------------------------------------------------------------- float64 references


def _sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def _log_sigmoid(z):
  return -np.logaddexp(0.0, -z)


def ref_step_log_probs(actions, logits, group):
  """log pi(a_t | s_t) = sum over the t-th group of bits of log p(bit): [..., K] -> [..., T]."""
  per_bit = np.where(actions > 0.5, _log_sigmoid(logits), _log_sigmoid(-logits))
  num_groups = per_bit.shape[-1] // group
  return np.stack([per_bit[..., t * group:(t + 1) * group].sum(-1) for t in range(num_groups)], axis=-1)


def ref_batch_rewards(codes, pos, neg, group, alpha):
  """r_t(i) = -(1/K) mean_{j pos, k neg} max(0, alpha t g - (D_t(i, k) - D_t(i, j))): [M, B, T]."""
  m_count, b, k = codes.shape
  out = np.zeros((m_count, b, k // group))
  for m in range(m_count):
    for t in range(1, k // group + 1):
      prefix = codes[m, :, :t * group]
      dist = (prefix[:, None, :] != prefix[None, :, :]).sum(-1).astype(np.float64)
      for i in range(b):
        pairs = [(j, n) for j in range(b) for n in range(b) if pos[i, j] and neg[i, n]]
        if pairs:
          hinge = [max(0.0, alpha * t * group - (dist[i, n] - dist[i, j])) for j, n in pairs]
          out[m, i, t - 1] = -np.mean(hinge) / k
  return out


def ref_triplet_rewards(codes, anchors, positives, negatives, group, alpha):
  """r_t = -(1/K) max(0, alpha t g - (D_t(a, n) - D_t(a, p))) per triplet: [M, N, T]."""
  m_count, _, k = codes.shape
  out = np.zeros((m_count, len(anchors), k // group))
  for m in range(m_count):
    for q, (a, p, n) in enumerate(zip(anchors, positives, negatives)):
      for t in range(1, k // group + 1):
        d_ap = np.sum(codes[m, a, :t * group] != codes[m, p, :t * group])
        d_an = np.sum(codes[m, a, :t * group] != codes[m, n, :t * group])
        out[m, q, t - 1] = -max(0.0, alpha * t * group - (d_an - d_ap)) / k
  return out


def ref_returns(rewards, gamma):
  num_groups = rewards.shape[-1]
  return np.stack([sum(gamma ** (k - t) * rewards[..., k] for k in range(t, num_groups))
                   for t in range(num_groups)], axis=-1)


def ref_leave_one_out(returns):
  m_count = returns.shape[0]
  return np.stack([returns[m] - np.mean([returns[o] for o in range(m_count) if o != m], axis=0)
                   for m in range(m_count)])


class RefPolicyGradient:
  """Loss_PG = -sum(A * log pi * w) / sum(w) (ALGORITHM.md item 7) as a function of the logits."""

  def __init__(self, actions, pos, neg, triplets, reward, alpha, gamma, group):
    self.actions, self.group, self.reward = actions, group, reward
    if reward == "batch":
      self.rewards = ref_batch_rewards(actions, pos, neg, group, alpha)
      valid = pos.any(1) & neg.any(1)  # anchors with a positive and a negative
    else:
      a, p, n, valid = triplets
      self.rewards = ref_triplet_rewards(actions, a, p, n, group, alpha)
      self.triplets = (a, p, n)
    self.valid = valid.astype(np.float64)  # [B] or [N]
    self.advantages = ref_leave_one_out(ref_returns(self.rewards, gamma))

  def __call__(self, logits):
    log_probs = ref_step_log_probs(self.actions, logits, self.group)  # [M, B, T]
    if self.reward == "triplet":
      a, p, n = self.triplets  # the triplet's three images share its reward
      log_probs = log_probs[:, a] + log_probs[:, p] + log_probs[:, n]
    m_count, _, num_groups = log_probs.shape
    weighted = self.advantages * log_probs * self.valid[None, :, None]
    return -weighted.sum() / max(m_count * num_groups * self.valid.sum(), 1.0)

  def metrics(self):
    num = max(self.rewards.shape[0] * self.valid.sum(), 1.0)
    return {"mean_reward": (self.rewards.sum(-1) * self.valid).sum() / num,
            "final_prefix_reward": (self.rewards[..., -1] * self.valid).sum() / num}


def ref_triplet_margin_loss(probs, anchors, positives, negatives, weights, margin, abs_diff=False):
  """Weighted mean of max(0, margin + ||P_a - P_p (+) eps|| - ||P_a - P_n (+) eps||), with (+) per convention."""
  total, count = 0.0, 0.0
  for a, p, n, w in zip(anchors, positives, negatives, weights):
    diff_p, diff_n = probs[a] - probs[p], probs[a] - probs[n]
    if abs_diff:
      diff_p, diff_n = np.abs(diff_p), np.abs(diff_n)
    d_ap = np.sqrt(np.sum((diff_p + EPS) ** 2))
    d_an = np.sqrt(np.sum((diff_n + EPS) ** 2))
    total += w * max(0.0, margin + d_ap - d_an)
    count += w
  return total / max(count, 1.0)


def ref_greedy_log_pi(logits):
  """The released code's logpi: -(1/K) sum_k log(p_k if p_k > 0.5 else 1 - p_k)."""
  p = _sigmoid(logits)
  return -np.mean(np.log(np.where(p > 0.5, p, 1.0 - p)), axis=-1)


def ref_mean_entropy(logits):
  p = _sigmoid(logits)
  return np.mean(-(p * np.log(p) + (1.0 - p) * np.log(1.0 - p)))


def fd_grad(f, x, h=1e-6):
  """Central finite differences of a float64 function."""
  x = np.asarray(x, np.float64)
  g = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    up, down = x.copy(), x.copy()
    up[idx] += h
    down[idx] -= h
    g[idx] = (f(up) - f(down)) / (2 * h)
  return g


def assert_grad_close(got, want, rtol=1e-4):
  want = np.asarray(want)
  assert np.max(np.abs(want)) > 1e-4  # a gradient that is not trivially zero
  np.testing.assert_allclose(np.asarray(got), want, rtol=rtol, atol=rtol * np.max(np.abs(want)))


# ----------------------------------------------------------------------------- a small batch

LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 3])  # image 7 (class 3) has no positive: an invalid anchor
B, K, GROUP = len(LABELS), 8, 2


@functools.lru_cache(maxsize=None)
def _problem(rollouts=3, seed=0):
  """Logits [R, B, K] of `rollouts` sampled rollouts plus a greedy one (last), their actions, masks and
  triplets. Class-structured logits, so that some triplet hinges are active and some are not."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(0.0, 2.0, (4, K))
  logits = centres[LABELS][None] + rng.normal(0.0, 1.0, (rollouts + 1, B, K))
  sampled = (rng.random((rollouts, B, K)) < _sigmoid(logits[:rollouts])).astype(np.float64)
  actions = np.concatenate([sampled, (logits[-1:] > 0).astype(np.float64)])
  pos, neg = map(np.asarray, triplets_lib.relevance_masks(jnp.asarray(LABELS)))
  sample = jax.jit(triplets_lib.sample_triplets, static_argnums=3)
  trip = tuple(map(np.asarray, sample(jax.random.key(seed), jnp.asarray(pos), jnp.asarray(neg), 3)))
  assert not trip[3].all() and trip[3].any()  # some triplets are invalid (anchor 7)
  return logits, actions, pos, neg, trip


def _rl_config(reward="batch", alpha=0.75, gamma=0.9):
  config = default.get_config()
  config.rl.reward, config.rl.alpha, config.rl.gamma = reward, alpha, gamma
  return config.rl


def _j(*xs):
  return [jnp.asarray(x, jnp.float32) if np.asarray(x).dtype == np.float64 else jnp.asarray(x) for x in xs]


# ----------------------------------------------------------------------------- the policy-gradient loss


@pytest.mark.parametrize("reward", ["batch", "triplet"])
def test_policy_gradient_loss_value_and_gradient(reward):
  logits, actions, pos, neg, trip = _problem()
  logits, actions = logits[:-1], actions[:-1]  # the sampled rollouts only
  rl_config = _rl_config(reward)
  ref = RefPolicyGradient(actions, pos, neg, trip, reward, rl_config.alpha, rl_config.gamma, GROUP)
  assert np.any(ref.rewards == 0) and np.any(ref.rewards < 0)  # both sides of the hinges
  jl, ja, jp, jn = _j(logits, actions, pos, neg)

  def loss(z):
    return losses.policy_gradient_loss(ja, z, pos_mask=jp, neg_mask=jn, triplets=tuple(map(jnp.asarray, trip)),
                                       rl_config=rl_config, group=GROUP)

  (value, metrics), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(jl)
  np.testing.assert_allclose(float(value), ref(logits), rtol=2e-5)
  assert abs(ref(logits)) > 1e-3
  assert_grad_close(grad, fd_grad(ref, logits))
  for name, want in ref.metrics().items():
    np.testing.assert_allclose(float(metrics[name]), want, rtol=2e-5, err_msg=name)


def test_policy_gradient_loss_rejects_unknown_reward():
  logits, actions, pos, neg, trip = _problem()
  with pytest.raises(ValueError, match="rl.reward"):
    losses.policy_gradient_loss(*_j(actions, logits), pos_mask=pos, neg_mask=neg, triplets=trip,
                                rl_config=_rl_config("nope"), group=GROUP)


def test_final_prefix_reward_averages_valid_anchors_only():
  """An anchor without positives gets reward 0; it must not dilute the metric."""
  _, actions, pos, neg, trip = _problem()
  actions = actions[:-1]
  pg_loss = functools.partial(losses.policy_gradient_loss, pos_mask=pos, neg_mask=neg, triplets=trip,
                              rl_config=_rl_config(), group=GROUP)
  _, metrics = jax.jit(pg_loss)(*_j(actions, np.zeros_like(actions)))
  rewards = ref_batch_rewards(actions, pos, neg, GROUP, 0.75)
  np.testing.assert_allclose(float(metrics["final_prefix_reward"]), rewards[:, :7, -1].mean(), rtol=1e-5)
  assert abs(rewards[:, :7, -1].mean() - rewards[..., -1].mean()) > 1e-3  # the two averages differ


def _bandit_actions():
  """4 rollouts, 4 images (classes 0, 0, 1, 1), one bit. Images 1-3 always take 0, 1, 1; image 0 takes 0
  (next to its positive, away from its negatives) in rollouts 0-1 and 1 in rollouts 2-3."""
  a0 = np.array([0.0, 0.0, 1.0, 1.0])
  others = np.broadcast_to(np.array([0.0, 1.0, 1.0]), (4, 3))
  return np.concatenate([a0[:, None], others], axis=1)[..., None]  # [M, B, K=1]


@pytest.mark.parametrize("reward", ["batch", "triplet"])
def test_sgd_step_raises_probability_of_rewarded_action(reward):
  """One SGD step through the real loss makes image 0's better bit (0) more likely, and leaves the images
  whose action never varies untouched (their leave-one-out advantages sum to zero)."""
  labels = jnp.array([0, 0, 1, 1])
  pos, neg = triplets_lib.relevance_masks(labels)
  trip = (jnp.array([0, 1, 2, 3]), jnp.array([1, 0, 3, 2]), jnp.array([2, 3, 0, 1]), jnp.ones(4, bool))
  actions = jnp.asarray(_bandit_actions(), jnp.float32)
  rl_config = _rl_config(reward, alpha=0.5, gamma=1.0)

  def loss(z):  # one logit per image and bit, shared by the rollouts
    logits = jnp.broadcast_to(z, actions.shape)
    return losses.policy_gradient_loss(actions, logits, pos_mask=pos, neg_mask=neg, triplets=trip,
                                       rl_config=rl_config, group=1)[0]

  z = jnp.array([[0.3], [-0.2], [0.1], [0.4]])
  z_new = z - 1.0 * jax.jit(jax.grad(loss))(z)
  p_zero = lambda x: 1.0 - jax.nn.sigmoid(x[0, 0])
  assert float(p_zero(z_new)) > float(p_zero(z)) + 1e-3
  np.testing.assert_allclose(np.asarray(z_new[1:]), np.asarray(z[1:]), atol=1e-7)


# ----------------------------------------------------------------------------- the supervised terms


@pytest.mark.parametrize("abs_diff", [False, True])
def test_triplet_margin_loss_value_and_gradient(abs_diff):
  logits, _, _, _, (a, p, n, valid) = _problem()
  greedy = logits[-1]
  ref = lambda z: ref_triplet_margin_loss(_sigmoid(z), a, p, n, valid, 1.0, abs_diff)
  per = [max(0.0, 1.0 + np.linalg.norm(_sigmoid(greedy[x]) - _sigmoid(greedy[y]) + EPS)
             - np.linalg.norm(_sigmoid(greedy[x]) - _sigmoid(greedy[w]) + EPS)) for x, y, w in zip(a, p, n)]
  assert min(per) == 0.0 and max(per) > 0.1  # active and inactive hinges

  def loss(z):
    return losses.triplet_margin_loss(jax.nn.sigmoid(z), *map(jnp.asarray, (a, p, n, valid)), 1.0, abs_diff)

  value, grad = jax.jit(jax.value_and_grad(loss))(jnp.asarray(greedy, jnp.float32))
  np.testing.assert_allclose(float(value), ref(greedy), rtol=1e-5)
  assert_grad_close(grad, fd_grad(ref, greedy))


def test_triplet_margin_loss_conventions_differ_by_the_eps_sign():
  """x - y + eps against |x - y| + eps: a case where the two norms differ by far more than float32 noise."""
  probs = np.array([[0.5, 0.5], [0.5 + 2 ** -12, 0.5 + 2 ** -12], [0.5, 0.5]])
  one = lambda i: jnp.array([i])
  for abs_diff in (False, True):
    got = losses.triplet_margin_loss(jnp.asarray(probs, jnp.float32), one(0), one(1), one(2), jnp.ones(1, bool),
                                     1.0, abs_diff)
    want = ref_triplet_margin_loss(probs, [0], [1], [2], [1.0], 1.0, abs_diff)
    np.testing.assert_allclose(float(got), want, rtol=1e-6)


def test_greedy_log_pi_value_and_gradient():
  logits = _problem()[0][-1]
  got, grad = jax.jit(jax.value_and_grad(lambda z: jnp.sum(losses.greedy_log_pi(z) * jnp.arange(1.0, B + 1))))(
      jnp.asarray(logits, jnp.float32))
  ref = lambda z: np.sum(ref_greedy_log_pi(z) * np.arange(1.0, B + 1))
  np.testing.assert_allclose(float(got), ref(logits), rtol=1e-5)
  assert_grad_close(grad, fd_grad(ref, logits))
  # At p = 0.5 exactly the released code takes log(1 - p): d/dz -log(1 - sigmoid(z)) / K = +0.5 / K.
  g0 = jax.grad(lambda z: losses.greedy_log_pi(z)[0])(jnp.zeros((1, 4)))
  np.testing.assert_allclose(np.asarray(g0), np.full((1, 4), 0.5 / 4), rtol=1e-6)


@pytest.mark.parametrize("lam", [0.001, 0.3])
def test_official_loss_value_and_gradient(lam):
  logits, _, _, _, (a, p, n, valid) = _problem()
  greedy = logits[-1]
  tri = lambda z: ref_triplet_margin_loss(_sigmoid(z), a, p, n, valid, 1.0, abs_diff=True)
  log_pi = lambda z: np.sum(ref_greedy_log_pi(z)[a] * valid) / valid.sum()
  want = lam * log_pi(greedy) * tri(greedy) + (1 - lam) * tri(greedy)
  # L_tri is a constant (detached) in the log-pi term.
  want_grad = lam * tri(greedy) * fd_grad(log_pi, greedy) + (1 - lam) * fd_grad(tri, greedy)
  (value, metrics), grad = jax.jit(jax.value_and_grad(
      lambda z: losses.official_loss(z, *map(jnp.asarray, (a, p, n, valid)), margin=1.0, lam=lam),
      has_aux=True))(jnp.asarray(greedy, jnp.float32))
  np.testing.assert_allclose(float(value), want, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["triplet_loss"]), tri(greedy), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["log_pi"]), log_pi(greedy), rtol=1e-5)
  assert_grad_close(grad, want_grad)


# ----------------------------------------------------------------------------- the assembled objective


def _config(objective, beta=0.7, eta=0.3, reward="batch"):
  config = default.get_config()
  config.objective = objective
  config.hash.bits, config.hash.group = K, GROUP
  config.rl.rollouts = 3
  config.rl.reward, config.rl.alpha, config.rl.gamma = reward, 0.75, 0.9
  config.rl.beta, config.rl.eta, config.rl.triplet_margin = beta, eta, 0.8
  config.rl.official_lambda = 0.01
  return config


def _ref_objective(config, actions, pos, neg, trip):
  """Loss(logits [R, B, K]) from ALGORITHM.md items 7-9; returns (f, grad_f)."""
  a, p, n, valid = trip
  rl_c = config.rl
  tri = lambda z: ref_triplet_margin_loss(_sigmoid(z[-1]), a, p, n, valid, rl_c.triplet_margin)
  if config.objective == "triplet":
    f = lambda z: rl_c.beta * tri(z)
    return f, lambda z: fd_grad(f, z)
  if config.objective == "drlih":  # first M rollouts sampled, the last one greedy
    pg = RefPolicyGradient(actions[:-1], pos, neg, trip, rl_c.reward, rl_c.alpha, rl_c.gamma, GROUP)
    f = lambda z: pg(z[:-1]) + rl_c.beta * tri(z) - rl_c.eta * ref_mean_entropy(z[:-1])
    return f, lambda z: fd_grad(f, z)
  lam = rl_c.official_lambda
  tri_abs = lambda z: ref_triplet_margin_loss(_sigmoid(z[-1]), a, p, n, valid, rl_c.triplet_margin, True)
  log_pi = lambda z: np.sum(ref_greedy_log_pi(z[-1])[a] * valid) / valid.sum()
  f = lambda z: lam * log_pi(z) * tri_abs(z) + (1 - lam) * tri_abs(z)
  return f, lambda z: lam * tri_abs(z) * fd_grad(log_pi, z) + (1 - lam) * fd_grad(tri_abs, z)


@pytest.mark.parametrize("objective,reward,beta,eta", [
    ("drlih", "batch", 0.7, 0.3), ("drlih", "triplet", 1.3, 0.05), ("triplet", "batch", 0.7, 0.3),
    ("official", "batch", 0.7, 0.3)])
def test_objective_loss_value_and_gradient(objective, reward, beta, eta):
  logits, actions, pos, neg, trip = _problem()
  config = _config(objective, beta, eta, reward)
  if objective != "drlih":  # one greedy rollout only
    logits, actions = logits[-1:], actions[-1:]
  f, grad_f = _ref_objective(config, actions, pos, neg, trip)
  ja, jp, jn = _j(actions, pos, neg)

  def loss(z):
    return losses.objective_loss(ja, z, pos_mask=jp, neg_mask=jn, triplets=tuple(map(jnp.asarray, trip)),
                                 config=config)

  (value, metrics), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(jnp.asarray(logits, jnp.float32))
  np.testing.assert_allclose(float(value), f(logits), rtol=2e-5)
  np.testing.assert_allclose(float(metrics["loss"]), f(logits), rtol=2e-5)
  assert_grad_close(grad, grad_f(logits))
  if objective == "drlih":
    np.testing.assert_allclose(float(metrics["entropy"]), ref_mean_entropy(logits[:-1]), rtol=1e-5)
    np.testing.assert_allclose(
        float(metrics["triplet_loss"]),
        ref_triplet_margin_loss(_sigmoid(logits[-1]), *trip, 0.8), rtol=1e-5)


def test_objective_loss_rejects_unknown_objective():
  logits, actions, pos, neg, trip = _problem()
  with pytest.raises(ValueError, match="objective"):
    losses.objective_loss(*_j(actions, logits), pos_mask=pos, neg_mask=neg, triplets=trip,
                          config=_config("nope"))


def test_objective_sgd_step_directions():
  """With equal rollouts (zero advantages), one SGD step on the drlih objective lowers the greedy triplet
  loss (beta > 0) and raises the sampled rollouts' entropy (eta > 0)."""
  logits, actions, pos, neg, trip = _problem()
  same = np.concatenate([np.repeat(actions[:1], 3, axis=0), actions[-1:]])  # three identical rollouts
  ja, jp, jn = _j(same, pos, neg)
  trip = tuple(map(jnp.asarray, trip))
  # The entropy is a mean over 192 logits, hence its larger step.
  for beta, eta, lr in [(1.0, 0.0, 0.5), (0.0, 1.0, 20.0)]:
    config = _config("drlih", beta, eta)
    loss = lambda z: losses.objective_loss(ja, z, pos_mask=jp, neg_mask=jn, triplets=trip, config=config)[0]
    z = jnp.asarray(logits, jnp.float32)
    z_new = z - lr * jax.jit(jax.grad(loss))(z)
    if beta:
      tri = lambda x: losses.triplet_margin_loss(jax.nn.sigmoid(x[-1]), *trip, margin=0.8)
      assert float(tri(z_new)) < float(tri(z)) - 1e-4
      # The policy gradient vanishes (up to the rounding of the advantages, ~1e-8).
      np.testing.assert_allclose(np.asarray(z_new[:-1]), np.asarray(z[:-1]), atol=1e-6)
    else:
      ent = lambda x: float(jnp.mean(-(jax.nn.sigmoid(x) * jax.nn.log_sigmoid(x)
                                       + jax.nn.sigmoid(-x) * jax.nn.log_sigmoid(-x))))
      assert ent(z_new[:-1]) > ent(z[:-1]) + 1e-3
      np.testing.assert_array_equal(np.asarray(z_new[-1]), np.asarray(z[-1]))  # greedy: no entropy term


def test_rollout_noise_puts_the_greedy_rollout_last():
  config = _config("drlih")
  noise = np.asarray(steps_lib.rollout_noise(jax.random.key(0), config, B))  # [R, T, B, g]
  assert noise.shape == (4, K // GROUP, B, GROUP)
  assert np.all(noise[-1] == 0.5)  # greedy: a = 1[0.5 < p] = 1[p > 0.5]
  assert np.all((noise[:-1] >= 0) & (noise[:-1] < 1)) and np.unique(noise[:-1]).size == noise[:-1].size
  for objective in ("triplet", "official"):
    greedy = np.asarray(steps_lib.rollout_noise(jax.random.key(0), _config(objective), B))
    np.testing.assert_array_equal(greedy, np.full((1, K // GROUP, B, GROUP), 0.5))


class _LinearAgent:
  """A stand-in for the model with `model.apply`'s signature: logits = flatten(image) @ w, shifted per
  rollout (so that sampled and greedy rollouts differ), actions = 1[noise < sigmoid(logits)]."""

  def apply(self, variables, images, noise, train, mutable, rngs):
    del train, mutable, rngs
    r, t, b, g = noise.shape
    z = images.reshape(b, -1) @ variables["params"]["w"]  # [B, K]
    logits = z[None] + 0.3 * jnp.arange(r, dtype=jnp.float32)[:, None, None]
    u = jnp.transpose(noise, (0, 2, 1, 3)).reshape(r, b, t * g)
    return ((u < jax.nn.sigmoid(logits)).astype(jnp.float32), logits), {}


def test_train_step_loss_and_update_are_the_objective_of_its_rollouts():
  """`steps.train_step` with a linear stand-in model: its loss is the float64 objective of the rollouts
  drawn from the step's own noise (M sampled, greedy last), masks and triplets, and its SGD update is
  -lr times that objective's gradient."""
  config = _config("drlih", beta=0.7, eta=0.3)
  rng_np = np.random.default_rng(1)
  images = rng_np.normal(size=(B, 2, 2, 1))
  w = rng_np.normal(0.0, 1.0, (4, K))
  lr = 0.1
  state = steps_lib.TrainState(step=jnp.zeros((), jnp.int32), params={"w": jnp.asarray(w, jnp.float32)},
                               batch_stats={}, opt_state=optax.sgd(lr).init({"w": jnp.zeros((4, K))}))
  step = jax.jit(functools.partial(steps_lib.train_step, model=_LinearAgent(), tx=optax.sgd(lr), config=config))
  rng = jax.random.key(5)
  new_state, metrics = step(state, {"image": jnp.asarray(images, jnp.float32), "label": jnp.asarray(LABELS)}, rng)
  # The step's own draws, from its documented key split.
  noise_key, triplet_key, _ = jax.random.split(rng, 3)
  pos, neg = triplets_lib.relevance_masks(jnp.asarray(LABELS))
  trip = tuple(map(np.asarray, jax.jit(triplets_lib.sample_triplets, static_argnums=3)(
      triplet_key, pos, neg, config.rl.triplets_per_anchor)))
  noise = np.asarray(steps_lib.rollout_noise(noise_key, config, B), np.float64)
  logits = (images.reshape(B, -1) @ w)[None] + 0.3 * np.arange(4)[:, None, None]
  u = noise.transpose(0, 2, 1, 3).reshape(4, B, K)
  actions = (u < _sigmoid(logits)).astype(np.float64)
  assert np.any(actions[0] != actions[1])
  f, grad_f = _ref_objective(config, actions, np.asarray(pos), np.asarray(neg), trip)
  np.testing.assert_allclose(float(metrics["loss"]), f(logits), rtol=1e-4)
  grad_w = sum(images.reshape(B, -1).T @ g for g in grad_f(logits))
  assert_grad_close((w - np.asarray(new_state.params["w"], np.float64)) / lr, grad_w, rtol=2e-3)
