"""bench/reproduce.py: the run plan (dry run), RESULTS.md statistics, and one tiny real run on CIFAR JPEGs."""

import io
import contextlib
import json
import math
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from configs import cifar10_resnet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))
import reproduce  # pylint: disable=g-import-not-at-top,wrong-import-position

TARBALL = os.path.join(REPO, "..", "shared", "data", "cifar10-jpeg.tar.gz")


def _dry_run(*argv):
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    assert reproduce.main(list(argv) + ["--dry-run"]) == 0
  return out.getvalue().splitlines()


def _fields(line):
  return dict(w.split("=", 1) for w in line.split() if "=" in w)


def test_dry_run_lists_runs_prefix_models_and_baselines(tmp_path):
  out = str(tmp_path / "out")
  lines = _dry_run("--protocol", "cifar10-1", "--bits", "12,32", "--objectives", "drlih,triplet",
                   "--seeds", "0,1", "--out", out)
  runs = [ln for ln in lines if ln.startswith("run ")]
  names = [ln.split()[2] for ln in runs]
  assert names == [f"{o}_{b}b_seed{s}" for s in (0, 1) for o in ("drlih", "triplet") for b in (12, 32, 64)]
  assert all(ln.split()[1] == "todo" for ln in runs)
  by_name = {ln.split()[2]: _fields(ln) for ln in runs}
  # The cifar10-1 budget of the config (4,000 steps) names the folder; separate runs evaluate their own
  # length, the 64-bit model every prefix.
  assert by_name["drlih_12b_seed0"] == {
      "objective": "drlih", "bits": "12", "eval_bits": "12", "seed": "0", "steps": "4000", "rows": "separate",
      "workdir": os.path.join(out, "cifar10-1_4000steps", "drlih_12b_seed0")}
  assert by_name["triplet_64b_seed1"]["eval_bits"] == "12,32,64"
  assert by_name["triplet_64b_seed1"]["rows"] == "prefixes"
  baselines = [_fields(ln) | {"name": ln.split()[2]} for ln in lines if ln.startswith("baseline ")]
  assert [b["name"] for b in baselines] == ["pixels_seed0", "pixels_seed1", "triplet_seed0", "triplet_seed1"]
  assert baselines[3]["from"] == "triplet_64b_seed1" and baselines[3]["bits"] == "12,32"
  assert len(lines) == 16


def test_dry_run_marks_finished_runs_and_shares_the_prefix_model(tmp_path):
  out = str(tmp_path / "out")
  argv = ["--protocol", "cifar10-2", "--bits", "12,32", "--prefix-from", "32", "--objectives", "triplet",
          "--seeds", "3", "--steps", "50", "--baselines", "", "--out", out]
  finished = os.path.join(out, "cifar10-2_50steps", "triplet_12b_seed3")
  os.makedirs(finished)
  with open(os.path.join(finished, "eval_50.json"), "w") as f:
    f.write("{}")
  lines = _dry_run(*argv)
  assert [ln.split()[:3] for ln in lines] == [["run", "done", "triplet_12b_seed3"],
                                               ["run", "todo", "triplet_32b_seed3"]]
  assert _fields(lines[1])["rows"] == "separate+prefixes" and _fields(lines[1])["eval_bits"] == "12,32"


def test_official_needs_vgg_and_bad_lists_are_refused(tmp_path):
  with pytest.raises(SystemExit, match="VGG-19-BN"):
    _dry_run("--objectives", "official", "--out", str(tmp_path))
  with pytest.raises(SystemExit, match="--bits"):
    _dry_run("--bits", "12,x", "--out", str(tmp_path))
  with pytest.raises(SystemExit, match="unknown"):
    _dry_run("--objectives", "drlih,pg", "--out", str(tmp_path))


