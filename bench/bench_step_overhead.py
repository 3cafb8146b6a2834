r"""What the device-resident input and the sharded path cost a training step.

Times one DRLIH training step three ways on the same model and batch size:
  synthetic:  a fixed, already-normalised batch on the device, plain `jax.jit` (the floor);
  resident:   the batch drawn, augmented and normalised inside the step from a uint8 split resident on
              the device (`steps.device_resident_train_step`), plain `jax.jit`;
  sharded:    as resident, through the ("data",) mesh path training uses: `run.create_run(config, data)`'s
              own `train_step` (replicated state, batch sharding constraint, the step's key folded from
              the state's step), on a mesh of `--devices` devices (1 by default).
The model, optimiser and initial state of every variant are the Run's (`drlih_jax/run.py`).
Each variant is compiled and warmed (`--warmup` steps); then the variants are timed round-robin,
`--repeats` rounds of `--steps` steps each, and the median per-step time is reported.

    python bench/bench_step_overhead.py                       # ResNet-18-like, CIFAR-sized, batch 500
    python bench/bench_step_overhead.py --small               # a seconds-long CPU smoke run
"""

import argparse
import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from configs import default as default_config  # pylint: disable=g-import-not-at-top
from drlih_jax import input_pipeline  # pylint: disable=g-import-not-at-top
from drlih_jax import run as run_lib  # pylint: disable=g-import-not-at-top
from drlih_jax import sharding  # pylint: disable=g-import-not-at-top
from drlih_jax import steps as steps_lib  # pylint: disable=g-import-not-at-top
from drlih_jax.data import types  # pylint: disable=g-import-not-at-top


def make_config(small: bool, objective: str, dtype: str):
  config = default_config.get_config()
  config.objective = objective
  config.model.backbone = "resnet"
  config.model.dtype = dtype
  config.dataset.mean = (0.49, 0.48, 0.45)
  config.dataset.std = (0.25, 0.24, 0.26)
  config.input.augment = "crop_flip"
  config.train.steps = 10_000  # the optimiser's schedule length
  if small:
    config.model.widths = (16, 32)
    config.model.blocks_per_stage = 1
    config.model.feature_dim = 64
    config.model.hidden = 64
    config.input.classes_per_batch, config.input.images_per_class = 10, 4
  else:
    config.model.widths = (64, 128, 256, 512)
    config.model.blocks_per_stage = 2
    config.model.feature_dim = 512
    config.model.hidden = 256
    config.input.classes_per_batch, config.input.images_per_class = 10, 50
  return config


def time_interleaved(variants, steps, warmup, repeats):
  """Compiles and warms every variant, then times them round-robin so load drift hits all alike.

  Args:
    variants: list of (name, fn, state, args).

  Returns:
    [(name, (median, min, max) seconds per step)].
  """
  states = []
  for _, fn, state, args in variants:
    for _ in range(1 + warmup):
      state, _ = fn(state, *args)
    jax.block_until_ready(state)
    states.append(state)
  times = [[] for _ in variants]
  for _ in range(repeats):
    for v, (_, fn, _, args) in enumerate(variants):
      state = states[v]
      start = time.perf_counter()
      for _ in range(steps):
        state, metrics = fn(state, *args)
      jax.block_until_ready((state, metrics))
      times[v].append((time.perf_counter() - start) / steps)
      states[v] = state
  return [(name, (float(np.median(t)), float(np.min(t)), float(np.max(t))))
          for (name, *_), t in zip(variants, times)]


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--small", action="store_true")
  parser.add_argument("--objective", default="drlih")
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--images", type=int, default=50_000)
  parser.add_argument("--devices", type=int, default=1)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--warmup", type=int, default=5)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()

  config = make_config(args.small, args.objective, args.dtype)
  rng = np.random.default_rng(0)
  n = args.images if not args.small else 2_000
  split = types.Split(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), np.arange(n, dtype=np.int32) % 10,
                      np.arange(n, dtype=np.int64))
  data = types.RetrievalData(train=split, query=split, database=split, num_classes=10)
  # The run as training assembles it: model, optimiser, initial state and its jitted step on the mesh.
  run = run_lib.create_run(config, data, mesh=sharding.make_mesh(args.devices))
  batch = run.batch_size
  key = jax.random.key(0)

  def fresh_state():  # Each variant donates its own copy.
    return jax.tree.map(lambda x: x.copy(), run.initial_state)

  bound = dict(model=run.model, tx=run.tx, config=config)

  # synthetic: a fixed normalised batch already on the device.
  data_on_device = input_pipeline.to_device(split, 10, config.input)
  sample = jax.jit(functools.partial(input_pipeline.sample_batch, input_config=config.input,
                                     dataset_config=config.dataset))
  fixed = sample(jax.random.key(1), data_on_device)
  fixed = {"image": fixed["image"], "label": fixed["label"]}
  synthetic = jax.jit(functools.partial(steps_lib.train_step, **bound), donate_argnums=0)
  resident = jax.jit(functools.partial(steps_lib.device_resident_train_step, **bound), donate_argnums=0)
  # sharded: the run's own step (resident draw, batch sharded over the ("data",) mesh, key from the step).
  variants = [
      ("synthetic", synthetic, fresh_state(), (fixed, key)),
      ("resident", resident, fresh_state(), (data_on_device, key)),
      (f"sharded ({run.mesh.size} dev)", run.train_step, fresh_state(), (run.device_data(data), run.train_key)),
  ]
  rows = time_interleaved(variants, args.steps, args.warmup, args.repeats)

  device = jax.devices()[0].device_kind
  base = rows[0][1][0]
  print(f"\n{device} | {config.objective} | resnet widths {tuple(config.model.widths)} | batch {batch} | "
        f"{config.model.dtype}")
  print(f"{'variant':<18} {'median ms':>10} {'min ms':>8} {'max ms':>8} {'images/s':>10} {'vs synthetic':>13}")
  for name, (med, lo, hi) in rows:
    print(f"{name:<18} {med * 1e3:>10.2f} {lo * 1e3:>8.2f} {hi * 1e3:>8.2f} {batch / med:>10.0f} "
          f"{(med / base - 1) * 100:>+12.1f}%")


if __name__ == "__main__":
  main()
