"""Assembling a run: the one place that builds the model, optimiser, mesh, initial state and jitted functions.

Training, evaluation, encoding, the experiment runner and the benchmarks all go through `create_run`, and
restore checkpoints with `restore`:

    run = create_run(config, data)                      # checks the config first
    restored = restore(run, workdir)                    # None when there is no checkpoint
    state = restored.state if restored else load_pretrained(run, run.initial_state)
    state, metrics = run.train_step(state, run.device_data(data), run.train_key)

Batch sizes on any number of devices: the global training batch is input.classes_per_batch x
input.images_per_class, rounded up to a multiple of the device count (`global_batch_size`; the extra images
are drawn from the batch's classes, and the rule is logged); the evaluation batch is train.eval_batch_size
rounded up likewise, the last one padded. Neither refuses a device count.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

from absl import logging
import jax
import ml_collections
import numpy as np
import optax

from drlih_jax import checkpointing
from drlih_jax import errors
from drlih_jax import evaluate
from drlih_jax import input_pipeline
from drlih_jax import models
from drlih_jax import optim
from drlih_jax import sharding
from drlih_jax import steps as steps_lib
from drlih_jax import validation
from drlih_jax.data import types


def global_batch_size(config, num_devices: int) -> int:
  """The training batch: classes_per_batch x images_per_class, rounded up to a multiple of the devices."""
  wanted = input_pipeline.batch_size(config.input)
  return sharding.round_up(wanted, num_devices)


def eval_batch_size(config, num_devices: int) -> int:
  """train.eval_batch_size rounded up to a multiple of the devices."""
  return sharding.round_up(int(config.train.eval_batch_size), num_devices)


@dataclasses.dataclass(frozen=True)
class Run:
  """Everything a mode needs to train, evaluate or encode one config.

  Attributes:
    config: the (validated) ConfigDict.
    mesh: the ("data",) mesh.
    model: the HashingModel.
    tx: the optimiser (None for a run created for evaluation only).
    schedule: the learning-rate schedule (None likewise).
    initial_state: the TrainState of step 0, replicated over the mesh (for evaluation: abstract
      `jax.ShapeDtypeStruct` leaves with shardings and no optimiser state, the target of a restore).
    batch_size: the global training batch (see the module docstring).
    eval_batch_size: the encoding batch.
    train_key: the replicated key data every training step folds its step into.
    train_step: jitted `(state, inputs, train_key) -> (state, metrics)`, the state donated; inputs are
      the resident `DeviceData` or a streamed batch, per `input.mode` (None for evaluation runs).
  """

  config: Any
  mesh: jax.sharding.Mesh
  model: Any
  tx: optax.GradientTransformation | None
  schedule: optax.Schedule | None
  initial_state: steps_lib.TrainState
  batch_size: int
  eval_batch_size: int
  train_key: Any
  train_step: Callable | None
  _encode: Callable
  _features: Callable

  @property
  def replicated(self):
    return sharding.replicated(self.mesh)

  @property
  def batch_sharding(self):
    return sharding.batch_sharded(self.mesh)

  def device_data(self, data: types.RetrievalData) -> input_pipeline.DeviceData:
    """The training split resident on every device (the input of the resident train_step)."""
    per_class = -(-self.batch_size // self.config.input.classes_per_batch)
    input_config = ml_collections.ConfigDict(dict(self.config.input.to_dict(), images_per_class=per_class))
    return input_pipeline.to_device(data.train, data.num_classes, input_config, self.replicated)

  def encoder(self, state) -> Callable:
    """`images_uint8 [eval_batch_size, H, W, C] -> codes [eval_batch_size, K]` for `state`'s weights."""
    return lambda images: self._encode(state.params, state.batch_stats, images)

  def encode(self, state, images: np.ndarray) -> np.ndarray:
    """Greedy codes [n, K] uint8 of uint8 images [n, H, W, C] (batched and padded over the mesh)."""
    return evaluate.encode_images(self.encoder(state), images, self.eval_batch_size, self.batch_sharding)

  def features(self, state, images: np.ndarray) -> np.ndarray:
    """Backbone features [n, D] float32 of uint8 images (the agent's input; for baselines on features)."""
    fn = lambda batch: self._features(state.params, state.batch_stats, batch)
    return evaluate.encode_images(fn, images, self.eval_batch_size, self.batch_sharding)

  def evaluate(self, state, data: types.RetrievalData):
    """(report, query codes, database codes) of `state` on the data's query and database splits."""
    return evaluate.run_evaluation(self.encoder(state), data, self.config, batch_size=self.eval_batch_size,
                                   sharding=self.batch_sharding)