def test_config_arguments():
  config = cifar10_resnet.get_config("cpu,cifar10-1")
  assert config.dataset.name == "cifar10-1" and config.model.widths == (16, 32, 64)
  assert config.train.steps == 300 and config.optim.warmup_steps == 15
  full = cifar10_resnet.get_config("cifar10-2")
  assert full.model.blocks_per_stage == 2 and full.input.classes_per_batch * full.input.images_per_class == 500
  full.train.steps = 6000  # The warmup and the learning-curve spacing follow the budget.
  assert full.optim.warmup_steps == 300 and full.train.eval_every == 1200
  with pytest.raises(ValueError, match="unknown argument 'cifar100'"):
    cifar10_resnet.get_config("cifar100")


def _run(objective, bits, seed, values, separate=True, prefix_source=False, wall=10.0):
  """A fabricated run record: values = {length: (mAP@all, mAP@1000, P@r2)}."""
  metric = lambda i: {str(k): v[i] for k, v in values.items()}
  return {"name": f"{objective}_{bits}b_seed{seed}", "objective": objective, "bits": bits, "seed": seed,
          "eval_bits": sorted(values), "separate": separate, "prefix_source": prefix_source, "steps": 100,
          "wall_s": wall, "metrics": {"map": metric(0), "map_at_1000": metric(1), "precision_radius2": metric(2),
                                      "map_average_ties": metric(0)}, "curve": []}


def _setting(label, runs, baselines=()):
  return {"protocol": "cifar10-1", "steps": 100, "label": label, "notes": "", "seeds": [0, 1, 2],
          "config": "configs/cifar10_resnet.py:cpu", "overrides": [], "config_flat": {"model.backbone": "resnet"},
          "split_sizes": "5000 training images, 1000 queries, 59000 database images",
          "data": {"root_display": "runs/data/cifar10", "note": reproduce.DATA_NOTE},
          "machine": {"label": "test machine", "platform": "cpu", "host_cpu": "x", "host_cores": 2, "jax": "0",
                      "python": "3"},
          "command": "python bench/reproduce.py --fake", "created": "2026-01-01 00:00 UTC",
          "runs": list(runs), "baselines": list(baselines)}


def _table(text, title, row):
  """The cells of `row` in the markdown table under `**title**`."""
  section = text[text.index(f"**{title}**"):]
  for line in section.splitlines():
    if line.startswith(f"| {row} |"):
      return [c.strip() for c in line.strip("|").split("|")][1:]
  raise AssertionError(f"row {row!r} not found under {title!r}")


