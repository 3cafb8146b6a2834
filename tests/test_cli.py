"""The command line as a user meets it: every mistake is one line on stderr, status 1 or 2, nothing written."""

import json
import os
import re
import subprocess
import sys

from drlih_jax import configuration

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(REPO, "configs", "digits.py")
_LOG_LINE = re.compile(r"^[IW]\d{4} \d\d:\d\d:\d\d")  # absl INFO/WARNING lines (progress, not errors)

# Runs main as `python -m drlih_jax.main` does, with some modules made unimportable first.
_BLOCKED_MAIN = """
import sys
for name in sys.argv[1].split(","):
  sys.modules[name] = None
sys.argv = ["drlih_jax.main"] + sys.argv[2:]
from absl import app
from drlih_jax import main
app.run(main.main, flags_parser=main.parse_flags)
"""


def _recorded_run(workdir, **overrides) -> None:
  """A workdir holding config.json (and optionally a splits.json and a checkpoint step folder) of digits."""
  os.makedirs(workdir)
  if overrides.get("checkpoint"):  # A run with a checkpoint: its record binds (the step is never read here).
    os.makedirs(os.path.join(workdir, "checkpoints", "5"))
  config = configuration.load_file(DIGITS)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(configuration.flatten(config), f)
  if overrides.get("splits"):
    with open(os.path.join(workdir, "splits.json"), "w") as f:
      json.dump({"protocol": "digits", "seed": 0, "source": "digits",
                 "ids": {"train": [0, 1], "query": [2], "database": [0, 1]}}, f)


def test_bad_command_lines_fail_in_one_line(tmp_path):
  new = str(tmp_path / "new")  # must never be created
  recorded, unrun = str(tmp_path / "recorded"), str(tmp_path / "unrun")
  _recorded_run(recorded, splits=True, checkpoint=True)
  _recorded_run(unrun, splits=True)
  weights = tmp_path / "vgg.safetensors"
  weights.write_bytes(b"not read: the missing package is reported first")
  # name | exit status | arguments ({train_new}: train with digits into a new workdir) | the stderr line has
  table = """
  unknown key | 1 | {train_new} --config.hash.bitz=3 | error: unknown config key 'hash.bitz'; did you mean 'hash.bits'
  unknown top-level key | 1 | {train_new} --config.objectiv=triplet | did you mean 'objective'?
  bad mode | 2 | {train_new} --mode=nonsense | error: flag --mode=nonsense: value should be one of <train|eval|encode>
  bad split | 2 | --workdir={recorded} --mode=encode --split=nonsense | error: flag --split=nonsense: value should be
  no config to train | 2 | --workdir={new} | error: --config is required to train
  no workdir | 2 | --config={digits} | error: --workdir is required
  stray argument | 2 | {train_new} extra | error: unexpected arguments
  bad value type | 1 | {train_new} --config.train.steps=many | error: --config.train.steps=many: expected an integer
  bad enum value | 1 | {train_new} --config.model.cell=transformer | error: model.cell must be one of
  bad eval_bits | 1 | {train_new} --config.hash.eval_bits=(12,40) | error: hash.eval_bits [40] must lie in
  missing config file | 1 | --config={tmp}/nope.py --workdir={new} | error: --config=
  partial coordinator flags | 2 | {train_new} --num_processes=2 | --num_processes and --process_id go together
  refused resume key | 1 | {train_recorded} --config.hash.bits=16 --config.hash.eval_bits=(8,) | hash.bits: recorded 32
  split mismatch | 1 | {train_recorded} --config.dataset.loader=pillow | the recomputed 'train' split differs
  eval override | 1 | --workdir={recorded} --mode=eval --config.model.hidden=8 | --config.model.hidden cannot change
  eval without checkpoint | 1 | --workdir={unrun} --mode=eval | error: no checkpoint found in
  """
  values = dict(train_new=f"--config={DIGITS} --workdir={new}", new=new, recorded=recorded, unrun=unrun,
                digits=DIGITS,
                train_recorded=f"--config={DIGITS} --workdir={recorded}", tmp=tmp_path)
  cases = {}
  for row in filter(None, (line.strip() for line in table.splitlines())):
    name, status, args, text = (field.strip() for field in row.split(" | "))
    cases[name] = (args.format(**values).split(), int(status), text)
  blocked = {
      "pretrained without safetensors": ("safetensors,safetensors.numpy", [
          f"--config={DIGITS}", f"--workdir={new}", "--config.model.backbone=vgg19_bn",
          f"--config.model.pretrained={weights}"], 1, "pip install 'drlih_jax[weights]'"),
      "streaming without tensorflow": ("tensorflow", [
          f"--config={DIGITS}", f"--workdir={new}", "--config.input.mode=streaming"], 1,
          "pip install tensorflow-cpu"),
  }
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  procs = {name: subprocess.Popen([sys.executable, "-m", "drlih_jax.main", *args], cwd=tmp_path, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for name, (args, _, _) in cases.items()}
  procs.update({name: subprocess.Popen([sys.executable, "-c", _BLOCKED_MAIN, modules, *args], cwd=tmp_path,
                                       env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for name, (modules, args, _, _) in blocked.items()})
  expected = {name: (status, text) for name, (_, status, text) in cases.items()}
  expected.update({name: (status, text) for name, (_, _, status, text) in blocked.items()})
  problems = []
  for name, proc in procs.items():
    _, err = proc.communicate(timeout=600)
    status, text = expected[name]
    lines = [line for line in err.splitlines() if line.strip() and not _LOG_LINE.match(line)]
    if proc.returncode != status or len(lines) != 1 or not lines[0].startswith("error: ") or text not in lines[0]:
      problems.append(f"{name}: status {proc.returncode} (want {status}), stderr {err[-1500:]!r}")
  assert not problems, "\n".join(problems)
  assert not os.path.exists(new)
  assert sorted(os.listdir(recorded)) == ["checkpoints", "config.json", "splits.json"]
  assert os.listdir(os.path.join(recorded, "checkpoints")) == ["5"]
  assert sorted(os.listdir(unrun)) == ["config.json", "splits.json"]
