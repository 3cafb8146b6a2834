"""VGG-19 with batch norm and the DRLIH authors' 4096-d feature head, in Flax linen.

The convolutional trunk is torchvision's ``vgg19_bn`` (configuration "E"): sixteen
3x3 convolutions (padding 1), each followed by BatchNorm and ReLU, with a 2x2/2 max
pool after each of the five stages. The trunk output is average-pooled to 7x7 with
``torch.nn.AdaptiveAvgPool2d`` semantics, flattened and sent through the authors'
head: ``Linear(25088, 4096) -> ReLU -> Dropout(0.5) -> Linear(4096, 4096)``. The
output of the last Linear (no ReLU) is the feature ``v``.

Layout differences from torch (the weight loader in ``drlih_jax.models.weights``
converts between them):
  * Inputs are NHWC and convolution kernels HWIO (torch: NCHW, OIHW).
  * The flattened 7x7x512 map is in (H, W, C) order (torch: (C, H, W)), so ``fc6``'s
    kernel rows are permuted accordingly.

Batch norm under data parallelism:
  * Under ``jax.jit`` with the batch sharded by a ``NamedSharding`` over a device
    mesh, the module sees the global batch: the mean and variance that BatchNorm
    computes are already the global-batch statistics (XLA inserts the
    cross-device reductions). Leave ``axis_name=None``.
  * Under ``shard_map`` or ``pmap`` (or ``vmap`` with a named axis) each program
    sees only its local shard. Set ``axis_name`` to the mapped axis name so that
    ``nn.BatchNorm`` averages the statistics over it (``lax.pmean``); otherwise
    every device normalises with its own per-shard statistics.

Running statistics: ``momentum=0.9`` here equals torch's ``momentum=0.1``
(``ra = 0.9 * ra + 0.1 * batch``). One deliberate difference remains: torch updates
``running_var`` with the unbiased batch variance (factor n / (n - 1)), Flax with
the biased one; the normalisation itself uses the biased variance in both.
"""

from typing import Any, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# torchvision's cfg "E": channel counts of the 16 convolutions, "M" = max pool.
VGG19_CFG: Tuple[Union[int, str], ...] = (
    64, 64, "M",
    128, 128, "M",
    256, 256, 256, 256, "M",
    512, 512, 512, 512, "M",
    512, 512, 512, 512, "M",
)
POOL_OUTPUT_SIZE = 7
NUM_CONVS = sum(1 for v in VGG19_CFG if v != "M")

# torchvision initialisation: kaiming_normal_(fan_out, relu) for convs (bias 0),
# normal(0, 0.01) for Linear layers (bias 0). Not truncated, like torch.
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_DENSE_INIT = nn.initializers.normal(stddev=0.01)


