"""Training loop: `train_and_evaluate(config, workdir)` and the evaluation/encoding entry points.

Data parallelism: a one-axis mesh ("data",) over every device; parameters and optimiser state are
replicated, each step's batch is sharded over the axis (XLA averages the gradients), and the jitted
step donates the old state. The step's random key is `fold_in(key(seed), step)`, and the batch is drawn
from it on the device, so a resumed run repeats exactly the draws of an uninterrupted one.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import time

from absl import logging
import jax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from drlih_jax import checkpointing
from drlih_jax import config_validation
from drlih_jax import evaluate
from drlih_jax import input_pipeline
from drlih_jax import models
from drlih_jax import optim
from drlih_jax import steps as steps_lib
from drlih_jax import summary
from drlih_jax.data import protocols


def check_workdir(workdir: str) -> None:
  """Creates the workdir, raising an error that names it when it cannot be written."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, ".write_test")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise OSError(f"workdir {workdir!r} is not writable: {e.strerror or e}") from e


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
  """A one-axis ("data",) mesh over every device of every process (or the first `num_devices`)."""
  devices = jax.devices()
  if num_devices:
    if num_devices > len(devices):
      raise ValueError(f"mesh_devices={num_devices} but only {len(devices)} devices are visible")
    devices = devices[:num_devices]
  return jax.sharding.Mesh(np.array(devices), ("data",))


class _Setup:
  """What every mode needs: config checks, data, model, optimiser, mesh, jitted functions."""

  def __init__(self, config, workdir: str, data: protocols.RetrievalData | None = None):
    config_validation.validate(config)
    self.config = config
    self.workdir = workdir
    self.mesh = make_mesh(config.get("mesh_devices", 0))
    self.replicated = NamedSharding(self.mesh, P())
    self.batch_sharding = NamedSharding(self.mesh, P("data"))
    num_devices = self.mesh.size
    b = input_pipeline.batch_size(config.input)
    if b % num_devices:
      raise ValueError(f"the global batch input.classes_per_batch * input.images_per_class = {b} is not "
                       f"divisible by the {num_devices} devices")
    if config.train.eval_batch_size % num_devices:
      raise ValueError(f"train.eval_batch_size={config.train.eval_batch_size} is not divisible by the "
                       f"{num_devices} devices")
    # Every process loads the whole split (device-resident mode); process 0 records/checks splits.json.
    record_in = workdir if jax.process_index() == 0 else None
    if data is None:
      data = protocols.load_retrieval_data(config.dataset, record_in)
    elif record_in is not None:
      protocols.record_splits(record_in, config.dataset, data)
    self.data = data
    self.model = models.create_model(config)
    self.tx = optim.create_optimizer(config.optim, config.train.steps)
    self.schedule = optim.learning_rate_schedule(config.optim, config.train.steps)
    init_key = np.asarray(jax.random.key_data(jax.random.fold_in(jax.random.key(config.seed), 0)))
    image_shape = self.data.train.images.shape[1:]
    create = functools.partial(steps_lib.create_train_state, model=self.model, tx=self.tx,
                               image_shape=image_shape, config=config)
    self.initial_state = jax.jit(lambda key: create(jax.random.wrap_key_data(key)),
                                 out_shardings=self.replicated)(init_key)
    if config.model.get("pretrained"):
      params, batch_stats = models.load_pretrained(config, self.initial_state.params,
                                                   self.initial_state.batch_stats)
      self.initial_state = self.initial_state.replace(
          params=input_pipeline.put_global(jax.device_get(params), self.replicated),
          batch_stats=input_pipeline.put_global(jax.device_get(batch_stats), self.replicated))
      logging.info("Loaded pretrained backbone weights from %s", config.model.pretrained)
    self.encode = jax.jit(functools.partial(steps_lib.encode, model=self.model, config=config),
                          out_shardings=self.replicated)

  def encode_fn(self, state):
    return lambda images: self.encode(state.params, state.batch_stats, images)

  def evaluate(self, state):
    return evaluate.run_evaluation(self.encode_fn(state), self.data, self.config,
                                   batch_size=self.config.train.eval_batch_size, sharding=self.batch_sharding)


