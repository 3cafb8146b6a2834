"""Image backbones for small images: the feature extractor f_theta of ALGORITHM.md item 1.

`SmallCNN` (one 3x3 conv + ReLU + 2x2 max-pool per width, then a dense feature) suits the 8x8 digits;
`ResNet` (pre-activation basic blocks with batch norm) trains CIFAR-10 from scratch at 32x32. Both take
float NHWC images and return a [batch, feature_dim] feature. Paper-scale VGG-19-BN lives in `vgg.py`.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp


class SmallCNN(nn.Module):
  """A few conv/pool stages and a dense layer; no normalisation."""

  widths: Sequence[int] = (32, 64)
  feature_dim: int = 128
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # No batch statistics or dropout.
    x = x.astype(self.dtype)
    for width in self.widths:
      x = nn.Conv(width, (3, 3), dtype=self.dtype)(x)
      x = nn.relu(x)
      if min(x.shape[1:3]) >= 2:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(self.feature_dim, dtype=self.dtype)(x)


class _BasicBlock(nn.Module):
  """Pre-activation residual block: BN-ReLU-conv-BN-ReLU-conv, projection shortcut when shapes change."""

  width: int
  stride: int
  dtype: Any
  axis_name: str | None

  @nn.compact
  def __call__(self, x, train: bool):
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                dtype=self.dtype, axis_name=self.axis_name)
    y = nn.relu(norm()(x))
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.width:
      shortcut = nn.Conv(self.width, (1, 1), strides=self.stride, use_bias=False, dtype=self.dtype)(y)
    y = nn.Conv(self.width, (3, 3), strides=self.stride, use_bias=False, dtype=self.dtype)(y)
    y = nn.relu(norm()(y))
    y = nn.Conv(self.width, (3, 3), use_bias=False, dtype=self.dtype)(y)
    return shortcut + y


class ResNet(nn.Module):
  """A pre-activation ResNet for 32x32 images: one stage per width, `blocks_per_stage` blocks each.

  Batch norm: under `jax.jit` with a batch sharded over a mesh the statistics are those of the global
  batch automatically; under `shard_map` pass `axis_name` so they are averaged across devices.
  """

  widths: Sequence[int] = (64, 128, 256, 512)
  blocks_per_stage: int = 2
  feature_dim: int = 512
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(self.widths[0], (3, 3), use_bias=False, dtype=self.dtype)(x.astype(self.dtype))
    for stage, width in enumerate(self.widths):
      for block in range(self.blocks_per_stage):
        stride = 2 if stage > 0 and block == 0 else 1
        x = _BasicBlock(width, stride, self.dtype, self.axis_name)(x, train)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                             dtype=self.dtype, axis_name=self.axis_name)(x))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.feature_dim, dtype=self.dtype)(x)
