"""Tests for the "official" objective (the released code's agent and loss), bf16 steps, on-device resizing
and loading pretrained VGG-19-BN weights into the full model.

The reference for the agent and the loss is a float64 torch transcription of the released code's formulas:
`nn.RNNCell(D, D)` called as `cell(h, h)`, `sigmoid(nn.Linear(D, 1)(h))` per bit, its own
`pairwise_distance` (|x - y| + eps inside the norm), `log_porb` and
`final = lam * mean(logpi / K * L_tri.detach()) + (1 - lam) * L_tri`, the network run once per triplet role.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import cifar as cifar_config
from configs import default
from drlih_jax import errors
from drlih_jax import input_pipeline
from drlih_jax import losses
from drlih_jax import models
from drlih_jax import optim
from drlih_jax import resize as resize_lib
from drlih_jax import steps as steps_lib
from drlih_jax import validation
from drlih_jax.models import official

D, K, B = 16, 8, 6
LAM = 0.001


def _torch():
  return pytest.importorskip("torch", reason="torch not installed: the torch transcription tests are skipped")


def _random_agent_params(seed=0):
  """Agent parameters with non-trivial scales (both biases non-zero, logits of both signs)."""
  rng = np.random.default_rng(seed)
  return {"params": {
      "cell": {"ih_kernel": rng.normal(0, 0.4, (D, D)).astype(np.float32),
               "ih_bias": rng.normal(0, 0.2, (D,)).astype(np.float32),
               "hh_kernel": rng.normal(0, 0.4, (D, D)).astype(np.float32),
               "hh_bias": rng.normal(0, 0.2, (D,)).astype(np.float32)},
      "actor": {"kernel": rng.normal(0, 0.8, (D, 1)).astype(np.float32),
                "bias": np.array([0.1], np.float32)}}}


def _triplets():
  anchors = np.array([0, 1, 2, 3, 4, 5, 0, 3], np.int32)
  positives = np.array([1, 0, 1, 4, 5, 3, 2, 5], np.int32)
  negatives = np.array([3, 4, 5, 0, 1, 2, 4, 1], np.int32)
  return anchors, positives, negatives


def _features(seed=1):
  """Images 0-2 and 3-5 form two clusters (the classes of `_triplets`), so some hinges are inactive."""
  rng = np.random.default_rng(seed)
  centers = rng.normal(0, 1, (2, D))
  return (2.0 * centers[[0, 0, 0, 1, 1, 1]] + rng.normal(0, 0.3, (B, D))).astype(np.float32)


def _jax_loss(variables, features, anchors, positives, negatives, valid, margin=1.0):
  agent = official.OfficialAgent(bits=K)
  noise = jnp.full((K, features.shape[0], 1), 0.5, jnp.float32)
  _, logits = agent.apply(variables, features, noise)
  loss, metrics = losses.official_loss(logits, anchors, positives, negatives, valid, margin=margin, lam=LAM)
  return loss, metrics


def _torch_released(torch, variables, features, anchors, positives, negatives):
  """The released code's forward, loss and backward in float64; returns (loss, L_tri, grads)."""
  p = variables["params"]
  t = lambda x: torch.tensor(np.asarray(x, np.float64))
  cell = torch.nn.RNNCell(D, D).double()
  actor = torch.nn.Linear(D, 1).double()
  with torch.no_grad():
    cell.weight_ih.copy_(t(p["cell"]["ih_kernel"]).T)
    cell.bias_ih.copy_(t(p["cell"]["ih_bias"]))
    cell.weight_hh.copy_(t(p["cell"]["hh_kernel"]).T)
    cell.bias_hh.copy_(t(p["cell"]["hh_bias"]))
    actor.weight.copy_(t(p["actor"]["kernel"]).T)
    actor.bias.copy_(t(p["actor"]["bias"]))
  feats = t(features).requires_grad_(True)

  def model(x):  # ActorCritic.forward after the backbone.
    hx = x
    probs = []
    for _ in range(K):
      hx = cell(hx, hx)
      probs.append(torch.sigmoid(actor(hx)))
    return torch.cat(probs, 1)

  def pairwise_distance(x1, x2, eps=1e-6):
    return torch.pow(torch.pow(torch.abs(x1 - x2) + eps, 2).sum(dim=1, keepdim=True), 0.5)

  def log_porb(a):
    x = (a > 0.5).double()
    return -(x * a + (1 - x) * (1 - a)).log().sum(1)

  idx = lambda i: torch.tensor(np.asarray(i, np.int64))
  hash_o, hash_p, hash_n = model(feats[idx(anchors)]), model(feats[idx(positives)]), model(feats[idx(negatives)])
  hinge = torch.clamp(1.0 + pairwise_distance(hash_o, hash_p) - pairwise_distance(hash_o, hash_n), min=0.0)
  tri = torch.mean(hinge)
  loss_l = torch.mean(log_porb(hash_o) / K * tri.detach())
  final = LAM * loss_l + (1 - LAM) * tri
  final.backward()
  g = lambda x: x.grad.numpy()
  grads = {"cell": {"ih_kernel": g(cell.weight_ih).T, "ih_bias": g(cell.bias_ih),
                    "hh_kernel": g(cell.weight_hh).T, "hh_bias": g(cell.bias_hh)},
           "actor": {"kernel": g(actor.weight).T, "bias": g(actor.bias)}}
  return float(final.detach()), float(tri.detach()), grads, feats.grad.numpy(), hinge.detach().numpy()[:, 0]


