"""Checks a config before anything runs, so a bad value fails at once with the key that is wrong."""

from __future__ import annotations

from drlih_jax import evaluate
from drlih_jax import models

OBJECTIVES = ("drlih", "triplet", "official")
REWARDS = ("batch", "triplet")

# Keys whose change between a checkpointed run and its resume changes parameter shapes or data splits.
RESUME_KEYS = ("objective", "hash.bits", "hash.group", "model.backbone", "model.widths", "model.feature_dim",
               "model.cell", "model.hidden", "model.action_embed", "model.blocks_per_stage", "dataset.name",
               "dataset.source", "dataset.split_seed", "dataset.num_queries", "dataset.image_size",
               "optim.name")


def validate(config) -> None:
  """Raises ValueError naming the offending key."""
  if config.objective not in OBJECTIVES:
    raise ValueError(f"objective must be one of {OBJECTIVES}, got {config.objective!r}")
  bits, group = config.hash.bits, config.hash.group
  if bits < 1 or group < 1:
    raise ValueError(f"hash.bits={bits} and hash.group={group} must be positive")
  if bits % group:
    raise ValueError(f"hash.bits={bits} is not divisible by hash.group={group}: the agent emits "
                     "hash.bits / hash.group groups of hash.group bits")
  if config.objective == "official" and group != 1:
    raise ValueError(f"objective 'official' emits one bit per step: hash.group must be 1, got {group}")
  if config.rl.reward not in REWARDS:
    raise ValueError(f"rl.reward must be one of {REWARDS}, got {config.rl.reward!r}")
  if config.objective == "drlih" and config.rl.rollouts < 2:
    raise ValueError(f"rl.rollouts={config.rl.rollouts}: the leave-one-out baseline needs at least 2")
  if config.objective == "triplet" and config.rl.beta <= 0:
    raise ValueError("objective 'triplet' trains the triplet term alone: rl.beta must be > 0")
  if config.rl.triplets_per_anchor < 1:
    raise ValueError("rl.triplets_per_anchor must be >= 1")
  if not 0.0 < config.rl.gamma <= 1.0:
    raise ValueError(f"rl.gamma={config.rl.gamma} must lie in (0, 1]")
  order = config.train.get("eval_database_order", "shuffled")
  if order not in evaluate.DATABASE_ORDERS:
    raise ValueError(f"train.eval_database_order must be one of {evaluate.DATABASE_ORDERS}, got {order!r}")
  if config.train.steps < 1:
    raise ValueError(f"train.steps={config.train.steps} must be >= 1")
  models.compute_dtype(config)
  if config.model.backbone not in models.BACKBONES:
    raise ValueError(f"model.backbone must be one of {models.BACKBONES}, got {config.model.backbone!r}")
  if len(config.dataset.mean) != len(config.dataset.std):
    raise ValueError("dataset.mean and dataset.std must have one entry per channel")
  _validate_resize(config)
  if config.model.get("pretrained") and config.model.backbone != "vgg19_bn":
    raise ValueError(f"model.pretrained={config.model.pretrained!r} holds vgg19_bn weights but "
                     f"model.backbone={config.model.backbone!r}")


def _validate_resize(config) -> None:
  """input.resize / input.crop: optional positive ints with crop <= resize (see drlih_jax/resize.py)."""
  resize, crop = config.input.get("resize"), config.input.get("crop")
  for key, value in (("input.resize", resize), ("input.crop", crop)):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
      raise ValueError(f"{key} must be a non-negative int (0 or None: off), got {value!r}")
  if crop and not resize:
    raise ValueError(f"input.crop={crop} needs input.resize (the crop is taken from the resized image)")
  if crop and crop > resize:
    raise ValueError(f"input.crop={crop} is larger than input.resize={resize}")


def flatten(config, prefix: str = "") -> dict:
  """{"a.b": value} for every leaf of a ConfigDict (tuples as lists, for JSON comparison)."""
  out = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if hasattr(value, "items"):
      out.update(flatten(value, name + "."))
    else:
      out[name] = list(value) if isinstance(value, tuple) else value
  return out


def resume_conflicts(saved: dict, current: dict) -> list[str]:
  """The RESUME_KEYS whose values differ between a saved flattened config and the current one."""
  return [k for k in RESUME_KEYS if saved.get(k) != current.get(k)]
