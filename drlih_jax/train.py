"""The training loop, `train_and_evaluate(config, workdir)`, and evaluation/encoding of a recorded run.

Data parallelism: a one-axis ("data",) mesh over every device (`run.py`); parameters and optimiser state are
replicated, each step's batch is sharded over the axis (XLA averages the gradients), and the jitted step
donates the old state. The step's random key is `fold_in(train_key, step)` and the batch is drawn from it on
the device, so a resumed run repeats exactly the draws of an uninterrupted one.

Training ends at `train.steps`, or earlier by its time budget (`train.max_minutes`, counted over every
session of the run) or its stopping rule (`train.stop_min_gain`: at an evaluation at step s, the tie-aware
mAP@all of the full code gained less than that since the last evaluation at or before
(1 - `train.stop_window`) * s). A finished run writes `<workdir>/DONE` (step, reason); rerunning the same
command then does not train further unless the reason no longer holds (e.g. `train.steps` was raised),
and does not evaluate again while its final report stands (its evaluation options unchanged).
SIGTERM/SIGINT save a checkpoint at the current step and return; with several processes they agree on that
step through JAX's preemption sync point.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from typing import Any, Mapping

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np

from drlih_jax import checkpointing
from drlih_jax import errors
from drlih_jax import evaluate
from drlih_jax import run as run_lib
from drlih_jax import run_record
from drlih_jax import summary
from drlih_jax import validation
from drlih_jax.data import protocols
from drlih_jax.data import streaming

SPLITS = ("query", "database", "train")


class _StopRequest:
  """Turns SIGTERM/SIGINT into a flag the loop checks between steps (checkpoint, then return).

  One process: the flag is set by our handler. Several: SIGTERM (what preemption and launch/stop.sh send)
  reaches JAX's preemption notifier, and `reached_preemption_sync_point(step)` is True on every process at
  the same step, so all of them save that step collectively; SIGINT is handled as with one process.
  """

  def __init__(self):
    self.signal = None
    self._previous = {}
    self._multi = jax.process_count() > 1

  def __enter__(self):
    signals = (signal.SIGINT,) if self._multi else (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.signal = signum

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def reached(self, step: int) -> bool:
    if not self._multi:
      return self.signal is not None
    if multihost_utils.reached_preemption_sync_point(step):
      self.signal = self.signal or signal.SIGTERM
      return True
    return False


def _agree(value: bool) -> bool:
  """Process 0's decision, on every process (decisions from clocks or host metrics must agree)."""
  if jax.process_count() == 1:
    return value
  return bool(multihost_utils.broadcast_one_to_all(np.int32(value)))


@dataclasses.dataclass
class _Progress:
  """What the checkpoints' `meta` item carries across sessions: time, evaluation history, end."""

  train_seconds: float = 0.0
  history: list = dataclasses.field(default_factory=list)  # [step, train_seconds, tie-aware mAP@all]
  stop_reason: str | None = None
  last_metrics: dict | None = None  # the last logged training metrics (in each report)

  @classmethod
  def from_meta(cls, meta: Mapping[str, Any]) -> "_Progress":
    return cls(train_seconds=float(meta.get("train_seconds", 0.0)), history=list(meta.get("history", [])),
               stop_reason=meta.get("stop_reason"), last_metrics=meta.get("last_metrics"))

  def meta(self) -> dict:
    return {"train_seconds": self.train_seconds, "history": self.history, "stop_reason": self.stop_reason,
            "last_metrics": self.last_metrics}


def plateaued(history, min_gain: float, window: float, patience: int = 1) -> bool:
  """The stopping rule: the last `patience` evaluations each gained less than `min_gain` over `window`.

  Args:
    history: [(step, train_seconds, value), ...] in step order.
    min_gain: the smallest gain that keeps training (0: the rule is off).
    window: the fraction of the run the gain is measured over (0.2: the last fifth).
    patience: how many evaluations in a row must find the gain too small (1: the last one alone; 2 lets
      one evaluation's noise, a dip at a peak learning rate, pass without ending the run).

  Returns:
    True when, for each of the last `patience` evaluations, there is an earlier evaluation at or before
    (1 - window) * its step and it exceeds the latest such one by less than `min_gain`.
  """
  if min_gain <= 0 or len(history) < 2:
    return False

  def holds(upto: int) -> bool:
    step, _, value = history[upto]
    earlier = [h for h in history[:upto] if h[0] <= (1.0 - window) * step]
    return bool(earlier) and value - earlier[-1][2] < min_gain

  last = len(history) - 1
  return patience <= len(history) and all(holds(last - k) for k in range(patience))


def _plateaued(config, history) -> bool:
  return plateaued(history, config.train.get("stop_min_gain", 0.0), config.train.get("stop_window", 0.2),
                   config.train.get("stop_patience", 1))


