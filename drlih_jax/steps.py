"""The jitted functions of a run: one training update, and greedy encoding.

`train_step(state, batch, rng) -> (state, metrics)` is pure; the model, optimiser and config are bound
with `functools.partial` before jitting. A non-finite loss or gradient leaves the state unchanged
(parameters, optimiser state and batch statistics) except for the step counter, and reports
`nonfinite = 1` so the loop can count and stop.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from drlih_jax import input_pipeline
from drlih_jax import losses
from drlih_jax import resize as resize_lib
from drlih_jax import triplets as triplets_lib


@flax.struct.dataclass
class TrainState:
  """Everything a checkpoint holds: the step, parameters, batch statistics and optimiser state."""

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


def _variables(params, batch_stats):
  return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def create_train_state(rng, model, tx, image_shape, config) -> TrainState:
  """Initialises parameters (and batch statistics) from one dummy batch."""
  num_groups = config.hash.bits // config.hash.group
  images = jnp.zeros((2, *image_shape), jnp.float32)
  noise = jnp.full((1, num_groups, 2, config.hash.group), 0.5, jnp.float32)
  variables = model.init({"params": rng, "dropout": rng}, images, noise, train=False)
  params = variables["params"]
  batch_stats = variables.get("batch_stats", {})
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=tx.init(params))


def rollout_noise(rng, config, batch: int) -> jax.Array:
  """[R, num_groups, B, g] noise: M uniform rollouts then one greedy (0.5) rollout for "drlih"; greedy only else."""
  num_groups, group = config.hash.bits // config.hash.group, config.hash.group
  greedy = jnp.full((1, num_groups, batch, group), 0.5, jnp.float32)
  if config.objective in ("triplet", "official"):
    return greedy
  sampled = jax.random.uniform(rng, (config.rl.rollouts, num_groups, batch, group), jnp.float32)
  return jnp.concatenate([sampled, greedy], axis=0)


def train_step(state: TrainState, batch, rng, *, model, tx, config):
  """One policy-gradient (or triplet-only) update on an encoded batch.

  Args:
    state: the TrainState.
    batch: {"image": float [B, H, W, C] normalised, "label": [B] or [B, C]}.
    rng: this step's key.
    model, tx, config: bound before jitting.

  Returns:
    (new state, metrics dict of scalars).
  """
  noise_key, triplet_key, dropout_key = jax.random.split(rng, 3)
  labels = batch["label"]
  b = labels.shape[0]
  pos_mask, neg_mask = triplets_lib.relevance_masks(labels)
  triplets = triplets_lib.sample_triplets(triplet_key, pos_mask, neg_mask, config.rl.triplets_per_anchor)
  noise = rollout_noise(noise_key, config, b)

  def loss_fn(params):
    variables = _variables(params, state.batch_stats)
    (actions, logits), updates = model.apply(variables, batch["image"], noise, train=True,
                                             mutable=["batch_stats"], rngs={"dropout": dropout_key})
    loss, metrics = losses.objective_loss(actions, logits, pos_mask=pos_mask, neg_mask=neg_mask,
                                          triplets=triplets, config=config)
    return loss, (metrics, updates.get("batch_stats", {}))

  (loss, (metrics, new_batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
  new_params = optax.apply_updates(state.params, updates)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  new_state = TrainState(step=state.step + 1, params=keep(new_params, state.params),
                         batch_stats=keep(new_batch_stats, state.batch_stats),
                         opt_state=keep(new_opt_state, state.opt_state))
  metrics.update(grad_norm=grad_norm, nonfinite=(~finite).astype(jnp.float32))
  return new_state, metrics


def draw_batch(rng, data: input_pipeline.DeviceData, config, batch_size: int | None = None):
  """A class-balanced, augmented, normalised batch drawn on the device: {"image", "label"}.

  With `input.resize` set, the drawn batch is resized on the device and, with `input.crop`, randomly cropped
  and flipped (`resize.train_view`). `batch_size` other than classes_per_batch x images_per_class (a global
  batch rounded up to the device count, see `run.global_batch_size`) draws ceil(batch_size /
  classes_per_batch) images per class and keeps the first `batch_size` in member-major order, so every
  class keeps at least floor(batch_size / classes_per_batch) images.
  """
  input_config = config.input
  classes = input_config.classes_per_batch
  rounded = batch_size is not None and batch_size != input_pipeline.batch_size(input_config)
  if rounded:
    input_config = ml_collections.ConfigDict(dict(input_config.to_dict(),
                                                  images_per_class=-(-batch_size // classes)))
  batch = input_pipeline.sample_batch(rng, data, input_config, config.dataset)
  if rounded:
    member_major = lambda x: jnp.swapaxes(x.reshape(classes, -1, *x.shape[1:]), 0, 1).reshape(x.shape)
    batch = jax.tree.map(lambda x: member_major(x)[:batch_size], batch)
  if config.input.get("resize"):
    batch["image"] = resize_lib.train_view(jax.random.fold_in(rng, 1), batch["image"], config.input)
  return batch


def device_resident_train_step(state: TrainState, data: input_pipeline.DeviceData, rng, *, model, tx, config,
                               batch_sharding=None, batch_size: int | None = None):
  """Draws the batch on the device from the resident split (`draw_batch`), then runs `train_step`."""
  batch_key, step_key = jax.random.split(rng)
  batch = draw_batch(batch_key, data, config, batch_size)
  if batch_sharding is not None:
    batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
  return train_step(state, batch, step_key, model=model, tx=tx, config=config)


def resident_train_step(state: TrainState, data: input_pipeline.DeviceData, base_key, *, model, tx, config,
                        batch_sharding=None, batch_size: int | None = None):
  """The device-resident step with its key derived from the state's step, so a resumed run repeats exactly.

  Args:
    state: the TrainState.
    data: the training split resident on the device.
    base_key: the run's training key data (uint32), replicated.
    model, tx, config, batch_sharding, batch_size: bound before jitting.
  """
  rng = jax.random.fold_in(jax.random.wrap_key_data(base_key), state.step)
  return device_resident_train_step(state, data, rng, model=model, tx=tx, config=config,
                                    batch_sharding=batch_sharding, batch_size=batch_size)


def streamed_train_step(state: TrainState, batch, base_key, *, model, tx, config):
  """A step on a host-augmented uint8 batch (the streaming input mode): normalise on the device, then train.

  Args:
    state: the TrainState.
    batch: {"image": uint8 [B, H, W, C], "label": [B] or [B, C]}, sharded over the mesh.
    base_key: the run's training key data (uint32), replicated.
    model, tx, config: bound before jitting.
  """
  rng = jax.random.fold_in(jax.random.wrap_key_data(base_key), state.step)
  images = input_pipeline.normalize(batch["image"], config.dataset.mean, config.dataset.std)
  return train_step(state, {"image": images, "label": batch["label"]}, rng, model=model, tx=tx, config=config)


def _eval_view(images_uint8, config):
  images = input_pipeline.normalize(images_uint8, config.dataset.mean, config.dataset.std)
  if config.input.get("resize"):
    images = resize_lib.eval_view(images, config.input)
  return images


def encode(params, batch_stats, images_uint8, *, model, config) -> jax.Array:
  """Greedy codes of uint8 images: [B, K] uint8 in {0, 1} (resized and centre-cropped per `input`)."""
  actions, _ = model.apply(_variables(params, batch_stats), _eval_view(images_uint8, config), method="greedy")
  return actions.astype(jnp.uint8)


def features(params, batch_stats, images_uint8, *, model, config) -> jax.Array:
  """The backbone feature v of uint8 images (the agent's input), float32 [B, D]."""
  out = model.apply(_variables(params, batch_stats), _eval_view(images_uint8, config), method="features")
  return out.astype(jnp.float32)