# ----------------------------------------------------------------------------- agent and loss vs torch


def test_agent_matches_torch_rnncell_loop():
  torch = _torch()
  variables = _random_agent_params()
  feats = _features()
  noise = jnp.full((K, B, 1), 0.5, jnp.float32)
  actions, logits = official.OfficialAgent(bits=K).apply(variables, feats, noise)
  p = variables["params"]
  cell = torch.nn.RNNCell(D, D).double()
  with torch.no_grad():
    cell.weight_ih.copy_(torch.tensor(p["cell"]["ih_kernel"].T, dtype=torch.float64))
    cell.bias_ih.copy_(torch.tensor(p["cell"]["ih_bias"], dtype=torch.float64))
    cell.weight_hh.copy_(torch.tensor(p["cell"]["hh_kernel"].T, dtype=torch.float64))
    cell.bias_hh.copy_(torch.tensor(p["cell"]["hh_bias"], dtype=torch.float64))
    hx = torch.tensor(feats, dtype=torch.float64)
    want = []
    for _ in range(K):
      hx = cell(hx, hx)
      want.append(hx.numpy() @ p["actor"]["kernel"].astype(np.float64)[:, 0] + p["actor"]["bias"][0])
  want = np.stack(want, 1)
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(logits), want, atol=1e-5, rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(actions), (want > 0).astype(np.float32))
  assert 0 < np.asarray(actions).mean() < 1  # Both greedy branches are exercised.


def test_loss_and_gradients_match_released_formulas():
  torch = _torch()
  variables = _random_agent_params()
  feats = _features()
  anchors, positives, negatives = _triplets()
  valid = np.ones(len(anchors), bool)

  def loss_fn(params, f):
    return _jax_loss({"params": params}, f, anchors, positives, negatives, valid)

  (loss, metrics), (grads, feat_grads) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
      variables["params"], jnp.asarray(feats))
  want_loss, want_tri, want_grads, want_feat_grads, hinge = _torch_released(
      torch, variables, feats, anchors, positives, negatives)
  assert abs(float(loss) - want_loss) < 1e-5
  assert abs(float(metrics["triplet_loss"]) - want_tri) < 1e-5
  # Not a degenerate case: some hinges are active and some are not, and the gradients are not tiny.
  assert np.any(hinge == 0) and np.any(hinge > 0.1)
  for path, want in jax.tree_util.tree_flatten_with_path(want_grads)[0]:
    got = functools.reduce(lambda t, k: t[k.key], path, grads)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-4, err_msg=str(path))
  np.testing.assert_allclose(np.asarray(feat_grads), want_feat_grads, atol=1e-5, rtol=1e-4)
  assert np.abs(want_feat_grads).max() > 1e-3
  # The two recurrent matrices see the same input, so they receive the same gradient.
  np.testing.assert_allclose(want_grads["cell"]["ih_kernel"], want_grads["cell"]["hh_kernel"], atol=1e-12)


