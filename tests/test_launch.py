"""Tests for the Cloud TPU VM scripts in launch/.

Each script is run with --dry-run and the gcloud command lines it prints are
compared with hand-written expected lines for a v4-8 (one host) and a
v5litepod-16 (four hosts). The remote shell commands those lines carry are then
run locally in a sandbox HOME with stub programs (python, uv, gcloud) to check
what they do, and every script is passed through shellcheck when installed.
"""

import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = sorted(p.name for p in LAUNCH.glob("*.sh"))
ENTRY_SCRIPTS = [s for s in SCRIPTS if s != "common.sh"]

BASH = shutil.which("bash") or "/bin/bash"

V4 = {"name": "drlih-v4", "zone": "us-central2-b", "type": "v4-8"}
V5E = {"name": "drlih-v5e", "zone": "us-west4-a", "type": "v5litepod-16"}


def run_script(script, *args, env=None, check_rc=0):
  """Runs launch/<script> ARGS; returns the CompletedProcess."""
  full_env = dict(os.environ)
  full_env.update(env or {})
  proc = subprocess.run(
      [BASH, str(LAUNCH / script), *args],
      capture_output=True, text=True, env=full_env, timeout=30)
  if check_rc is not None:
    assert proc.returncode == check_rc, (proc.stdout, proc.stderr)
  return proc


def printed_lines(stdout):
  """Returns the `+ ` command lines of a dry run (and checks there is no other output)."""
  lines = stdout.splitlines()
  assert lines and all(line.startswith("+ ") for line in lines), stdout
  return [line[2:] for line in lines]


