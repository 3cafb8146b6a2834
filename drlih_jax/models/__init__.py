"""Model construction from the `model` and `hash` config blocks."""

from __future__ import annotations

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np

from drlih_jax import errors
from drlih_jax.models import agent as agent_lib
from drlih_jax.models import backbones
from drlih_jax.models import hashing
from drlih_jax.models import official
from drlih_jax.models import vgg
from drlih_jax.models import weights

BACKBONES = ("small_cnn", "resnet", "vgg19_bn")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _positive_int(key: str, value) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise errors.ConfigError(f"{key} must be a positive int, got {value!r}")


def check_config(config, training: bool = True) -> None:
  """Checks the `model` and `hash` blocks (and `objective`'s demand on them); raises ConfigError naming the key.

  `model.pretrained` (the file and the safetensors package) is checked only for training: evaluation never
  reads it.
  """
  model, hash_config = config.model, config.hash
  if model.backbone not in BACKBONES:
    raise errors.ConfigError(f"model.backbone must be one of {BACKBONES}, got {model.backbone!r}")
  if model.dtype not in DTYPES:
    raise errors.ConfigError(f"model.dtype must be one of {sorted(DTYPES)}, got {model.dtype!r}")
  if model.cell not in agent_lib.CELLS:
    raise errors.ConfigError(f"model.cell must be one of {agent_lib.CELLS}, got {model.cell!r}")
  widths = tuple(model.widths)
  if not widths:
    raise errors.ConfigError("model.widths must list at least one width")
  for i, width in enumerate(widths):
    _positive_int(f"model.widths[{i}]", width)
  for key in ("feature_dim", "hidden", "action_embed"):
    _positive_int(f"model.{key}", model[key])
  if "blocks_per_stage" in model:
    _positive_int("model.blocks_per_stage", model.blocks_per_stage)
  bits, group = hash_config.bits, hash_config.group
  _positive_int("hash.bits", bits)
  _positive_int("hash.group", group)
  if bits % group:
    raise errors.ConfigError(f"hash.bits={bits} is not divisible by hash.group={group}: the agent emits "
                             "hash.bits / hash.group groups of hash.group bits")
  if config.objective == "official" and group != 1:
    raise errors.ConfigError(f"objective 'official' emits one bit per step: hash.group must be 1, got {group}")
  pretrained = model.get("pretrained", "") or ""
  if pretrained and training:
    if model.backbone != "vgg19_bn":
      raise errors.ConfigError(f"model.pretrained={pretrained!r} holds vgg19_bn weights but "
                               f"model.backbone={model.backbone!r}")
    errors.require_module("safetensors", "model.pretrained", "pip install 'drlih_jax[weights]'")
    if not epath.Path(pretrained).is_file():
      raise errors.ConfigError(f"model.pretrained={pretrained!r}: no such file")


def compute_dtype(config):
  """The compute dtype named by `model.dtype` (checked by `check_config`)."""
  return DTYPES[config.model.dtype]


def create_backbone(config):
  """The feature extractor named by `model.backbone`."""
  dtype = compute_dtype(config)
  name = config.model.backbone
  if name == "small_cnn":
    return backbones.SmallCNN(widths=tuple(config.model.widths), feature_dim=config.model.feature_dim,
                              dtype=dtype)
  if name == "resnet":
    return backbones.ResNet(widths=tuple(config.model.widths),
                            blocks_per_stage=config.model.get("blocks_per_stage", 2),
                            feature_dim=config.model.feature_dim, dtype=dtype)
  return vgg.VGG19BN(dtype=dtype, feature_dim=config.model.feature_dim)


def create_agent(config):
  """The agent: the released code's tanh RNN for objective "official", else `HashAgent`."""
  if config.objective == "official":
    return official.OfficialAgent(bits=config.hash.bits, group=1, dtype=compute_dtype(config))
  return agent_lib.HashAgent(bits=config.hash.bits, group=config.hash.group, hidden=config.model.hidden,
                              cell=config.model.cell, action_embed=config.model.action_embed,
                              dtype=compute_dtype(config))


def create_model(config) -> hashing.HashingModel:
  """The backbone + agent network for `config`."""
  return hashing.HashingModel(backbone=create_backbone(config), agent=create_agent(config))


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
    raise errors.ConfigError(f"model.pretrained={path!r}: the backbone {what} do not match the model "
                     f"(missing {missing}, unexpected {extra}, shape mismatches {bad}); check "
                     "model.backbone and model.feature_dim")
  return jax.tree.map(lambda cur, new: jnp.asarray(new, dtype=cur.dtype), current, loaded)


def load_pretrained(config, params, batch_stats):
  """Replaces the backbone's parameters and batch statistics with `model.pretrained`'s, if set.

  Args:
    config: the run config; `model.pretrained` is a torchvision/timm `vgg19_bn` safetensors file (a local
      path or a gs:// URL)
      ("" or absent: nothing is loaded), read with `models.weights.load_vgg19_bn_torchvision`.
    params, batch_stats: the `HashingModel` trees (`{"backbone": ..., "agent": ...}` and
      `{"backbone": ...}`); leaves may be arrays or `jax.ShapeDtypeStruct`s.

  Returns:
    (params, batch_stats): new top-level dicts whose "backbone" entries hold the file's values (as arrays
    of the current leaves' dtypes, on the default device); every other entry is passed through as is.
    The optimiser state does not depend on parameter values for SGD/AdamW, so it can be made before or
    after.

  Raises:
    ConfigError: the file does not match the model (naming the keys). `check_config` has checked the
      backbone, the file's existence and safetensors.
  """
  path = config.model.get("pretrained", "") or ""
  if not path:
    return params, batch_stats
  loaded = weights.load_vgg19_bn_torchvision(path, feature_dim=config.model.feature_dim)
  new_params = dict(params)
  new_params["backbone"] = _replace_subtree(params["backbone"], loaded["params"], "parameters", path)
  new_stats = dict(batch_stats)
  new_stats["backbone"] = _replace_subtree(batch_stats["backbone"], loaded["batch_stats"],
                                           "batch statistics", path)
  return new_params, new_stats
