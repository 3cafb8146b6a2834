"""drlih_jax.results: statistics against hand counts, tables, merging, and byte-identical regeneration."""

import json
import math
import os
import re

import numpy as np
import pytest

from drlih_jax import results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_JSON = os.path.join(REPO, "tests", "data", "results_cifar10_2_1500steps.json")

# The tie-aware table of the "CPU, 5x longer: cifar10-2" section exactly as bench/reproduce.py wrote it into
# RESULTS.md (commit 31a651a), before drlih_jax.results existed.
STORED_TABLE = """**mAP@all (tie-aware)** (mean ± sample sd over seeds, (n) = number of seeds)

| method | 12 bits | 24 bits | 32 bits |
|---|---|---|---|
| drlih | – | – | 0.2873 ± 0.0053 (3) |
| drlih, prefix of 32-bit model | 0.2687 ± 0.0053 (3) | 0.2856 ± 0.0052 (3) | – |
| triplet | – | – | 0.2765 ± 0.0060 (3) |
| triplet, prefix of 32-bit model | 0.2746 ± 0.0055 (3) | 0.2762 ± 0.0059 (3) | – |"""


def test_mean_sd_against_hand_values():
  mean, sd, n = results.mean_sd([1.0, 2.0, 4.0, None, float("nan")])
  # mean 7/3; deviations -4/3, -1/3, 5/3: squares 16/9 + 1/9 + 25/9 = 42/9, over n - 1 = 2.
  assert (n, mean) == (3, pytest.approx(7 / 3)) and sd == pytest.approx(math.sqrt(42 / 9 / 2))
  assert results.mean_sd([0.5]) == (0.5, None, 1)
  assert results.mean_sd([])[2] == 0


def test_sign_test_against_hand_counts():
  # 10 of 12 higher: P(X >= 10) = (C(12,10) + C(12,11) + C(12,12)) / 2^12 = 79 / 4096, doubled.
  stat = results.sign_test([0.1] * 10 + [-0.1] * 2)
  assert (stat["higher"], stat["lower"], stat["ties"]) == (10, 2, 0)
  assert stat["p"] == pytest.approx(2 * 79 / 4096)
  # 11 of 12: 2 * 13 / 4096 (the cifar10-2 300-step setting).
  assert results.sign_test([1.0] * 11 + [-1.0])["p"] == pytest.approx(26 / 4096)
  # 3 of 3: 2 / 8, which is also the smallest p three pairs can give; zero differences are dropped.
  stat = results.sign_test([0.01, 0.02, 0.0, 0.03])
  assert (stat["higher"], stat["ties"], stat["p"], stat["min_p"]) == (3, 1, pytest.approx(0.25), 0.25)
  assert results.sign_test([1.0, -1.0])["p"] == 1.0
  assert math.isnan(results.sign_test([0.0, 0.0])["p"])
  assert [results.min_sign_test_p(n) for n in (1, 3, 5, 6)] == [1.0, 0.25, 0.0625, 0.03125]


def test_paired_t_test_against_the_closed_form():
  # Differences 0.01, 0.02, 0.03: mean 0.02, sd 0.01, t = 0.02 / (0.01 / sqrt(3)) = 2 sqrt(3), 2 degrees of
  # freedom, whose CDF is 1/2 + t / (2 sqrt(2 + t^2)): two-sided p = 1 - t / sqrt(2 + t^2) = 1 - sqrt(12/14).
  first, second = [0.51, 0.62, 0.73], [0.50, 0.60, 0.70]
  assert results.paired_t_test_p(first, second) == pytest.approx(1 - math.sqrt(12 / 14), rel=1e-9)
  assert math.isnan(results.paired_t_test_p([0.5], [0.4]))
  assert math.isnan(results.paired_t_test_p([0.5, 0.6], [0.4, 0.5]))  # No spread: t is undefined.


def _run(objective, bits, seed, values, separate=True, prefix_source=False, **extra):
  """A fabricated run: values = {length: (mAP@all, mAP@1000, P@r2)}; tie-aware = mAP@all."""
  metric = lambda i: {str(k): v[i] for k, v in values.items()}
  return {"name": f"{objective}_{bits}b_s{seed}", "objective": objective, "bits": bits, "seed": seed,
          "separate": separate, "prefix_source": prefix_source, "wall_s": 10.0, "curve": [],
          "metrics": {"map": metric(0), "map_at_1000": metric(1), "precision_radius2": metric(2),
                      "map_average_ties": metric(0)}, **extra}