def _write_config(workdir: str, config) -> None:
  """Writes config.json, or checks the resumed run's shape- and split-defining keys against it."""
  path = os.path.join(workdir, "config.json")
  current = config_validation.flatten(config)
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    conflicts = config_validation.resume_conflicts(saved, current)
    if conflicts:
      details = "; ".join(f"{k}: checkpointed {saved.get(k)!r}, now {current.get(k)!r}" for k in conflicts)
      raise ValueError(f"the config differs from the run in {workdir} on keys that change shapes or splits "
                       f"({details}); use a new workdir or restore those values")
  with open(path, "w") as f:
    json.dump(current, f, indent=1, sort_keys=True, default=str)


STOP_SYNC_EVERY = 10


class _StopRequest:
  """Turns SIGTERM/SIGINT into a flag the loop checks between steps (checkpoint, then exit 0)."""

  def __init__(self):
    self.signal = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.signal = signum

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def agreed(self, step: int) -> bool:
    """Whether every process stops after `step`.

    One process: as soon as a signal arrived. Several: every `STOP_SYNC_EVERY` steps the processes share
    their flags (a small all-gather), so all of them save the same step collectively and exit together,
    whichever process the signal reached.
    """
    local = self.signal is not None
    if jax.process_count() == 1:
      return local
    if step % STOP_SYNC_EVERY:
      return False
    flags = multihost_utils.process_allgather(np.array([local], np.int32))
    return bool(np.any(flags))


def train_and_evaluate(config, workdir: str, data: protocols.RetrievalData | None = None):
  """Trains (resuming from the newest checkpoint in `workdir`), evaluates, and returns the final state.

  Writes into `workdir`: config.json, splits.json, checkpoints/, tensorboard/, eval_<step>.json and its
  plots. On SIGTERM/SIGINT it saves a checkpoint at the current step and returns early.

  Args:
    config: the run's ConfigDict.
    workdir: the run directory.
    data: the protocol's splits, already loaded with `protocols.load_retrieval_data(config.dataset)`
      (for scripts that train many runs on one dataset); None loads them. Either way splits.json is
      written or checked.
  """
  if jax.process_index() == 0:
    check_workdir(workdir)
  setup = _Setup(config, workdir, data)
  if jax.process_index() == 0:
    _write_config(workdir, config)
  manager = checkpointing.create_manager(workdir, config.train.keep_checkpoints)
  state, restored_step = checkpointing.restore_latest(manager, setup.initial_state)
  if state is None:
    state = setup.initial_state
    logging.info("Starting from scratch in %s", workdir)
  else:
    logging.info("Resumed from checkpoint step %d in %s", restored_step, workdir)

  base_key = input_pipeline.put_global(
      jax.random.key_data(jax.random.fold_in(jax.random.key(config.seed), 1)), setup.replicated)
  next_step = _make_input_and_step(setup, int(jax.device_get(state.step)), base_key)
  writer = summary.MetricWriter(workdir)
  total = config.train.steps
  step = int(jax.device_get(state.step))
  timer_start, timer_step = time.perf_counter(), step
  logging.info("Training %s for %d steps on %d device(s), batch %d, %d training images",
               config.objective, total, setup.mesh.size, input_pipeline.batch_size(config.input),
               len(setup.data.train))
  guard = _NonfiniteGuard(config.train.max_nonfinite_in_a_row, writer)
  with _StopRequest() as stop:
    while step < total:
      state, metrics = next_step(state)
      step += 1
      guard.check(step, metrics)  # Reads the previous step's flag: the device stays one step ahead.
      if step % config.train.log_every == 0 or step == total:
        now = time.perf_counter()
        rate = (step - timer_step) / max(now - timer_start, 1e-9)
        timer_start, timer_step = now, step
        scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
        scalars["learning_rate"] = float(setup.schedule(step))
        scalars["steps_per_second"] = rate
        writer.scalars(step, scalars)
        eta = (total - step) / max(rate, 1e-9)
        logging.info("step %d/%d | %s | %.1f steps/s | ETA %s", step, total,
                     " ".join(f"{k} {scalars[k]:.4g}" for k in sorted(scalars)
                              if k not in ("steps_per_second", "nonfinite")),
                     rate, time.strftime("%H:%M:%S", time.gmtime(eta)))
      if step % config.train.checkpoint_every == 0 or step == total:
        checkpointing.save(manager, state, step)
      if config.train.eval_every and step % config.train.eval_every == 0 and step < total:
        _evaluate_and_log(setup, state, step, writer, plots=False)
      if stop.agreed(step):
        logging.warning("Received signal %s at step %d: saving a checkpoint and exiting",
                        stop.signal or "(on another process)", step)
        checkpointing.save(manager, state, step)
        manager.wait_until_finished()
        writer.close()
        return state
    guard.check(step + 1, None)
  manager.wait_until_finished()
  _evaluate_and_log(setup, state, step, writer, plots=True)
  writer.close()
  return state