def test_results_markdown_means_and_spreads(tmp_path):
  runs = [
      _run("drlih", 32, 0, {32: (0.80, 0.90, 0.70)}),
      _run("drlih", 32, 1, {32: (0.82, 0.92, 0.70)}),
      _run("drlih", 32, 2, {32: (0.87, 0.94, 0.73)}),
      _run("triplet", 32, 0, {32: (0.50, 0.60, 0.40)}),
      _run("triplet", 32, 1, {32: (0.60, 0.70, 0.40)}),
      _run("drlih", 64, 0, {32: (0.75, 0.85, 0.65), 64: (0.9, 0.9, 0.9)}, separate=False, prefix_source=True),
  ]
  baselines = [{"name": "pixels_seed0", "features": "pixels", "seed": 0, "feature_run": None, "feature_dim": 3072,
                "entries": [{"method": "itq", "bits": 32, "metrics": {
                    "map": {"32": 0.25}, "map_at_1000": {"32": 0.3}, "precision_radius2": {"32": 0.2},
                    "map_average_ties": {"32": 0.25}}},
                            {"method": "itq", "bits": 64, "skipped": "too long"},
                            {"method": "lsh", "bits": 64, "metrics": {
                                "map": {"64": 0.3}, "map_at_1000": {"64": 0.3}, "precision_radius2": {"64": 0.2},
                                "map_average_ties": {"64": 0.3}}}]}]
  path = str(tmp_path / "RESULTS.md")
  reproduce.write_results_markdown([_setting("fabricated", runs, baselines)], path, plots_dir=str(tmp_path / "p"))
  text = open(path).read()
  # drlih at 32 bits, mAP@all: mean (0.80 + 0.82 + 0.87) / 3 = 0.83; deviations -0.03, -0.01, 0.04, squares
  # summing to 0.0026, sample variance 0.0013, sd 0.036056.
  assert _table(text, "mAP@all (stable ties)", "drlih") == ["0.8300 ± 0.0361 (3)", "–"]
  # mAP@1000: 0.90, 0.92, 0.94 -> mean 0.92, sd 0.02. P@r2: 0.70, 0.70, 0.73 -> 0.71, sd sqrt(0.0006/2) = 0.0173.
  assert _table(text, "mAP@1000 (stable ties)", "drlih")[0] == "0.9200 ± 0.0200 (3)"
  assert _table(text, "precision within Hamming radius 2", "drlih")[0] == "0.7100 ± 0.0173 (3)"
  # triplet: 0.5 and 0.6 -> 0.55, sd sqrt(2 * 0.05^2 / 1) = 0.070711.
  assert _table(text, "mAP@all (stable ties)", "triplet")[0] == "0.5500 ± 0.0707 (2)"
  # One seed: no spread. The 64-bit model's 32-bit prefix is its own row; its 64-bit code is in no row.
  assert _table(text, "mAP@all (stable ties)", "drlih, prefix of 64-bit model") == ["0.7500 (1)", "–"]
  assert _table(text, "mAP@all (stable ties)", "ITQ (pixels)") == ["0.2500 (1)", "–"]
  assert _table(text, "mAP@all (stable ties)", "LSH (pixels)") == ["–", "0.3000 (1)"]
  assert "| method | 32 bits | 64 bits |" in text
  assert "itq 64 bits: too long" in text
  assert "lossy re-encoding" in text and "python bench/reproduce.py --fake" in text
  assert os.path.exists(tmp_path / "p" / "fabricated_map_vs_bits.png")
  # Wall time: drlih 32 bits, 3 runs of 10 s.
  assert "| drlih | 32 | 10.0 ± 0.0 (3) |" in text


def test_merge_reads_json_and_markdown(tmp_path):
  first = _setting("machine A", [_run("drlih", 12, 0, {12: (0.4, 0.5, 0.3)})])
  second = _setting("machine B", [_run("drlih", 12, 0, {12: (0.6, 0.7, 0.5)}),
                                  _run("drlih", 12, 1, {12: (0.8, 0.9, 0.7)})])
  md_a = str(tmp_path / "a.md")
  reproduce.write_results_markdown([first], md_a)
  json_b = str(tmp_path / "b.json")
  with open(json_b, "w") as f:
    json.dump({"format": reproduce.FORMAT, "settings": [second]}, f)
  merged = str(tmp_path / "RESULTS.md")
  assert reproduce.main(["--merge", md_a, json_b, md_a, "--results-md", merged,
                         "--plots-dir", str(tmp_path / "plots")]) == 0
  text = open(merged).read()
  assert text.index("## machine A") < text.index("## machine B")
  assert text.count("## machine A") == 1  # The duplicate input is kept once.
  a, b = text.split("## machine B")
  assert _table(a, "mAP@all (stable ties)", "drlih") == ["0.4000 (1)"]
  assert _table(b, "mAP@all (stable ties)", "drlih") == ["0.7000 ± 0.1414 (2)"]
  assert reproduce.load_results([merged]) == [first, second]
  assert sorted(os.listdir(tmp_path / "plots")) == ["machine_a_map_vs_bits.png", "machine_b_map_vs_bits.png"]