def test_lambda_term_gradient_alone():
  """With L_tri's own gradient removed (lam = 1), what is left is mean(logpi) * L_tri with L_tri constant."""
  variables = _random_agent_params()
  feats = jnp.asarray(_features())
  anchors, positives, negatives = _triplets()
  valid = jnp.ones(len(anchors), bool)
  noise = jnp.full((K, B, 1), 0.5, jnp.float32)
  agent = official.OfficialAgent(bits=K)

  def loss_fn(params, lam):
    _, logits = agent.apply({"params": params}, feats, noise)
    return losses.official_loss(logits, anchors, positives, negatives, valid, margin=1.0, lam=lam)[0]

  def direct(params):
    _, logits = agent.apply({"params": params}, feats, noise)
    tri = jax.lax.stop_gradient(losses.triplet_margin_loss(jax.nn.sigmoid(logits), anchors, positives,
                                                           negatives, valid, 1.0, abs_diff=True))
    pa = jax.nn.sigmoid(logits)[anchors]
    logpi = -jnp.mean(jnp.log(jnp.where(pa > 0.5, pa, 1 - pa)), axis=1)
    return jnp.mean(logpi) * tri

  got = jax.grad(loss_fn)(variables["params"], 1.0)
  want = jax.grad(direct)(variables["params"])
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-7, rtol=1e-4)


def test_invalid_triplets_get_zero_weight():
  variables = _random_agent_params()
  feats = jnp.asarray(_features())
  anchors, positives, negatives = _triplets()
  valid = np.ones(len(anchors), bool)
  base, base_m = _jax_loss(variables, feats, anchors, positives, negatives, valid)
  # An extra triplet marked invalid changes nothing.
  extra = lambda x, v: np.concatenate([x, [v]]).astype(np.int32)
  loss, m = _jax_loss(variables, feats, extra(anchors, 2), extra(positives, 2), extra(negatives, 2),
                      np.concatenate([valid, [False]]))
  np.testing.assert_allclose(float(loss), float(base), rtol=1e-7)
  np.testing.assert_allclose(float(m["log_pi"]), float(base_m["log_pi"]), rtol=1e-7)


def test_greedy_log_pi_hand_case():
  z = jnp.array([[0.0, np.log(3.0), -np.log(3.0)]], jnp.float32)  # p = 1/2, 3/4, 1/4
  want = -(np.log(0.5) + 2 * np.log(0.75)) / 3
  np.testing.assert_allclose(float(losses.greedy_log_pi(z)[0]), want, rtol=1e-6)
  # At p = 0.5 the released code takes the log(1 - p) branch: d/dz of -log(1 - sigmoid(z)) / 3 = +0.5 / 3.
  grad = jax.grad(lambda x: losses.greedy_log_pi(x)[0])(z)
  np.testing.assert_allclose(np.asarray(grad[0]), [0.5 / 3, -0.25 / 3, 0.25 / 3], rtol=1e-6)


def test_abs_diff_distance_hand_case():
  # Anchor minus positive is -2^-18 per bit, anchor minus negative +1/4: the two eps conventions give
  # anchor-positive distances that differ by 2 * sqrt(2) * 1e-6, well above float32 resolution here.
  d = 2.0 ** -18
  probs = jnp.array([[0.25, 0.25], [0.25 + d, 0.25 + d], [0.0, 0.0]], jnp.float32)
  one = lambda a: jnp.array([a], jnp.int32)
  eps = 1e-6
  released = 1.0 + np.sqrt(2) * (d + eps) - np.sqrt(2) * (0.25 + eps)    # || |x - y| + eps ||
  torch_conv = 1.0 + np.sqrt(2) * (d - eps) - np.sqrt(2) * (0.25 + eps)  # || x - y + eps ||
  assert abs(released - torch_conv) > 1e-6
  got = losses.triplet_margin_loss(probs, one(0), one(1), one(2), jnp.ones(1, bool), 1.0, abs_diff=True)
  assert abs(float(got) - released) < 2e-7
  got_t = losses.triplet_margin_loss(probs, one(0), one(1), one(2), jnp.ones(1, bool), 1.0)
  assert abs(float(got_t) - torch_conv) < 2e-7
  # The "official" loss uses the released code's convention.
  logits = jnp.log(probs) - jnp.log1p(-probs)
  _, metrics = losses.official_loss(logits, one(0), one(1), one(2), jnp.ones(1, bool), margin=1.0)
  assert abs(float(metrics["triplet_loss"]) - released) < 4e-7


