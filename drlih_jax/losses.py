"""Training objectives on one encoded batch (ALGORITHM.md items 7-9).

- "drlih": REINFORCE over M sampled rollouts with the prefix-hinge reward and a leave-one-out baseline,
  plus beta * the triplet term on the greedy probabilities, minus eta * the policy entropy.
- "triplet": beta * the triplet term alone (the ablation; no sampling, no policy gradient).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from drlih_jax import rl


def triplet_margin_loss(probs: jax.Array, anchors: jax.Array, positives: jax.Array, negatives: jax.Array,
                        weights: jax.Array, margin: float) -> jax.Array:
  """Weighted mean of max(0, margin + ||P_a - P_p|| - ||P_a - P_n||) with torch's eps convention.

  The norm is ||x - y + 1e-6||_2, as `torch.nn.TripletMarginLoss` (used by the released code) computes it.
  """
  eps = 1e-6
  pa, pp, pn = probs[anchors], probs[positives], probs[negatives]
  d_ap = jnp.sqrt(jnp.sum(jnp.square(pa - pp + eps), axis=-1))
  d_an = jnp.sqrt(jnp.sum(jnp.square(pa - pn + eps), axis=-1))
  per_triplet = jax.nn.relu(margin + d_ap - d_an)
  weights = weights.astype(per_triplet.dtype)
  return jnp.sum(per_triplet * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def policy_gradient_loss(actions: jax.Array, logits: jax.Array, *, pos_mask: jax.Array,
                         neg_mask: jax.Array, triplets, rl_config, group: int):
  """REINFORCE with leave-one-out baseline over the sampled rollouts.

  Args:
    actions, logits: [M, B, K] of the sampled rollouts.
    pos_mask, neg_mask: [B, B] relevance masks.
    triplets: (anchors, positives, negatives, valid) for reward "triplet".
    rl_config: the `rl` config block (reward, alpha, gamma).
    group: g.

  Returns:
    (loss, metrics dict).
  """
  log_probs = rl.step_log_probs(actions, logits, group)  # [M, B, T]
  if rl_config.reward == "batch":
    rewards = rl.batch_rewards(actions, pos_mask, neg_mask, group, rl_config.alpha)  # [M, B, T]
    weight = (jnp.any(pos_mask, axis=1) & jnp.any(neg_mask, axis=1)).astype(jnp.float32)[None, :, None]
  elif rl_config.reward == "triplet":
    anchors, positives, negatives, valid = triplets
    rewards = rl.triplet_rewards(actions, anchors, positives, negatives, group, rl_config.alpha)
    # The three images of a triplet share its reward: their log-probabilities add up.
    log_probs = log_probs[:, anchors] + log_probs[:, positives] + log_probs[:, negatives]
    weight = valid.astype(jnp.float32)[None, :, None]
  else:
    raise ValueError(f"rl.reward must be 'batch' or 'triplet', got {rl_config.reward!r}")
  returns = rl.discounted_returns(rewards, rl_config.gamma)
  advantages = jax.lax.stop_gradient(rl.leave_one_out_advantages(returns))
  weight = jnp.broadcast_to(weight, log_probs.shape)
  loss = -jnp.sum(advantages * log_probs * weight) / jnp.maximum(jnp.sum(weight), 1.0)
  metrics = {
      "mean_reward": jnp.sum(rewards * jnp.broadcast_to(weight, rewards.shape)) / jnp.maximum(
          jnp.sum(jnp.broadcast_to(weight, rewards.shape)), 1.0) * rewards.shape[-1],
      "final_prefix_reward": jnp.mean(rewards[..., -1]),
  }
  return loss, metrics