def _setting(label, runs, baselines=()):
  return {"protocol": "cifar10-1", "steps": 100, "label": label, "notes": "", "seeds": [0, 1, 2],
          "config": "configs/cifar10_resnet.py:cifar10-1,cpu", "overrides": [], "config_flat": {},
          "split_sizes": "5000 training images, 1000 queries, 59000 database images",
          "data": {"root_display": "runs/data/cifar10", "note": "lossy re-encoding"},
          "machine": {"label": "test machine", "platform": "cpu", "host_cpu": "x", "host_cores": 2, "jax": "0",
                      "python": "3"},
          "command": "python -m drlih_jax.experiments --fake", "created": "2026-01-01 00:00 UTC",
          "runs": list(runs), "baselines": list(baselines)}


def _cells(text, title, row):
  """The cells of `row` in the markdown table under `**title**`."""
  for line in text[text.index(f"**{title}"):].splitlines():
    if line.startswith(f"| {row} |"):
      return [c.strip() for c in line.strip("|").split("|")][1:]
  raise AssertionError(f"row {row!r} not found under {title!r}")


def test_tables_means_spreads_and_baseline_rows(tmp_path):
  own = lambda value: {"entries": [{"method": "itq", "bits": 32, "metrics": {
      "map": {"32": value}, "map_at_1000": {"32": value}, "precision_radius2": {"32": value},
      "map_average_ties": {"32": value}}}]}
  runs = [
      _run("drlih", 32, 0, {32: (0.80, 0.90, 0.70)}, feature_baselines=own(0.6)),
      _run("drlih", 32, 1, {32: (0.82, 0.92, 0.70)}, feature_baselines=own(0.7)),
      _run("drlih", 32, 2, {32: (0.87, 0.94, 0.73)}),
      _run("triplet", 32, 0, {32: (0.50, 0.60, 0.40)}),
      _run("triplet", 32, 1, {32: (0.60, 0.70, 0.40)}),
      _run("drlih", 64, 0, {32: (0.75, 0.85, 0.65), 64: (0.9, 0.9, 0.9)}, separate=False, prefix_source=True),
  ]
  pixels = {"name": "pixels_s0", "features": "pixels", "seed": 0, "entries": [
      {"method": "itq", "bits": 32, "metrics": {"map": {"32": 0.25}, "map_at_1000": {"32": 0.3},
                                                "precision_radius2": {"32": 0.2}, "map_average_ties": {"32": 0.25}}},
      {"method": "itq", "bits": 64, "skipped": "too long"},
      {"method": "lsh", "bits": 64, "metrics": {"map": {"64": 0.3}, "map_at_1000": {"64": 0.3},
                                                "precision_radius2": {"64": 0.2}, "map_average_ties": {"64": 0.3}}}]}
  path = tmp_path / "RESULTS.md"
  results.write_results_markdown([_setting("fabricated", runs, [pixels])], path, plots_dir=tmp_path / "p")
  text = path.read_text()
  # drlih at 32 bits: mean (0.80 + 0.82 + 0.87) / 3 = 0.83; squared deviations sum to 0.0026, sd sqrt(0.0013).
  assert _cells(text, "mAP@all (stable ties)", "drlih") == ["0.8300 ± 0.0361 (3)", "–"]
  assert _cells(text, "mAP@1000 (stable ties)", "drlih")[0] == "0.9200 ± 0.0200 (3)"
  assert _cells(text, "precision within Hamming radius 2", "drlih")[0] == "0.7100 ± 0.0173 (3)"
  assert _cells(text, "mAP@all (stable ties)", "triplet")[0] == "0.5500 ± 0.0707 (2)"
  assert _cells(text, "mAP@all (stable ties)", "drlih, prefix of 64-bit model") == ["0.7500 (1)", "–"]
  assert _cells(text, "mAP@all (stable ties)", "ITQ (pixels)") == ["0.2500 (1)", "–"]
  assert _cells(text, "mAP@all (stable ties)", "LSH (pixels)") == ["–", "0.3000 (1)"]
  assert _cells(text, "mAP@all (stable ties)", "ITQ (drlih run's own features)") == ["0.6500 ± 0.0707 (2)", "–"]
  rows = [line.split("|")[1].strip() for line in text.split("**mAP@all (stable ties)**")[1].split("\n\n")[1]
          .splitlines()[2:]]
  assert rows == ["drlih", "drlih, prefix of 64-bit model", "triplet", "LSH (pixels)", "ITQ (pixels)",
                  "ITQ (drlih run's own features)"]
  assert "itq 64 bits: too long" in text and "| drlih | 32 | 10.0 ± 0.0 (3) |" in text
  assert os.path.exists(tmp_path / "p" / "fabricated_map_vs_bits.png")
  assert "[fabricated_map_vs_bits.png](p/fabricated_map_vs_bits.png)" in text