def test_initialisation_follows_released_code():
  feats = jnp.zeros((2, 64), jnp.float32)
  variables = official.OfficialAgent(bits=4).init(jax.random.key(0), feats, jnp.full((4, 2, 1), 0.5))
  p = variables["params"]
  np.testing.assert_allclose(np.linalg.norm(np.asarray(p["actor"]["kernel"]), axis=0), [0.01], rtol=1e-5)
  assert float(p["actor"]["bias"][0]) == 0.0
  assert not np.any(np.asarray(p["cell"]["ih_bias"])) and not np.any(np.asarray(p["cell"]["hh_bias"]))
  for name in ("ih_kernel", "hh_kernel"):
    w = np.asarray(p["cell"][name])
    assert w.shape == (64, 64) and np.abs(w).max() <= 1 / 8  # U(-1/sqrt(64), 1/sqrt(64))
    np.testing.assert_allclose(w.std(), 1 / 8 / np.sqrt(3), rtol=0.1)
  assert not np.allclose(p["cell"]["ih_kernel"], p["cell"]["hh_kernel"])


def test_scan_equals_unrolled_and_sampling_uses_noise():
  variables = _random_agent_params()
  feats = jnp.asarray(_features())
  noise = jax.random.uniform(jax.random.key(3), (K, B, 1))
  a1, l1 = official.OfficialAgent(bits=K).apply(variables, feats, noise)
  a2, l2 = official.OfficialAgent(bits=K, unroll=True).apply(variables, feats, noise)
  np.testing.assert_allclose(np.asarray(l1), np.asarray(l2), rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(np.asarray(a1), np.asarray(a2))
  want = (np.asarray(noise)[..., 0].T < np.asarray(jax.nn.sigmoid(l1))).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(a1), want)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 3e-2)])
def test_custom_vjp_matches_autodiff(dtype, tol):
  """The scan's hand-written VJP against JAX's autodiff of the unrolled loop, both in `dtype` compute."""
  variables = _random_agent_params()
  feats = jnp.asarray(_features())
  cot = jax.random.normal(jax.random.key(4), (B, K))
  noise = jnp.full((K, B, 1), 0.5, jnp.float32)

  def f(params, x, unroll):
    _, logits = official.OfficialAgent(bits=K, dtype=dtype, unroll=unroll).apply({"params": params}, x, noise)
    return jnp.sum(logits * cot)

  got = jax.grad(f, argnums=(0, 1))(variables["params"], feats, False)
  want = jax.grad(f, argnums=(0, 1))(variables["params"], feats, True)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    scale = float(jnp.max(jnp.abs(w)))
    assert scale > 1e-3
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=tol * scale, rtol=tol)


# ----------------------------------------------------------------------------- configs, model, train step


def _small_config(objective="official", dtype="float32", group=None):
  config = default.get_config()
  config.objective = objective
  config.hash.bits = 8
  config.hash.group = group if group is not None else (1 if objective == "official" else 4)
  config.hash.eval_bits = (8,)
  config.model.widths = (8,)
  config.model.feature_dim = 16
  config.model.hidden = 16
  config.model.action_embed = 4
  config.model.dtype = dtype
  config.rl.rollouts = 2
  config.input.classes_per_batch = 2
  config.input.images_per_class = 3
  return config


def test_official_requires_group_one():
  config = _small_config(group=2)
  with pytest.raises(errors.ConfigError, match="hash.group must be 1"):
    validation.validate(config)
  assert isinstance(models.create_model(_small_config()).agent, official.OfficialAgent)
  validation.validate(_small_config())