def _adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
  """Averaging matrix of torch's AdaptiveAvgPool along one axis.

  Output cell ``i`` averages input cells ``[floor(i * in / out), ceil((i + 1) * in
  / out))``; when ``in_size < out_size`` cells are replicated (e.g. 1 -> 7 copies).

  Args:
    in_size: Input length (> 0).
    out_size: Output length (> 0).

  Returns:
    A float32 array of shape ``(out_size, in_size)`` whose rows sum to one.
  """
  if in_size <= 0 or out_size <= 0:
    raise ValueError(
        f"adaptive average pool needs positive sizes, got in_size={in_size}, "
        f"out_size={out_size}")
  mat = np.zeros((out_size, in_size), np.float32)
  for i in range(out_size):
    start = (i * in_size) // out_size
    end = -((-(i + 1) * in_size) // out_size)  # ceil((i + 1) * in / out)
    mat[i, start:end] = 1.0 / (end - start)
  return mat


def adaptive_avg_pool2d(x: jnp.ndarray, output_size: int = POOL_OUTPUT_SIZE) -> jnp.ndarray:
  """torch.nn.AdaptiveAvgPool2d on an NHWC array (exact, any input size).

  Args:
    x: Array of shape ``(N, H, W, C)``.
    output_size: Side of the square output map.

  Returns:
    Array of shape ``(N, output_size, output_size, C)`` and the dtype of ``x``.

  Raises:
    ValueError: If ``x`` is not 4-D or has an empty spatial axis.
  """
  if x.ndim != 4:
    raise ValueError(f"adaptive_avg_pool2d expects NHWC (4-D) input, got shape {x.shape}")
  _, h, w, _ = x.shape
  if h == output_size and w == output_size:
    return x
  ph = jnp.asarray(_adaptive_pool_matrix(h, output_size), x.dtype)
  pw = jnp.asarray(_adaptive_pool_matrix(w, output_size), x.dtype)
  return jnp.einsum("ih,jw,nhwc->nijc", ph, pw, x)


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2/stride-2 VALID max-pool as a reshape and a max (same values as `nn.max_pool`).

  On GPU the gradient of this form is a fused elementwise kernel, while `nn.max_pool`'s
  (select-and-scatter) was measured 14% slower for the whole VGG-19-BN training step on an H200.
  Ties inside a window get the gradient split differently, but after ReLU ties are zeros, whose
  gradient the ReLU blocks either way.
  """
  n, h, w, c = x.shape
  x = x[:, :h - h % 2, :w - w % 2, :]
  return jnp.max(x.reshape(n, h // 2, 2, w // 2, 2, c), axis=(2, 4))


class VGG19BN(nn.Module):
  """VGG-19-BN trunk plus the DRLIH fc6/fc7 head; returns the fc7 feature.

  Attributes:
    dtype: Compute dtype (e.g. ``jnp.bfloat16``); parameters stay ``param_dtype``.
      The returned feature has this dtype.
    param_dtype: Parameter dtype.
    dropout_rate: Dropout between fc6 and fc7 (active only when ``train``; needs
      a ``'dropout'`` RNG then).
    feature_dim: Width of fc6 and fc7 (4096 for the pretrained weights).
    axis_name: Mapped axis over which BatchNorm averages batch statistics under
      ``shard_map``/``pmap``/named ``vmap``; ``None`` under plain ``jit`` (see the
      module docstring).
  """
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  dropout_rate: float = 0.5
  feature_dim: int = 4096
  axis_name: Any = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    """Computes the feature.

    Args:
      x: Float images, NHWC, shape ``(N, H, W, 3)``; H and W at least 32.
      train: Batch statistics and dropout when True; running statistics and no
        dropout when False.

    Returns:
      The fc7 output, shape ``(N, feature_dim)``.
    """
    if x.ndim != 4:
      raise ValueError(f"VGG19BN expects NHWC input (4-D), got shape {x.shape}")
    if x.shape[1] < 32 or x.shape[2] < 32:
      raise ValueError(
          f"VGG19BN needs H, W >= 32 (five 2x2 pools), got input shape {x.shape}")
    conv_idx = 0
    for v in VGG19_CFG:
      if v == "M":
        x = max_pool_2x2(x)
        continue
      x = nn.Conv(
          v, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
          param_dtype=self.param_dtype, kernel_init=_CONV_INIT,
          bias_init=nn.initializers.zeros, name=f"conv{conv_idx}")(x)
      x = nn.BatchNorm(
          use_running_average=not train, momentum=0.9, epsilon=1e-5,
          dtype=self.dtype, param_dtype=self.param_dtype,
          axis_name=self.axis_name, name=f"bn{conv_idx}")(x)
      x = nn.relu(x)
      conv_idx += 1
    x = adaptive_avg_pool2d(x, POOL_OUTPUT_SIZE)
    x = x.reshape((x.shape[0], -1))  # (H, W, C) order.
    x = nn.Dense(
        self.feature_dim, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=_DENSE_INIT, bias_init=nn.initializers.zeros, name="fc6")(x)
    x = nn.relu(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(
        self.feature_dim, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=_DENSE_INIT, bias_init=nn.initializers.zeros, name="fc7")(x)
    return x


def _as_hw(image_size: Union[int, Sequence[int]]) -> Tuple[int, int]:
  if isinstance(image_size, (int, np.integer)):
    return int(image_size), int(image_size)
  h, w = image_size
  return int(h), int(w)


def vgg19_bn_flops(image_size: Union[int, Sequence[int]] = 224,
                   feature_dim: int = 4096) -> int:
  """Forward FLOPs of one image through ``VGG19BN`` (2 x multiply-adds).

  Counts the sixteen convolutions and fc6/fc7 (what ``VGG19BN`` computes; the
  1000-way ImageNet layer is not part of it). BatchNorm, ReLU, pooling and bias
  adds are not counted (well under 0.1% at 224). At 224x224 this is about 39.2e9
  FLOPs, i.e. 19.6e9 multiply-adds (torchvision's "19.63 GFLOPS" counts
  multiply-adds). Multiply by 3 for a training step (forward + backward).

  Args:
    image_size: Input side, or ``(H, W)``.
    feature_dim: Width of fc6/fc7.

  Returns:
    FLOPs per image, as an int.
  """
  h, w = _as_hw(image_size)
  macs = 0
  cin = 3
  for v in VGG19_CFG:
    if v == "M":
      h, w = h // 2, w // 2
      continue
    macs += h * w * 9 * cin * v
    cin = v
  pooled = POOL_OUTPUT_SIZE * POOL_OUTPUT_SIZE * cin
  macs += pooled * feature_dim + feature_dim * feature_dim
  return 2 * macs
