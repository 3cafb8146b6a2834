"""The scanned agent against a plain Python loop, greedy decoding, and the assembled model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from drlih_jax import models
from drlih_jax.models import agent as agent_lib
from configs import digits as digits_config


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_scan_equals_python_loop(cell):
  kwargs = dict(bits=12, group=3, hidden=16, cell=cell, action_embed=8)
  scanned = agent_lib.HashAgent(**kwargs)
  looped = agent_lib.HashAgent(**kwargs, unroll=True)
  features = jax.random.normal(jax.random.key(0), (5, 10))
  noise = jax.random.uniform(jax.random.key(1), (4, 5, 3))
  params = scanned.init(jax.random.key(2), features, noise)
  # The unrolled agent has the same parameter tree: the scan broadcasts one set over steps.
  assert jax.tree.structure(params) == jax.tree.structure(looped.init(jax.random.key(2), features, noise))
  a1, z1 = scanned.apply(params, features, noise)
  a2, z2 = looped.apply(params, features, noise)
  np.testing.assert_array_equal(np.asarray(a1), np.asarray(a2))
  np.testing.assert_allclose(np.asarray(z1), np.asarray(z2), rtol=1e-6, atol=1e-6)
  assert a1.shape == (5, 12) and set(np.unique(np.asarray(a1))) <= {0.0, 1.0}


def test_actions_follow_noise_and_feed_back():
  agent = agent_lib.HashAgent(bits=8, group=2, hidden=16, cell="lstm", action_embed=8)
  features = jax.random.normal(jax.random.key(0), (3, 6))
  greedy_noise = jnp.full((4, 3, 2), 0.5)
  params = agent.init(jax.random.key(1), features, greedy_noise)
  actions, logits = agent.apply(params, features, greedy_noise)
  np.testing.assert_array_equal(np.asarray(actions), (np.asarray(logits) > 0).astype(np.float32))
  # Greedy decoding is deterministic.
  again, _ = agent.apply(params, features, greedy_noise)
  np.testing.assert_array_equal(np.asarray(actions), np.asarray(again))
  # Forcing a different first group changes the later logits: earlier decisions are in the state.
  forced = greedy_noise.at[0].set(jnp.where(actions[:, :2] > 0, 1.0, 0.0))  # flips every first-step bit
  _, logits_forced = agent.apply(params, features, forced)
  np.testing.assert_allclose(np.asarray(logits_forced)[:, :2], np.asarray(logits)[:, :2], rtol=1e-6)
  assert not np.allclose(np.asarray(logits_forced)[:, 2:], np.asarray(logits)[:, 2:])


def test_model_rollouts_share_features():
  config = digits_config.get_config()
  config.hash.bits, config.hash.group = 8, 4
  model = models.create_model(config)
  images = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
  noise = jax.random.uniform(jax.random.key(1), (3, 2, 4, 4))
  variables = model.init(jax.random.key(2), images, noise)
  actions, logits = model.apply(variables, images, noise)
  assert actions.shape == (3, 4, 8) and logits.shape == (3, 4, 8)
  # Rollout r of image i equals a single-rollout call with that rollout's noise.
  single, single_logits = model.apply(variables, images, noise[1:2])
  np.testing.assert_array_equal(np.asarray(single[0]), np.asarray(actions[1]))
  np.testing.assert_allclose(np.asarray(single_logits[0]), np.asarray(logits[1]), rtol=1e-5, atol=1e-6)


def test_bits_not_divisible_by_group():
  agent = agent_lib.HashAgent(bits=10, group=4)
  with pytest.raises(ValueError, match="hash.bits=10 is not divisible by hash.group=4"):
    agent.init(jax.random.key(0), jnp.ones((2, 3)), jnp.ones((2, 2, 4)))