def test_mean_spread_and_pca_reduce():
  mean, sd, n = reproduce.mean_spread([1.0, 2.0, 4.0, None, float("nan")])
  assert (n, mean) == (3, pytest.approx(7 / 3)) and sd == pytest.approx(math.sqrt((16 + 1 + 25) / 9 / 2))
  assert reproduce.mean_spread([0.5]) == (0.5, None, 1)
  rng = np.random.default_rng(0)
  scales = np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.1])
  for n in (4, 400):  # SVD path (n < D) and covariance path.
    x = rng.standard_normal((n, 6)) * scales
    reduced = reproduce.pca_reduce({"train": x, "query": x[:3]}, 2)["train"].astype(np.float64)
    top = np.sort(np.linalg.eigvalsh(np.cov(x.T)))[::-1][:2]
    np.testing.assert_allclose(np.var(reduced, axis=0, ddof=1), top, rtol=1e-5)
    np.testing.assert_allclose(reduced.T @ reduced / (n - 1), np.diag(top), atol=1e-4 * top[0])


def test_sign_test_against_hand_counts():
  # 10 of 12: P(X >= 10) = (C(12,10) + C(12,11) + C(12,12)) / 2^12 = 79 / 4096, doubled.
  assert reproduce.sign_test_p(10, 12) == pytest.approx(2 * 79 / 4096)
  assert reproduce.sign_test_p(2, 12) == pytest.approx(2 * 79 / 4096)
  assert reproduce.sign_test_p(3, 3) == pytest.approx(0.25)
  assert reproduce.sign_test_p(6, 12) == 1.0 and reproduce.sign_test_p(1, 1) == 1.0
  assert math.isnan(reproduce.sign_test_p(0, 0))


def test_paired_differences_pair_by_seed_and_skip_prefixes():
  def run(objective, bits, seed, value, separate=True):
    return {"objective": objective, "bits": bits, "seed": seed, "separate": separate,
            "metrics": {"map": {str(bits): value, "8": 0.9}}}  # "8": a prefix, ignored
  setting = {"runs": [run("drlih", 32, 0, 0.50), run("triplet", 32, 0, 0.45),
                      run("drlih", 32, 1, 0.40), run("triplet", 32, 1, 0.42),
                      run("drlih", 32, 2, 0.70),                              # no triplet partner
                      run("drlih", 12, 0, 0.30), run("triplet", 12, 0, 0.20),
                      run("drlih", 48, 0, 0.9, separate=False), run("triplet", 48, 0, 0.1, separate=False)]}
  diffs = reproduce.paired_differences(setting, "drlih", "triplet", "map")
  assert diffs.keys() == {12, 32}
  np.testing.assert_allclose(diffs[32], [0.05, -0.02])
  np.testing.assert_allclose(diffs[12], [0.10])
  table = reproduce.paired_table(setting)
  row = next(line for line in table if line.startswith("| mAP@all, stable"))
  cells = [c.strip() for c in row.strip("|").split("|")]
  assert cells[1] == "+0.1000 (drlih higher in 1/1)"
  assert cells[2] == f"+0.0150 ± {math.sqrt(2 * 0.035 ** 2):.4f} (drlih higher in 1/2)"
  assert cells[3].startswith("+0.0433 ± ") and cells[3].endswith("(drlih higher in 2/3)")
  assert cells[4] == "1.000"
  assert reproduce.paired_table({"runs": [run("drlih", 32, 0, 0.5)]}) == []


@pytest.fixture(scope="module")
def cifar_subset(tmp_path_factory):
  """10 classes x (12 training + 3 test) real CIFAR-10 JPEGs, as a class-folder tree."""
  if not os.path.exists(TARBALL):
    pytest.skip(f"the CIFAR-10 JPEG tarball is missing: {TARBALL}")
  root = tmp_path_factory.mktemp("cifar_subset")
  wanted = {("train", i) for i in range(12)} | {("test", i) for i in range(3)}
  with tarfile.open(TARBALL, "r:gz") as tar:
    members = []
    for m in tar:
      parts = m.name.split("/")
      if m.isfile() and len(parts) == 3 and (parts[0], int(parts[2].split(".")[0])) in wanted:
        members.append(m)
    tar.extractall(root, members=members, filter="data")
  assert len(members) == 150
  return str(root)