def test_paired_table_per_seed_values_and_small_n():
  runs = [_run("drlih", 32, s, {32: (v, 0, 0)}) for s, v in enumerate((0.50, 0.40, 0.70))]
  runs += [_run("triplet", 32, s, {32: (v, 0, 0)}) for s, v in enumerate((0.45, 0.42, 0.60))]
  runs += [_run("drlih", 12, 0, {12: (0.30, 0, 0)}), _run("triplet", 12, 0, {12: (0.20, 0, 0)}),
           _run("drlih", 48, 0, {48: (0.9, 0, 0)}, separate=False), _run("triplet", 48, 0, {48: (0.1, 0, 0)})]
  setting = _setting("paired", runs)
  assert results.paired_values(setting, "drlih", "triplet", "map") == {
      12: [(0, 0.30, 0.20)], 32: [(0, 0.50, 0.45), (1, 0.40, 0.42), (2, 0.70, 0.60)]}
  table = results.paired_table(setting)
  row = lambda metric, lengths: next(c for c in ([x.strip() for x in line.strip("|").split("|")] for line in table)
                                     if c[0] == metric and c[1] == lengths)
  cells = row("mAP@all, stable", "32 bits")
  # Differences +0.05, -0.02, +0.10: mean 0.0433, sd 0.0603; 2 of 3 higher: sign p = 1 (C(3,2)+C(3,3)=4 of 8,
  # doubled); t = 0.04333 / (0.06028 / sqrt 3) = 1.245 on 2 df: p = 1 - t / sqrt(2 + t^2) = 0.339.
  assert cells[2] == "s0 +0.0500, s1 -0.0200, s2 +0.1000"
  assert cells[3] == f"+0.0433 ± {np.std([0.05, -0.02, 0.1], ddof=1):.4f}"
  assert cells[4:7] == ["2/3", "1", "0.34"]
  assert cells[7] == "n = 3: the sign test cannot go below 0.25"
  pooled = row("mAP@all, tie-aware", "all lengths (pairs share seeds)")
  assert pooled[4] == "3/4" and pooled[2].startswith("s0 +0.1000, s0 +0.0500")
  assert pooled[7] == "n = 4: the sign test cannot go below 0.12"  # 2 / 2^4
  # One value per seed, its differences averaged over the lengths: s0 (0.10 + 0.05) / 2.
  per_seed = row("mAP@all, tie-aware", "mean over lengths, per seed")
  assert per_seed[2] == "s0 +0.0750, s1 -0.0200, s2 +0.1000" and per_seed[4] == "2/3"
  assert results.paired_table(_setting("none", [_run("drlih", 32, 0, {32: (0.5, 0, 0)})])) == []


def test_summary_gives_per_setting_p_and_no_pooled_p():
  def setting(label, diffs):
    runs = [_run("drlih", 32, s, {32: (0.5 + d, 0, 0)}) for s, d in enumerate(diffs)]
    runs += [_run("triplet", 32, s, {32: (0.5, 0, 0)}) for s in range(len(diffs))]
    return _setting(label, runs)
  lines = results.summary_markdown([setting("A", [0.01] * 11 + [-0.01]), setting("B", [0.02, 0.01, 0.03])])
  text = "\n".join(lines)
  assert "| A | 32 | 12 | " in text and "| 11/12 | 0.0063 |" in text  # 2 * 13 / 4096
  # t-test p: 1 - sqrt(12/14); one length, so the per-seed columns repeat the pairs'.
  assert ("| B | 32 | 3 | +0.0200 ± 0.0100 | 3/3 | 0.25 | 0.074 | s0 +0.0200, s1 +0.0100, s2 +0.0300 | 0.25 | "
          "0.074 |") in text
  assert "14 of 15 pairs favour drlih" in text and "not independent" in text


def test_code_usage_and_end_tables():
  run = _run("drlih", 32, 0, {32: (0.5, 0, 0)}, code_usage={"12": {"distinct": 2106, "mean_tie_group": 891.25},
                                                             "32": {"distinct": 2553, "mean_tie_group": 4334.0}},
             end={"step": 1500, "reason": "plateau", "train_seconds": 251.6})
  setting = _setting("usage", [run, _run("triplet", 32, 0, {32: (0.4, 0, 0)})])
  assert results.code_usage_table(setting)[2] == "| drlih_32b_s0 | 2,106 / 891.2 | 2,553 / 4,334.0 |"
  assert results.end_table(setting)[2] == "| drlih_32b_s0 | 1,500 | plateau | 252 |"
  assert results.wall_table(setting)[2] == "| triplet | 32 | 10.0 (1) |"  # Runs without `end` only.


