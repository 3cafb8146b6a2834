"""The released code's agent (ALGORITHM.md, "What the authors' released code does", and item 9).

A plain tanh RNN whose hidden state is the image feature itself (hidden = D, 4096 with VGG-19-BN):

    h_0 = v,    h_t = tanh(W_ih h_{t-1} + b_ih + W_hh h_{t-1} + b_hh),    p_t = sigmoid(w . h_t + c),

one bit per step (hash.group = 1). This is exactly what `torch.nn.RNNCell(D, D)` computes when it is
called as `cell(h, h)`: the cell's input is the previous hidden state. The two weight matrices multiply
the same vector, so the forward pass runs one matrix product with their sum, (W_ih + W_hh) h_{t-1},
formed once per call outside the scanned loop: the same function and the same gradients (each matrix
receives the gradient of the sum) at half the matrix-product FLOPs.

The recurrence (`tanh_recurrence`, a `lax.scan`) has a hand-written VJP: a reverse scan computes the
pre-activation gradients delta_t, then dW = sum_t h_{t-1}^T delta_t is ONE matrix product over all steps
([D, T*N] x [T*N, D], float32 accumulation) instead of T small products accumulated step by step; with
bf16 compute every matrix product reads bf16 operands. The actor is applied to all hidden states at once
after the scan. `unroll=True` runs the same maths as a plain Python loop differentiated by JAX (the
reference the custom VJP is tested against).

Initialisation, as the released code: the RNN weights keep torch's RNNCell default
U(-1/sqrt(D), 1/sqrt(D)), both biases are 0; the actor weight w is drawn N(0, 1) and rescaled so that
each output unit's weight vector has L2 norm 0.01 (the "normalized columns" initialiser of A3C code,
`w *= std / ||w||` over the input axis; with one output unit ||w|| = 0.01 exactly), the actor bias is 0.

Actions are 1[u < p] for a noise tensor u, as `HashAgent`; the released code never samples and only
uses u = 0.5, i.e. the greedy bit 1[p > 0.5]. Actions are not fed back (the released agent does not see
its past bits except through h). Parameter layout: kernels are [in, out] (torch's weight transposed).

Dtypes: with `dtype = bfloat16` the recurrent matrix product runs in bf16 with float32 accumulation;
the hidden state, tanh, the actor logits and everything after stay float32; parameters are float32.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTOR_STD = 0.01


def torch_rnn_uniform(hidden: int):
  """torch.nn.RNNCell's default weight initialiser: U(-1/sqrt(hidden), 1/sqrt(hidden))."""
  bound = 1.0 / float(hidden) ** 0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def normalized_columns(std: float = ACTOR_STD):
  """N(0, 1) kernel [in, out], each output unit's column rescaled to L2 norm `std`."""

  def init(key, shape, dtype=jnp.float32):
    w = jax.random.normal(key, shape, jnp.float32)
    w = w * (std / jnp.sqrt(jnp.sum(jnp.square(w), axis=0, keepdims=True)))
    return w.astype(dtype)

  return init


class OfficialRNNParams(nn.Module):
  """Holds the torch-RNNCell parameters (W_ih, b_ih, W_hh, b_hh) of a D -> D cell."""

  features: int

  @nn.compact
  def __call__(self):
    d = self.features
    uniform = torch_rnn_uniform(d)
    return (self.param("ih_kernel", uniform, (d, d)), self.param("ih_bias", nn.initializers.zeros, (d,)),
            self.param("hh_kernel", uniform, (d, d)), self.param("hh_bias", nn.initializers.zeros, (d,)))


class OfficialActorParams(nn.Module):
  """Holds the actor's w [D, 1] (normalised columns, norm 0.01) and c [1] (zero)."""

  features: int

  @nn.compact
  def __call__(self):
    return (self.param("kernel", normalized_columns(ACTOR_STD), (self.features, 1)),
            self.param("bias", nn.initializers.zeros, (1,)))


def _step(h, kernel, bias, dtype):
  """h_t = tanh(h_{t-1} W + b), the product in `dtype` with float32 accumulation and output."""
  return jnp.tanh(jnp.dot(h.astype(dtype), kernel.astype(dtype), preferred_element_type=jnp.float32) + bias)


