"""The RNN hashing agent (ALGORITHM.md items 2-4), written with `flax.linen.scan`.

At step t the cell reads x_t = [W_v v ; e(a_{t-1})], the projected image feature and an embedding of
the previous action group (e(a) = W_e (2a - 1), whose input is all zeros at t = 1), updates its hidden state
h_t and emits the group's Bernoulli logits z_t = W_a h_t + c. The state s_t = (h_{t-1}, v) therefore sees the image and
every earlier decision. The initial hidden state is h_0 = tanh(W_0 v).

Actions are drawn by comparing a uniform noise tensor with the probabilities: a = 1[u < sigmoid(z)].
Feeding u ~ U[0, 1) samples the policy; feeding u = 0.5 gives the greedy code a = 1[z > 0] (the code
used for retrieval). Either way the chosen actions are fed back to the next step, so sampled rollouts
and greedy decoding run the same scanned function.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

CELLS = ("lstm", "gru", "rnn")


def _make_cell(kind: str, hidden: int, dtype) -> nn.RNNCellBase:
  if kind == "lstm":
    return nn.OptimizedLSTMCell(hidden, dtype=dtype, name="cell")
  if kind == "gru":
    return nn.GRUCell(hidden, dtype=dtype, name="cell")
  if kind == "rnn":
    return nn.SimpleCell(hidden, dtype=dtype, name="cell")
  raise ValueError(f"model.cell must be one of {CELLS}, got {kind!r}")


class AgentStep(nn.Module):
  """One decision: reads the previous action group, updates the cell, samples the next group."""

  cell: str
  hidden: int
  group: int
  action_embed: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, carry, noise_t, feature_input):
    cell_state, prev_actions = carry
    embedded = nn.Dense(self.action_embed, dtype=self.dtype, name="action_embed")(2.0 * prev_actions - 1.0)
    x = jnp.concatenate([feature_input, embedded.astype(feature_input.dtype)], axis=-1)
    cell_state, h = _make_cell(self.cell, self.hidden, self.dtype)(cell_state, x)
    logits = nn.Dense(self.group, dtype=jnp.float32, name="policy")(h).astype(jnp.float32)
    actions = (noise_t < jax.nn.sigmoid(logits)).astype(jnp.float32)
    return (cell_state, actions), (actions, logits)


class HashAgent(nn.Module):
  """Emits a K-bit code as K/g action groups.

  Attributes:
    bits: code length K.
    group: bits per step g (K must be divisible by g).
    hidden: cell width.
    cell: "lstm", "gru" or "rnn" (tanh).
    action_embed: width of the previous-action embedding.
    unroll: if True, a plain Python loop over steps instead of `nn.scan` (same parameters; for tests).
  """

  bits: int
  group: int
  hidden: int = 128
  cell: str = "lstm"
  action_embed: int = 32
  dtype: Any = jnp.float32
  unroll: bool = False

  @property
  def num_groups(self) -> int:
    return self.bits // self.group

  @nn.compact
  def __call__(self, features, noise):
    """Runs the agent.

    Args:
      features: [N, D] image features.
      noise: [num_groups, N, g] uniform noise (0.5 everywhere for greedy decoding).

    Returns:
      actions: [N, K] float {0, 1}; logits: [N, K] float32, bit k of step t at column t * g + k.
    """
    if self.bits % self.group:
      raise ValueError(f"hash.bits={self.bits} is not divisible by hash.group={self.group}")
    n = features.shape[0]
    features = features.astype(self.dtype)
    feature_input = nn.Dense(self.hidden, dtype=self.dtype, name="feature_proj")(features)
    h0 = jnp.tanh(nn.Dense(self.hidden, dtype=self.dtype, name="initial_state")(features))
    if self.cell == "lstm":
      cell_state = (jnp.zeros_like(h0), h0)
    else:
      cell_state = h0
    # At t = 1 there is no previous group: a = 1/2 makes the embedding input 2a - 1 all zeros.
    carry = (cell_state, jnp.full((n, self.group), 0.5, jnp.float32))
    step_kwargs = dict(cell=self.cell, hidden=self.hidden, group=self.group,
                       action_embed=self.action_embed, dtype=self.dtype)
    if self.unroll:
      step = AgentStep(**step_kwargs, name="step")
      outs = []
      for t in range(self.num_groups):
        carry, out = step(carry, noise[t], feature_input)
        outs.append(out)
      actions = jnp.stack([o[0] for o in outs])
      logits = jnp.stack([o[1] for o in outs])
    else:
      scanned = nn.scan(AgentStep, variable_broadcast="params", split_rngs={"params": False},
                        in_axes=(0, nn.broadcast), out_axes=0, length=self.num_groups)
      _, (actions, logits) = scanned(**step_kwargs, name="step")(carry, noise, feature_input)
    # [num_groups, N, g] -> [N, num_groups * g]
    to_codes = lambda x: jnp.transpose(x, (1, 0, 2)).reshape(n, self.bits)
    return to_codes(actions), to_codes(logits)
