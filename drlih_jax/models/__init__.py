"""Model construction from the `model` and `hash` config blocks."""

from __future__ import annotations

import jax.numpy as jnp

from drlih_jax.models import agent as agent_lib
from drlih_jax.models import backbones
from drlih_jax.models import hashing

BACKBONES = ("small_cnn", "resnet", "vgg19_bn")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(config):
  """The compute dtype named by `model.dtype`."""
  if config.model.dtype not in DTYPES:
    raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {config.model.dtype!r}")
  return DTYPES[config.model.dtype]


def create_backbone(config, axis_name=None):
  """The feature extractor named by `model.backbone`."""
  dtype = compute_dtype(config)
  name = config.model.backbone
  if name == "small_cnn":
    return backbones.SmallCNN(widths=tuple(config.model.widths), feature_dim=config.model.feature_dim,
                              dtype=dtype)
  if name == "resnet":
    return backbones.ResNet(widths=tuple(config.model.widths),
                            blocks_per_stage=config.model.get("blocks_per_stage", 2),
                            feature_dim=config.model.feature_dim, dtype=dtype, axis_name=axis_name)
  if name == "vgg19_bn":
    from drlih_jax.models import vgg  # pylint: disable=g-import-not-at-top
    return vgg.VGG19BN(dtype=dtype, feature_dim=config.model.feature_dim, axis_name=axis_name)
  raise ValueError(f"model.backbone must be one of {BACKBONES}, got {name!r}")


def create_model(config, axis_name=None) -> hashing.HashingModel:
  """The backbone + agent network for `config`."""
  agent = agent_lib.HashAgent(bits=config.hash.bits, group=config.hash.group, hidden=config.model.hidden,
                              cell=config.model.cell, action_embed=config.model.action_embed,
                              dtype=compute_dtype(config))
  return hashing.HashingModel(backbone=create_backbone(config, axis_name), agent=agent)
