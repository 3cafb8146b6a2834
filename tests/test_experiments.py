"""drlih_jax.experiments: the run plan and its main commands, run states, and one tiny real run on CIFAR JPEGs."""

import contextlib
import io
import json
import os
import shlex
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from drlih_jax import baselines
from drlih_jax import configuration
from drlih_jax import experiments
from drlih_jax import results
from drlih_jax import run_record

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARBALL = os.path.join(REPO, "..", "shared", "data", "cifar10-jpeg.tar.gz")
CONFIG = "configs/cifar10_resnet.py:cifar10-1,cpu"


def _dry_run(*argv):
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    assert experiments.main(list(argv) + ["--dry-run"]) == 0
  return out.getvalue().splitlines()


def _config_of_main_command(command: str):
  """The config `python -m drlih_jax.main` builds from a printed command line (main.run's two calls)."""
  words = shlex.split(command)
  assert words[:3] == ["python", "-m", "drlih_jax.main"]
  rest, overrides = configuration.split_override_args(words[3:])
  spec = next(w.split("=", 1)[1] for w in rest if w.startswith("--config="))
  return configuration.apply_overrides(configuration.load_file(spec), overrides)


def test_dry_run_lists_runs_workdirs_and_the_same_runs_as_main_commands(tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)
  out = str(tmp_path / "out")
  lines = _dry_run(f"--config={CONFIG}", "--bits=12,32", "--prefix-from=48", "--seeds=0,1",
                   f"--out={out}", "--config.train.eval_every=100", "--config.train.stop_min_gain=0.005")
  runs = [ln.split()[:3] for ln in lines if ln.startswith("run ")]
  assert runs == [["run", "todo", f"{o}_{b}b_s{s}"] for s in (0, 1) for o in ("drlih", "triplet")
                  for b in (12, 32, 48)]
  assert f"workdir={out}/cifar10-1/drlih_12b_s0" in lines[0]
  commands = {ln.split()[2]: lines[i + 1].split("same run: ", 1)[1] for i, ln in enumerate(lines)
              if ln.startswith("run ")}
  config = _config_of_main_command(commands["triplet_12b_s1"])
  assert (config.objective, config.seed, config.hash.bits, config.hash.eval_bits) == ("triplet", 1, 12, (12,))
  assert config.train.stop_min_gain == 0.005 and config.train.eval_every == 100
  assert config.dataset.root == os.path.join(out, "data", "cifar10")  # where the tarball would be extracted
  # The prefix model evaluates the config's prefixes and --bits (default --prefix-bits), up to its 48 bits.
  assert _config_of_main_command(commands["drlih_48b_s0"]).hash.eval_bits == (12, 16, 24, 32)
  # The runner builds the very config the printed command does.
  args = experiments.parse_args([f"--config={CONFIG}", "--bits=12,32", "--prefix-from=48", "--seeds=0,1",
                                 f"--out={out}", "--dry-run", "--config.train.eval_every=100",
                                 "--config.train.stop_min_gain=0.005"])
  base = experiments._base_config(args)  # pylint: disable=protected-access
  plan = experiments.plan(base, args.overrides, out, [12, 32], ["drlih", "triplet"], [0, 1], 48, None)
  for spec in plan:
    runner = configuration.apply_overrides(configuration.load_file(CONFIG), spec.overrides)
    assert configuration.flatten(runner) == configuration.flatten(_config_of_main_command(commands[spec.name]))


