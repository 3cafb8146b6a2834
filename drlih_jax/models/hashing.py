"""The full hashing network: a backbone that encodes each image once, and the agent that emits its bits."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from drlih_jax.models import agent as agent_lib


class HashingModel(nn.Module):
  """Backbone f_theta followed by the RNN agent, run for R rollouts of every image.

  Attributes:
    backbone: a module mapping float NHWC images (and `train`) to [B, D] features.
    agent: the `HashAgent`.
  """

  backbone: nn.Module
  agent: agent_lib.HashAgent

  def __call__(self, images, noise, train: bool = False):
    """Encodes a batch and runs the agent once per rollout.

    Args:
      images: [B, H, W, C] float, normalised.
      noise: [R, num_groups, B, g] uniform noise per rollout (0.5 for a greedy rollout).
      train: batch-norm/dropout mode of the backbone.

    Returns:
      actions, logits: [R, B, K].
    """
    features = self.backbone(images, train=train)
    num_rollouts, num_groups, batch, group = noise.shape
    tiled = jnp.tile(features, (num_rollouts, 1))  # Rollout-major: row r * B + i.
    flat_noise = jnp.transpose(noise, (1, 0, 2, 3)).reshape(num_groups, num_rollouts * batch, group)
    actions, logits = self.agent(tiled, flat_noise)
    bits = actions.shape[-1]
    return actions.reshape(num_rollouts, batch, bits), logits.reshape(num_rollouts, batch, bits)

  def greedy(self, images, train: bool = False):
    """The greedy rollout (a = 1[p > 0.5], fed back): the evaluation code of each image.

    Args:
      images: [B, H, W, C] float, normalised.
      train: batch-norm/dropout mode of the backbone (False: inference).

    Returns:
      actions [B, K] float {0, 1} and logits [B, K].
    """
    features = self.backbone(images, train=train)
    num_groups = self.agent.bits // self.agent.group
    noise = jnp.full((num_groups, features.shape[0], self.agent.group), 0.5, jnp.float32)
    return self.agent(features, noise)

  def features(self, images):
    """The backbone feature v of each image (inference mode): [B, D]."""
    return self.backbone(images, train=False)