def _recurrence_forward(h0, kernel, bias, steps, dtype):
  kernel = kernel.astype(dtype)

  def body(h, _):
    h = _step(h, kernel, bias, dtype)
    return h, h

  _, hs = jax.lax.scan(body, h0, None, length=steps)
  return hs


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def tanh_recurrence(h0, kernel, bias, steps: int, dtype):
  """Hidden states h_1..h_T of h_t = tanh(h_{t-1} W + b): [T, N, D] float32.

  Args:
    h0: [N, D] float32.
    kernel: [D, D] (W, [in, out]); bias: [D].
    steps: T.
    dtype: compute dtype of the matrix products (float32 accumulation).
  """
  return _recurrence_forward(h0, kernel, bias, steps, dtype)


def _recurrence_fwd(h0, kernel, bias, steps, dtype):
  hs = _recurrence_forward(h0, kernel, bias, steps, dtype)
  return hs, (h0, kernel, hs)


def _recurrence_bwd(steps, dtype, residuals, g_hs):
  del steps
  h0, kernel, hs = residuals
  kernel_t = kernel.astype(dtype).T

  def back(g_next, inputs):  # g_next = dL/dh_t through h_{t+1}; runs t = T..1.
    g_out, h = inputs
    delta = (g_next + g_out) * (1.0 - jnp.square(h))  # dL/d(pre_t), float32
    return jnp.dot(delta.astype(dtype), kernel_t, preferred_element_type=jnp.float32), delta

  g_h0, deltas = jax.lax.scan(back, jnp.zeros_like(h0), (g_hs.astype(jnp.float32), hs), reverse=True)
  t, n, d = hs.shape
  h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0).reshape(t * n, d)
  flat_deltas = deltas.reshape(t * n, d)
  g_kernel = jnp.dot(h_prev.astype(dtype).T, flat_deltas.astype(dtype), preferred_element_type=jnp.float32)
  g_bias = jnp.sum(flat_deltas, axis=0)
  return g_h0.astype(h0.dtype), g_kernel.astype(kernel.dtype), g_bias


tanh_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


class OfficialAgent(nn.Module):
  """The released code's agent, with `HashAgent`'s call signature.

  Attributes:
    bits: code length K (= the number of steps; one bit per step).
    group: must be 1 (kept so the model factory can check `hash.group`).
    dtype: compute dtype of the recurrent matrix product.
    unroll: if True, a plain Python loop differentiated by JAX instead of `tanh_recurrence`'s scan and
      hand-written VJP (same parameters and maths; the reference in tests).
  """

  bits: int
  group: int = 1
  dtype: Any = jnp.float32
  unroll: bool = False

  @nn.compact
  def __call__(self, features, noise):
    """Runs the agent.

    Args:
      features: [N, D] image features (h_0; the hidden width is D).
      noise: [K, N, 1] uniform noise (0.5 everywhere for the greedy code).

    Returns:
      actions: [N, K] float {0, 1}; logits: [N, K] float32.
    """
    if self.group != 1:
      raise ValueError(f"objective 'official' emits one bit per step: hash.group must be 1, got {self.group}")
    if noise.shape[0] != self.bits or noise.shape[-1] != 1:
      raise ValueError(f"noise must be [hash.bits={self.bits}, N, 1], got {noise.shape}")
    d = features.shape[-1]
    ih_kernel, ih_bias, hh_kernel, hh_bias = OfficialRNNParams(d, name="cell")()
    actor_kernel, actor_bias = OfficialActorParams(d, name="actor")()
    # x_t = h_{t-1}: W_ih x + W_hh h = (W_ih + W_hh) h, formed once (see the module docstring).
    kernel = ih_kernel + hh_kernel
    bias = ih_bias + hh_bias
    h0 = features.astype(jnp.float32)
    if self.unroll:
      h, hs = h0, []
      for _ in range(self.bits):
        h = _step(h, kernel, bias, self.dtype)
        hs.append(h)
      hs = jnp.stack(hs)
    else:
      hs = tanh_recurrence(h0, kernel, bias, self.bits, self.dtype)  # [K, N, D]
    # The actor on every step's hidden state at once, in float32.
    logits = jnp.einsum("tnd,d->nt", hs, actor_kernel[:, 0], precision=jax.lax.Precision.HIGHEST) + actor_bias
    actions = (jnp.transpose(noise[..., 0]) < jax.nn.sigmoid(logits)).astype(jnp.float32)
    return actions, logits