def test_bad_arguments_are_one_line_errors(tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(REPO)
  for argv, message in ((["--bits=12,x"], "--bits"), (["--objectives=drlih,pg"], "unknown ['pg']"),
                        (["--config.seed=3"], "--config.seed is set per run"),
                        (["--bits=32", "--prefix-from=16"], "--prefix-from 16"),
                        (["--config.hash.bitz=3"], "did you mean 'hash.bits'")):
    assert experiments.main([f"--config={CONFIG}", f"--out={tmp_path}", "--dry-run", *argv]) == 1
    assert message in capsys.readouterr().err


def _spec(tmp_path, **overrides):
  config = configuration.apply_overrides(configuration.load_file(CONFIG), overrides)
  spec = experiments.RunSpec(name="drlih_32b_s0", objective="drlih", bits=32, seed=0, separate=True,
                             prefix_source=False, workdir=str(tmp_path / "w"), overrides={})
  return spec, config


def test_status_of_a_workdir(tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)
  spec, config = _spec(tmp_path, **{"dataset.root": "a"})
  assert experiments.status(spec, config) == ("todo", {})
  run_record.write_json(run_record.path(spec.workdir, "config.json"), configuration.flatten(config))
  assert experiments.status(spec, config) == ("partial", {})
  run_record.write_done(spec.workdir, 300, "steps", 12.5)
  assert experiments.status(spec, config) == ("done", {})
  # The data's location and evaluation options do not make a finished run unfinished; a training key does.
  _, moved = _spec(tmp_path, **{"dataset.root": "b", "train.eval_database_order": "stored"})
  assert experiments.status(spec, moved) == ("done", {"train.eval_database_order": ("shuffled", "stored")})
  _, longer = _spec(tmp_path, **{"train.steps": "600"})
  assert experiments.status(spec, longer)[0] == "changed"


def test_pca_reduce_keeps_the_leading_variances():
  rng = np.random.default_rng(0)
  scales = np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.1])
  for n in (4, 400):  # fewer rows than dimensions (SVD) and more (covariance eigendecomposition)
    x = rng.standard_normal((n, 6)) * scales
    reduced = baselines.pca_reduce({"train": x, "query": x[:3]}, 2)["train"].astype(np.float64)
    top = np.sort(np.linalg.eigvalsh(np.cov(x.T)))[::-1][:2]
    np.testing.assert_allclose(np.var(reduced, axis=0, ddof=1), top, rtol=1e-5)
    np.testing.assert_allclose(reduced.T @ reduced / (n - 1), np.diag(top), atol=1e-4 * top[0])
  assert baselines.pca_reduce({"train": x[:3]}, 256)["train"].shape == (3, 3)  # at most min(n, D) components


@pytest.fixture(scope="module")
def cifar_subset(tmp_path_factory):
  """10 classes x (12 training + 3 test) real CIFAR-10 JPEGs, as a class-folder tree."""
  if not os.path.exists(TARBALL):
    pytest.skip(f"the CIFAR-10 JPEG tarball is missing: {TARBALL}")
  root = tmp_path_factory.mktemp("cifar_subset")
  wanted = {("train", i) for i in range(12)} | {("test", i) for i in range(3)}
  with tarfile.open(TARBALL, "r:gz") as tar:
    members = [m for m in tar if m.isfile() and len(m.name.split("/")) == 3
               and (m.name.split("/")[0], int(m.name.split("/")[2].split(".")[0])) in wanted]
    tar.extractall(root, members=members, filter="data")
  assert len(members) == 150
  return str(root)


# TensorFlow cannot be imported in the child: the runner must work without it.
_NO_TF = ("import runpy, sys; sys.modules['tensorflow'] = None; sys.modules['tensorflow_datasets'] = None; "
          "sys.argv = ['experiments'] + sys.argv[1:]; runpy.run_module('drlih_jax.experiments', "
          "run_name='__main__')")


def _runner(*argv):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", _NO_TF, *argv], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc.stdout