def create_run(config, data: types.RetrievalData, mesh: jax.sharding.Mesh | None = None, *,
               training: bool = True) -> Run:
  """Builds the run of `config` on `data` (whose training split gives the image shape).

  Args:
    config: the run's ConfigDict; validated here (ConfigError naming the key).
    data: the protocol's splits.
    mesh: the device mesh (default: `sharding.make_mesh(config.mesh_devices)`).
    training: False builds only what evaluation and encoding need: no optimiser, no train step, and an
      abstract initial state (nothing is initialised or allocated).

  Returns:
    The Run.
  """
  validation.validate(config, training=training)
  mesh = mesh or sharding.make_mesh(config.get("mesh_devices", 0))
  num_devices = mesh.size
  batch = global_batch_size(config, num_devices)
  wanted = input_pipeline.batch_size(config.input)
  if training and batch != wanted and config.input.get("mode", "resident") == "streaming":
    raise errors.ConfigError(
        f"input.mode='streaming' needs the global batch input.classes_per_batch x input.images_per_class = "
        f"{wanted} to be a multiple of the {num_devices} devices (the resident mode rounds it up instead)")
  if training and batch != wanted:
    logging.warning("The global batch input.classes_per_batch x input.images_per_class = %d is not a multiple "
                    "of the %d devices: training uses %d (the extra images come from the batch's classes)",
                    wanted, num_devices, batch)
  eval_batch = eval_batch_size(config, num_devices)
  if eval_batch != config.train.eval_batch_size:
    logging.info("train.eval_batch_size %d rounded up to %d (a multiple of the %d devices)",
                 config.train.eval_batch_size, eval_batch, num_devices)
  replicated = sharding.replicated(mesh)
  model = models.create_model(config)
  image_shape = tuple(data.train.images.shape[1:])
  if training:
    tx = optim.create_optimizer(config.optim, config.train.steps)
    schedule = optim.learning_rate_schedule(config.optim, config.train.steps)
  else:
    tx = schedule = None
  create = functools.partial(steps_lib.create_train_state, model=model, tx=tx or optax.identity(),
                             image_shape=image_shape, config=config)
  init_key = np.asarray(jax.random.key_data(jax.random.fold_in(jax.random.key(config.seed), 0)))
  init = jax.jit(lambda key: create(jax.random.wrap_key_data(key)), out_shardings=replicated)
  if training:
    initial_state = init(init_key)
  else:
    abstract = jax.eval_shape(init, init_key)
    initial_state = abstract.replace(opt_state=None)
  train_key = sharding.put_global(
      jax.random.key_data(jax.random.fold_in(jax.random.key(config.seed), 1)), replicated)
  bound = dict(model=model, tx=tx, config=config)
  train_step = None
  if training:
    if config.input.get("mode", "resident") == "resident":
      train_step = jax.jit(functools.partial(steps_lib.resident_train_step, **bound, batch_size=batch,
                                             batch_sharding=sharding.batch_sharded(mesh)), donate_argnums=0)
    else:
      train_step = jax.jit(functools.partial(steps_lib.streamed_train_step, **bound), donate_argnums=0)
  encode = jax.jit(functools.partial(steps_lib.encode, model=model, config=config), out_shardings=replicated)
  features = jax.jit(functools.partial(steps_lib.features, model=model, config=config),
                     out_shardings=replicated)
  return Run(config=config, mesh=mesh, model=model, tx=tx, schedule=schedule, initial_state=initial_state,
             batch_size=batch, eval_batch_size=eval_batch, train_key=train_key, train_step=train_step,
             _encode=encode, _features=features)


def load_pretrained(run: Run, state: steps_lib.TrainState) -> steps_lib.TrainState:
  """`state` with the backbone weights of `model.pretrained` (unchanged when it is unset)."""
  if not run.config.model.get("pretrained"):
    return state
  params, batch_stats = models.load_pretrained(run.config, state.params, state.batch_stats)
  logging.info("Loaded pretrained backbone weights from %s", run.config.model.pretrained)
  return state.replace(params=sharding.put_global(jax.device_get(params), run.replicated),
                       batch_stats=sharding.put_global(jax.device_get(batch_stats), run.replicated))


def restore(run: Run, workdir, step: int | None = None, params_only: bool = False,
            checkpoints: checkpointing.Checkpoints | None = None) -> checkpointing.Restored | None:
  """Restores the newest readable checkpoint of `workdir` (or `step`) into `run`'s structure and shardings.

  Args:
    run: the Run (a training run, or an evaluation run with `params_only`).
    workdir: the run directory.
    step: a specific step (CheckpointError when it does not exist or cannot be read).
    params_only: parameters and batch statistics only (the optimiser state is left out).
    checkpoints: the run's open Checkpoints (default: opened read-only when `params_only`).

  Returns:
    The Restored checkpoint (state, step, meta), or None when the workdir has none.

  Raises:
    CheckpointError: a checkpoint does not match the model (naming what differs).
  """
  if checkpoints is None:
    checkpoints = checkpointing.Checkpoints(workdir, run.config.train.keep_checkpoints, read_only=params_only)
  like = run.initial_state
  if params_only:
    like = like.replace(opt_state=None)
  return checkpoints.restore(like, step=step, params_only=params_only)