def test_merge_reads_json_and_markdown(tmp_path):
  first = _setting("machine A", [_run("drlih", 12, 0, {12: (0.4, 0.5, 0.3)})])
  second = _setting("machine B", [_run("drlih", 12, 0, {12: (0.6, 0.7, 0.5)}),
                                  _run("drlih", 12, 1, {12: (0.8, 0.9, 0.7)})])
  md_a = tmp_path / "a.md"
  results.write_results_markdown([first], md_a)
  json_b = tmp_path / "b.json"
  json_b.write_text(json.dumps({"format": results.FORMAT, "settings": [second]}))
  merged = tmp_path / "RESULTS.md"
  assert results.main([str(md_a), str(json_b), str(md_a), "--results-md", str(merged)]) == 0
  text = merged.read_text()
  assert text.count("## machine A") == 1 and text.index("## machine A") < text.index("## machine B")
  a, b = text.split("## machine B")
  assert _cells(a, "mAP@all (stable ties)", "drlih") == ["0.4000 (1)"]
  assert _cells(b, "mAP@all (stable ties)", "drlih") == ["0.7000 ± 0.1414 (2)"]
  assert results.load_results([merged]) == [first, second]
  assert results.main([str(md_a), "--results-md", str(merged), "--check"]) == 1  # It holds A and B.
  (tmp_path / "bad.json").write_text(json.dumps({"format": "other", "settings": []}))
  assert results.main([str(tmp_path / "bad.json"), "--results-md", str(merged)]) == 1
  # A superseded setting is dropped by its title; a title that names none is an error, nothing written.
  only_b = tmp_path / "only_b.md"
  assert results.main([str(merged), "--drop", "machine A", "--results-md", str(only_b)]) == 0
  assert results.load_results([only_b]) == [second]
  assert results.main([str(merged), "--drop", "machine C", "--results-md", str(tmp_path / "c.md")]) == 1
  assert not (tmp_path / "c.md").exists()


def test_a_stored_table_regenerates_byte_identically(capsys):
  assert results.main([SMALL_JSON, "--table", "1:map_average_ties"]) == 0
  assert capsys.readouterr().out == STORED_TABLE + "\n"


def test_committed_results_md_is_its_own_regeneration():
  """RESULTS.md is exactly what drlih_jax.results renders from its embedded JSON and the notes."""
  argv = [os.path.join(REPO, "RESULTS.md"), "--results-md", os.path.join(REPO, "RESULTS.md"),
          "--plots-dir", os.path.join(REPO, "docs", "results_plots"),
          "--extra-md", os.path.join(REPO, "docs", "results_notes.md"), "--check"]
  assert results.main(argv) == 0
  for setting in results.load_results([os.path.join(REPO, "RESULTS.md")]):
    for name in results.plot_names(setting):
      assert os.path.exists(os.path.join(REPO, "docs", "results_plots", name)), name


def test_published_files_hold_no_machine_local_paths():
  pattern = re.compile(r"(?<![\w.~-])/(?:work|home|root|tmp|Users|mnt|scratch)/")
  for name in ("RESULTS.md", "README.md", "BENCHMARKS.md", os.path.join("docs", "results_notes.md")):
    with open(os.path.join(REPO, name), encoding="utf-8") as f:
      found = pattern.findall(f.read())
    assert not found, (name, found)


def test_notes_cite_only_numbers_that_the_rendered_tables_or_a_quoted_output_hold():
  """Every measured number (3+ decimals) in docs/results_notes.md is in a table rendered from the JSON."""
  with open(os.path.join(REPO, "RESULTS.md"), encoding="utf-8") as f:
    text = f.read()
  with open(os.path.join(REPO, "docs", "results_notes.md"), encoding="utf-8") as f:
    notes = f.read()
  rendered = text[:text.index(notes.splitlines()[0])]
  quoted = "\n".join(line for line in notes.splitlines() if line.startswith("# "))  # outputs in code blocks
  numbers = set(re.findall(r"(?<![\d.])\d\.\d{3,}", notes))
  assert len(numbers) > 20
  assert sorted(n for n in numbers if n not in rendered and n not in quoted) == []
