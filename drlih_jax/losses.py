"""Training objectives on one encoded batch (ALGORITHM.md items 7-9).

- "drlih": REINFORCE over M sampled rollouts with the prefix-hinge reward and a leave-one-out baseline,
  plus beta * the triplet term on the greedy probabilities, minus eta * the policy entropy.
- "triplet": beta * the triplet term alone (the ablation; no sampling, no policy gradient).
- "official": the released code's loss (`official_loss`): lambda * mean(logpi) * stop_gradient(L_tri)
  + (1 - lambda) * L_tri on the greedy probabilities, lambda = 0.001.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from drlih_jax import errors
from drlih_jax import rl


OFFICIAL_LAMBDA = 0.001
OBJECTIVES = ("drlih", "triplet", "official")
REWARDS = ("batch", "triplet")


def check_config(config) -> None:
  """Checks `objective` and the `rl` block; raises ConfigError naming the key."""
  rl_config = config.rl
  if config.objective not in OBJECTIVES:
    raise errors.ConfigError(f"objective must be one of {OBJECTIVES}, got {config.objective!r}")
  if rl_config.reward not in REWARDS:
    raise errors.ConfigError(f"rl.reward must be one of {REWARDS}, got {rl_config.reward!r}")
  if config.objective == "drlih" and rl_config.rollouts < 2:
    raise errors.ConfigError(f"rl.rollouts={rl_config.rollouts}: the leave-one-out baseline needs at least 2")
  if config.objective == "triplet" and rl_config.beta <= 0:
    raise errors.ConfigError("objective 'triplet' trains the triplet term alone: rl.beta must be > 0")
  if rl_config.triplets_per_anchor < 1:
    raise errors.ConfigError(f"rl.triplets_per_anchor must be >= 1, got {rl_config.triplets_per_anchor!r}")
  if not 0.0 < rl_config.gamma <= 1.0:
    raise errors.ConfigError(f"rl.gamma={rl_config.gamma} must lie in (0, 1]")
  if not 0.0 < rl_config.alpha:
    raise errors.ConfigError(f"rl.alpha={rl_config.alpha} must be > 0 (the margin per bit)")
  for key in ("beta", "eta", "triplet_margin"):
    if rl_config[key] < 0:
      raise errors.ConfigError(f"rl.{key} must be >= 0, got {rl_config[key]!r}")
  if not 0.0 <= rl_config.get("official_lambda", OFFICIAL_LAMBDA) <= 1.0:
    raise errors.ConfigError(f"rl.official_lambda must lie in [0, 1], got {rl_config.official_lambda!r}")


def triplet_margin_loss(probs: jax.Array, anchors: jax.Array, positives: jax.Array, negatives: jax.Array,
                        weights: jax.Array, margin: float, abs_diff: bool = False) -> jax.Array:
  """Weighted mean of max(0, margin + ||P_a - P_p|| - ||P_a - P_n||) with an eps inside the norm.

  The norm is ||x - y + 1e-6||_2, as `torch.nn.functional.pairwise_distance` computes it. With
  `abs_diff=True` it is || |x - y| + 1e-6 ||_2, as the released code's own `function.pairwise_distance`
  (which its training script calls, not torch's) computes it; the "official" objective uses that.
  """
  eps = 1e-6
  pa, pp, pn = probs[anchors], probs[positives], probs[negatives]
  diff_p, diff_n = pa - pp, pa - pn
  if abs_diff:
    diff_p, diff_n = jnp.abs(diff_p), jnp.abs(diff_n)
  d_ap = jnp.sqrt(jnp.sum(jnp.square(diff_p + eps), axis=-1))
  d_an = jnp.sqrt(jnp.sum(jnp.square(diff_n + eps), axis=-1))
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
  log_probs = rl.step_log_probs(actions, logits, group)  # [M, B, num_groups]
  if rl_config.reward == "batch":
    rewards = rl.batch_rewards(actions, pos_mask, neg_mask, group, rl_config.alpha)  # [M, B, num_groups]
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
  # Rewards averaged over the valid (image or triplet, rollout) pairs only.
  valid = weight[..., -1]  # [M, B] or [M, N]
  num_valid = jnp.maximum(jnp.sum(valid), 1.0)
  metrics = {
      "mean_reward": jnp.sum(jnp.sum(rewards, axis=-1) * valid) / num_valid,
      "final_prefix_reward": jnp.sum(rewards[..., -1] * valid) / num_valid,
      "advantage_std": jnp.sqrt(jnp.sum(jnp.square(advantages) * weight) / jnp.maximum(jnp.sum(weight), 1.0)),
  }
  # Per action group (TensorBoard only): does each group's reward still carry a signal?
  per_group_reward = jnp.sum(rewards * weight, axis=(0, 1)) / num_valid  # [num_groups]
  per_group_advantage = jnp.sqrt(jnp.sum(jnp.square(advantages) * weight, axis=(0, 1)) / num_valid)
  for t in range(rewards.shape[-1]):
    metrics[f"group_reward/{t + 1}"] = per_group_reward[t]
    metrics[f"group_advantage_std/{t + 1}"] = per_group_advantage[t]
  return loss, metrics


def greedy_log_pi(logits: jax.Array) -> jax.Array:
  """The released code's logpi per row: -(1/K) sum_k log(p_k if p_k > 0.5 else 1 - p_k), p = sigmoid(z).

  Computed from the logits (p > 0.5 <=> z > 0) with log-sigmoid, which equals log(p) / log(1 - p) without
  their float32 rounding near p = 0 or 1; at p = 0.5 exactly it takes log(1 - p), as the released code.

  Args:
    logits: [N, K] float32.

  Returns:
    [N] float32.
  """
  greedy = logits > 0.0
  per_bit = jnp.where(greedy, jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits))
  return -jnp.mean(per_bit, axis=-1)


def official_loss(logits: jax.Array, anchors: jax.Array, positives: jax.Array, negatives: jax.Array,
                  weights: jax.Array, margin: float, lam: float = OFFICIAL_LAMBDA):
  """The released code's loss on the greedy rollout's logits [B, K] and the batch's triplets.

  Loss = lam * mean_a(logpi_a) * stop_gradient(L_tri) + (1 - lam) * L_tri, with L_tri the triplet margin
  loss on the bit probabilities (|x - y| + eps norm, see `triplet_margin_loss`) and logpi (`greedy_log_pi`)
  averaged over the triplets' anchors, both weighted by `weights` (invalid triplets count 0).

  Returns:
    (loss, {"triplet_loss": L_tri, "log_pi": mean logpi}).
  """
  probs = jax.nn.sigmoid(logits)
  triplet = triplet_margin_loss(probs, anchors, positives, negatives, weights, margin, abs_diff=True)
  w = weights.astype(jnp.float32)
  log_pi = jnp.sum(greedy_log_pi(logits)[anchors] * w) / jnp.maximum(jnp.sum(w), 1.0)
  loss = lam * log_pi * jax.lax.stop_gradient(triplet) + (1.0 - lam) * triplet
  return loss, {"triplet_loss": triplet, "log_pi": log_pi}


def objective_loss(actions: jax.Array, logits: jax.Array, *, pos_mask: jax.Array, neg_mask: jax.Array,
                   triplets, config):
  """The training loss of one encoded batch, for `config.objective` (ALGORITHM.md items 7-9).

  - "drlih": policy_gradient_loss(first M rollouts) + beta * L_tri(greedy) - eta * H(first M rollouts);
  - "triplet": beta * L_tri(greedy);
  - "official": `official_loss` on the greedy logits (beta and eta unused).
  L_tri is `triplet_margin_loss` on sigmoid(greedy logits) with margin `rl.triplet_margin`; H is the mean
  Bernoulli entropy per bit of the sampled rollouts' logits.

  Args:
    actions, logits: [R, B, K] from the agent, rollouts in `steps.rollout_noise` order: for "drlih" the
      R - 1 = rl.rollouts sampled rollouts, then the greedy one last; otherwise the greedy one alone.
    pos_mask, neg_mask: [B, B] relevance masks.
    triplets: (anchors, positives, negatives, valid) [N] of the batch.
    config: the run config (objective, hash.group, rl).

  Returns:
    (loss, metrics dict of scalars, "loss" included).
  """
  if config.objective not in OBJECTIVES:
    raise ValueError(f"objective must be one of {OBJECTIVES}, got {config.objective!r}")
  rl_config = config.rl
  greedy_probs = jax.nn.sigmoid(logits[-1])
  triplet_loss = triplet_margin_loss(greedy_probs, *triplets, margin=rl_config.triplet_margin)
  loss = rl_config.beta * triplet_loss
  metrics = {"triplet_loss": triplet_loss,
             "bit_balance": jnp.mean(jnp.abs(jnp.mean(actions[-1], axis=0) - 0.5))}
  if config.objective == "drlih":
    sampled_actions, sampled_logits = actions[:-1], logits[:-1]
    pg_loss, pg_metrics = policy_gradient_loss(
        sampled_actions, sampled_logits, pos_mask=pos_mask, neg_mask=neg_mask, triplets=triplets,
        rl_config=rl_config, group=config.hash.group)
    bit_entropy = rl.bernoulli_entropy(sampled_logits)  # [M, B, K]
    entropy = jnp.mean(bit_entropy)
    loss = loss + pg_loss - rl_config.eta * entropy
    metrics.update(pg_metrics, pg_loss=pg_loss, entropy=entropy)
    group = config.hash.group
    per_group_entropy = jnp.mean(bit_entropy.reshape(*bit_entropy.shape[:-1], -1, group), axis=(0, 1, 3))
    for t in range(per_group_entropy.shape[0]):
      metrics[f"group_entropy/{t + 1}"] = per_group_entropy[t]
  elif config.objective == "official":
    loss, official_metrics = official_loss(
        logits[-1], *triplets, margin=rl_config.triplet_margin,
        lam=rl_config.get("official_lambda", OFFICIAL_LAMBDA))
    metrics.update(official_metrics)
  metrics["loss"] = loss
  return loss, metrics