def remote_command(line):
  """Returns the --command=... value of a printed gcloud ssh line."""
  argv = shlex.split(line)
  assert argv[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"], argv
  (command,) = [a[len("--command="):] for a in argv if a.startswith("--command=")]
  return command


# --- create / delete -----------------------------------------------------------


def test_create_v4_8_on_demand():
  proc = run_script("create_tpu_vm.sh", "--name", V4["name"], "--zone", V4["zone"],
                    "--accelerator-type", V4["type"], "--dry-run")
  assert printed_lines(proc.stdout) == [
      "gcloud compute tpus tpu-vm create drlih-v4 --zone=us-central2-b"
      " --accelerator-type=v4-8 --version=tpu-ubuntu2204-base"]


def test_create_v5litepod_16_spot_with_project():
  proc = run_script("create_tpu_vm.sh", f"--name={V5E['name']}", "--zone", V5E["zone"],
                    "--accelerator-type", V5E["type"], "--spot", "--project", "my-proj",
                    "--dry-run")
  assert printed_lines(proc.stdout) == [
      "gcloud compute tpus tpu-vm create drlih-v5e --zone=us-west4-a"
      " --accelerator-type=v5litepod-16 --version=v2-alpha-tpuv5-lite --spot"
      " --project=my-proj"]


@pytest.mark.parametrize("accelerator_type,version", [
    ("v2-8", "tpu-ubuntu2204-base"),
    ("v3-32", "tpu-ubuntu2204-base"),
    ("v5litepod-8", "v2-alpha-tpuv5-lite"),
    ("v5p-8", "v2-alpha-tpuv5"),
    ("v6e-8", "v2-alpha-tpuv6e"),
])
def test_create_default_runtime_per_family(accelerator_type, version):
  proc = run_script("create_tpu_vm.sh", "--name", "n", "--zone", "z",
                    "--accelerator-type", accelerator_type, "--dry-run")
  assert shlex.split(printed_lines(proc.stdout)[0])[-1] == f"--version={version}"


def test_create_explicit_version_wins():
  proc = run_script("create_tpu_vm.sh", "--name", "n", "--zone", "z",
                    "--accelerator-type", "v4-8", "--version", "tpu-vm-v4-base",
                    "--dry-run")
  assert shlex.split(printed_lines(proc.stdout)[0])[-1] == "--version=tpu-vm-v4-base"


@pytest.mark.parametrize("tpu", [V4, V5E], ids=["v4-8", "v5litepod-16"])
def test_delete(tpu):
  proc = run_script("delete_tpu_vm.sh", "--name", tpu["name"], "--zone", tpu["zone"],
                    "--quiet", "--dry-run")
  assert printed_lines(proc.stdout) == [
      f"gcloud compute tpus tpu-vm delete {tpu['name']} --zone={tpu['zone']} --quiet"]
  proc = run_script("delete_tpu_vm.sh", "--name", tpu["name"], "--zone", tpu["zone"],
                    "--dry-run")
  assert printed_lines(proc.stdout) == [
      f"gcloud compute tpus tpu-vm delete {tpu['name']} --zone={tpu['zone']}"]


# --- install -------------------------------------------------------------------

INSTALL_TAIL = (
    "if [ ! -f ~/drlih_jax/constraints.txt ]; then echo \"$(hostname): ~/drlih_jax/constraints.txt"
    " is missing (install.sh --no-constraints installs without it)\" >&2; exit 1; fi;"
    " uv venv --allow-existing --python 3.11 ~/drlih_venv;"
    " uv pip install --python ~/drlih_venv/bin/python --upgrade -c ~/drlih_jax/constraints.txt"
    " \"jax[tpu]\" -e ~/drlih_jax\"[weights]\";"
    " ~/drlih_venv/bin/python -c \"import jax, drlih_jax; print(jax.__version__)\"")
INSTALL_HEAD = (
    "set -euo pipefail; export PATH=\"$HOME/.local/bin:$PATH\";"
    " command -v uv >/dev/null || python3 -m pip install --user --quiet --upgrade uv;")


@pytest.mark.parametrize("tpu", [V4, V5E], ids=["v4-8", "v5litepod-16"])
def test_install_local_copy(tpu, tmp_path):
  proc = run_script("install.sh", "--name", tpu["name"], "--zone", tpu["zone"],
                    "--dry-run", env={"TMPDIR": str(tmp_path)})
  archive = tmp_path / "drlih_jax-src.tar.gz"
  remote = (
      f"{INSTALL_HEAD} rm -rf ~/drlih_jax; mkdir -p ~/drlih_jax;"
      " tar -xzf ~/drlih_jax-src.tar.gz -C ~/drlih_jax; rm -f ~/drlih_jax-src.tar.gz;"
      f" {INSTALL_TAIL}")
  assert printed_lines(proc.stdout) == [
      "bash -c \"set -euo pipefail; git -C " + str(REPO) +
      " ls-files -z --cached --others --exclude-standard | tar -czf " + str(archive) +
      " -C " + str(REPO) + " --null --ignore-failed-read --no-recursion -T -\"",
      f"gcloud compute tpus tpu-vm scp {archive} {tpu['name']}:drlih_jax-src.tar.gz"
      f" --zone={tpu['zone']} --worker=all",
      f"gcloud compute tpus tpu-vm ssh {tpu['name']} --zone={tpu['zone']} --worker=all"
      f" --command='{remote}'",
  ]
  assert not archive.exists()  # a dry run creates nothing


@pytest.mark.parametrize("tpu", [V4, V5E], ids=["v4-8", "v5litepod-16"])
def test_install_git_clone(tpu):
  proc = run_script("install.sh", "--name", tpu["name"], "--zone", tpu["zone"],
                    "--repo", "https://github.com/example/drlih_jax.git", "--ref", "v0.1",
                    "--python-version", "3.12", "--project", "p1", "--dry-run")
  remote = (
      f"{INSTALL_HEAD} rm -rf ~/drlih_jax;"
      " git clone --quiet https://github.com/example/drlih_jax.git ~/drlih_jax;"
      " git -C ~/drlih_jax checkout --quiet v0.1;"
      f" {INSTALL_TAIL.replace('--python 3.11', '--python 3.12')}")
  assert printed_lines(proc.stdout) == [
      f"gcloud compute tpus tpu-vm ssh {tpu['name']} --zone={tpu['zone']} --worker=all"
      f" --command='{remote}' --project=p1"]


def _write_stub(path, body):
  path.write_text("#!/usr/bin/env bash\n" + body)
  path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _fake_recording_gcloud(tmp_path):
  """A fake gcloud that records its argv as JSON lines; returns (bin_dir, calls_file)."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  calls = tmp_path / "gcloud_calls.jsonl"
  _write_stub(bin_dir / "gcloud",
              f"python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' \"$@\""
              f" >> {shlex.quote(str(calls))}\n")
  return bin_dir, calls


def _remote_sandbox(tmp_path, archive):
  """A worker HOME holding ARCHIVE, and a bin folder with a stub uv; returns (home, bin, uv_log)."""
  home = tmp_path / "home"
  home.mkdir()
  shutil.copy(archive, home / "drlih_jax-src.tar.gz")
  remote_bin = tmp_path / "remote_bin"
  remote_bin.mkdir()
  uv_log = tmp_path / "uv_calls.txt"
  _write_stub(remote_bin / "uv", f"""
echo "$*" >> {shlex.quote(str(uv_log))}
if [ "$1" = venv ]; then
  mkdir -p "${{@: -1}}/bin"
  printf '#!/usr/bin/env bash\\necho "python $*"\\n' > "${{@: -1}}/bin/python"
  chmod +x "${{@: -1}}/bin/python"
fi
""")
  return home, remote_bin, uv_log


def _run_install(tmp_path, *args):
  """Runs install.sh for real against the recording gcloud; returns (proc, recorded argvs, archive)."""
  bin_dir, calls = _fake_recording_gcloud(tmp_path)
  proc = run_script("install.sh", "--name", V5E["name"], "--zone", V5E["zone"], *args,
                    env={"TMPDIR": str(tmp_path), "PATH": f"{bin_dir}:{os.environ['PATH']}"})
  recorded = [json.loads(line) for line in calls.read_text().splitlines()]
  return proc, recorded, tmp_path / "drlih_jax-src.tar.gz"


def _run_remote_install(tmp_path, archive, remote):
  home, remote_bin, uv_log = _remote_sandbox(tmp_path, archive)
  result = subprocess.run(
      ["bash", "-c", remote], capture_output=True, text=True, timeout=60, cwd=tmp_path,
      env={"HOME": str(home), "PATH": f"{remote_bin}:/usr/bin:/bin"})
  uv_calls = uv_log.read_text().splitlines() if uv_log.exists() else []
  return result, home, uv_calls


def test_install_runs_end_to_end_with_stubs(tmp_path):
  """Runs install.sh for real against a fake gcloud, then its remote command in a sandbox."""
  if shutil.which("git") is None:
    pytest.skip("git is not installed")
  proc, recorded, archive = _run_install(tmp_path, "--no-constraints")
  assert [argv[:4] for argv in recorded] == [
      ["compute", "tpus", "tpu-vm", "scp"], ["compute", "tpus", "tpu-vm", "ssh"]]
  assert recorded[0][4:] == [str(archive), "drlih-v5e:drlih_jax-src.tar.gz",
                             "--zone=us-west4-a", "--worker=all"]
  assert recorded[1][5:7] == ["--zone=us-west4-a", "--worker=all"]
  remote = recorded[1][7][len("--command="):]
  assert remote == remote_command(printed_lines(proc.stdout)[-1])
  assert "constraints" not in remote

  with tarfile.open(archive) as tar:
    names = set(tar.getnames())
  assert {"pyproject.toml", "launch/install.sh", "launch/common.sh",
          "tests/test_launch.py"} <= names
  assert not any(n.startswith(".git/") or "__pycache__" in n for n in names)

  result, home, uv_calls = _run_remote_install(tmp_path, archive, remote)
  assert result.returncode == 0, result.stderr
  assert (home / "drlih_jax" / "pyproject.toml").read_bytes() == (
      REPO / "pyproject.toml").read_bytes()
  assert not (home / "drlih_jax-src.tar.gz").exists()
  assert uv_calls == [
      f"venv --allow-existing --python 3.11 {home}/drlih_venv",
      f"pip install --python {home}/drlih_venv/bin/python --upgrade jax[tpu]"
      f" -e {home}/drlih_jax[weights]",
  ]
  assert result.stdout == "python -c import jax, drlih_jax; print(jax.__version__)\n"


def _small_checkout(root, constraints):
  """A git checkout with a tracked pyproject.toml (and constraints.txt), an untracked and an ignored file."""
  if shutil.which("git") is None:
    pytest.skip("git is not installed")
  root.mkdir()
  subprocess.run(["git", "init", "-q", str(root)], check=True)
  (root / "pyproject.toml").write_text("[project]\nname = 'drlih_jax'\n")
  (root / ".gitignore").write_text("ignored/\n")
  (root / "ignored").mkdir()
  (root / "ignored" / "big.bin").write_bytes(b"x")
  (root / "notes.txt").write_text("untracked, not ignored\n")
  tracked = ["pyproject.toml", ".gitignore"]
  if constraints:
    (root / "constraints.txt").write_text("jax==0.10.2\njaxlib==0.10.2\n")
    tracked.append("constraints.txt")
  subprocess.run(["git", "-C", str(root), "add", *tracked], check=True)
  return root


def test_install_with_constraints_in_sandbox(tmp_path):
  """The default install pins with the source's constraints.txt and adds the weights extra."""
  src = _small_checkout(tmp_path / "src", constraints=True)
  proc, recorded, archive = _run_install(tmp_path, "--src", str(src))
  with tarfile.open(archive) as tar:
    assert sorted(tar.getnames()) == [".gitignore", "constraints.txt", "notes.txt", "pyproject.toml"]
  remote = recorded[-1][7][len("--command="):]
  assert remote == remote_command(printed_lines(proc.stdout)[-1])
  result, home, uv_calls = _run_remote_install(tmp_path, archive, remote)
  assert result.returncode == 0, result.stderr
  assert uv_calls == [
      f"venv --allow-existing --python 3.11 {home}/drlih_venv",
      f"pip install --python {home}/drlih_venv/bin/python --upgrade"
      f" -c {home}/drlih_jax/constraints.txt jax[tpu] -e {home}/drlih_jax[weights]",
  ]


def test_install_without_constraints_file_fails_on_the_worker(tmp_path):
  src = _small_checkout(tmp_path / "src", constraints=False)
  proc, recorded, archive = _run_install(tmp_path, "--src", str(src))
  result, _, uv_calls = _run_remote_install(tmp_path, archive, recorded[-1][7][len("--command="):])
  assert result.returncode == 1
  assert result.stderr.endswith(
      ": ~/drlih_jax/constraints.txt is missing"
      " (install.sh --no-constraints installs without it)\n")
  assert uv_calls == []  # nothing installed
  assert proc.returncode == 0


def test_install_other_constraints_file():
  proc = run_script("install.sh", "--name", "n", "--zone", "z", "--repo", "u",
                    "--constraints", "ci/constraints-tpu.txt", "--dry-run")
  remote = remote_command(printed_lines(proc.stdout)[0])
  assert "if [ ! -f ~/drlih_jax/ci/constraints-tpu.txt ]; then" in remote
  assert " --upgrade -c ~/drlih_jax/ci/constraints-tpu.txt \"jax[tpu]\" -e" in remote


# --- train / logs / eval / stop --------------------------------------------------

TRAIN_REMOTE_V4 = (
    "mkdir -p ~/drlih_logs;"
    " if [ -f ~/drlih_logs/train.pid ] && kill -0 \"$(cat ~/drlih_logs/train.pid)\""
    " 2>/dev/null; then echo \"$(hostname): already running (pid"
    " $(cat ~/drlih_logs/train.pid))\" >&2; exit 1; fi;"
    " cd ~/drlih_jax; export PYTHONUNBUFFERED=1;"
    " echo \"=== $(date -u +%Y-%m-%dT%H:%M:%SZ) start on $(hostname)\" >> ~/drlih_logs/train.log;"
    " nohup ~/drlih_venv/bin/python -m drlih_jax.main --config=configs/cifar.py"
    " --workdir=gs://my-bucket/drlih/cifar-v4 --mode=train --distributed=on"
    " >> ~/drlih_logs/train.log 2>&1 < /dev/null &"
    " echo $! > ~/drlih_logs/train.pid;"
    " echo \"$(hostname): started pid $!, log ~/drlih_logs/train.log\"")

TRAIN_REMOTE_V5E = (
    "mkdir -p ~/drlih_logs;"
    " if [ -f ~/drlih_logs/cifar64.pid ] && kill -0 \"$(cat ~/drlih_logs/cifar64.pid)\""
    " 2>/dev/null; then echo \"$(hostname): already running (pid"
    " $(cat ~/drlih_logs/cifar64.pid))\" >&2; exit 1; fi;"
    " cd ~/drlih_jax; export PYTHONUNBUFFERED=1;"
    " export TFDS_DATA_DIR=gs://my-bucket/tfds;"
    " echo \"=== $(date -u +%Y-%m-%dT%H:%M:%SZ) start on $(hostname)\""
    " >> ~/drlih_logs/cifar64.log;"
    " nohup ~/drlih_venv/bin/python -m drlih_jax.main --config=configs/cifar.py"
    " --workdir=gs://my-bucket/drlih/cifar-v5e --mode=train --distributed=on"
    " --config.hash.bits=64 --config.note=\"two words\""
    " >> ~/drlih_logs/cifar64.log 2>&1 < /dev/null &"
    " echo $! > ~/drlih_logs/cifar64.pid;"
    " echo \"$(hostname): started pid $!, log ~/drlih_logs/cifar64.log\"")


def test_train_v4_8():
  proc = run_script("train.sh", "--name", V4["name"], "--zone", V4["zone"],
                    "--workdir", "gs://my-bucket/drlih/cifar-v4",
                    "--config", "configs/cifar.py", "--dry-run")
  assert printed_lines(proc.stdout) == [
      "gcloud compute tpus tpu-vm ssh drlih-v4 --zone=us-central2-b --worker=all"
      f" --command='{TRAIN_REMOTE_V4}'"]


def test_train_v5litepod_16_with_overrides():
  proc = run_script("train.sh", "--name", V5E["name"], "--zone", V5E["zone"],
                    "--workdir=gs://my-bucket/drlih/cifar-v5e",
                    "--tfds-data-dir", "gs://my-bucket/tfds", "--run-name", "cifar64",
                    "--config.hash.bits=64", "--config.note=two words", "--dry-run")
  assert printed_lines(proc.stdout) == [
      "gcloud compute tpus tpu-vm ssh drlih-v5e --zone=us-west4-a --worker=all"
      f" --command='{TRAIN_REMOTE_V5E}'"]


def test_train_passes_args_after_double_dash():
  proc = run_script("train.sh", "--name", "n", "--zone", "z", "--workdir", "gs://b/w",
                    "--dry-run", "--", "--jax_log_compiles", "--dry-run")
  remote = remote_command(printed_lines(proc.stdout)[0])
  assert ("--mode=train --distributed=on --jax_log_compiles --dry-run >> ~/drlih_logs/train.log"
          in remote)


@pytest.mark.parametrize("tpu,worker", [(V4, "0"), (V5E, "3")], ids=["v4-8", "v5litepod-16"])
def test_logs(tpu, worker):
  args = ["--name", tpu["name"], "--zone", tpu["zone"], "--dry-run"]
  if worker != "0":
    args += ["--worker", worker]
  proc = run_script("logs.sh", *args)
  assert printed_lines(proc.stdout) == [
      f"gcloud compute tpus tpu-vm ssh {tpu['name']} --zone={tpu['zone']} --worker={worker}"
      " --command=\"tail -n 100 -F ~/drlih_logs/train.log\""]
  proc = run_script("logs.sh", *args, "--no-follow", "--lines=5", "--run-name", "eval")
  assert remote_command(printed_lines(proc.stdout)[0]) == "tail -n 5 ~/drlih_logs/eval.log"


EVAL_BUSY_CHECK = (
    "set -o pipefail; mkdir -p ~/drlih_logs; for f in ~/drlih_logs/*.pid; do"
    " if [ -f \"$f\" ] && kill -0 \"$(cat \"$f\")\" 2>/dev/null; then"
    " echo \"$(hostname): $f is alive, the TPU is busy (launch/stop.sh stops it)\" >&2;"
    " exit 1; fi; done;")


def test_eval_v4_8_worker0_step():
  proc = run_script("eval.sh", "--name", V4["name"], "--zone", V4["zone"],
                    "--workdir", "gs://my-bucket/drlih/cifar-v4", "--step", "20000",
                    "--dry-run")
  remote = (
      f"{EVAL_BUSY_CHECK} cd ~/drlih_jax; export PYTHONUNBUFFERED=1;"
      " ~/drlih_venv/bin/python -m drlih_jax.main --config=configs/cifar.py"
      " --workdir=gs://my-bucket/drlih/cifar-v4 --mode=eval --distributed=on --step=20000"
      " 2>&1 | tee -a ~/drlih_logs/eval.log")
  assert printed_lines(proc.stdout) == [
      "gcloud compute tpus tpu-vm ssh drlih-v4 --zone=us-central2-b --worker=0"
      f" --command='{remote}'"]


def test_eval_v5litepod_16_latest_and_all_workers():
  proc = run_script("eval.sh", "--name", V5E["name"], "--zone", V5E["zone"],
                    "--workdir", "gs://my-bucket/drlih/cifar-v5e",
                    "--tfds-data-dir", "gs://my-bucket/tfds", "--config.hash.bits=64",
                    "--dry-run")
  remote = (
      f"{EVAL_BUSY_CHECK} cd ~/drlih_jax; export PYTHONUNBUFFERED=1;"
      " export TFDS_DATA_DIR=gs://my-bucket/tfds;"
      " ~/drlih_venv/bin/python -m drlih_jax.main --config=configs/cifar.py"
      " --workdir=gs://my-bucket/drlih/cifar-v5e --mode=eval --distributed=on --config.hash.bits=64"
      " 2>&1 | tee -a ~/drlih_logs/eval.log")
  assert printed_lines(proc.stdout) == [
      "gcloud compute tpus tpu-vm ssh drlih-v5e --zone=us-west4-a --worker=0"
      f" --command='{remote}'"]
  proc = run_script("eval.sh", "--name", V5E["name"], "--zone", V5E["zone"],
                    "--workdir", "gs://b/w", "--worker=all", "--mode", "encode",
                    "--dry-run")
  argv = shlex.split(printed_lines(proc.stdout)[0])
  assert "--worker=all" in argv
  assert "--mode=encode --distributed=on 2>&1" in remote_command(printed_lines(proc.stdout)[0])


@pytest.mark.parametrize("tpu", [V4, V5E], ids=["v4-8", "v5litepod-16"])
def test_stop(tpu):
  proc = run_script("stop.sh", "--name", tpu["name"], "--zone", tpu["zone"],
                    "--timeout", "30", "--dry-run")
  remote = (
      "p=~/drlih_logs/train.pid; if [ -f \"$p\" ] && kill -0 \"$(cat \"$p\")\" 2>/dev/null;"
      " then pid=$(cat \"$p\"); kill -TERM \"$pid\"; echo \"$(hostname): sent SIGTERM to $pid\";"
      " waited=0; while kill -0 \"$pid\" 2>/dev/null && [ \"$waited\" -lt 30 ]; do sleep 1;"
      " waited=$((waited + 1)); done; if kill -0 \"$pid\" 2>/dev/null; then"
      " echo \"$(hostname): pid $pid still running after 30 s\" >&2; exit 1; fi;"
      " echo \"$(hostname): stopped\"; else echo \"$(hostname): not running\"; fi")
  assert printed_lines(proc.stdout) == [
      f"gcloud compute tpus tpu-vm ssh {tpu['name']} --zone={tpu['zone']} --worker=all"
      f" --command='{remote}'"]


# --- the remote commands, run in a sandbox -----------------------------------------


@pytest.fixture
def sandbox(tmp_path):
  """A fake worker HOME with ~/drlih_jax and a stub ~/drlih_venv/bin/python.

  The stub records its working directory, TFDS_DATA_DIR and argv (one per line)
  in ~/record.txt, prints a line, then sleeps when STUB_SLEEP is set (exiting
  0 on SIGTERM, as the trainer does after saving a checkpoint) and exits with
  STUB_RC.
  """
  home = tmp_path / "home"
  (home / "drlih_jax").mkdir(parents=True)
  (home / "drlih_venv" / "bin").mkdir(parents=True)
  _write_stub(home / "drlih_venv" / "bin" / "python", """
{ pwd; echo "TFDS_DATA_DIR=${TFDS_DATA_DIR:-unset}"; printf '%s\\n' "$@"; } > "$HOME/record.txt"
echo "stub python running"
if [ -n "${STUB_SLEEP:-}" ]; then
  trap 'echo "got SIGTERM"; kill "$!"; exit 0' TERM
  sleep "$STUB_SLEEP" &
  wait
fi
exit "${STUB_RC:-0}"
""")
  started = []
  yield home, started
  for pid in started:  # never leave a stub behind
    try:
      os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
      pass


def run_remote(home, command, **env):
  return subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                        timeout=60, env={"HOME": str(home), "PATH": "/usr/bin:/bin", **env})