def _stop_reason(config, step: int, progress: _Progress) -> str | None:
  """Why training ends now ("steps", "time", "plateau"), or None."""
  if step >= config.train.steps:
    return "steps"
  max_minutes = config.train.get("max_minutes", 0)
  if max_minutes and progress.train_seconds >= 60.0 * max_minutes:
    return "time"
  if progress.stop_reason == "plateau" and _plateaued(config, progress.history):
    return "plateau"
  return None


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


def _input_feed(run: run_lib.Run, data, start_step: int):
  """`next_step(state) -> (state, metrics)` for the configured input mode.

  "resident": the training split lives on the device and each step draws its batch inside the jitted step.
  "streaming": `tf.data` (drlih_jax/data/streaming.py) reads this process's shard of the training set,
  decodes and augments on the host in a resumable order starting at `start_step`; the per-process batches
  are assembled into one global batch sharded over the mesh.
  """
  if run.config.input.get("mode", "resident") == "resident":
    device_data = run.device_data(data)
    return lambda state: run.train_step(state, device_data, run.train_key)
  iterator = streaming.make_train_iterator(run.config, jax.process_index(), jax.process_count(), start_step)

  def next_step(state):
    local = next(iterator)
    batch = {k: jax.make_array_from_process_local_data(run.batch_sharding, np.asarray(local[k]))
             for k in ("image", "label")}
    return run.train_step(state, batch, run.train_key)
  return next_step


def _load_data(config, data):
  """The protocol's splits (loaded unless given) and the record of their ids for splits.json."""
  values = protocols.validate_config(config.dataset)
  if data is None:
    data = protocols.load_retrieval_data(config.dataset)
  return data, run_record.splits_record(values, data)


def _evaluate_and_log(run, state, data, workdir, step, writer, progress, plots, train_metrics=None,
                      evaluation=None):
  """Evaluates `state`, writes eval_<step>.json (with the training time and the last logged training metrics).

  Args:
    run, state, data, workdir, step, writer, progress: the run and where it stands.
    plots: also write the report's plots and retrieval grid.
    train_metrics: the last logged training metrics, recorded in the report.
    evaluation: (report, query codes, database codes) already computed for this state at this step (the
      loop's evaluation at the step the run ended on); the report is written again (with plots) from it
      instead of evaluating twice.

  Returns:
    (report, query codes, database codes).
  """
  computed = evaluation is None
  report, query_codes, db_codes = run.evaluate(state, data) if computed else evaluation
  if jax.process_index() == 0:
    extra = {"train_seconds": round(progress.train_seconds, 3)}
    if train_metrics:
      extra["train_metrics"] = train_metrics
    evaluate.write_report(workdir, f"eval_{step}", step, report, run.config, data, query_codes, db_codes,
                          plots=plots, extra=extra)
  if computed:
    writer.scalars(step, {f"map/{bits}_bits": v for bits, v in report["map"].items()})
    writer.scalars(step, {f"map_tie_aware/{bits}_bits": v for bits, v in report["map_average_ties"].items()})
  return report, query_codes, db_codes


def _already_reported(workdir, step: int, reason: str, config_changes) -> epath.Path | None:
  """The final report of a run that had ended at `step` before this session, if nothing asks to redo it.

  A finished run started again is not evaluated again when its DONE record names this step and reason,
  its `eval_<step>.json` exists and no option that shapes the report (`run_record.REPORT_OPTIONS`)
  changed; otherwise (e.g. new `hash.eval_bits`, or a run stopped between its last checkpoint and its
  report) the final evaluation runs.
  """
  done = run_record.read_done(workdir)
  report = run_record.path(workdir, f"eval_{step}.json")
  if (done and done.get("step") == step and done.get("reason") == reason and report.exists()
      and not any(key in config_changes for key in run_record.REPORT_OPTIONS)):
    return report
  return None