class _NonfiniteGuard:
  """Counts skipped (non-finite) updates, one step behind the device, and stops after too many in a row."""

  def __init__(self, limit: int, writer):
    self.limit = limit
    self.writer = writer
    self.in_a_row = 0
    self.total = 0
    self._pending = None

  def check(self, step: int, metrics) -> None:
    """Inspects the flag of step - 1 (already computed), then queues this step's."""
    pending, self._pending = self._pending, (None if metrics is None else (step, metrics["nonfinite"]))
    if pending is None:
      return
    prev_step, flag = pending
    if float(flag) == 0:
      self.in_a_row = 0
      return
    self.in_a_row += 1
    self.total += 1
    logging.warning("step %d: non-finite loss or gradient, update skipped (%d in a row, %d in all)",
                    prev_step, self.in_a_row, self.total)
    self.writer.scalars(prev_step, {"nonfinite_skipped_total": self.total})
    if self.limit > 0 and self.in_a_row >= self.limit:
      raise FloatingPointError(
          f"{self.in_a_row} non-finite updates in a row, the last at step {prev_step} "
          f"(train.max_nonfinite_in_a_row={self.limit}); lower optim.learning_rate or set optim.grad_clip")


INPUT_MODES = ("resident", "streaming")


def _make_input_and_step(setup, start_step: int, base_key):
  """Returns `next_step(state) -> (state, metrics)` for the configured input mode.

  "resident": the training split lives on the device and each step draws its batch inside the jitted
  step. "streaming": `tf.data` (drlih_jax/data/streaming.py) reads this process's shard of the training
  set, decodes and augments on the host in a resumable order starting at `start_step`; the per-process
  batches are assembled into one global batch sharded over the mesh.
  """
  config = setup.config
  mode = config.input.get("mode", "resident")
  if mode not in INPUT_MODES:
    raise ValueError(f"input.mode must be one of {INPUT_MODES}, got {mode!r}")
  bound = dict(model=setup.model, tx=setup.tx, config=config)
  if mode == "resident":
    device_data = input_pipeline.to_device(setup.data.train, setup.data.num_classes, config.input,
                                           setup.replicated)
    step_fn = jax.jit(functools.partial(_keyed_step, **bound, batch_sharding=setup.batch_sharding),
                      donate_argnums=0)
    return lambda state: step_fn(state, device_data, base_key)

  from drlih_jax.data import streaming  # pylint: disable=g-import-not-at-top  (imports TensorFlow)
  iterator = streaming.make_train_iterator(streaming_config(config), jax.process_index(),
                                           jax.process_count(), start_step=start_step)
  step_fn = jax.jit(functools.partial(_streamed_step, **bound), donate_argnums=0)

  def next_step(state):
    local = next(iterator)
    batch = {k: jax.make_array_from_process_local_data(setup.batch_sharding, np.asarray(local[k]))
             for k in ("image", "label")}
    return step_fn(state, batch, base_key)
  return next_step


def streaming_config(config) -> dict:
  """The streaming iterator's settings from the run config (same batch layout and augmentation)."""
  input_config = config.input
  if input_config.get("resize") and input_config.get("crop"):
    augment = "resize_crop_flip"
  elif input_config.augment == "crop_flip":
    augment = "pad_crop_flip"
  elif not input_config.augment:
    augment = "none"
  else:
    raise ValueError(f"input.augment must be '' or 'crop_flip', got {input_config.augment!r}")
  return dict(dataset=config.dataset, batch_size=input_pipeline.batch_size(input_config), seed=config.seed,
              augment=augment, pad=input_config.crop_padding, resize_size=input_config.get("resize") or 256,
              crop_size=input_config.get("crop") or 224, image_dtype="uint8", sampler="class_balanced",
              classes_per_batch=input_config.classes_per_batch,
              images_per_class=input_config.images_per_class)