def _wait_for(predicate, timeout=10.0):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if predicate():
      return True
    time.sleep(0.05)
  return False


def test_remote_train_then_stop(sandbox):
  home, started = sandbox
  proc = run_script("train.sh", "--name", "n", "--zone", "z", "--workdir", "gs://b/w",
                    "--tfds-data-dir", "gs://b/tfds", "--config.note=two words",
                    "--dry-run")
  train_remote = remote_command(printed_lines(proc.stdout)[0])
  result = run_remote(home, train_remote, STUB_SLEEP="30")
  assert result.returncode == 0, result.stderr
  pid = int((home / "drlih_logs" / "train.pid").read_text())
  started.append(pid)
  assert "started pid" in result.stdout
  assert _wait_for(lambda: (home / "record.txt").exists()
                   and "stub python running" in (home / "drlih_logs" / "train.log").read_text())
  assert (home / "record.txt").read_text().splitlines() == [
      str(home / "drlih_jax"), "TFDS_DATA_DIR=gs://b/tfds", "-m", "drlih_jax.main",
      "--config=configs/cifar.py", "--workdir=gs://b/w", "--mode=train", "--distributed=on",
      "--config.note=two words"]

  # A second start is refused while the first is alive.
  again = run_remote(home, train_remote, STUB_SLEEP="30")
  assert again.returncode == 1
  assert "already running" in again.stderr

  # So is an eval (the TPU is busy).
  proc = run_script("eval.sh", "--name", "n", "--zone", "z", "--workdir", "gs://b/w",
                    "--dry-run")
  busy = run_remote(home, remote_command(printed_lines(proc.stdout)[0]))
  assert busy.returncode == 1
  assert "train.pid is alive" in busy.stderr

  proc = run_script("stop.sh", "--name", "n", "--zone", "z", "--timeout", "20", "--dry-run")
  stop_remote = remote_command(printed_lines(proc.stdout)[0])
  stopped = run_remote(home, stop_remote)
  assert stopped.returncode == 0, stopped.stderr
  assert f"sent SIGTERM to {pid}" in stopped.stdout
  assert stopped.stdout.rstrip().endswith(": stopped")
  assert "got SIGTERM" in (home / "drlih_logs" / "train.log").read_text()
  assert run_remote(home, stop_remote).stdout.rstrip().endswith(": not running")

  proc = run_script("logs.sh", "--name", "n", "--zone", "z", "--no-follow", "--lines",
                    "2", "--dry-run")
  logs = run_remote(home, remote_command(printed_lines(proc.stdout)[0]))
  assert logs.stdout.splitlines() == ["stub python running", "got SIGTERM"]


