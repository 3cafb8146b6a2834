r"""Results of experiment runs: statistics, tables, plots and RESULTS.md.

A results file holds settings (one per invocation of `drlih_jax.experiments`: a protocol, a config, the
machine), each with its runs and baselines, as JSON. This module turns them into markdown, and merges
several files (e.g. from several machines) into one RESULTS.md, which embeds the JSON it was rendered from:

    python -m drlih_jax.results RESULTS.md runs/h200/results_cifar10-2.json --results-md RESULTS.md \
      --plots-dir docs/results_plots --extra-md docs/results_notes.md
    python -m drlih_jax.results RESULTS.md --results-md RESULTS.md --plots-dir docs/results_plots \
      --extra-md docs/results_notes.md --check          # regenerates, compares byte for byte, writes nothing
    python -m drlih_jax.results RESULTS.md --table 4:map_average_ties   # one table of the 4th setting
    python -m drlih_jax.results RESULTS.md more_seeds.json --drop "<title of the superseded section>" ...

Statistics (`paired`): per setting and code length, the per-seed difference drlih - triplet of separately
trained models of the same seed; mean and sample sd (numpy, ddof 1); the two-sided exact sign test on the
non-zero differences (`scipy.stats.binomtest`) and the paired t-test (`scipy.stats.ttest_rel`). With n
pairs the sign test cannot go below 2^(1 - n) (0.25 for n = 3), so a few seeds can never be significant by
it; the tables say so. Pairs pooled over lengths share their seed (the same batches), and settings share
the CIFAR-10 images: such pairs are not independent, and no p-value is given across settings.

Reads the format written by the old `bench/reproduce.py` ("drlih-reproduce/1") as well; its runs lack
`code_usage`, `end` and `train_seconds`, which then show as not recorded.

Over 450 lines on purpose: the statistics, the tables, the plots and the file all read one JSON schema (a
setting, its runs and baselines), and keeping its readers together makes a schema change one edit here.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import textwrap
from typing import Iterable, Sequence

from etils import epath
import numpy as np
from scipy import stats

FORMAT = "drlih-results/2"
READABLE_FORMATS = ("drlih-reproduce/1", FORMAT)
BEGIN = "<!-- reproduce-results-json"
END = "reproduce-results-json -->"
METRICS = (("map", "mAP@all (stable ties)"), ("map_at_1000", "mAP@1000 (stable ties)"),
           ("precision_radius2", "precision within Hamming radius 2"),
           ("map_average_ties", "mAP@all (tie-aware)"))
PAIRED_METRICS = (("map_average_ties", "mAP@all, tie-aware"), ("map", "mAP@all, stable"))
SUMMARY_METRIC = "map_average_ties"
FEATURE_LABELS = {"pixels": "pixels", "triplet": "triplet-model features"}
OBJECTIVE_ORDER = {"drlih": 0, "triplet": 1, "official": 2}
SIGNIFICANCE = 0.05


# --------------------------------------------------------------------------------------------------
# Statistics.


def mean_sd(values: Iterable[float | None]) -> tuple[float, float | None, int]:
  """(mean, sample sd (ddof 1; None for one value), count) of the finite values."""
  vals = np.asarray([float(v) for v in values if v is not None and np.isfinite(float(v))], np.float64)
  if not len(vals):
    return float("nan"), None, 0
  sd = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
  return float(np.mean(vals)), sd, int(len(vals))


def sign_test(differences: Sequence[float]) -> dict:
  """Two-sided exact sign test of paired differences; zero differences are dropped.

  Returns:
    {"higher": count > 0, "lower": count < 0, "ties": count == 0, "p": binomtest p-value (nan without
    non-zero differences), "min_p": the smallest p any outcome of that many pairs can give}.
  """
  diffs = np.asarray(differences, np.float64)
  higher, lower = int(np.sum(diffs > 0)), int(np.sum(diffs < 0))
  n = higher + lower
  p = float(stats.binomtest(higher, n, 0.5).pvalue) if n else float("nan")
  return {"higher": higher, "lower": lower, "ties": int(len(diffs) - n), "p": p, "min_p": min_sign_test_p(n)}


def min_sign_test_p(n: int) -> float:
  """The smallest two-sided sign-test p-value of n pairs (all on one side): min(1, 2^(1 - n))."""
  return float("nan") if n == 0 else min(1.0, 2.0 ** (1 - n))


def paired_t_test_p(first: Sequence[float], second: Sequence[float]) -> float:
  """Two-sided paired t-test p-value (`scipy.stats.ttest_rel`); nan with fewer than 2 pairs or no spread."""
  a, b = np.asarray(first, np.float64), np.asarray(second, np.float64)
  if len(a) < 2 or np.all(a - b == (a - b)[0]):
    return float("nan")
  return float(stats.ttest_rel(a, b).pvalue)


def paired_values(setting: dict, first: str, second: str, metric: str) -> dict[int, list[tuple]]:
  """{trained length: [(seed, first value, second value)]} of separately trained runs of the same seed."""
  by_key: dict[tuple[str, int, int], float] = {}
  for run in setting.get("runs", []):
    value = run["metrics"].get(metric, {}).get(str(run["bits"]))
    if run["separate"] and value is not None:
      by_key[(run["objective"], run["bits"], run["seed"])] = value
  out: dict[int, list[tuple]] = {}
  for (objective, bits, seed), value in sorted(by_key.items()):
    if objective == first and (second, bits, seed) in by_key:
      out.setdefault(bits, []).append((seed, value, by_key[(second, bits, seed)]))
  return out


def seed_means(pairs: Sequence[tuple]) -> list[tuple]:
  """[(seed, first, second)] averaged over the entries of each seed (e.g. over code lengths): one per seed."""
  by_seed: dict[int, list[tuple]] = {}
  for seed, first, second in pairs:
    by_seed.setdefault(seed, []).append((first, second))
  return [(seed, float(np.mean([f for f, _ in v])), float(np.mean([s for _, s in v])))
          for seed, v in sorted(by_seed.items())]


def paired(pairs: Sequence[tuple]) -> dict:
  """Statistics of [(seed, first, second)]: differences, mean, sd, sign test, paired t-test."""
  seeds = [p[0] for p in pairs]
  first = [p[1] for p in pairs]
  second = [p[2] for p in pairs]
  diffs = [a - b for a, b in zip(first, second)]
  mean, sd, n = mean_sd(diffs)
  return {"seeds": seeds, "differences": diffs, "n": n, "mean": mean, "sd": sd, "sign": sign_test(diffs),
          "t_p": paired_t_test_p(first, second)}


# --------------------------------------------------------------------------------------------------
# Formatting.


def format_mean(mean: float, sd: float | None, n: int, digits: int = 4) -> str:
  """`mean ± sd (n)` ("–" without values; no spread for one value)."""
  if n == 0:
    return "–"
  spread = f" ± {sd:.{digits}f}" if sd is not None else ""
  return f"{mean:.{digits}f}{spread} ({n})"


def format_p(p: float) -> str:
  return "–" if not np.isfinite(p) else f"{p:.2g}"


def _small_n_note(stat: dict) -> str:
  n = stat["sign"]["higher"] + stat["sign"]["lower"]
  if n and stat["sign"]["min_p"] > SIGNIFICANCE:
    return f"n = {n}: the sign test cannot go below {format_p(stat['sign']['min_p'])}"
  return ""


# --------------------------------------------------------------------------------------------------
# Tables.


def _baseline_label(method: str, source: str) -> str:
  return f"{method.upper()} ({source})"


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
    for entry in (run.get("feature_baselines") or {}).get("entries", []):
      label = _baseline_label(entry["method"], f"{run['objective']} run's own features")
      for metric, per_length in entry.get("metrics", {}).items():
        for length, value in per_length.items():
          add(label, metric, length, value)
  for baseline in setting.get("baselines", []):
    for entry in baseline["entries"]:
      if "metrics" not in entry:
        continue
      label = _baseline_label(entry["method"], FEATURE_LABELS.get(baseline["features"], baseline["features"]))
      for metric, per_length in entry["metrics"].items():
        for length, value in per_length.items():
          add(label, metric, length, value)
  return rows


def _row_order(label: str) -> tuple:
  head = label.split(",")[0].split(" ")[0]
  if head in OBJECTIVE_ORDER:
    return (0, OBJECTIVE_ORDER[head], "prefix" in label, label)
  method, _, source = label.partition(" ")
  source_head = source.strip("()").split(" ")[0]
  return (1, "pixels" not in source, OBJECTIVE_ORDER.get(source_head, 9), source, method != "LSH")


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
    cells = [format_mean(*mean_sd(per_length.get(L, []))) for L in lengths]
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  return lines


def paired_table(setting: dict, first: str = "drlih", second: str = "triplet") -> list[str]:
  """`first - second` per metric and length, paired by seed, with its statistics; [] without pairs."""
  lines = []
  for metric, title in PAIRED_METRICS:
    by_length = paired_values(setting, first, second, metric)
    groups = [(f"{L} bits", by_length[L]) for L in sorted(by_length)]
    if len(groups) > 1:
      pooled = [p for L in sorted(by_length) for p in by_length[L]]
      groups.append(("all lengths (pairs share seeds)", pooled))
      groups.append(("mean over lengths, per seed", seed_means(pooled)))
    for name, pairs in groups:
      stat = paired(pairs)
      per_seed = ", ".join(f"s{s} {d:+.4f}" for s, d in zip(stat["seeds"], stat["differences"]))
      spread = f" ± {stat['sd']:.4f}" if stat["sd"] is not None else ""
      sign = stat["sign"]
      ties = f" ({sign['ties']} tied)" if sign["ties"] else ""
      lines.append(f"| {title} | {name} | {per_seed} | {stat['mean']:+.4f}{spread} | "
                   f"{sign['higher']}/{stat['n']}{ties} | {format_p(sign['p'])} | {format_p(stat['t_p'])} | "
                   f"{_small_n_note(stat) or '–'} |")
  if not lines:
    return []
  header = [f"| metric | lengths | {first} − {second} per seed | mean ± sd | {first} higher | sign test p | "
            "paired t-test p | note |", "|---|---|---|---|---|---|---|---|"]
  return header + lines


def code_usage_table(setting: dict) -> list[str]:
  """Per run: distinct database codes / mean tie-group size at each evaluated length ([] if none recorded)."""
  runs = [r for r in setting.get("runs", []) if r.get("code_usage")]
  if not runs:
    return []
  lengths = sorted({int(L) for r in runs for L in r["code_usage"]})
  lines = ["| run | " + " | ".join(f"{L} bits" for L in lengths) + " |", "|---|" + "---|" * len(lengths)]
  for run in sorted(runs, key=_run_order):
    cells = []
    for L in lengths:
      usage = run["code_usage"].get(str(L))
      cells.append("–" if usage is None else f"{usage['distinct']:,} / {usage['mean_tie_group']:,.1f}")
    lines.append(f"| {run['name']} | " + " | ".join(cells) + " |")
  return lines


def end_table(setting: dict) -> list[str]:
  """Per run: the step training ended at, why (DONE), and its training seconds ([] if not recorded)."""
  runs = [r for r in setting.get("runs", []) if r.get("end")]
  if not runs:
    return []
  lines = ["| run | steps | ended by | training s |", "|---|---|---|---|"]
  for run in sorted(runs, key=_run_order):
    end = run["end"]
    lines.append(f"| {run['name']} | {end['step']:,} | {end['reason']} | {end['train_seconds']:.0f} |")
  return lines


def wall_table(setting: dict) -> list[str]:
  """Mean wall seconds per run, by objective and trained length (old results: `wall_s`)."""
  groups: dict[tuple[str, int], list[float]] = {}
  for run in setting.get("runs", []):
    if run.get("end"):
      continue  # New results show the training seconds in the end table.
    groups.setdefault((run["objective"], run["bits"]), []).append(run.get("wall_s"))
  if not groups:
    return []
  lines = ["| objective | trained bits | wall s per run (mean ± sd, n) |", "|---|---|---|"]
  for (objective, bits), values in sorted(groups.items()):
    lines.append(f"| {objective} | {bits} | {format_mean(*mean_sd(values), digits=1)} |")
  return lines


def _run_order(run: dict) -> tuple:
  return (OBJECTIVE_ORDER.get(run["objective"], 9), run["bits"], run["seed"])


def curve_seconds(point: dict) -> float | None:
  """The x of a learning-curve point: training seconds (new results) or wall seconds (old results)."""
  value = point.get("train_seconds")
  return value if value is not None else point.get("wall_s")


def curve_value(point: dict) -> float | None:
  """The plotted value of a learning-curve point: tie-aware mAP@all (independent of the database order)."""
  value = point.get("map_average_ties_trained")
  return value if value is not None else point.get("map_trained")


# --------------------------------------------------------------------------------------------------
# A setting's section, the summary, the file.


def slug(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()[:80]


def _wrapped(title: str, width: int = 70) -> str:
  """A plot title in lines of at most `width` characters (a section title is often wider than the plot)."""
  return "\n".join(textwrap.wrap(title, width))


def setting_title(setting: dict) -> str:
  if setting.get("label"):
    return setting["label"]
  steps = f", {setting['steps']} steps" if setting.get("steps") else ""
  return f"{setting['protocol']}{steps}, {setting['machine']['label']}"


def plot_names(setting: dict) -> list[str]:
  """The file names of a setting's plots (mAP against bits; learning curves when a run has two points)."""
  names = [f"{slug(setting_title(setting))}_map_vs_bits.png"]
  if any(sum(curve_seconds(p) is not None for p in r.get("curve", [])) > 1 for r in setting.get("runs", [])):
    names.append(f"{slug(setting_title(setting))}_learning_curves.png")
  return names


