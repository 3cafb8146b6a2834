r"""Learning curves with code usage and the policy-gradient statistics of runs, from their eval reports.

    python scripts/policy_curves.py runs/c102_plateau/cifar10-2/*_32b_s* \
      --json docs/results_policy_curves_c102_plateau.json

For every `eval_<step>.json` of each run directory (its own evaluation options): the step, the training
seconds, tie-aware mAP@all of the full code, the distinct database codes and mean tie-group size at every
evaluated length, and the last logged training metrics before that evaluation (`train_metrics`: entropy,
advantage spread, and per action group t the mean reward, advantage spread and entropy). Prints one
markdown table per run and, with --json, writes them all (the committed record that RESULTS.md's notes
quote).
"""

from __future__ import annotations

import argparse
import json
from typing import Sequence

from etils import epath

from drlih_jax import run_record

_GROUP_KEYS = ("group_reward", "group_advantage_std", "group_entropy")


def run_curve(workdir: str) -> dict:
  """{"run", "done", "points": [...]} of one run directory."""
  root = epath.Path(workdir)
  points = []
  for step, path in run_record.own_reports(root):
    report = json.loads(path.read_text())
    bits = str(report["bits"])
    metrics = report.get("train_metrics") or {}
    groups = {key: {t.split("/")[1]: v for t, v in metrics.items() if t.startswith(key + "/")}
              for key in _GROUP_KEYS}
    points.append({
        "step": step, "train_seconds": report.get("train_seconds"),
        "map_average_ties": report["map_average_ties"][bits],
        "distinct_codes": {b: u["distinct"] for b, u in report["code_usage"].items()},
        "mean_tie_group": {b: u["mean_tie_group"] for b, u in report["code_usage"].items()},
        "entropy": metrics.get("entropy"), "advantage_std": metrics.get("advantage_std"),
        **{key: groups[key] or None for key in _GROUP_KEYS}})
  return {"run": root.name, "done": run_record.read_done(root),
          "points": points}


def _cell(value, fmt: str = "{:.3f}") -> str:
  return "-" if value is None else fmt.format(value)


def markdown(curve: dict) -> str:
  """One run's table."""
  lines = [f"{curve['run']} (end: {curve['done']})", "",
           "| step | train s | tie-aware mAP@all | distinct codes (by length) | mean tie group (full) | entropy | "
           "advantage sd | reward of groups 1/2/4/8 | advantage sd of groups 1/8 | entropy of groups 1/8 |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for p in curve["points"]:
    full = max(p["mean_tie_group"], key=int)
    rewards = p["group_reward"] or {}
    adv, ent = p["group_advantage_std"] or {}, p["group_entropy"] or {}
    lines.append(
        f"| {p['step']} | {_cell(p['train_seconds'], '{:.0f}')} | {p['map_average_ties']:.4f} | "
        f"{'/'.join(str(p['distinct_codes'][b]) for b in sorted(p['distinct_codes'], key=int))} | "
        f"{p['mean_tie_group'][full]:.0f} | {_cell(p['entropy'])} | {_cell(p['advantage_std'])} | "
        f"{'/'.join(_cell(rewards.get(t)) for t in ('1', '2', '4', '8')) if rewards else '-'} | "
        f"{_cell(adv.get('1'))}/{_cell(adv.get('8'))} | {_cell(ent.get('1'))}/{_cell(ent.get('8'))} |")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--json", default=None, help="also write the curves to this JSON file")
  args = parser.parse_args(argv)
  curves = [run_curve(w) for w in args.workdirs]
  print("\n\n".join(markdown(c) for c in curves))
  if args.json:
    epath.Path(args.json).write_text(json.dumps(curves, indent=1, sort_keys=True) + "\n")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