def test_remote_eval_propagates_exit_status_and_logs(sandbox):
  home, _ = sandbox
  proc = run_script("eval.sh", "--name", "n", "--zone", "z", "--workdir", "gs://b/w",
                    "--step", "7", "--dry-run")
  remote = remote_command(printed_lines(proc.stdout)[0])
  result = run_remote(home, remote, STUB_RC="3")
  assert result.returncode == 3  # through `| tee` (pipefail)
  assert result.stdout == "stub python running\n"
  assert (home / "drlih_logs" / "eval.log").read_text() == "stub python running\n"
  assert (home / "record.txt").read_text().splitlines()[1:] == [
      "TFDS_DATA_DIR=unset", "-m", "drlih_jax.main", "--config=configs/cifar.py",
      "--workdir=gs://b/w", "--mode=eval", "--distributed=on", "--step=7"]


# --- multi-host slices: every worker, the same command, jax.distributed ---------------

V4_32 = {"name": "drlih-v4-32", "zone": "us-central2-b", "type": "v4-32",
         "version": "tpu-ubuntu2204-base"}
V5E_64 = {"name": "drlih-v5e-64", "zone": "us-west4-a", "type": "v5litepod-64",
          "version": "v2-alpha-tpuv5-lite"}


def _gcloud_argv(line):
  argv = shlex.split(line)
  assert argv[0] == "gcloud", line
  return argv


