"""Model construction from the `model` and `hash` config blocks."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

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


def create_agent(config):
  """The agent: the released code's tanh RNN for objective "official", else `HashAgent`."""
  if config.objective == "official":
    from drlih_jax.models import official  # pylint: disable=g-import-not-at-top
    if config.hash.group != 1:
      raise ValueError(f"objective 'official' emits one bit per step: hash.group must be 1, got "
                       f"{config.hash.group}")
    return official.OfficialAgent(bits=config.hash.bits, group=1, dtype=compute_dtype(config))
  return agent_lib.HashAgent(bits=config.hash.bits, group=config.hash.group, hidden=config.model.hidden,
                              cell=config.model.cell, action_embed=config.model.action_embed,
                              dtype=compute_dtype(config))


def create_model(config, axis_name=None) -> hashing.HashingModel:
  """The backbone + agent network for `config`."""
  return hashing.HashingModel(backbone=create_backbone(config, axis_name), agent=create_agent(config))


def _shapes(tree) -> dict:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(np.shape(x)) for path, x in flat}


def _replace_subtree(current, loaded, what: str, path: str):
  """`loaded` cast to `current`'s leaf dtypes, after checking both have the same leaves and shapes."""
  want, have = _shapes(current), _shapes(loaded)
  if want != have:
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    bad = sorted(f"{k}: model {want[k]}, file {have[k]}" for k in set(want) & set(have) if want[k] != have[k])
    raise ValueError(f"model.pretrained={path!r}: the backbone {what} do not match the model "
                     f"(missing {missing}, unexpected {extra}, shape mismatches {bad}); check "
                     "model.backbone and model.feature_dim")
  return jax.tree.map(lambda cur, new: jnp.asarray(new, dtype=cur.dtype), current, loaded)


def load_pretrained(config, params, batch_stats):
  """Replaces the backbone's parameters and batch statistics with `model.pretrained`'s, if set.

  Args:
    config: the run config; `model.pretrained` is a torchvision/timm `vgg19_bn` safetensors file
      ("" or absent: nothing is loaded), read with `models.weights.load_vgg19_bn_torchvision`.
    params, batch_stats: the `HashingModel` trees (`{"backbone": ..., "agent": ...}` and
      `{"backbone": ...}`); leaves may be arrays or `jax.ShapeDtypeStruct`s.

  Returns:
    (params, batch_stats): new top-level dicts whose "backbone" entries hold the file's values (as arrays
    of the current leaves' dtypes, on the default device); every other entry is passed through as is.
    The optimiser state does not depend on parameter values for SGD/AdamW, so it can be made before or
    after.

  Raises:
    ValueError: the backbone is not vgg19_bn, or the file does not match the model (naming the keys).
    FileNotFoundError: the file does not exist (naming `model.pretrained`).
  """
  path = config.model.get("pretrained", "") or ""
  if not path:
    return params, batch_stats
  if config.model.backbone != "vgg19_bn":
    raise ValueError(f"model.pretrained is set ({path!r}) but model.backbone={config.model.backbone!r}: "
                     "only vgg19_bn weights can be loaded")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"model.pretrained={path!r}: no such file")
  from drlih_jax.models import weights  # pylint: disable=g-import-not-at-top
  loaded = weights.load_vgg19_bn_torchvision(path, feature_dim=config.model.feature_dim)
  new_params = dict(params)
  new_params["backbone"] = _replace_subtree(params["backbone"], loaded["params"], "parameters", path)
  new_stats = dict(batch_stats)
  new_stats["backbone"] = _replace_subtree(batch_stats["backbone"], loaded["batch_stats"],
                                           "batch statistics", path)
  return new_params, new_stats