def _streamed_step(state, batch, base_key, *, model, tx, config):
  """A step on a host-augmented uint8 batch: normalise on the device, then `train_step`."""
  rng = jax.random.fold_in(jax.random.wrap_key_data(base_key), state.step)
  images = input_pipeline.normalize(batch["image"], config.dataset.mean, config.dataset.std)
  return steps_lib.train_step(state, {"image": images, "label": batch["label"]}, rng, model=model, tx=tx,
                              config=config)


def _keyed_step(state, data, base_key, *, model, tx, config, batch_sharding):
  """The device-resident step with the key derived from the state's step (exact resume)."""
  rng = jax.random.fold_in(jax.random.wrap_key_data(base_key), state.step)
  return steps_lib.device_resident_train_step(state, data, rng, model=model, tx=tx, config=config,
                                              batch_sharding=batch_sharding)


def _evaluate_and_log(setup, state, step, writer, plots):
  report, query_codes, db_codes = setup.evaluate(state)
  if jax.process_index() == 0:
    evaluate.write_report(setup.workdir, step, report, setup.config, setup.data, query_codes, db_codes,
                          plots=plots)
  writer.scalars(step, {f"map/{bits}_bits": v for bits, v in report["map"].items()})
  return report


def _restore_for_eval(setup, workdir, step):
  manager = checkpointing.create_manager(workdir, setup.config.train.keep_checkpoints)
  if step is None:
    state, step = checkpointing.restore_latest(manager, setup.initial_state)
  elif step in manager.all_steps():
    state = checkpointing.restore(manager, step, setup.initial_state)
  else:
    state = None
  if state is None:
    where = checkpointing.checkpoint_dir(workdir)
    available = sorted(manager.all_steps())
    wanted = "checkpoint" if step is None else f"checkpoint at step {step}"
    raise FileNotFoundError(f"no {wanted} found in {where} (available steps: {available or 'none'})")
  return state, step


def evaluate_checkpoint(config, workdir: str, step: int | None = None,
                        data: protocols.RetrievalData | None = None) -> str:
  """Restores the latest (or `step`) checkpoint, evaluates it, writes eval_<step>.json; returns its path.

  `data`: the protocol's splits, already loaded (as in `train_and_evaluate`); None loads them.
  """
  setup = _Setup(config, workdir, data)
  state, step = _restore_for_eval(setup, workdir, step)
  report, query_codes, db_codes = setup.evaluate(state)
  return evaluate.write_report(workdir, step, report, config, setup.data, query_codes, db_codes)


def encode_checkpoint(config, workdir: str, split: str, output: str | None = None,
                      step: int | None = None, data: protocols.RetrievalData | None = None) -> str:
  """Writes a split's greedy codes, bit-packed as uint8 rows (faiss IndexBinary layout), to an .npz.

  `data`: the protocol's splits, already loaded (as in `train_and_evaluate`); None loads them.
  """
  setup = _Setup(config, workdir, data)
  state, step = _restore_for_eval(setup, workdir, step)
  splits = {"query": setup.data.query, "database": setup.data.database, "train": setup.data.train}
  if split not in splits:
    raise ValueError(f"--split must be one of {sorted(splits)}, got {split!r}")
  chosen = splits[split]
  codes = evaluate.encode_images(setup.encode_fn(state), chosen.images, config.train.eval_batch_size,
                                 setup.batch_sharding)
  output = output or os.path.join(workdir, f"codes_{split}_{step}.npz")
  np.savez(output, codes=np.packbits(codes, axis=1), bits=np.int32(codes.shape[1]), labels=chosen.labels,
           ids=chosen.ids, step=np.int64(step))
  logging.info("Wrote %d %d-bit codes of split %s to %s", len(codes), codes.shape[1], split, output)
  return output