def _run_step(config, image_size=8):
  model = models.create_model(config)
  tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(1e-3, momentum=0.9))
  state = steps_lib.create_train_state(jax.random.key(0), model, tx, (image_size, image_size, 1), config)
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.normal(size=(6, image_size, image_size, 1)), jnp.float32),
           "label": jnp.array([0, 0, 0, 1, 1, 1], jnp.int32)}
  step = jax.jit(functools.partial(steps_lib.train_step, model=model, tx=tx, config=config))
  new_state, metrics = step(state, batch, jax.random.key(1))
  return model, state, new_state, metrics, batch


def _released_loss_np(logits, anchors, positives, negatives, margin=1.0, lam=LAM):
  """The released code's loss in float64 numpy, from the greedy logits [B, K] (every triplet valid)."""
  probs = 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))
  h_o, h_p, h_n = probs[anchors], probs[positives], probs[negatives]
  dist = lambda x, y: np.sqrt(np.sum((np.abs(x - y) + 1e-6) ** 2, axis=1))  # function.pairwise_distance
  tri = np.mean(np.maximum(margin + dist(h_o, h_p) - dist(h_o, h_n), 0.0))
  log_porb = -np.log(np.where(h_o > 0.5, h_o, 1.0 - h_o)).sum(1)
  return lam * np.mean(log_porb / h_o.shape[1] * tri) + (1.0 - lam) * tri, np.mean(log_porb) / h_o.shape[1]


def test_official_train_step_matches_direct_loss():
  config = _small_config()
  model, state, new_state, metrics, batch = _run_step(config)
  assert steps_lib.rollout_noise(jax.random.key(0), config, 6).shape == (1, 8, 6, 1)
  # Recompute the loss from the model's greedy logits and the step's own triplets, in float64 numpy.
  noise_key, triplet_key, dropout_key = jax.random.split(jax.random.key(1), 3)
  del noise_key, dropout_key
  pos, neg = steps_lib.triplets_lib.relevance_masks(batch["label"])
  anchors, positives, negatives, valid = map(np.asarray, steps_lib.triplets_lib.sample_triplets(
      triplet_key, pos, neg, config.rl.triplets_per_anchor))
  assert valid.all()
  _, logits = jax.jit(model.apply)({"params": state.params}, batch["image"], jnp.full((1, 8, 6, 1), 0.5))
  want, want_log_pi = _released_loss_np(logits[0], anchors, positives, negatives)
  assert abs(want) > 1e-2
  np.testing.assert_allclose(float(metrics["loss"]), want, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["log_pi"]), want_log_pi, rtol=1e-5)
  assert float(metrics["nonfinite"]) == 0.0
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.params, new_state.params)
  assert all(jax.tree.leaves(changed))


def test_sgd_decay_step_matches_released_loop():
  """The released train.py: counter from 1; `if counter % steps == 0: lr *= rate` before each update."""
  config = _small_config()
  config.optim.name, config.optim.learning_rate, config.optim.decay_every = "sgd", 1.0, 3
  config.optim.decay_factor, config.optim.momentum, config.optim.weight_decay = 0.1, 0.0, 0.0
  lr, released = 1.0, []
  for episode in range(1, 8):
    if episode % 3 == 0:
      lr *= 0.1
    released.append(lr)
  schedule = optim.learning_rate_schedule(config.optim, 100)
  np.testing.assert_allclose([float(schedule(c)) for c in range(7)], released, rtol=1e-6)
  # The same through the optimiser: unit gradients, so each update is -lr.
  tx = optim.create_optimizer(config.optim, 100)
  params = jnp.zeros(())
  opt_state = tx.init(params)
  steps = []
  for _ in range(7):
    updates, opt_state = tx.update(jnp.ones(()), opt_state, params)
    steps.append(-float(updates))
  np.testing.assert_allclose(steps, released, rtol=1e-6)
  # At the paper's setting the 10,000th update (count 9,999) is the first at 1e-4.
  paper = optim.learning_rate_schedule(cifar_config.get_config().optim, 30_000)
  np.testing.assert_allclose([float(paper(c)) for c in (0, 9_998, 9_999, 19_998, 19_999)],
                             [1e-3, 1e-3, 1e-4, 1e-4, 1e-5], rtol=1e-5)


