r"""Throughput of one full training step (device-resident batch draw, resize, forward, backward, update).

    python bench/bench_train_step.py --batch 256 --objective both --dtype bfloat16 --image-size 224

What one step does (the same jitted function as training, `steps.device_resident_train_step`):
draw a class-balanced batch of uint8 images resident on the device, normalise it, resize it on the device
(bilinear, to round(image_size * 256 / 224), then a random image_size crop + flip, as `configs/cifar.py`) when
the stored size differs from --image-size, run the backbone once per image (each image serves as anchor,
positive and negative of the batch's triplets, so this covers all three roles), run the agent (one
greedy rollout for "official"; M sampled + one greedy rollout for "drlih"), the loss, the backward pass
and the SGD update. The state is donated. Weights and data are random (no files are read).

The config is `configs/cifar.py` ("official") or `configs/cifar_drlih.py` ("drlih") with the command line's
changes. Model FLOPs per image = 3 x (backbone forward + agent forward) counted analytically (VGG-19-BN via
`vgg19_bn_flops`; the agent's matrix products); MFU = images/s x that / --peak-flops. (XLA's
`cost_analysis` is not used: on GPU it left out the convolutions and the scanned loops, about 2 TFLOP/s.)

Measured on one NVIDIA H200 (jax 0.11.2, bf16, batch 256, 224x224 from 32x32 stored images, 15 timed steps),
with VGG's 2x2 max pool written as a reshape + max (`vgg.max_pool_2x2`, now the code's): official 3,361
images/s (76.2 ms/step, MFU 41.1%), drlih 3,467 (73.8 ms, 41.4%); with `nn.max_pool` it was 2,942 and 3,004.
See BENCHMARKS.md.

The step is assembled as training assembles it, by `run.create_run(config, data)` (`drlih_jax/run.py`):
model, optimiser, initial state, the device-resident split and the jitted, donated `train_step` whose key
is folded from the state's step. Imports neither TensorFlow nor tensorflow_datasets.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)


def build_config(objective: str, args, batch: int):
  """The cifar config of `objective`, changed per the command line."""
  from configs import cifar  # pylint: disable=g-import-not-at-top
  from configs import cifar_drlih  # pylint: disable=g-import-not-at-top
  config = (cifar if objective == "official" else cifar_drlih).get_config()
  config.model.backbone = args.backbone
  config.model.dtype = args.dtype
  config.model.feature_dim = args.feature_dim
  if args.bits:
    config.hash.bits = args.bits
  config.hash.eval_bits = (config.hash.bits,)
  if batch % args.classes:
    raise ValueError(f"--batch {batch} is not divisible by --classes {args.classes}")
  config.input.classes_per_batch = args.classes
  config.input.images_per_class = batch // args.classes
  if args.image_size == args.source_size:
    config.input.resize = 0
    config.input.crop = 0
  else:
    config.input.resize = args.resize or int(round(args.image_size * 256 / 224))
    config.input.crop = args.image_size
  config.train.steps = args.steps + args.warmup
  return config


def model_flops_per_image(config, image_size: int) -> float | None:
  """Analytic training FLOPs per image: 3 x (backbone + agent forward); None if the backbone is not VGG."""
  if config.model.backbone != "vgg19_bn":
    return None
  from drlih_jax.models import vgg  # pylint: disable=g-import-not-at-top
  d, bits = config.model.feature_dim, config.hash.bits
  forward = float(vgg.vgg19_bn_flops(image_size, d))
  if config.objective == "official":
    forward += bits * (2 * d * d + 2 * d)  # (W_ih + W_hh) h, one fused product, and the actor.
  else:
    h, e, g = config.model.hidden, config.model.action_embed, config.hash.group
    rollouts = config.rl.rollouts + 1
    cell = 2 * 4 * h * (h + e + h) if config.model.cell == "lstm" else 2 * 3 * h * (h + e + h)
    per_rollout = 2 * 2 * d * h + (bits // g) * (cell + 2 * g * e + 2 * h * g)
    forward += rollouts * per_rollout
  return 3.0 * forward


def run_one(objective: str, batch: int, args):
  """Compiles and times one configuration; returns a result row (dict)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from drlih_jax import run as run_lib  # pylint: disable=g-import-not-at-top
  from drlih_jax.data import types  # pylint: disable=g-import-not-at-top

  config = build_config(objective, args, batch)
  config.seed = args.seed
  # Random uint8 training split: --classes-total classes of --per-class images (queries/database unused).
  n_classes = max(args.classes_total, args.classes)
  per_class = max(args.per_class, config.input.images_per_class)
  s = args.source_size
  rng = np.random.default_rng(args.seed)
  split = types.Split(rng.integers(0, 256, (n_classes * per_class, s, s, 3), dtype=np.uint8),
                      np.repeat(np.arange(n_classes, dtype=np.int32), per_class),
                      np.arange(n_classes * per_class, dtype=np.int64))
  data = types.RetrievalData(train=split, query=split, database=split, num_classes=n_classes)
  run = run_lib.create_run(config, data)
  state, device_data = run.initial_state, run.device_data(data)

  t0 = time.perf_counter()
  compiled = run.train_step.lower(state, device_data, run.train_key).compile()
  compile_s = time.perf_counter() - t0

  for _ in range(args.warmup):
    state, metrics = compiled(state, device_data, run.train_key)
  jax.block_until_ready((state, metrics))
  t0 = time.perf_counter()
  for _ in range(args.steps):
    state, metrics = compiled(state, device_data, run.train_key)
  jax.block_until_ready((state, metrics))
  elapsed = time.perf_counter() - t0

  if args.profile:
    trace_dir = os.path.join(args.profile, f"{objective}_b{batch}")
    with jax.profiler.trace(trace_dir):
      for _ in range(3):
        state, metrics = compiled(state, device_data, run.train_key)
      jax.block_until_ready((state, metrics))

  step_s = elapsed / args.steps
  ips = batch / step_s
  flops = model_flops_per_image(config, args.image_size)
  return {
      "device": jax.devices()[0].device_kind,
      "objective": objective,
      "batch": batch,
      "image": args.image_size,
      "dtype": args.dtype,
      "images/s": ips,
      "step ms": 1e3 * step_s,
      "MFU": (ips * flops / args.peak_flops) if flops else float("nan"),
      "compile s": compile_s,
      "loss": float(metrics["loss"]),
      "nonfinite": float(metrics["nonfinite"]),
  }