def write_plots(setting: dict, plots_dir: str) -> list[str]:
  """Draws mAP@all against bits (mean ± sd per row) and the learning curves; returns the paths."""
  from drlih_jax import reports  # pylint: disable=g-import-not-at-top  (matplotlib loads slowly)
  names = plot_names(setting)
  paths = []
  rows = table_rows(setting)
  fig, ax = reports.new_figure(figsize=(6.5, 4.5))
  for label in sorted(rows, key=_row_order):
    per_length = rows[label].get("map", {})
    if not per_length:
      continue
    lengths = sorted(per_length)
    spread = [mean_sd(per_length[L]) for L in lengths]
    ax.errorbar(lengths, [s[0] for s in spread], yerr=[s[1] or 0.0 for s in spread], marker="o", capsize=3,
                label=label)
  ax.set_xticks(sorted({L for r in rows.values() for L in r.get("map", {})}))
  ax.set_xlabel("code length (bits)")
  ax.set_ylabel("mAP@all")
  ax.set_title(_wrapped(setting_title(setting)), fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  paths.append(reports.save_figure(fig, str(epath.Path(plots_dir) / names[0])))
  if len(names) > 1:
    fig, ax = reports.new_figure(figsize=(6.5, 4.5))
    for run in setting["runs"]:
      pts = [p for p in run.get("curve", []) if curve_seconds(p) is not None and curve_value(p) is not None]
      if len(pts) > 1:
        ax.plot([curve_seconds(p) for p in pts], [curve_value(p) for p in pts], marker=".", label=run["name"])
    new = any(p.get("train_seconds") is not None for r in setting["runs"] for p in r.get("curve", []))
    ax.set_xlabel("training seconds (summed over sessions)" if new else "wall time since the run started (s)")
    ax.set_ylabel("mAP@all (tie-aware) at the trained length")
    ax.set_title(_wrapped(f"learning curves: {setting_title(setting)}"), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    paths.append(reports.save_figure(fig, str(epath.Path(plots_dir) / names[1])))
  return paths


def _config_summary(flat: dict) -> str:
  keys = ("model.backbone", "model.widths", "model.blocks_per_stage", "model.feature_dim", "model.dtype",
          "model.cell", "model.hidden", "hash.group", "input.classes_per_batch", "input.images_per_class",
          "input.augment", "rl.rollouts", "rl.reward", "rl.beta", "rl.triplets_per_anchor", "optim.name",
          "optim.learning_rate", "optim.weight_decay", "optim.warmup_steps", "train.steps",
          "train.eval_every", "train.max_minutes", "train.stop_min_gain", "train.stop_window")
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


def _overrides_text(setting: dict) -> str:
  overrides = setting.get("overrides") or []
  if not overrides:
    return ""
  if setting.get("runner"):
    return " with " + " ".join(f"`--config.{o}`" for o in overrides)
  return f" with `--set {' '.join(overrides)}`"


def setting_markdown(setting: dict, plot_links: Sequence[tuple[str, str]] = ()) -> list[str]:
  """The RESULTS.md section of one setting; `plot_links` = [(name, relative link)]."""
  lines = [f"## {setting_title(setting)}", ""]
  machine = setting["machine"]
  lines += [f"- Protocol `{setting['protocol']}`: {setting.get('split_sizes', '')}".rstrip(": "),
            f"- Machine: {machine['label']} (platform {machine['platform']}, host CPU {machine['host_cpu']}, "
            f"{machine['host_cores']} cores; jax {machine['jax']}, Python {machine['python']})",
            f"- Data: {setting['data']['note']}; read with Pillow from `{setting['data']['root_display']}`",
            f"- Config: `{setting['config']}`" + _overrides_text(setting),
            f"- Recipe: {_config_summary(setting.get('config_flat', {}))}",
            f"- Seeds {setting['seeds']}; the data split is the same for every seed (`dataset.split_seed=0`)",
            f"- Database order of the stable metrics: {_orders_text(setting)}",
            f"- Run at {setting['created']} with:", "", "```bash", setting["command"], "```", ""]
  if setting.get("notes"):
    lines += [setting["notes"], ""]
  rows = table_rows(setting)
  for metric, title in METRICS:
    table = markdown_table(rows, metric)
    if table:
      lines += [f"**{title}** (mean ± sample sd over seeds, (n) = number of seeds)", ""] + table + [""]
  for first, second in (("drlih", "triplet"), ("official", "triplet")):
    table = paired_table(setting, first, second)
    if table:
      lines += [f"**{first} − {second}, paired by seed** (separately trained models of the same seed; sign "
                "test: two-sided, exact, on the non-zero differences; paired t-test: two-sided; the "
                "\"all lengths\" rows pool pairs that share a seed, so they are not independent; the \"per seed\" "
                "rows average each seed's differences over its lengths)", ""]
      lines += table + [""]
  usage = code_usage_table(setting)
  if usage:
    lines += ["**Code usage** of the database codes (distinct codes / mean tie-group size, "
              "sum_c n_c^2 / N: the expected number of database images sharing a random one's code)", ""]
    lines += usage + [""]
  elif setting.get("runs"):
    lines += ["**Code usage**: not recorded for these runs (trained before the reports stored `code_usage`).", ""]
  end = end_table(setting)
  if end:
    lines += ["**End of training** (from each run's DONE: the step reached, the rule that ended it, the "
              "seconds of its training loop over every session, evaluations inside the loop included)", ""]
    lines += end + [""]
  wall = wall_table(setting)
  if wall:
    lines += ["**Wall time** per run (data from the in-process cache, compilation, training and every "
              "evaluation)", ""] + wall + [""]
  curves = [r for r in setting.get("runs", []) if len(r.get("curve", [])) > 1]
  if curves:
    lines += ["**Learning curves** (step: mAP@all of the trained length at each evaluation, stable / tie-aware; "
              + ("training seconds" if any(p.get("train_seconds") is not None for r in curves for p in r["curve"])
                 else "seconds since the run started")
              + "; the tie-aware value does not depend on the database order):", ""]
    for run in curves:
      pts = ", ".join(f"{p['step']}: {p['map_trained']:.4f}"
                      + (f" / {p['map_average_ties_trained']:.4f}" if p.get("map_average_ties_trained")
                         is not None else "")
                      + (f" @ {curve_seconds(p):.0f} s" if curve_seconds(p) is not None else "")
                      for p in run["curve"] if p.get("map_trained") is not None)
      lines.append(f"- {run['name']}: {pts}")
    lines.append("")
  skipped = [f"{b['name']} {e['method']} {e['bits']} bits: {e['skipped']}" for b in setting.get("baselines", [])
             for e in b["entries"] if "skipped" in e]
  if skipped:
    lines += ["Baselines not computed: " + "; ".join(skipped), ""]
  if plot_links:
    lines += ["Plots: " + ", ".join(f"[{name}]({link})" for name, link in plot_links), ""]
  return lines


def summary_markdown(settings: Sequence[dict], first: str = "drlih", second: str = "triplet") -> list[str]:
  """drlih − triplet per setting (tie-aware mAP@all): every pair of the setting, then one value per seed."""
  rows, total, higher = [], 0, 0
  for setting in settings:
    pairs = [p for _, ps in sorted(paired_values(setting, first, second, SUMMARY_METRIC).items()) for p in ps]
    if not pairs:
      continue
    stat, seeds = paired(pairs), paired(seed_means(pairs))
    lengths = sorted({int(r["bits"]) for r in setting["runs"] if r["separate"]})
    total += stat["n"]
    higher += stat["sign"]["higher"]
    spread = f" ± {stat['sd']:.4f}" if stat["sd"] is not None else ""
    per_seed = ", ".join(f"s{s} {d:+.4f}" for s, d in zip(seeds["seeds"], seeds["differences"]))
    rows.append(f"| {setting_title(setting)} | {'/'.join(map(str, lengths))} | {stat['n']} | "
                f"{stat['mean']:+.4f}{spread} | {stat['sign']['higher']}/{stat['n']} | "
                f"{format_p(stat['sign']['p'])} | {format_p(stat['t_p'])} | {per_seed} | "
                f"{format_p(seeds['sign']['p'])} | {format_p(seeds['t_p'])} |")
  if not rows:
    return []
  return [f"## {first} − {second}, per setting", "",
          f"Tie-aware mAP@all of separately trained models, paired by seed. \"Pairs\": every length and seed "
          f"of the setting; their tests treat the pairs as independent, but the pairs of one seed at different "
          f"lengths share that seed's batches. \"Per seed\": the seed's differences averaged over its lengths, "
          f"one value per seed, which is independent across seeds; with 3 seeds its sign test cannot go below "
          f"0.25. Across settings, the protocols share the CIFAR-10 images and the seeds, so no p-value is given "
          f"for all settings together ({higher} of {total} pairs favour {first}, but those pairs are not "
          f"independent).", "",
          f"| setting | bits | pairs | {first} − {second} (mean ± sd) | {first} higher | sign test p | "
          f"paired t-test p | per seed (mean over lengths) | sign test p | paired t-test p |",
          "|---|---|---|---|---|---|---|---|---|---|"] + rows + [""]


INTRO = """# Results

Retrieval results of this implementation on CIFAR-10. This file is rendered by `drlih_jax/results.py` from
the JSON embedded at its end (written by `python -m drlih_jax.experiments`, or by its predecessor
`bench/reproduce.py` for the sections that name it); every number is measured, nothing is copied from the
paper. Regenerate it, or check that it matches its JSON byte for byte, with:

```bash
python -m drlih_jax.results RESULTS.md --results-md RESULTS.md --plots-dir docs/results_plots \\
  --extra-md docs/results_notes.md --check
```

How to read the tables:
- Rows `drlih` / `triplet` / `official`: one model trained per code length (the objective of
  `--config.objective`). Rows `..., prefix of K-bit model`: the first L bits of the greedy code of one model
  trained at K bits ("one model, many lengths").
- `LSH (pixels)` / `ITQ (pixels)`: unsupervised baselines on the raw pixels in [0, 1] (ITQ on their 256
  leading principal components, which contain its own PCA step). `LSH`/`ITQ (triplet-model features)`: the
  same baselines on the backbone feature v of the trained `triplet` model of the same seed (its longest
  trained length), fitted on the training split: an unsupervised binarisation of the learned feature,
  against which the agent's learned binarisation is compared. `LSH`/`ITQ (drlih run's own features)` and
  `(triplet run's own features)`: the same, on the feature of each run itself, at its trained length.
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
- Paired tables: per seed, the difference between the two objectives' separately trained models. With 3
  seeds the sign test cannot go below 0.25: a setting of 3 pairs cannot be significant by it.
- Data: the CIFAR-10 JPEG copy in `../shared/data` is lossy re-encoded (JPEG quality 75, 4:2:0 chroma), so
  these numbers are close to, not identical with, numbers on the original CIFAR-10 pixels.
"""


def render(settings: Sequence[dict], md_path, plots_dir=None, intro: str = INTRO, extra: str = "") -> str:
  """The text of RESULTS.md for `settings` (plots linked from `plots_dir`, relative to `md_path`)."""
  md_dir = epath.Path(md_path).parent
  lines = [intro.rstrip(), ""]
  for setting in settings:
    links = []
    if plots_dir is not None:
      links = [(name, _relative(epath.Path(plots_dir) / name, md_dir)) for name in plot_names(setting)]
    lines += setting_markdown(setting, links)
  lines += summary_markdown(settings)
  if extra:
    lines += [extra.rstrip(), ""]
  payload = json.dumps({"format": FORMAT, "settings": list(settings)}, indent=None, sort_keys=True)
  # "--" may not appear inside an HTML comment; it only occurs inside JSON strings, where "\u002d" reads back
  # as "-".
  lines += [BEGIN, payload.replace("--", "-\\u002d"), END, ""]
  return "\n".join(lines)


def _relative(path: epath.Path, start: epath.Path) -> str:
  if "://" in str(path) or "://" in str(start):
    return str(path)
  return os.path.relpath(str(path), str(start))


def write_results_markdown(settings: Sequence[dict], path, plots_dir=None, intro: str = INTRO,
                           extra: str = "") -> epath.Path:
  """Writes RESULTS.md (and, with `plots_dir`, draws its plots there); returns its path."""
  if plots_dir is not None:
    for setting in settings:
      write_plots(setting, str(plots_dir))
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(render(settings, path, plots_dir, intro, extra))
  return path


def read_payload(path) -> dict:
  """The results JSON of a results file or of a RESULTS.md (its embedded JSON)."""
  text = epath.Path(path).read_text()
  if str(path).endswith(".md"):
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
      raise ValueError(f"{path}: no embedded results JSON (was it written by drlih_jax.results?)")
    text = text[start + len(BEGIN):end]
  payload = json.loads(text)
  if payload.get("format") not in READABLE_FORMATS:
    raise ValueError(f"{path}: not a results file (format {payload.get('format')!r}, expected one of "
                     f"{READABLE_FORMATS})")
  return payload


def load_results(paths: Sequence) -> list[dict]:
  """The settings of result JSONs and/or RESULTS.md files, in order; a setting seen twice is kept once."""
  settings, seen = [], set()
  for path in paths:
    for setting in read_payload(path)["settings"]:
      key = (setting["protocol"], setting.get("steps"), setting["machine"]["label"], setting.get("label"),
             setting.get("created"))
      if key not in seen:
        seen.add(key)
        settings.append(setting)
  return settings


def table_text(setting: dict, metric: str) -> str:
  """One metric table of one setting, as RESULTS.md shows it (title line, blank line, table)."""
  titles = dict(METRICS)
  if metric not in titles:
    raise ValueError(f"unknown metric {metric!r}; choose from {sorted(titles)}")
  table = markdown_table(table_rows(setting), metric)
  return "\n".join([f"**{titles[metric]}** (mean ± sample sd over seeds, (n) = number of seeds)", ""] + table)


def first_difference(a: str, b: str) -> str:
  """Where two texts first differ, as one line (for --check)."""
  lines_a, lines_b = a.splitlines(), b.splitlines()
  for i, (x, y) in enumerate(zip(lines_a, lines_b)):
    if x != y:
      return f"line {i + 1}: file {x[:120]!r}, regenerated {y[:120]!r}"
  return f"the file has {len(lines_a)} lines, the regenerated text {len(lines_b)}"


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("inputs", nargs="+", help="result JSONs and/or RESULTS.md files, merged in order")
  parser.add_argument("--results-md", default=None, help="the RESULTS.md written (or compared with --check)")
  parser.add_argument("--plots-dir", default=None, help="where plots go (none without it)")
  parser.add_argument("--extra-md", default=None, help="markdown appended after the sections")
  parser.add_argument("--check", action="store_true", help="compare with --results-md byte for byte; write nothing")
  parser.add_argument("--drop", action="append", default=[], metavar="TITLE",
                      help="leave out the setting with this section title (e.g. one superseded by the same "
                           "runs with more seeds); repeatable")
  parser.add_argument("--table", default=None, metavar="N:METRIC",
                      help=f"print one table of the N-th setting (1-based); METRIC in {[m for m, _ in METRICS]}")
  args = parser.parse_args(argv)
  try:
    settings = load_results(args.inputs)
  except (OSError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  titles = [setting_title(s) for s in settings]
  unknown = [title for title in args.drop if title not in titles]
  if unknown:
    print(f"error: --drop {unknown[0]!r} names no setting; the section titles are {titles}", file=sys.stderr)
    return 1
  settings = [s for s, title in zip(settings, titles) if title not in args.drop]
  if args.table:
    index, _, metric = args.table.partition(":")
    print(table_text(settings[int(index) - 1], metric))
    return 0
  if not args.results_md:
    parser.error("--results-md is required (or --table)")
  extra = epath.Path(args.extra_md).read_text() if args.extra_md else ""
  if args.check:
    current = epath.Path(args.results_md).read_text() if epath.Path(args.results_md).exists() else ""
    regenerated = render(settings, args.results_md, args.plots_dir, extra=extra)
    if current != regenerated:
      print(f"{args.results_md} differs from its regeneration: {first_difference(current, regenerated)}",
            file=sys.stderr)
      return 1
    print(f"{args.results_md}: regenerated byte for byte ({len(settings)} settings)")
    return 0
  write_results_markdown(settings, args.results_md, args.plots_dir, extra=extra)
  print(f"wrote {args.results_md} ({len(settings)} settings)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