@pytest.mark.parametrize("tpu", [V4_32, V5E_64], ids=["v4-32", "v5litepod-64"])
def test_multi_host_slice_runs_the_same_command_on_every_worker(tpu, tmp_path):
  where = ["--name", tpu["name"], "--zone", tpu["zone"]]
  create = printed_lines(run_script("create_tpu_vm.sh", *where, "--accelerator-type", tpu["type"],
                                    "--spot", "--dry-run").stdout)
  assert create == [f"gcloud compute tpus tpu-vm create {tpu['name']} --zone={tpu['zone']}"
                    f" --accelerator-type={tpu['type']} --version={tpu['version']} --spot"]

  install = printed_lines(run_script("install.sh", *where, "--dry-run",
                                     env={"TMPDIR": str(tmp_path)}).stdout)
  train = printed_lines(run_script("train.sh", *where, "--workdir", "gs://b/run",
                                   "--tfds-data-dir", "gs://b/tfds", "--config.hash.bits=64",
                                   "--dry-run").stdout)
  stop = printed_lines(run_script("stop.sh", *where, "--dry-run").stdout)
  evaluate = printed_lines(run_script("eval.sh", *where, "--workdir", "gs://b/run",
                                      "--worker", "all", "--dry-run").stdout)
  remote_lines = install[1:] + train + stop + evaluate  # install[0] packs the archive locally
  assert len(remote_lines) == 5
  for line in remote_lines:  # one gcloud command each, addressed to every worker at once
    argv = _gcloud_argv(line)
    assert argv[1:4] == ["compute", "tpus", "tpu-vm"], line
    assert tpu["name"] in (argv[5], argv[6].split(":")[0]), line  # ssh NAME / scp FILE NAME:FILE
    assert [a for a in argv if a.startswith("--worker")] == ["--worker=all"], line

  # Training and evaluation initialise jax.distributed on every worker ...
  (train_remote,) = [remote_command(line) for line in train]
  assert (" nohup ~/drlih_venv/bin/python -m drlih_jax.main --config=configs/cifar.py"
          " --workdir=gs://b/run --mode=train --distributed=on --config.hash.bits=64 >> ") in train_remote
  assert "--mode=eval --distributed=on 2>&1" in remote_command(evaluate[0])
  # ... and the command does not depend on the slice: it is the one a v4-8 gets.
  single = printed_lines(run_script("train.sh", "--name", "x", "--zone", "y", "--workdir",
                                    "gs://b/run", "--tfds-data-dir", "gs://b/tfds",
                                    "--config.hash.bits=64", "--dry-run").stdout)
  assert remote_command(single[0]) == train_remote


def test_train_on_a_multi_host_worker_passes_distributed_on(sandbox):
  """The remote train command, run on a (sandboxed) worker, hands --distributed=on to main."""
  home, started = sandbox
  proc = run_script("train.sh", "--name", V5E_64["name"], "--zone", V5E_64["zone"],
                    "--workdir", "gs://b/w", "--dry-run")
  result = run_remote(home, remote_command(printed_lines(proc.stdout)[0]))
  assert result.returncode == 0, result.stderr
  started.append(int((home / "drlih_logs" / "train.pid").read_text()))
  assert _wait_for(lambda: (home / "record.txt").exists()
                   and len((home / "record.txt").read_text().splitlines()) == 8)
  assert (home / "record.txt").read_text().splitlines()[2:] == [
      "-m", "drlih_jax.main", "--config=configs/cifar.py", "--workdir=gs://b/w", "--mode=train",
      "--distributed=on"]


# --- queued resources --------------------------------------------------------------


def test_create_queued_spot_v5litepod_64():
  proc = run_script("create_tpu_vm.sh", "--name", "q", "--zone", V5E_64["zone"],
                    "--accelerator-type", "v5litepod-64", "--spot", "--queued",
                    "--valid-until-duration", "6h", "--project", "p", "--dry-run")
  assert printed_lines(proc.stdout) == [
      "gcloud compute tpus queued-resources create q --zone=us-west4-a --node-id=q"
      " --accelerator-type=v5litepod-64 --runtime-version=v2-alpha-tpuv5-lite"
      " --valid-until-duration=6h --spot --project=p",
      "gcloud compute tpus queued-resources describe q --zone=us-west4-a"
      " --format=\"value(state.state)\" --project=p"]
  proc = run_script("create_tpu_vm.sh", "--name", "q", "--zone", "z", "--accelerator-type",
                    "v4-32", "--queued", "--no-wait", "--dry-run")
  assert printed_lines(proc.stdout) == [
      "gcloud compute tpus queued-resources create q --zone=z --node-id=q"
      " --accelerator-type=v4-32 --runtime-version=tpu-ubuntu2204-base"]


def test_delete_queued():
  proc = run_script("delete_tpu_vm.sh", "--name", "q", "--zone", "z", "--queued", "--quiet",
                    "--dry-run")
  assert printed_lines(proc.stdout) == [
      "gcloud compute tpus queued-resources delete q --zone=z --force --quiet"]