@pytest.mark.parametrize("objective", ["official", "drlih"])
def test_bf16_step_keeps_float32_params_and_optimizer_state(objective):
  config = _small_config(objective, dtype="bfloat16")
  _, state, new_state, metrics, batch = _run_step(config)
  for tree in (new_state.params, new_state.opt_state, new_state.batch_stats):
    for leaf in jax.tree.leaves(tree):
      if jnp.issubdtype(leaf.dtype, jnp.floating):
        assert leaf.dtype == jnp.float32
  for k, v in metrics.items():
    assert v.dtype == jnp.float32, k
    assert np.isfinite(float(v)), k
  assert float(metrics["nonfinite"]) == 0.0
  noise = steps_lib.rollout_noise(jax.random.key(0), config, 6)
  apply = lambda cfg: jax.jit(models.create_model(cfg).apply)({"params": state.params}, batch["image"], noise)
  actions, logits = apply(config)
  assert logits.dtype == jnp.float32 and actions.dtype == jnp.float32
  # bf16 compute stays close to float32 compute on the same parameters.
  _, logits32 = apply(_small_config(objective, dtype="float32"))
  np.testing.assert_allclose(np.asarray(logits), np.asarray(logits32), atol=0.05)
  # And the bf16 step is the float32 step up to bf16 rounding: the same loss within 0.1%, and parameter
  # updates pointing the same way (cosine > 0.99 over all parameters) with norms within 5%. Measured:
  # loss 4e-6 (official) and 7e-5 (drlih) apart, cosine 0.99995 and 0.9996, norms 1.2% and 0.25% apart.
  _, state32, new_state32, metrics32, _ = _run_step(_small_config(objective, dtype="float32"))
  np.testing.assert_allclose(float(metrics["loss"]), float(metrics32["loss"]), rtol=1e-3)
  flat = lambda new, old: np.concatenate([np.ravel(n - o) for n, o in zip(jax.tree.leaves(new),
                                                                          jax.tree.leaves(old))])
  step16, step32 = flat(new_state.params, state.params), flat(new_state32.params, state32.params)
  cosine = step16 @ step32 / (np.linalg.norm(step16) * np.linalg.norm(step32))
  assert cosine > 0.99, cosine
  np.testing.assert_allclose(np.linalg.norm(step16), np.linalg.norm(step32), rtol=0.05)


# ----------------------------------------------------------------------------- resize


def test_resize_hand_case_and_torch():
  x = jnp.array([[0.0, 1.0], [2.0, 3.0]], jnp.float32)[None, :, :, None]
  got = np.asarray(resize_lib.resize_images(x, 4))[0, :, :, 0]
  row = np.array([0.0, 0.25, 0.75, 1.0])
  np.testing.assert_allclose(got, row[None, :] + 2 * row[:, None], atol=1e-6)
  torch = pytest.importorskip("torch", reason="torch not installed: resize comparison skipped")
  img = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  want = torch.nn.functional.interpolate(torch.tensor(img.transpose(0, 3, 1, 2)), size=(37, 37),
                                         mode="bilinear", align_corners=False).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(np.asarray(resize_lib.resize_images(img, 37)), want, atol=1e-5)


def test_crops_and_views():
  img = jnp.arange(2 * 6 * 6, dtype=jnp.float32).reshape(2, 6, 6, 1)
  np.testing.assert_array_equal(np.asarray(resize_lib.center_crop(img, 4)), np.asarray(img[:, 1:5, 1:5]))
  out = np.asarray(resize_lib.random_crop_flip(jax.random.key(0), img, 4))
  for i in range(2):
    windows = [np.asarray(img[i, t:t + 4, l:l + 4]) for t in range(3) for l in range(3)]
    windows += [w[:, ::-1] for w in windows]
    assert any(np.array_equal(out[i], w) for w in windows)
  cfg = ml_collections.ConfigDict({"resize": 12, "crop": 10})
  assert resize_lib.train_view(jax.random.key(0), img, cfg).shape == (2, 10, 10, 1)
  assert resize_lib.eval_view(img, cfg).shape == (2, 10, 10, 1)
  with pytest.raises(ValueError, match="input.crop"):
    resize_lib.eval_view(img, ml_collections.ConfigDict({"resize": 8, "crop": 10}))


