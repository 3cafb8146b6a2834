"""Assembling, resuming and evaluating runs as users do: corrupt checkpoints, changed configs, eval from the record."""

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from drlih_jax import checkpointing
from drlih_jax import configuration
from drlih_jax import errors
from drlih_jax import run as run_lib
from drlih_jax import run_record
from drlih_jax import train
from drlih_jax.data import protocols
from tests import test_train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**overrides):
  return test_train.small_config(**{"train.steps": 20, "train.checkpoint_every": 10, "train.log_every": 10,
                                    **overrides})


def _tree_digest(root) -> dict[str, str]:
  """{relative path: sha256} of every file under `root` (to show a directory was not touched)."""
  out = {}
  for folder, _, files in os.walk(root):
    for name in files:
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
  return out


def _truncate_all(folder) -> None:
  for root, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 3)


def _cli(*args, cwd=REPO):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "drlih_jax.main", *args], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=600)


def _params(config, workdir, step=None):
  run = run_lib.create_run(config, protocols.load_retrieval_data(config.dataset), training=False)
  restored = run_lib.restore(run, workdir, step=step, params_only=True)
  return restored.step, [np.asarray(x) for x in jax.tree.leaves(restored.state.params)]


def test_truncated_newest_checkpoint_is_moved_aside_and_saved_again(tmp_path, caplog):
  config = _config()
  full = train.train_and_evaluate(config, str(tmp_path / "full"))
  part = tmp_path / "part"
  train.train_and_evaluate(config, str(part))
  _truncate_all(part / "checkpoints" / "20")
  with caplog.at_level("WARNING"):
    resumed = train.train_and_evaluate(config, str(part))
  names = sorted(os.listdir(part / "checkpoints"))
  assert "10" in names and "20" in names, names
  aside = [n for n in names if n.startswith("20.corrupt-")]
  assert len(aside) == 1, names
  assert any("Skipping unreadable checkpoint" in r.getMessage() for r in caplog.records)
  # Step 20 was trained again from step 10 and saved again: it equals the uninterrupted run bitwise.
  for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(full.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  step, saved = _params(config, str(part))
  assert step == 20
  for a, b in zip(saved, jax.tree.leaves(full.params)):
    np.testing.assert_array_equal(a, np.asarray(b))
  # The report of step 20 describes the model that step 20 now holds.
  with open(part / "eval_20.json") as f, open(tmp_path / "full" / "eval_20.json") as g:
    assert json.load(f)["map"] == json.load(g)["map"]


def test_structure_mismatch_is_an_error_not_a_restart(tmp_path):
  """A checkpoint that does not fit the model names what differs and is never skipped over."""
  config = _config(**{"train.steps": 10})
  train.train_and_evaluate(config, str(tmp_path))
  before = _tree_digest(tmp_path / "checkpoints")
  clipped = _config(**{"train.steps": 10, "optim.grad_clip": 1.0})  # the optimiser state gains a level
  run = run_lib.create_run(clipped, protocols.load_retrieval_data(clipped.dataset))
  with pytest.raises(errors.CheckpointError, match=r"does not match this model: the optimiser state differs"):
    run_lib.restore(run, str(tmp_path), checkpoints=checkpointing.Checkpoints(str(tmp_path), 3))
  assert _tree_digest(tmp_path / "checkpoints") == before


def test_changed_refused_key_is_refused_and_checkpoints_untouched(tmp_path):
  config = _config(**{"train.steps": 10})
  train.train_and_evaluate(config, str(tmp_path))
  before = _tree_digest(tmp_path)
  for key, value in (("optim.grad_clip", 1.0), ("hash.bits", 24), ("model.hidden", 48), ("seed", 3)):
    changed = _config(**{"train.steps": 10, key: value, "hash.eval_bits": (8,)})
    with pytest.raises(errors.RunRecordError, match=rf"{key}: recorded .*, now {value!r}"):
      train.train_and_evaluate(changed, str(tmp_path))
  assert _tree_digest(tmp_path) == before


def test_a_run_that_saved_no_checkpoint_takes_a_changed_config(tmp_path, caplog):
  """A run that failed before its first checkpoint (data, memory, a typo) leaves a record that binds nothing."""
  first = tmp_path / "first"
  train.train_and_evaluate(_config(**{"train.steps": 10, "dataset.split_seed": 3}), str(first))
  failed = tmp_path / "failed"  # What such a run leaves: its record and an empty checkpoint folder.
  (failed / "checkpoints").mkdir(parents=True)
  for name in ("config.json", "splits.json"):
    shutil.copy(first / name, failed / name)
  changed = _config(**{"train.steps": 10, "hash.bits": 24, "hash.eval_bits": (8,)})  # split_seed 0: new splits
  with caplog.at_level(logging.WARNING):
    train.train_and_evaluate(changed, str(failed))
  messages = [r.getMessage() for r in caplog.records]
  assert any("records a run that saved no checkpoint" in m and "hash.bits: was 16, now 24" in m for m in messages)
  assert any("no checkpoint was trained on the recorded splits" in m for m in messages)
  with open(failed / "config.json") as f:
    assert configuration.flatten(changed) == json.load(f)
  with open(failed / "splits.json") as f:
    assert json.load(f)["seed"] == 0  # the split seed
  with open(failed / "DONE") as f:
    assert json.load(f)["step"] == 10
  # Once a checkpoint exists, the same change is refused again.
  with pytest.raises(errors.RunRecordError, match="hash.bits: recorded 24, now 16"):
    train.train_and_evaluate(_config(**{"train.steps": 10, "dataset.split_seed": 3}), str(failed))


def test_extending_train_steps_continues_from_the_last_step(tmp_path, caplog):
  train.train_and_evaluate(_config(**{"train.steps": 10}), str(tmp_path))
  with open(tmp_path / "DONE") as f:
    assert json.load(f)["step"] == 10
  at_10 = _params(_config(), str(tmp_path), step=10)[1]
  with caplog.at_level("INFO"):
    state = train.train_and_evaluate(_config(**{"train.steps": 15}), str(tmp_path))
  assert int(state.step) == 15
  assert any("Resumed from checkpoint step 10" in r.getMessage() for r in caplog.records)
  assert any("Resuming" in r.getMessage() and "train.steps: was 10, now 15" in r.getMessage()
             for r in caplog.records)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10", "15"]
  np.testing.assert_array_equal(_params(_config(), str(tmp_path), step=10)[1][0], at_10[0])  # kept
  with open(tmp_path / "DONE") as f:
    assert json.load(f)["step"] == 15
  with open(tmp_path / "config.json") as f:
    assert json.load(f)["train.steps"] == 15


def _count_evaluations(monkeypatch) -> list[int]:
  """Counts `Run.evaluate` calls (one list entry per call) from now on."""
  calls, evaluate = [], run_lib.Run.evaluate

  def counting(self, state, data):
    calls.append(int(jax.device_get(state.step)))
    return evaluate(self, state, data)

  monkeypatch.setattr(run_lib.Run, "evaluate", counting)
  return calls


def test_finished_run_is_not_trained_or_evaluated_again(tmp_path, caplog, monkeypatch):
  config = _config(**{"train.steps": 10})
  train.train_and_evaluate(config, str(tmp_path))
  report = tmp_path / "eval_10.json"
  before = _tree_digest(tmp_path), report.stat().st_mtime_ns
  calls = _count_evaluations(monkeypatch)
  with caplog.at_level("INFO"):
    state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 10
  assert any("has already ended at step 10 (steps)" in r.getMessage() for r in caplog.records)
  assert any(f"Its report is {report}; nothing to do" in r.getMessage() for r in caplog.records)
  assert calls == []
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10"]
  after = _tree_digest(tmp_path)
  assert {k: v for k, v in after.items() if "tensorboard" not in k} == {
      k: v for k, v in before[0].items() if "tensorboard" not in k}
  assert report.stat().st_mtime_ns == before[1]
  # A changed report option evaluates the finished run again, under the new option.
  state = train.train_and_evaluate(_config(**{"train.steps": 10, "hash.eval_bits": (4,)}), str(tmp_path))
  assert calls == [10]
  with open(report) as f:
    assert sorted(json.load(f)["map"]) == ["16", "4"]  # the full code is always evaluated
  # So does a deleted report.
  report.unlink()
  train.train_and_evaluate(_config(**{"train.steps": 10, "hash.eval_bits": (4,)}), str(tmp_path))
  assert calls == [10, 10] and report.exists()


def test_a_run_ending_at_an_evaluation_is_evaluated_once(tmp_path, monkeypatch):
  """The plateau fires at the step-10 evaluation; the final report (with plots) reuses its codes."""
  calls = _count_evaluations(monkeypatch)
  config = _config(**{"train.steps": 1000, "train.eval_every": 5, "train.stop_min_gain": 10.0,
                      "train.checkpoint_every": 100})
  train.train_and_evaluate(config, str(tmp_path))
  assert calls == [5, 10]
  with open(tmp_path / "eval_10.json") as f:
    final = json.load(f)
  assert (tmp_path / "eval_10").is_dir() and not (tmp_path / "eval_5").exists()  # plots of the final one
  # The reused codes give the report a fresh evaluation of the checkpoint gives.
  path = train.evaluate_checkpoint(str(tmp_path), step=10)
  assert calls == [5, 10, 10]
  with open(path) as f:
    again = json.load(f)
  assert final["map"] == again["map"] and final["map_average_ties"] == again["map_average_ties"]


def test_stopping_rule_ends_the_run_and_is_remembered(tmp_path, caplog):
  """stop_min_gain far above any gain: training ends at the first evaluation that has a window."""
  config = _config(**{"train.steps": 1000, "train.eval_every": 5, "train.stop_min_gain": 10.0,
                      "train.checkpoint_every": 100})
  state = train.train_and_evaluate(config, str(tmp_path))
  # Evaluations at 5 (no earlier one) and 10 (5 <= 0.8 * 10): the rule fires at step 10.
  assert int(state.step) == 10
  with open(tmp_path / "DONE") as f:
    done = json.load(f)
  assert done["step"] == 10 and done["reason"] == "plateau"
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10"]
  with caplog.at_level("INFO"):
    again = train.train_and_evaluate(config, str(tmp_path))
  assert int(again.step) == 10
  assert any("already ended at step 10 (plateau)" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("history,expected", [
    ([[2, 0, 0.1], [4, 0, 0.5]], False),                       # vs step 2 (<= 3.2): gain 0.4
    ([[2, 0, 0.5], [4, 0, 0.501]], True),                      # gain 0.001 < 0.005
    ([[4, 0, 0.5]], False),                                    # nothing to compare with
    ([[9, 0, 0.5], [10, 0, 0.5]], False),                      # 9 > 0.8 * 10: no evaluation that early
    ([[5, 0, 0.40], [8, 0, 0.45], [10, 0, 0.452]], True),      # vs step 8 (the latest <= 8): gain 0.002
    ([[5, 0, 0.40], [9, 0, 0.451], [10, 0, 0.452]], False),    # vs step 5: gain 0.052
])
def test_plateau_rule(history, expected):
  assert train.plateaued(history, 0.005, 0.2) is expected
  assert train.plateaued(history, 0.0, 0.2) is False  # 0 turns the rule off


@pytest.mark.parametrize("history,patience,expected", [
    # seed 0's drlih curve on cifar10-2 (tie-aware mAP@all 32 bits): a dip of 0.0026 at step 4,000
    ([[1000, 0, 0.2545], [2000, 0, 0.2972], [3000, 0, 0.3410], [4000, 0, 0.3384]], 1, True),
    ([[1000, 0, 0.2545], [2000, 0, 0.2972], [3000, 0, 0.3410], [4000, 0, 0.3384]], 2, False),  # 3000 gained
    ([[1000, 0, 0.30], [2000, 0, 0.31], [3000, 0, 0.301], [4000, 0, 0.3035]], 2, True),  # 3000 and 4000...
    ([[1000, 0, 0.30], [2000, 0, 0.31], [3000, 0, 0.301], [4000, 0, 0.3035]], 3, False),  # ...not 2000
    ([[2, 0, 0.5], [4, 0, 0.501]], 2, False),                  # the first evaluation has nothing to compare
])
def test_plateau_rule_patience(history, patience, expected):
  assert train.plateaued(history, 0.005, 0.2, patience) is expected


def test_time_budget_ends_the_run(tmp_path, caplog):
  config = _config(**{"train.steps": 100_000, "train.max_minutes": 1e-4, "train.log_every": 2})
  with caplog.at_level(logging.INFO):
    state = train.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / "DONE") as f:
    done = json.load(f)
  assert done["reason"] == "time" and done["step"] == int(state.step) == 2
  # The progress line's ETA is the budget's, not the 100,000 steps'.
  assert any(r.getMessage().startswith("step 2/100000 |") and r.getMessage().endswith(
      "ETA 00:00:00 (train.max_minutes)") for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_cli_eval_reads_the_run_record_and_refuses_conflicts(tmp_path):
  workdir = tmp_path / "run"
  common = ["--config.dataset.loader=pillow", "--config.model.widths=(8,)", "--config.model.hidden=16",
            "--config.model.feature_dim=16"]
  trained = _cli("--config=configs/digits.py", f"--workdir={workdir}", "--config.train.steps=4",
                 "--config.train.checkpoint_every=4", "--config.hash.bits=8", "--config.hash.eval_bits=(4,)",
                 *common)
  assert trained.returncode == 0, trained.stderr[-3000:]
  report = workdir / "eval_4.json"
  original = report.read_bytes()
  # Eval without --config: exactly the run's code lengths.
  os.remove(report)
  evaluated = _cli(f"--workdir={workdir}", "--mode=eval")
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert set(json.loads(report.read_text())["map"]) == {"4", "8"}
  assert json.loads(report.read_bytes()) == json.loads(original)
  before = _tree_digest(workdir)
  # A --config that disagrees with the record (digits.py is 32 bits) is refused, naming the key.
  refused = _cli("--config=configs/digits.py", f"--workdir={workdir}", "--mode=eval")
  assert refused.returncode == 1
  assert refused.stderr.strip().splitlines()[-1].startswith("error: --config differs from the run recorded")
  assert "hash.bits: recorded 8, --config 32" in refused.stderr and "Traceback" not in refused.stderr
  # An override that changes the code is refused; the report stays byte for byte.
  conflict = _cli(f"--workdir={workdir}", "--mode=eval", "--config.hash.bits=16")
  assert conflict.returncode == 1 and "--config.hash.bits cannot change" in conflict.stderr
  assert _tree_digest(workdir) == before
  # Other evaluation options: a report of its own, the run's untouched.
  stored = _cli(f"--workdir={workdir}", "--mode=eval", "--config.train.eval_database_order=stored")
  assert stored.returncode == 0, stored.stderr[-3000:]
  assert (workdir / "eval_4.eval_database_order-stored.json").exists()
  assert _tree_digest(workdir)["eval_4.json"] == before["eval_4.json"]


def test_cli_eval_on_a_mistyped_workdir_creates_nothing(tmp_path):
  for mode in ("eval", "encode"):
    result = _cli(f"--workdir={tmp_path / 'typo' / 'run'}", f"--mode={mode}")
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: no run in {tmp_path / 'typo' / 'run'}: the directory does not exist"
  assert not os.path.exists(tmp_path / "typo")
  (tmp_path / "empty").mkdir()
  result = _cli(f"--workdir={tmp_path / 'empty'}", "--mode=eval")
  assert result.returncode == 1 and "config.json not found" in result.stderr
  assert os.listdir(tmp_path / "empty") == []


def test_eval_restores_parameters_only_and_writes_nothing_else(tmp_path):
  config = _config(**{"train.steps": 10})
  train.train_and_evaluate(config, str(tmp_path))
  os.remove(tmp_path / "splits.json")
  shutil.rmtree(tmp_path / "checkpoints" / "10" / "opt")  # evaluation never reads the optimiser state
  with open(tmp_path / "eval_10.json") as f:
    trained_report = json.load(f)
  os.remove(tmp_path / "eval_10.json")
  before = set(_tree_digest(tmp_path))
  path = train.evaluate_checkpoint(str(tmp_path))
  assert set(_tree_digest(tmp_path)) - before == {"eval_10.json"} and str(path).endswith("eval_10.json")
  assert json.loads(open(path).read())["map"] == trained_report["map"]
  assert not (tmp_path / "splits.json").exists()  # eval checks splits.json, it never writes one


def test_eval_does_not_need_the_pretrained_file():
  """model.pretrained is read when a run starts; evaluating the run later does not require the file."""
  from drlih_jax import validation  # pylint: disable=g-import-not-at-top
  config = _config(**{"model.backbone": "vgg19_bn", "model.pretrained": "/nonexistent/vgg19_bn.safetensors"})
  with pytest.raises(errors.ConfigError, match="model.pretrained=.*no such file"):
    validation.validate(config)
  validation.validate(config, training=False)


def test_resume_rules_table():
  refused = ["objective", "seed", "hash.bits", "hash.group", "model.hidden", "model.backbone", "dataset.name",
             "dataset.split_seed", "optim.grad_clip", "optim.learning_rate"]
  allowed = ["train.steps", "train.eval_every", "train.checkpoint_every", "rl.beta", "input.augment",
             "mesh_devices", "hash.eval_bits", "model.pretrained", "dataset.root", "dataset.data_dir"]
  assert [k for k in refused if not run_record.refused_on_resume(k)] == []
  assert [k for k in allowed if run_record.refused_on_resume(k)] == []
  flat = configuration.flatten(_config())
  assert set(run_record.EVAL_OPTIONS) <= set(flat)