FAKE_GCLOUD = r"""
import json, os, pathlib, sys
state_dir = pathlib.Path(os.environ["FAKE_GCLOUD_DIR"])
argv = sys.argv[1:]
with open(state_dir / "calls.jsonl", "a") as f:
  f.write(json.dumps(argv) + "\n")

def pop(name):  # the next line of a script file; the last one sticks
  path = state_dir / name
  lines = path.read_text().splitlines()
  if len(lines) > 1:
    path.write_text("\n".join(lines[1:]) + "\n")
  return lines[0]

if argv[:2] == ["storage", "ls"]:
  sys.exit(0 if (state_dir / "DONE").exists() else 1)
verb = argv[3]
if verb == "describe":
  state = pop("states.txt")
  if state == "MISSING":
    sys.exit(print("ERROR: (gcloud.compute.tpus.describe) NOT_FOUND: Resource was not found",
                   file=sys.stderr) or 1)
  if state == "ERROR":
    sys.exit(print("ERROR: (gcloud) network unreachable", file=sys.stderr) or 1)
  print(state)
elif verb == "ssh" and "drlih-job" in argv[-1]:
  job = pop("jobs.txt")
  if job == "finish":  # the trainer wrote WORKDIR/DONE and exited
    (state_dir / "DONE").touch()
    job = "stopped"
  states = {"partial": ["running", "stopped", "stopped", "stopped"]}.get(job, [job] * 4)
  print("\n".join(f"worker-{i}: drlih-job {s}" for i, s in enumerate(states)))
elif verb == "create" and (state_dir / "fail_create_once").exists():
  (state_dir / "fail_create_once").unlink()
  sys.exit(print("ERROR: (gcloud) There is no more capacity in the zone", file=sys.stderr) or 1)
"""


def _call_label(argv):
  """Names a recorded gcloud call: marker, state, status, start, stop, install, create, ..."""
  if argv[:2] == ["storage", "ls"]:
    return "marker"
  group, verb = argv[2], argv[3]
  if verb == "describe":
    return "state"
  if verb == "ssh":
    command = argv[-1]
    for token, label in [("drlih-job", "status"), ("nohup", "start"), ("kill -TERM", "stop"),
                         ("uv venv", "install")]:
      if token in command:
        return label
  return ("qr-" if group == "queued-resources" else "") + verb


def _supervise(tmp_path, args, states, jobs, done=False, fail_create_once=False):
  """Runs train.sh --supervise against the scripted fake gcloud; returns (proc, labels, calls)."""
  state_dir = tmp_path / "gcloud_state"
  state_dir.mkdir()
  (state_dir / "states.txt").write_text("\n".join(states) + "\n")
  (state_dir / "jobs.txt").write_text("\n".join(jobs) + "\n")
  if done:
    (state_dir / "DONE").touch()
  if fail_create_once:
    (state_dir / "fail_create_once").touch()
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "fake_gcloud.py").write_text(FAKE_GCLOUD)
  _write_stub(bin_dir / "gcloud", f'exec {shlex.quote(sys.executable)} -I'
              f' {shlex.quote(str(bin_dir / "fake_gcloud.py"))} "$@"\n')
  proc = run_script("train.sh", "--name", "drlih", "--zone", "z", "--workdir", "gs://b/run",
                    "--supervise", "--poll", "0", *args, check_rc=None,
                    env={"PATH": f"{bin_dir}:{os.environ['PATH']}", "TMPDIR": str(tmp_path),
                         "FAKE_GCLOUD_DIR": str(state_dir)})
  calls_file = state_dir / "calls.jsonl"
  calls = [json.loads(line) for line in calls_file.read_text().splitlines()] if calls_file.exists() else []
  return proc, [_call_label(argv) for argv in calls], calls


def _start_command():
  proc = run_script("train.sh", "--name", "drlih", "--zone", "z", "--workdir", "gs://b/run",
                    "--dry-run")
  return remote_command(printed_lines(proc.stdout)[0])


def test_supervise_recreates_a_preempted_spot_slice(tmp_path):
  proc, labels, calls = _supervise(
      tmp_path,
      ["--accelerator-type", "v4-32", "--spot", "--install-arg", "--repo=https://example.com/d.git"],
      states=["ERROR", "CREATING", "READY", "READY", "PREEMPTED", "PREEMPTED", "READY", "READY"],
      jobs=["stopped", "running", "running", "finish"],
      fail_create_once=True)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert labels == [
      "marker", "state",                      # gcloud failed: wait
      "marker", "state",                      # CREATING: wait
      "marker", "state", "status", "marker", "start",  # READY, job not running: first start
      "marker", "state", "status",            # READY, running
      "marker", "state", "delete", "create",  # PREEMPTED: delete, create fails (no capacity)
      "marker", "state", "delete", "create", "install", "marker", "start",  # PREEMPTED: recreated
      "marker", "state", "status",            # READY, running
      "marker", "state", "status", "marker",  # the job finished and wrote DONE
      "marker"]
  by_label = {}
  for label, argv in zip(labels, calls):
    by_label.setdefault(label, []).append(argv)
  assert by_label["marker"][0] == ["storage", "ls", "gs://b/run/DONE"]
  assert by_label["state"][0] == ["compute", "tpus", "tpu-vm", "describe", "drlih", "--zone=z",
                                  "--format=value(state)"]
  assert by_label["delete"][0] == ["compute", "tpus", "tpu-vm", "delete", "drlih", "--zone=z", "--quiet"]
  assert by_label["create"][0] == ["compute", "tpus", "tpu-vm", "create", "drlih", "--zone=z",
                                   "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base", "--spot"]
  assert "git clone --quiet https://example.com/d.git ~/drlih_jax;" in by_label["install"][0][-1]
  # Every start is the plain train.sh command, on every worker.
  for argv in by_label["start"]:
    assert argv[5:7] == ["--zone=z", "--worker=all"]
    assert argv[7] == "--command=" + _start_command()
  assert "restart 2 of at most 10" in proc.stdout
  assert "creating drlih failed; retrying in 0 s" in proc.stdout
  assert proc.stdout.rstrip().endswith("gs://b/run/DONE exists: training is done")


def test_supervise_queued_resource_from_nothing_to_done(tmp_path):
  proc, labels, calls = _supervise(
      tmp_path, ["--accelerator-type", "v5litepod-64", "--spot", "--queued", "--delete-when-done"],
      states=["MISSING", "WAITING_FOR_RESOURCES", "PROVISIONING", "ACTIVE", "ACTIVE",
              "SUSPENDED", "ACTIVE", "ACTIVE"],
      jobs=["running", "finish"])
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert labels == [
      "marker", "state", "qr-create", "state", "state", "state", "scp", "install", "marker", "start",
      "marker", "state", "status",
      "marker", "state", "qr-delete", "qr-create", "state", "scp", "install", "marker", "start",
      "marker", "state", "status", "marker",
      "marker", "qr-delete"]
  creates = [argv for label, argv in zip(labels, calls) if label == "qr-create"]
  assert creates[0] == ["compute", "tpus", "queued-resources", "create", "drlih", "--zone=z",
                        "--node-id=drlih", "--accelerator-type=v5litepod-64",
                        "--runtime-version=v2-alpha-tpuv5-lite", "--spot"]
  assert calls[1] == ["compute", "tpus", "queued-resources", "describe", "drlih", "--zone=z",
                      "--format=value(state.state)"]
  deletes = [argv for label, argv in zip(labels, calls) if label == "qr-delete"]
  assert deletes == [["compute", "tpus", "queued-resources", "delete", "drlih", "--zone=z",
                      "--force", "--quiet"]] * 2