def _json(path):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def test_tiny_real_runs_land_in_the_results(cifar_subset, tmp_path):
  out = str(tmp_path / "out")
  argv = ["--config=configs/cifar10_resnet.py:cifar10-2,test", "--bits=8", "--seeds=0", f"--out={out}",
          f"--data-root={cifar_subset}", "--config.train.steps=4", "--config.train.eval_every=2", "--label=tiny"]
  stdout = _runner(*argv)
  assert "[1/2] drlih_8b_s0: trained; step 4 (steps)" in stdout
  (setting,) = _json(os.path.join(out, "results_cifar10-2.json"))["settings"]
  assert setting["split_sizes"] == "120 training images, 30 queries, 120 database images"
  runs = {r["name"]: r for r in setting["runs"]}
  final = {}
  for name in ("drlih_8b_s0", "triplet_8b_s0"):
    workdir = os.path.join(out, "cifar10-2", name)
    final[name] = _json(os.path.join(workdir, "eval_4.json"))
    run, report = runs[name], final[name]
    assert run["metrics"]["map"] == report["map"] and run["code_usage"] == report["code_usage"]
    assert run["end"] == _json(os.path.join(workdir, "DONE")) and run["end"]["reason"] == "steps"
    # The learning curve: every evaluation, tie-aware mAP@all against the training seconds it was made at.
    assert [p["step"] for p in run["curve"]] == [2, 4]
    assert run["curve"][1]["map_average_ties_trained"] == report["map_average_ties"]["8"]
    assert 0 < run["curve"][0]["train_seconds"] < run["curve"][1]["train_seconds"] == report["train_seconds"]
    # LSH/ITQ on the run's own feature, at its length, with their own code usage.
    own = run["feature_baselines"]
    assert own["step"] == 4 and [e["method"] for e in own["entries"]] == ["lsh", "itq"]
    assert all(0 < e["code_usage"]["8"]["distinct"] <= 120 for e in own["entries"])
    assert not os.path.isabs(run["workdir"])
  (pixels,) = setting["baselines"]
  assert pixels["features"] == "pixels" and [e["bits"] for e in pixels["entries"]] == [8, 8]
  text = open(os.path.join(out, "RESULTS.md"), encoding="utf-8").read()
  diff = final["drlih_8b_s0"]["map_average_ties"]["8"] - final["triplet_8b_s0"]["map_average_ties"]["8"]
  assert f"| mAP@all, tie-aware | 8 bits | s0 {diff:+.4f} | {diff:+.4f} | {int(diff > 0)}/1 |" in text
  assert f"| drlih_8b_s0 | {final['drlih_8b_s0']['code_usage']['8']['distinct']:,} / " in text
  assert "ITQ (triplet run's own features)" in text
  assert "from `/" not in text and "--data-root=/" not in text  # no absolute path of this machine
  assert os.path.exists(os.path.join(out, "plots", "tiny_learning_curves.png"))

  # A rerun trains nothing and fits no baseline again.
  baseline_files = sorted(os.listdir(os.path.join(out, "cifar10-2", "baselines")))
  stamps = {f: os.stat(os.path.join(out, "cifar10-2", "baselines", f)).st_mtime_ns for f in baseline_files}
  stdout = _runner(*argv)
  assert "[1/2] drlih_8b_s0: read; step 4" in stdout and "[2/2] triplet_8b_s0: read; step 4" in stdout
  assert stamps == {f: os.stat(os.path.join(out, "cifar10-2", "baselines", f)).st_mtime_ns for f in baseline_files}

  # Another database order: the finished runs are evaluated from their checkpoints into reports of their own
  # (the runs' reports stay), and the baselines are fitted again.
  stdout = _runner(*argv, "--config.train.eval_database_order=stored")
  assert "drlih_8b_s0: evaluated from its step-4 checkpoint" in stdout
  (setting,) = _json(os.path.join(out, "results_cifar10-2.json"))["settings"]
  for run in setting["runs"]:
    workdir = os.path.join(out, "cifar10-2", run["name"])
    assert _json(os.path.join(workdir, "eval_4.json")) == final[run["name"]]
    stored = _json(os.path.join(workdir, "eval_4.eval_database_order-stored.json"))
    assert run["report"] == "eval_4.eval_database_order-stored" and run["database_order"] == "stored"
    assert run["metrics"]["map"] == stored["map"]
    assert stored["map_average_ties"] == final[run["name"]]["map_average_ties"]  # order-free
    assert run["feature_baselines"]["database_order"] == "stored"
  assert setting["baselines"][0]["database_order"] == "stored"
  assert results.load_results([os.path.join(out, "RESULTS.md")]) == [setting]
