r"""Compiled temporaries and step time of the "batch" reward (`rl.batch_rewards`), old against new.

The old formulation (kept here only, as `one_hot_batch_rewards`) built a one-hot [R, T, B, B, K+1] float
tensor of the prefix distances and contracted it with the masks. The package's `rl.batch_rewards` scans
over the T prefixes with int32 distances and fused compare-and-count histograms, so its temporaries grow
as R * B^2 int32 (plus O(R * B * K) histograms).

Memory is XLA's static figure: `jax.jit(f).lower(...).compile().memory_analysis().temp_size_in_bytes`
(compiling only; nothing of that size is allocated). Time is the median of `--repeats` calls of the
jitted reward after one warm-up call, on random codes and class-balanced masks.

  python bench/bench_reward_memory.py                                  # memory table, B = 256..2048
  python bench/bench_reward_memory.py --time --batches 80,500 --bits 32 # step time at training sizes
  python bench/bench_reward_memory.py --check --batches 256             # the two give the same values
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from drlih_jax import rl  # pylint: disable=g-import-not-at-top
from drlih_jax import triplets  # pylint: disable=g-import-not-at-top


def one_hot_batch_rewards(codes, pos_mask, neg_mask, group, alpha):
  """The formulation `rl.batch_rewards` replaced (one-hot histograms; DEFAULT-precision einsums)."""
  num_bits = codes.shape[-1]
  num_groups = num_bits // group
  dist = rl.prefix_distances(codes, group).astype(jnp.int32)  # [R, T, B, B]
  one_hot = jax.nn.one_hot(dist, num_bits + 1, dtype=jnp.float32)  # [R, T, B, B, K+1]
  pos = pos_mask.astype(jnp.float32)
  neg = neg_mask.astype(jnp.float32)
  hist_pos = jnp.einsum("rtijd,ij->rtid", one_hot, pos)
  hist_neg = jnp.einsum("rtijd,ij->rtid", one_hot, neg)
  d = jnp.arange(num_bits + 1, dtype=jnp.float32)
  margins = rl.hinge_margins(num_groups, group, alpha)
  hinge = jax.nn.relu(margins[:, None, None] + d[None, :, None] - d[None, None, :])
  total = jnp.einsum("rtip,tpn,rtin->rit", hist_pos, hinge, hist_neg)
  pairs = jnp.sum(pos, axis=1) * jnp.sum(neg, axis=1)
  mean = total / jnp.maximum(pairs, 1.0)[None, :, None]
  return jnp.where(pairs[None, :, None] > 0, -mean / num_bits, 0.0)


IMPLEMENTATIONS = {"old (one-hot)": one_hot_batch_rewards, "new (rl.batch_rewards)": rl.batch_rewards}


def _inputs(rollouts, batch, bits, classes, seed=0):
  rng = np.random.default_rng(seed)
  codes = jnp.asarray(rng.integers(0, 2, (rollouts, batch, bits)), jnp.float32)
  labels = jnp.asarray(np.arange(batch) % classes, jnp.int32)
  pos, neg = triplets.relevance_masks(labels)
  return codes, pos, neg


def temp_bytes(fn, rollouts, batch, bits, group, alpha=0.5):
  """Compiled temporaries (bytes) of `fn` at these sizes, from shapes only."""
  codes = jax.ShapeDtypeStruct((rollouts, batch, bits), jnp.float32)
  mask = jax.ShapeDtypeStruct((batch, batch), jnp.bool_)
  jitted = jax.jit(lambda c, p, n: fn(c, p, n, group, alpha))
  return jitted.lower(codes, mask, mask).compile().memory_analysis().temp_size_in_bytes


def step_seconds(fn, rollouts, batch, bits, group, classes, repeats, alpha=0.5):
  codes, pos, neg = _inputs(rollouts, batch, bits, classes)
  jitted = jax.jit(lambda c, p, n: fn(c, p, n, group, alpha))
  jitted(codes, pos, neg).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jitted(codes, pos, neg).block_until_ready()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def max_difference(rollouts, batch, bits, group, alpha, seed=0):
  """max |old - new| on codes near 6 prototypes (many ties) with random multi-hot labels (5 classes)."""
  rng = np.random.default_rng(seed)
  protos = rng.integers(0, 2, (6, bits))
  codes = protos[rng.integers(0, 6, (rollouts, batch))]
  codes = jnp.asarray(np.where(rng.random(codes.shape) < 0.05, 1 - codes, codes), jnp.float32)
  labels = jnp.asarray((rng.random((batch, 5)) < 0.3).astype(np.int32))
  pos, neg = triplets.relevance_masks(labels)
  old, new = (jax.jit(fn, static_argnums=(3, 4))(codes, pos, neg, group, alpha)
              for fn in IMPLEMENTATIONS.values())
  return float(jnp.max(jnp.abs(old - new))), float(jnp.max(jnp.abs(old)))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batches", default="256,512,1024,2048", help="comma-separated batch sizes B")
  for flag, default, meaning in (("--rollouts", 4, "R, the sampled rollouts passed in"), ("--bits", 64, "K"),
                                 ("--group", 4, "g"), ("--classes", 10, "classes of the masks (timing only)"),
                                 ("--old-max-batch", 2048, "compile the old formulation only up to this B"),
                                 ("--repeats", 5, "timing repeats")):
    parser.add_argument(flag, type=int, default=default, help=meaning)
  parser.add_argument("--time", action="store_true", help="time the reward instead of its memory")
  parser.add_argument("--check", action="store_true",
                      help="compare the two formulations' values (alpha 0.3, 0.5, 1) instead")
  args = parser.parse_args()
  batches = [int(b) for b in args.batches.split(",")]
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, rl from {rl.__file__}, R={args.rollouts}, K={args.bits}, "
        f"g={args.group}")
  if args.check:
    print("| B | alpha | max abs difference | max abs reward |")
    print("|---|---|---|---|")
    for b in batches:
      for alpha in (0.3, 0.5, 1.0):
        diff, scale = max_difference(args.rollouts, b, args.bits, args.group, alpha)
        print(f"| {b} | {alpha} | {diff:.2e} | {scale:.3f} |", flush=True)
    return
  if args.time:
    print("| B | " + " | ".join(f"{name} ms" for name in IMPLEMENTATIONS) + " |")
    print("|---|" + "---|" * len(IMPLEMENTATIONS))
    for b in batches:
      cells = [f"{1e3 * step_seconds(fn, args.rollouts, b, args.bits, args.group, args.classes, args.repeats):.2f}"
               for fn in IMPLEMENTATIONS.values()]
      print(f"| {b} | " + " | ".join(cells) + " |", flush=True)
    return
  print("| B | " + " | ".join(f"{name} temporaries" for name in IMPLEMENTATIONS) + " |")
  print("|---|" + "---|" * len(IMPLEMENTATIONS))
  for b in batches:
    cells = []
    for name, fn in IMPLEMENTATIONS.items():
      if name.startswith("old") and b > args.old_max_batch:
        cells.append("not compiled")
        continue
      cells.append(f"{temp_bytes(fn, args.rollouts, b, args.bits, args.group) / 2**30:.3f} GiB")
    print(f"| {b} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
  main()