_NO_TF = ("import runpy, sys; sys.modules['tensorflow'] = None; sys.modules['tensorflow_datasets'] = None; "
          "sys.modules['tensorboardX'] = None; "
          "sys.argv = ['bench/reproduce.py'] + sys.argv[1:]; runpy.run_path('bench/reproduce.py', "
          "run_name='__main__')")


def test_tiny_real_run_lands_in_the_table(cifar_subset, tmp_path):
  out = str(tmp_path / "out")
  argv = ["--protocol", "cifar10-2", "--config", "configs/cifar10_resnet.py:test", "--bits", "8",
          "--prefix-from", "0", "--objectives", "triplet", "--seeds", "0", "--steps", "4", "--eval-every", "2",
          "--data-root", cifar_subset, "--out", out, "--label", "tiny"]
  # TensorFlow (and tensorboardX, absent from the accelerator image) cannot be imported in the child: the
  # whole path must work without them.
  proc = subprocess.run([sys.executable, "-c", _NO_TF] + argv, cwd=REPO, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  workdir = os.path.join(out, "cifar10-2_4steps", "triplet_8b_seed0")
  with open(os.path.join(workdir, "eval_4.json")) as f:
    final = json.load(f)
  assert final["num_queries"] == 30 and final["num_database"] == 120
  with open(os.path.join(out, "results_cifar10-2_4steps.json")) as f:
    (setting,) = json.load(f)["settings"]
  (run,) = setting["runs"]
  assert run["metrics"]["map"] == final["map"] and run["wall_s"] > 0
  assert run["database_order"] == final["database_order"] == "shuffled (seed 0)"
  assert run["curve"][-1]["map_average_ties_trained"] == final["map_average_ties"]["8"]
  assert [p["step"] for p in run["curve"]] == [2, 4] and all(p["wall_s"] > 0 for p in run["curve"])
  assert setting["split_sizes"] == "120 training images, 30 queries, 120 database images"
  assert os.path.exists(os.path.join(workdir, "splits.json"))
  assert os.path.exists(os.path.join(workdir, "tensorboard", "scalars.jsonl"))
  value = final["map"]["8"]
  assert 0.0 < value <= 1.0
  text = open(os.path.join(out, "RESULTS.md")).read()
  assert "- Database order of the stable metrics: `shuffled (seed 0)`\n" in text
  assert _table(text, "mAP@all (stable ties)", "triplet") == [f"{value:.4f} (1)"]
  for row in ("LSH (pixels)", "ITQ (pixels)", "LSH (triplet-model features)", "ITQ (triplet-model features)"):
    cell = _table(text, "mAP@all (stable ties)", row)[0]
    assert 0.0 < float(cell.split()[0]) <= 1.0, (row, cell)
  # A rerun skips the finished run and baselines.
  proc = subprocess.run([sys.executable, "-c", _NO_TF] + argv, cwd=REPO, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "triplet_8b_seed0: done before, skipped" in proc.stdout
  assert "baseline triplet_seed0: done before, skipped" in proc.stdout
  # --reevaluate: the finished run and the baselines are evaluated again under the changed evaluation config;
  # the training wall time and the curve's times stay.
  proc = subprocess.run([sys.executable, "-c", _NO_TF] + argv + ["--reevaluate", "--set",
                                                                 "train.eval_database_order=stored"],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "triplet_8b_seed0: evaluated again from its step-4 checkpoint" in proc.stdout
  with open(os.path.join(workdir, "eval_4.json")) as f:
    again = json.load(f)
  assert again["database_order"] == "stored"
  assert again["map_average_ties"] == final["map_average_ties"]  # does not depend on the order
  with open(os.path.join(out, "results_cifar10-2_4steps.json")) as f:
    (setting_again,) = json.load(f)["settings"]
  (run_again,) = setting_again["runs"]
  assert run_again["database_order"] == "stored" and run_again["wall_s"] == run["wall_s"]
  assert [p["wall_s"] for p in run_again["curve"]] == [p["wall_s"] for p in run["curve"]]
  assert {b["database_order"] for b in setting_again["baselines"]} == {"stored"}