def test_supervise_restarts_a_dead_job_then_gives_up(tmp_path):
  proc, labels, _ = _supervise(
      tmp_path, ["--accelerator-type", "v4-8", "--max-restarts", "1"],
      states=["READY"], jobs=["stopped", "partial", "stopped"])
  assert proc.returncode == 1
  assert labels == [
      "marker", "state", "status", "marker", "start",
      "marker", "state", "status", "marker", "stop", "start",  # running on one worker only
      "marker", "state", "status", "marker"]
  assert "restart 1 of at most 1" in proc.stdout
  assert proc.stderr == ("train.sh: error: job train stopped and --max-restarts=1 is used up;"
                         " giving up (see launch/logs.sh)\n")


def test_supervise_stops_at_once_when_done(tmp_path):
  proc, labels, _ = _supervise(tmp_path, ["--accelerator-type", "v4-8"], states=["READY"],
                               jobs=["stopped"], done=True)
  assert proc.returncode == 0
  assert labels == ["marker"]


def test_create_queued_waits_for_active_or_fails(tmp_path):
  state_dir = tmp_path / "gcloud_state"
  state_dir.mkdir()
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "fake_gcloud.py").write_text(FAKE_GCLOUD)
  _write_stub(bin_dir / "gcloud", f'exec {shlex.quote(sys.executable)} -I'
              f' {shlex.quote(str(bin_dir / "fake_gcloud.py"))} "$@"\n')
  env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_GCLOUD_DIR": str(state_dir)}
  args = ["--name", "q", "--zone", "z", "--accelerator-type", "v4-32", "--queued", "--poll", "0"]
  (state_dir / "states.txt").write_text("ACCEPTED\nWAITING_FOR_RESOURCES\nWAITING_FOR_RESOURCES\nACTIVE\n")
  proc = run_script("create_tpu_vm.sh", *args, env=env)
  assert proc.stdout.count("waiting for ACTIVE") == 2  # one line per new state
  assert proc.stdout.rstrip().endswith("queued resource q is ACTIVE")
  (state_dir / "states.txt").write_text("PROVISIONING\nFAILED\n")
  proc = run_script("create_tpu_vm.sh", *args, env=env, check_rc=1)
  assert "create_tpu_vm.sh: error: queued resource q is FAILED" in proc.stderr


def test_supervise_dry_run_prints_one_round(tmp_path):
  proc = run_script("train.sh", "--name", "q", "--zone", "z", "--workdir", "gs://b/run/",
                    "--supervise", "--accelerator-type", "v5litepod-64", "--spot", "--queued",
                    "--install-arg", "--repo", "--install-arg", "https://example.com/d.git",
                    "--project", "p", "--dry-run", env={"TMPDIR": str(tmp_path)})
  lines = printed_lines(proc.stdout)
  delete = f"bash {LAUNCH}/delete_tpu_vm.sh --name q --zone z --quiet --queued --project=p --dry-run"
  create = (f"bash {LAUNCH}/create_tpu_vm.sh --name q --zone z --accelerator-type v5litepod-64"
            " --spot --queued --poll 60 --project=p --dry-run")
  install = (f"bash {LAUNCH}/install.sh --name q --zone z --repo https://example.com/d.git"
             " --project=p --dry-run")
  assert lines[:2] == [
      "gcloud storage ls gs://b/run/DONE --project=p",
      "gcloud compute tpus queued-resources describe q --zone=z --format=\"value(state.state)\""
      " --project=p"]
  assert "drlih-job" in remote_command(lines[2])
  assert lines[3:] == [
      delete, "gcloud compute tpus queued-resources delete q --zone=z --force --quiet --project=p",
      create, lines[6], lines[7],
      install, lines[9], lines[10]]
  assert lines[6].startswith("gcloud compute tpus queued-resources create q")
  assert lines[7].startswith("gcloud compute tpus queued-resources describe q")
  assert "git clone --quiet https://example.com/d.git" in remote_command(lines[9])
  assert "--workdir=gs://b/run/ --mode=train --distributed=on >>" in remote_command(lines[10])


# --- quoting ---------------------------------------------------------------------

TRICKY_ARGS = ["plain", "a b", "it's", 'say "hi"', "$HOME", "back`tick", "wow!", "",
               "~/x", "jax[tpu]", "tab\there", "new\nline", "--command=echo '$x' \"y\"",
               "--flag=", "*", "a\\b"]


def test_format_command_round_trips_through_shlex():
  snippet = ('source "$1"; shift; format_command "$@"')
  out = subprocess.run(["bash", "-c", snippet, "bash", str(LAUNCH / "common.sh"),
                        *TRICKY_ARGS], capture_output=True, text=True, check=True).stdout
  assert shlex.split(out) == TRICKY_ARGS
  # And through bash itself (what a user pasting the line gets).
  echoed = subprocess.run(["bash", "-c", f"printf '%s\\0' {out}"], capture_output=True,
                          text=True, check=True, env={"HOME": "/nonexistent"}).stdout
  assert echoed.split("\0")[:-1] == TRICKY_ARGS


# --- argument errors ---------------------------------------------------------------