def test_steps_resize_on_device():
  config = _small_config()
  config.input.resize = 12
  config.input.crop = 10
  validation.validate(config)
  model = models.create_model(config)
  tx = optax.sgd(1e-3)
  state = steps_lib.create_train_state(jax.random.key(0), model, tx, (10, 10, 1), config)
  images = np.random.default_rng(0).integers(0, 256, (12, 8, 8, 1), dtype=np.uint8)
  labels = np.repeat(np.arange(2), 6).astype(np.int32)
  table, sizes = input_pipeline.class_membership(labels, 2)
  data = input_pipeline.DeviceData(images=jnp.asarray(images), labels=jnp.asarray(labels),
                                   class_members=jnp.asarray(table), class_sizes=jnp.asarray(sizes))
  seen = []
  orig = steps_lib.train_step

  def spy(state, batch, rng, **kw):
    seen.append(batch["image"].shape)
    return orig(state, batch, rng, **kw)

  steps_lib.train_step = spy
  try:
    step = jax.jit(functools.partial(steps_lib.device_resident_train_step, model=model, tx=tx, config=config))
    _, metrics = step(state, data, jax.random.key(2))
  finally:
    steps_lib.train_step = orig
  assert seen == [(6, 10, 10, 1)]
  assert np.isfinite(float(metrics["loss"]))
  encode = jax.jit(functools.partial(steps_lib.encode, model=model, config=config))
  codes = encode(state.params, state.batch_stats, jnp.asarray(images[:4]))
  # Encoding = the model on the normalised, resized, centre-cropped images.
  x = input_pipeline.normalize(jnp.asarray(images[:4]), config.dataset.mean, config.dataset.std)
  x = resize_lib.resize_images(x, 12)[:, 1:11, 1:11]
  actions, _ = jax.jit(model.apply)({"params": state.params}, x, jnp.full((1, 8, 4, 1), 0.5))
  np.testing.assert_array_equal(np.asarray(codes), np.asarray(actions[0]).astype(np.uint8))


def test_resize_config_errors():
  config = _small_config()
  config.input.crop = 10
  with pytest.raises(ValueError, match="input.resize"):
    validation.validate(config)
  config.input.resize = 8
  with pytest.raises(ValueError, match="input.crop=10 is larger"):
    validation.validate(config)


def test_cifar_configs_validate():
  from configs import cifar, cifar_drlih  # pylint: disable=g-import-not-at-top
  c = cifar.get_config()
  validation.validate(c)
  assert (c.objective, c.hash.group, c.model.backbone, c.model.feature_dim) == ("official", 1, "vgg19_bn", 4096)
  assert (c.optim.name, c.optim.learning_rate, c.optim.weight_decay, c.optim.decay_every) == (
      "sgd", 1e-3, 5e-4, 10_000)
  assert resize_lib.eval_view(jnp.zeros((1, 32, 32, 3)), c.input).shape == (1, 224, 224, 3)
  d = cifar_drlih.get_config()
  validation.validate(d)
  assert (d.objective, d.hash.bits, d.hash.group) == ("drlih", 32, 4)


# ----------------------------------------------------------------------------- pretrained weights


CFG_E = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
         512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]


