"""Optimisers and learning-rate schedules from the `optim` config block."""

from __future__ import annotations

import optax

from drlih_jax import errors

NAMES = ("adamw", "sgd")


def check_config(optim_config) -> None:
  """Checks the `optim` block; raises ConfigError naming the key."""
  if optim_config.name not in NAMES:
    raise errors.ConfigError(f"optim.name must be one of {NAMES}, got {optim_config.name!r}")
  if not optim_config.learning_rate > 0:
    raise errors.ConfigError(f"optim.learning_rate must be > 0, got {optim_config.learning_rate!r}")
  for key in ("weight_decay", "grad_clip", "warmup_steps"):
    if optim_config[key] < 0:
      raise errors.ConfigError(f"optim.{key} must be >= 0, got {optim_config[key]!r}")
  if not 0.0 <= optim_config.momentum < 1.0:
    raise errors.ConfigError(f"optim.momentum must lie in [0, 1), got {optim_config.momentum!r}")
  if optim_config.decay_every < 1:
    raise errors.ConfigError(f"optim.decay_every must be >= 1, got {optim_config.decay_every!r}")
  if not 0.0 < optim_config.decay_factor <= 1.0:
    raise errors.ConfigError(f"optim.decay_factor must lie in (0, 1], got {optim_config.decay_factor!r}")


def learning_rate_schedule(optim_config, total_steps: int) -> optax.Schedule:
  """AdamW: linear warmup then cosine decay to 0 over `total_steps`; SGD: step decay (the paper's).

  The schedule is called with optax's update count: 0 for the first update. SGD's step decay follows the
  released code's `train.py`, whose counter starts at 1 and which multiplies the rate by `decay_factor`
  *before* the update whose counter is a multiple of `decay_every`: update k (1-based) uses
  learning_rate * decay_factor^floor(k / decay_every), so with decay_every = 10,000 the 10,000th update
  is the first at the lower rate (count 9,999 here; an unshifted staircase would decay one update later).
  """
  if optim_config.name == "adamw":
    warmup = min(optim_config.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=optim_config.learning_rate, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=0.0)
  step_decay = optax.exponential_decay(optim_config.learning_rate, transition_steps=optim_config.decay_every,
                                       decay_rate=optim_config.decay_factor, staircase=True)
  return lambda count: step_decay(count + 1)  # count + 1: the released code's 1-based counter


def create_optimizer(optim_config, total_steps: int) -> optax.GradientTransformation:
  """The optimiser, with optional global-norm clipping.

  SGD follows torch's convention (weight decay added to the gradient before momentum), as the released
  code's `torch.optim.SGD(momentum=0.9, weight_decay=5e-4)`.
  """
  schedule = learning_rate_schedule(optim_config, total_steps)
  if optim_config.name == "adamw":
    opt = optax.adamw(schedule, weight_decay=optim_config.weight_decay)
  else:
    opt = optax.chain(optax.add_decayed_weights(optim_config.weight_decay),
                      optax.sgd(schedule, momentum=optim_config.momentum))
  if optim_config.grad_clip > 0:
    opt = optax.chain(optax.clip_by_global_norm(optim_config.grad_clip), opt)
  return opt