def train_and_evaluate(config, workdir, data=None):
  """Trains (resuming from the newest checkpoint in `workdir`), evaluates, and returns the final state.

  Writes into `workdir` (local or gs://): config.json, splits.json, checkpoints/, tensorboard/,
  eval_<step>.json and its plots, DONE. On SIGTERM/SIGINT it saves a checkpoint at the current step and
  returns early (no DONE).

  Args:
    config: the run's ConfigDict.
    workdir: the run directory.
    data: the protocol's splits, already loaded with `protocols.load_retrieval_data(config.dataset)`
      (for scripts that train many runs on one dataset); None loads them. Either way splits.json is
      written or checked.

  Raises:
    ConfigError, RunRecordError, SplitMismatchError, CheckpointError, WorkdirError: see `errors`; each is
    raised before any training step, and the config errors before anything is read or written.
  """
  validation.validate(config)
  writes = jax.process_index() == 0
  if writes:
    run_record.check_writable(workdir)
  config_changes = run_record.record_config_for_training(workdir, config, write=writes)
  data, splits = _load_data(config, data)
  run_record.record_splits(workdir, splits, write=writes)
  run = run_lib.create_run(config, data)
  checkpoints = checkpointing.Checkpoints(workdir, config.train.keep_checkpoints)
  restored = run_lib.restore(run, workdir, checkpoints=checkpoints)
  if restored is None:
    state, progress = run_lib.load_pretrained(run, run.initial_state), _Progress()
    logging.info("Starting from scratch in %s", workdir)
  else:
    state, progress = restored.state, _Progress.from_meta(restored.meta)
    logging.info("Resumed from checkpoint step %d in %s (%.0f s of training so far)", restored.step, workdir,
                 progress.train_seconds)
  step = start_step = int(jax.device_get(state.step))
  writer = summary.MetricWriter(workdir)
  try:
    state, step, reason, evaluated = _train_loop(run, state, step, data, workdir, checkpoints, writer, progress)
    checkpoints.wait()
    if reason is None:  # Stopped by a signal: the checkpoint is saved, nothing more.
      return state
    if step == start_step:
      report = _already_reported(workdir, step, reason, config_changes)
      if _agree(report is not None):
        logging.info("Its report is %s; nothing to do (delete it to evaluate again)", report)
        return state
    _evaluate_and_log(run, state, data, workdir, step, writer, progress, plots=True,
                      train_metrics=progress.last_metrics,
                      evaluation=evaluated[1] if evaluated and evaluated[0] == step else None)
    if writes:
      run_record.write_done(workdir, step, reason, progress.train_seconds)
    logging.info("Training ended at step %d (%s) after %.0f s of training", step, reason,
                 progress.train_seconds)
    return state
  finally:
    checkpoints.close()
    writer.close()


def _train_loop(run, state, step, data, workdir, checkpoints, writer, progress):
  """Runs steps until an end or a signal.

  Returns:
    (state, step, end reason or None for a signal, (step, evaluation) of the last evaluation in the loop
    or None).
  """
  config = run.config
  total = config.train.steps
  reason = _stop_reason(config, step, progress)
  if reason is None and jax.process_index() == 0:
    run_record.clear_done(workdir)
  if reason is not None:
    logging.info("The run in %s has already ended at step %d (%s); nothing to train", workdir, step, reason)
    return state, step, reason, None
  next_step = _input_feed(run, data, step)
  logging.info("Training %s for %d steps on %d device(s), batch %d, %d training images", config.objective,
               total, run.mesh.size, run.batch_size, len(data.train))
  guard = _NonfiniteGuard(config.train.max_nonfinite_in_a_row, writer)
  session_start, seconds_before = time.perf_counter(), progress.train_seconds
  timer_start, timer_step = session_start, step
  saved_step = step
  evaluated = None

  def save(at_step):
    nonlocal saved_step
    progress.train_seconds = seconds_before + time.perf_counter() - session_start
    checkpoints.save(at_step, state, progress.meta())
    saved_step = at_step

  with _StopRequest() as stop:
    while reason is None:
      state, metrics = next_step(state)
      step += 1
      guard.check(step, metrics)  # Reads the previous step's flag: the device stays one step ahead.
      progress.train_seconds = seconds_before + time.perf_counter() - session_start
      if step % config.train.log_every == 0 or step == total:
        now = time.perf_counter()
        rate = (step - timer_step) / max(now - timer_start, 1e-9)
        timer_start, timer_step = now, step
        scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
        scalars["learning_rate"] = float(run.schedule(step))
        scalars["steps_per_second"] = rate
        writer.scalars(step, scalars)
        progress.last_metrics = dict(scalars, step=step)
        eta, bound = (total - step) / max(rate, 1e-9), ""
        budget = 60.0 * (config.train.get("max_minutes") or 0.0)
        if budget and budget - progress.train_seconds < eta:  # The time budget ends the run first.
          eta, bound = max(budget - progress.train_seconds, 0.0), " (train.max_minutes)"
        logging.info("step %d/%d | %s | %.1f steps/s | ETA %s%s", step, total,
                     " ".join(f"{k} {scalars[k]:.4g}" for k in sorted(scalars)
                              if k not in ("steps_per_second", "nonfinite") and "/" not in k),
                     rate, time.strftime("%H:%M:%S", time.gmtime(eta)), bound)
      if config.train.eval_every and step % config.train.eval_every == 0 and step < total:
        evaluation = _evaluate_and_log(run, state, data, workdir, step, writer, progress, plots=False,
                                       train_metrics=progress.last_metrics)
        evaluated, report = (step, evaluation), evaluation[0]
        progress.history.append([step, round(progress.train_seconds, 3),
                                 float(report["map_average_ties"][str(config.hash.bits)])])
        if _agree(_plateaued(config, progress.history)):
          progress.stop_reason = reason = "plateau"
      if reason is None and step >= total:
        reason = "steps"
      if reason is None and (step % config.train.log_every == 0) and _agree(
          _stop_reason(config, step, progress) == "time"):
        reason = "time"
      if reason is not None:
        progress.stop_reason = reason
      if step % config.train.checkpoint_every == 0 or reason is not None:
        save(step)
      if reason is None and stop.reached(step):
        logging.warning("Received signal %s at step %d: saving a checkpoint and exiting",
                        stop.signal or "(on another process)", step)
        if saved_step != step:
          save(step)
        return state, step, None, evaluated
    guard.check(step + 1, None)
  return state, step, reason, evaluated