def _table(rows) -> str:
  cols = ["device", "objective", "batch", "image", "dtype", "images/s", "step ms", "MFU", "compile s", "loss"]

  def fmt(c, v):
    if c == "MFU":
      return f"{100 * v:.1f}%" if v == v else "n/a"
    if isinstance(v, float):
      return f"{v:.4g}" if c == "loss" else f"{v:.1f}"
    return str(v)

  cells = [[fmt(c, r[c]) for c in cols] for r in rows]
  widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
  line = lambda xs: "| " + " | ".join(x.ljust(w) for x, w in zip(xs, widths)) + " |"
  out = [line(cols), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
  out += [line(x) for x in cells]
  return "\n".join(out)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--batch", default="256", help="images per step; several as a comma list, e.g. 128,256")
  p.add_argument("--steps", type=int, default=20, help="timed steps")
  p.add_argument("--warmup", type=int, default=3, help="untimed steps after compilation")
  p.add_argument("--objective", default="both", choices=["official", "drlih", "both"])
  p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
  p.add_argument("--image-size", type=int, default=224, help="side the backbone sees")
  p.add_argument("--source-size", type=int, default=32,
                 help="side of the stored images; if it differs from --image-size, resize + crop on the device")
  p.add_argument("--resize", type=int, default=0, help="resize side before the crop (0: image-size * 256/224)")
  p.add_argument("--backbone", default="vgg19_bn", choices=["vgg19_bn", "resnet", "small_cnn"])
  p.add_argument("--feature-dim", type=int, default=4096, help="fc6/fc7 width = the official agent's hidden")
  p.add_argument("--bits", type=int, default=32)
  p.add_argument("--classes", type=int, default=8, help="classes per batch")
  p.add_argument("--classes-total", type=int, default=10, help="classes in the random split")
  p.add_argument("--per-class", type=int, default=500, help="images per class in the random split")
  p.add_argument("--peak-flops", type=float, default=989e12,
                 help="peak FLOP/s for MFU (default: H100/H200 dense bf16)")
  p.add_argument("--profile", default="", help="write a jax profiler trace of 3 more steps under this dir")
  p.add_argument("--seed", type=int, default=0)
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  import jax  # pylint: disable=g-import-not-at-top
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({jax.default_backend()})", flush=True)
  objectives = ["official", "drlih"] if args.objective == "both" else [args.objective]
  batches = [int(b) for b in str(args.batch).split(",") if b]
  rows = []
  for batch in batches:
    for objective in objectives:
      row = run_one(objective, batch, args)
      rows.append(row)
      print(f"{objective} batch {batch}: {row['images/s']:.1f} images/s, {row['step ms']:.2f} ms/step, "
            f"compile {row['compile s']:.1f} s, loss {row['loss']:.4g}, nonfinite {row['nonfinite']:.0f}",
            flush=True)
  print(_table(rows), flush=True)
  return rows


if __name__ == "__main__":
  main()