def _torchvision_state(feature_dim, seed=0):
  """A torchvision-layout vgg19_bn state dict of float16 random numbers (small fc6/fc7)."""
  rng = np.random.default_rng(seed)
  r = lambda *shape: rng.standard_normal(shape, dtype=np.float32).astype(np.float16)
  state, idx, cin = {}, 0, 3
  for v in CFG_E:
    if v == "M":
      idx += 1
      continue
    state[f"features.{idx}.weight"] = r(v, cin, 3, 3)
    state[f"features.{idx}.bias"] = r(v)
    for name in ("weight", "bias", "running_mean", "running_var"):
      state[f"features.{idx + 1}.{name}"] = r(v)
    state[f"features.{idx + 1}.num_batches_tracked"] = np.array(1, np.int64)
    idx, cin = idx + 3, v
  state["classifier.0.weight"], state["classifier.0.bias"] = r(feature_dim, 512 * 49), r(feature_dim)
  state["classifier.3.weight"], state["classifier.3.bias"] = r(feature_dim, feature_dim), r(feature_dim)
  state["classifier.6.weight"], state["classifier.6.bias"] = r(10, feature_dim), r(10)
  return state


@pytest.fixture(scope="module")
def pretrained_file(tmp_path_factory):
  st = pytest.importorskip("safetensors.numpy", reason="safetensors not installed")
  state = _torchvision_state(8)
  path = tmp_path_factory.mktemp("weights") / "vgg19_bn.safetensors"
  st.save_file(state, str(path))
  return str(path), state


def _vgg_config(path, feature_dim=8):
  config = _small_config()
  config.model.backbone = "vgg19_bn"
  config.model.feature_dim = feature_dim
  config.model.pretrained = path
  return config


def test_load_pretrained_fills_backbone(pretrained_file):
  path, state = pretrained_file
  config = _vgg_config(path)
  model = models.create_model(config)
  shapes = jax.eval_shape(lambda: model.init({"params": jax.random.key(0), "dropout": jax.random.key(0)},
                                             jnp.zeros((2, 32, 32, 3)), jnp.full((1, 8, 2, 1), 0.5)))
  agent_params = {"cell": {"ih_kernel": np.ones((8, 8), np.float32)}}
  params = {"backbone": shapes["params"]["backbone"], "agent": agent_params}
  params, stats = models.load_pretrained(config, params, {"backbone": shapes["batch_stats"]["backbone"]})
  assert params["agent"] is agent_params
  bb, bs = params["backbone"], stats["backbone"]
  f32 = lambda k: state[k].astype(np.float32)
  np.testing.assert_array_equal(np.asarray(bb["conv0"]["kernel"]), f32("features.0.weight").transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(np.asarray(bb["conv15"]["bias"]), f32("features.49.bias"))
  np.testing.assert_array_equal(np.asarray(bb["bn15"]["scale"]), f32("features.50.weight"))
  np.testing.assert_array_equal(np.asarray(bs["bn15"]["var"]), f32("features.50.running_var"))
  np.testing.assert_array_equal(np.asarray(bb["fc7"]["kernel"]), f32("classifier.3.weight").T)
  # fc6: torch flattens (C, H, W), we flatten (H, W, C).
  w6 = f32("classifier.0.weight")
  for c, h, w, o in [(0, 0, 0, 0), (511, 6, 6, 7), (3, 2, 5, 4)]:
    assert bb["fc6"]["kernel"][(h * 7 + w) * 512 + c, o] == w6[o, c * 49 + h * 7 + w]
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params["backbone"]))


def test_load_pretrained_errors(pretrained_file, tmp_path):
  path, _ = pretrained_file
  unset = _vgg_config("")
  sentinel = ({"backbone": 1}, {"backbone": 2})
  assert models.load_pretrained(unset, *sentinel) == sentinel
  with pytest.raises(errors.ConfigError, match="model.pretrained=.*no such file"):
    validation.validate(_vgg_config(str(tmp_path / "nope.safetensors")))
  validation.validate(_vgg_config(path))
  wrong_dim = _vgg_config(path, feature_dim=16)
  with pytest.raises(errors.DataError, match="vgg19_bn.safetensors: not a torchvision vgg19_bn state dict"):
    models.load_pretrained(wrong_dim, *sentinel)
  not_vgg = _small_config()
  not_vgg.model.pretrained = path
  with pytest.raises(errors.ConfigError, match="holds vgg19_bn weights but model.backbone='small_cnn'"):
    validation.validate(not_vgg)