def _open_recorded_run(workdir, overrides, config, step, data):
  """Config, checkpoints, data and restored parameters of the recorded run in `workdir` (nothing written)."""
  config, run_config = run_record.config_for_evaluation(workdir, overrides or {}, config)
  validation.validate(config, training=False)
  checkpoints = checkpointing.Checkpoints(workdir, config.train.keep_checkpoints, read_only=True)
  available = checkpoints.steps()
  if not available:
    raise errors.CheckpointError(f"no checkpoint found in {checkpoints.directory} (available steps: none)")
  if step is not None and step not in available:
    raise errors.CheckpointError(f"no checkpoint at step {step} in {checkpoints.directory} "
                                 f"(available steps: {available})")
  data, splits = _load_data(config, data)
  if not run_record.check_splits(workdir, splits):
    logging.warning("%s has no %s: the splits cannot be checked", workdir, run_record.SPLITS_FILE)
  run = run_lib.create_run(config, data, training=False)
  restored = run_lib.restore(run, workdir, step=step, params_only=True, checkpoints=checkpoints)
  if restored is None:
    raise errors.CheckpointError(f"no readable checkpoint in {checkpoints.directory} (steps {available})")
  return config, run_config, data, run, restored


def evaluate_checkpoint(workdir, *, step: int | None = None, overrides: Mapping[str, str] | None = None,
                        config=None, data=None) -> epath.Path | None:
  """Evaluates the recorded run in `workdir` from its newest (or `step`) checkpoint.

  The config is the run's own record (`config.json`); `overrides` may change evaluation options only (see
  `run_record`). Only parameters and batch statistics are restored; nothing but the report is written,
  and only by process 0. A report under evaluation options other than the run's gets its own name.

  Args:
    workdir: the run directory.
    step: the checkpoint step (default: the newest readable one).
    overrides: {config key: value text} of evaluation options.
    config: an optional config (e.g. from `--config`), checked against the record.
    data: the protocol's splits if already loaded.

  Returns:
    The report's path (None on processes other than 0).
  """
  config, run_config, data, run, restored = _open_recorded_run(workdir, overrides, config, step, data)
  report, query_codes, db_codes = run.evaluate(restored.state, data)
  if jax.process_index() != 0:
    return None
  name = run_record.report_name(restored.step, config, run_config)
  extra = {"train_seconds": round(float(restored.meta.get("train_seconds", 0.0)), 3)}
  if restored.meta.get("last_metrics"):
    extra["train_metrics"] = restored.meta["last_metrics"]
  return evaluate.write_report(workdir, name, restored.step, report, config, data, query_codes, db_codes,
                               extra=extra)


def encode_checkpoint(workdir, split: str, *, output=None, step: int | None = None,
                      overrides: Mapping[str, str] | None = None, config=None, data=None) -> epath.Path | None:
  """Writes a split's greedy codes, bit-packed as uint8 rows (faiss IndexBinary layout), to an .npz.

  Args:
    workdir: the run directory (its config.json and checkpoints; see `evaluate_checkpoint`).
    split: "query", "database" or "train".
    output: the .npz path (default `<workdir>/codes_<split>_<step>.npz`; may be a URL).
    step, overrides, config, data: as in `evaluate_checkpoint`.

  Returns:
    The output path (None on processes other than 0).
  """
  if split not in SPLITS:
    raise errors.ConfigError(f"--split must be one of {SPLITS}, got {split!r}")
  config, _, data, run, restored = _open_recorded_run(workdir, overrides, config, step, data)
  chosen = getattr(data, split)
  codes = run.encode(restored.state, chosen.images)
  if jax.process_index() != 0:
    return None
  output = output or epath.Path(workdir) / f"codes_{split}_{restored.step}.npz"
  path = evaluate.write_codes(output, codes, chosen.labels, chosen.ids, restored.step, paths=chosen.paths)
  logging.info("Wrote %d %d-bit codes of split %s to %s", len(codes), codes.shape[1], split, path)
  return path