@pytest.mark.parametrize("script,args,message", [
    ("create_tpu_vm.sh", ["--zone", "z", "--accelerator-type", "v4-8"],
     "missing required flag --name"),
    ("create_tpu_vm.sh", ["--name", "n", "--accelerator-type", "v4-8"],
     "missing required flag --zone"),
    ("create_tpu_vm.sh", ["--name", "n", "--zone", "z"],
     "missing required flag --accelerator-type"),
    ("create_tpu_vm.sh", ["--name", "n", "--zone", "z", "--accelerator-type", "v9-8"],
     "no default runtime version for --accelerator-type v9-8; pass --version"),
    ("create_tpu_vm.sh", ["--name", "n", "--zone", "z", "--accelerator-type", "v4"],
     "--accelerator-type must look like"),
    ("create_tpu_vm.sh", ["--name", "--zone", "z"], "flag --name needs a value"),
    ("create_tpu_vm.sh", ["--name=", "--zone", "z"], "flag --name needs a non-empty value"),
    ("install.sh", ["--name", "n"], "missing required flag --zone"),
    ("install.sh", ["--name", "n", "--zone", "z", "--ref", "main"], "--ref needs --repo"),
    ("install.sh", ["--name", "n", "--zone", "z", "--python-version", "python3"],
     "--python-version must look like 3.11"),
    ("install.sh", ["--name", "n", "--zone", "z", "--src", "/", "--repo", "u"],
     "give either --repo or --src, not both"),
    ("install.sh", ["--name", "n", "--zone", "z", "--src", "/"],
     "--src / is not a git checkout"),
    ("train.sh", ["--name", "n", "--zone", "z"], "missing required flag --workdir"),
    ("train.sh", ["--name", "n", "--zone", "z", "--workdir", "/tmp/run"],
     "--workdir must be a gs:// path"),
    ("train.sh", ["--name", "n", "--zone", "z", "--workdir", "gs://b", "--config.lr"],
     "config overrides must look like --config.key=value, got '--config.lr'"),
    ("train.sh", ["--name", "n", "--zone", "z", "--workdir", "gs://b", "--run-name", "a/b"],
     "--run-name must match"),
    ("eval.sh", ["--name", "n", "--zone", "z"], "missing required flag --workdir"),
    ("eval.sh", ["--name", "n", "--zone", "z", "--workdir", "gs://b", "--step", "last"],
     "--step must be a non-negative integer, got 'last'"),
    ("eval.sh", ["--name", "n", "--zone", "z", "--workdir", "gs://b", "--mode", "train"],
     "--mode must be eval or encode"),
    ("eval.sh", ["--name", "n", "--zone", "z", "--workdir", "gs://b", "--worker", "x"],
     "--worker must be 'all' or a worker index"),
    ("logs.sh", ["--zone", "z"], "missing required flag --name"),
    ("logs.sh", ["--name", "n", "--zone", "z", "--worker", "all"],
     "--worker must be one worker index"),
    ("stop.sh", ["--name", "n"], "missing required flag --zone"),
    ("stop.sh", ["--name", "n", "--zone", "z", "--timeout", "-1"], "--timeout must be"),
    ("delete_tpu_vm.sh", ["--name", "n"], "missing required flag --zone"),
    ("create_tpu_vm.sh", ["--name", "n", "--zone", "z", "--accelerator-type", "v4-8", "--no-wait"],
     "--valid-until-duration and --no-wait need --queued"),
    ("create_tpu_vm.sh", ["--name", "n", "--zone", "z", "--accelerator-type", "v4-8", "--queued",
                          "--poll", "1m"], "--poll must be a non-negative integer, got '1m'"),
    ("install.sh", ["--name", "n", "--zone", "z", "--constraints", "/etc/c.txt"],
     "--constraints must be a path inside the source tree"),
    ("install.sh", ["--name", "n", "--zone", "z", "--constraints", "../c.txt"],
     "--constraints must be a path inside the source tree"),
    ("train.sh", ["--name", "n", "--zone", "z", "--workdir", "gs://b", "--supervise"],
     "missing required flag --accelerator-type"),
    ("train.sh", ["--name", "n", "--zone", "z", "--workdir", "gs://b", "--spot"],
     "--accelerator-type, --version, --spot, --queued, --install-arg, --poll, --max-restarts and"
     " --delete-when-done need --supervise"),
    ("train.sh", ["--name", "n", "--zone", "z", "--workdir", "gs://b", "--poll", "5"],
     "--accelerator-type, --version, --spot, --queued, --install-arg, --poll, --max-restarts and"
     " --delete-when-done need --supervise"),
    ("train.sh", ["--name", "n", "--zone", "z", "--workdir", "gs://b", "--supervise",
                  "--accelerator-type", "v4-8", "--max-restarts", "many"],
     "--max-restarts must be a non-negative integer, got 'many'"),
])
def test_usage_errors_exit_2(script, args, message):
  proc = run_script(script, *args, "--dry-run", check_rc=2)
  assert proc.stdout == ""
  assert f"{script}: error: {message}" in proc.stderr
  assert "Usage: " + script in proc.stderr


@pytest.mark.parametrize("script", ENTRY_SCRIPTS)
def test_unknown_flag_exits_2(script):
  proc = run_script(script, "--name", "n", "--bogus-flag", "--dry-run", check_rc=2)
  assert f"{script}: error: unknown flag or argument: --bogus-flag" in proc.stderr
  assert "Usage: " + script in proc.stderr


@pytest.mark.parametrize("script", ENTRY_SCRIPTS)
def test_help_exits_0(script):
  proc = run_script(script, "--help")
  assert proc.stdout.startswith("Usage: " + script)


def test_without_gcloud_outside_dry_run_fails_cleanly(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for tool in ("dirname", "basename"):
    os.symlink(shutil.which(tool), bin_dir / tool)
  proc = run_script("delete_tpu_vm.sh", "--name", "n", "--zone", "z",
                    env={"PATH": str(bin_dir)}, check_rc=1)
  assert "gcloud not found on PATH" in proc.stderr
  assert proc.stdout == ""


# --- files -------------------------------------------------------------------------


def test_scripts_are_executable_and_strict():
  assert set(ENTRY_SCRIPTS) == {"create_tpu_vm.sh", "install.sh", "train.sh", "logs.sh",
                                "eval.sh", "stop.sh", "delete_tpu_vm.sh"}
  for script in ENTRY_SCRIPTS:
    path = LAUNCH / script
    assert os.access(path, os.X_OK), f"{path} is not executable"
    lines = path.read_text().splitlines()
    assert lines[0] == "#!/usr/bin/env bash", path
    assert "set -euo pipefail" in lines[:5], path


def test_readme_v4_commands_match_the_scripts(tmp_path):
  """The command listing in launch/README.md is what the scripts print."""
  readme = (LAUNCH / "README.md").read_text()
  block = readme.split("The commands these print for that `v4-8` (`--dry-run`):\n\n```\n")[1]
  block = block.split("```")[0]
  env = {"TMPDIR": "/tmp"}
  where = ["--name", "drlih-v4", "--zone", "us-central2-b"]
  runs = [
      ("create_tpu_vm.sh", ["--accelerator-type", "v4-8"]),
      ("install.sh", []),
      ("train.sh", ["--workdir", "gs://my-bucket/drlih/cifar-v4", "--config",
                    "configs/cifar.py", "--tfds-data-dir", "gs://my-bucket/tfds"]),
      ("logs.sh", []),
      ("eval.sh", ["--workdir", "gs://my-bucket/drlih/cifar-v4"]),
      ("delete_tpu_vm.sh", []),
  ]
  printed = "".join(run_script(script, *where, *args, "--dry-run", env=env).stdout
                    for script, args in runs)
  assert printed.replace(str(REPO), "/path/to/checkout") == block


def test_shellcheck_clean():
  shellcheck = shutil.which("shellcheck")
  if shellcheck is None:
    pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
  proc = subprocess.run([shellcheck, "-x", "-S", "style", *(str(LAUNCH / s) for s in SCRIPTS)],
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stdout + proc.stderr
