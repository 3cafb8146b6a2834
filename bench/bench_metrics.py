"""Benchmark of drlih_jax.metrics: mAP@all under both tie rules against a per-query numpy reference.

Synthetic single-label data: `--classes` random K-bit class centres; every query and database code is
its class centre with each bit flipped with probability 1/4 (so mAP is far from both 0 and 1 and
distances tie heavily). Times are wall-clock seconds of `metrics_variants.compute_map` (statistics by
`metrics.hamming_statistics`, then `metrics.map_from_statistics`: packing, transfer, kernels and the
host-side algebra), the first call (jit compilation included) reported separately
from the minimum and median of `--repeats` further calls. The reference ranks each query with
`np.argsort(kind="stable")` on popcount distances (numpy), i.e. the stable-tie mAP@all.

Examples:
  python bench/bench_metrics.py                       # 1,000 x 59,000, 64 bits, 10 classes
  python bench/bench_metrics.py --queries 10000 --database 1000000 --bits 64 --isolate
  python bench/bench_metrics.py --isolate              # also report the peak RSS of a child run

The last line is a markdown table row (device, sizes, times); the line before it starts with
"RESULT " followed by the same numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HEADER = ("| device | queries | database | bits | classes | mAP stable | mAP tie-aware | stable s "
          "(min / median) | tie-aware s (min / median) | first call stable / tie-aware s | "
          "numpy reference s | reference / stable | reference / tie-aware | peak RSS MB |")


def make_data(num_queries: int, num_database: int, bits: int, classes: int, seed: int):
  """Class-centred random codes as {0,1} uint8 (n, bits), built from uint64 words in chunks."""
  rng = np.random.default_rng(seed)
  words = -(-bits // 64)
  centres = rng.integers(0, 2**64, (classes, words), dtype=np.uint64, endpoint=False)

  def codes_for(labels):
    out = np.empty((len(labels), bits), np.uint8)
    for start in range(0, len(labels), 1 << 18):
      lab = labels[start:start + (1 << 18)]
      flips = (rng.integers(0, 2**64, (len(lab), words), dtype=np.uint64)
               & rng.integers(0, 2**64, (len(lab), words), dtype=np.uint64))  # p = 1/4 per bit
      packed = (centres[lab] ^ flips).view(np.uint8)
      out[start:start + len(lab)] = np.unpackbits(packed, axis=1, bitorder="little")[:, :bits]
    return out

  q_labels = rng.integers(0, classes, num_queries)
  db_labels = rng.integers(0, classes, num_database)
  return codes_for(q_labels), codes_for(db_labels), q_labels, db_labels


def reference_map(q, x, ql, xl):
  """Stable-tie mAP@all by a per-query numpy argsort; returns (map, per-query AP)."""
  pad = lambda c: np.packbits(c, axis=1, bitorder="little")
  qw, xw = pad(q), pad(x)
  if qw.shape[1] % 8:
    extra = 8 - qw.shape[1] % 8
    qw = np.pad(qw, ((0, 0), (0, extra)))
    xw = np.pad(xw, ((0, 0), (0, extra)))
  qw, xw = qw.view(np.uint64), xw.view(np.uint64)
  aps = np.zeros(len(q))
  for i in range(len(q)):
    dist = np.bitwise_count(xw ^ qw[i]).sum(axis=1, dtype=np.int32)
    gnd = xl[np.argsort(dist, kind="stable")] == ql[i]
    pos = np.flatnonzero(gnd) + 1.0
    if pos.size:
      aps[i] = np.mean(np.arange(1, pos.size + 1) / pos)
  return float(aps.mean()), aps


def timed(fn, repeats: int):
  start = time.perf_counter()
  result = fn()
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    result = fn()
    times.append(time.perf_counter() - start)
  return result, first, min(times), float(np.median(times))


def run(args) -> dict:
  import jax  # after argument parsing so that --help is fast
  from bench import metrics_variants

  options = {k: v for k, v in dict(query_batch=args.query_batch, db_block=args.db_block,
                                   stable_chunk=args.stable_chunk, stable_block=args.stable_block,
                                   hist_method=args.hist_method,
                                   stable_method=args.stable_method).items() if v is not None}
  t0 = time.perf_counter()
  q, x, ql, xl = make_data(args.queries, args.database, args.bits, args.classes, args.seed)
  print(f"data: {args.queries} x {args.database}, {args.bits} bits, {args.classes} classes "
        f"({time.perf_counter() - t0:.1f} s to generate)", flush=True)
  device = jax.devices()[0]
  device_name = f"{device.platform}:{device.device_kind}"
  if device.platform == "cpu":
    device_name += f" ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
  out = dict(device=device_name, queries=args.queries, database=args.database, bits=args.bits,
             classes=args.classes, options=options)
  for ties in ("average", "stable"):
    result, first, best, median = timed(
        lambda: metrics_variants.compute_map(q, x, ql, xl, ties=ties, **options), args.repeats)
    out[ties] = dict(map=result.map, first_s=first, min_s=best, median_s=median,
                     compile_s=max(first - median, 0.0))
    print(f"{ties:>8}: mAP {result.map:.6f}  first call {first:.3f} s  min {best:.4f} s  "
          f"median {median:.4f} s", flush=True)
    if ties == "stable":
      stable_ap = result.average_precision
  pairs = args.queries * args.database
  use_reference = args.reference == "on" or (args.reference == "auto" and pairs <= 2e8)
  if use_reference:
    (ref_map, ref_ap), ref_first, ref_best, _ = timed(lambda: reference_map(q, x, ql, xl),
                                                      max(1, min(args.repeats, 2)))
    out["reference"] = dict(map=ref_map, min_s=ref_best,
                            max_abs_diff=float(np.max(np.abs(ref_ap - stable_ap))))
    print(f"numpy reference: mAP {ref_map:.6f}  min {ref_best:.3f} s  "
          f"max |AP - AP_ref| {out['reference']['max_abs_diff']:.2e}", flush=True)
  out["self_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  return out


def table_row(r: dict, peak_mb) -> str:
  ref = r.get("reference")
  fmt = lambda t: f"{t['min_s']:.4f} / {t['median_s']:.4f}"
  cells = [r["device"], r["queries"], r["database"], r["bits"], r["classes"],
           f"{r['stable']['map']:.4f}", f"{r['average']['map']:.4f}", fmt(r["stable"]),
           fmt(r["average"]), f"{r['stable']['first_s']:.2f} / {r['average']['first_s']:.2f}",
           f"{ref['min_s']:.3f}" if ref else "-",
           f"{ref['min_s'] / r['stable']['min_s']:.1f}x" if ref else "-",
           f"{ref['min_s'] / r['average']['min_s']:.1f}x" if ref else "-",
           f"{peak_mb:.0f}" if peak_mb is not None else "-"]
  return "| " + " | ".join(str(c) for c in cells) + " |"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--queries", type=int, default=1000)
  parser.add_argument("--database", type=int, default=59000)
  parser.add_argument("--bits", type=int, default=64)
  parser.add_argument("--classes", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--reference", choices=("auto", "on", "off"), default="auto",
                      help="numpy reference (auto: only up to 2e8 query-database pairs)")
  parser.add_argument("--isolate", action="store_true",
                      help="run in a child process and report its peak RSS (getrusage)")
  parser.add_argument("--json", default=None, help="also write the results to this JSON file")
  parser.add_argument("--query-batch", type=int, default=None)
  parser.add_argument("--db-block", type=int, default=None)
  parser.add_argument("--stable-chunk", type=int, default=None)
  parser.add_argument("--stable-block", type=int, default=None)
  parser.add_argument("--hist-method", choices=("scatter", "onehot"), default=None,
                      help="histogram kernel of the XLA paths (onehot: bench/metrics_variants.py)")
  parser.add_argument("--stable-method", choices=("pairwise", "sequential", "numba"), default=None,
                      help="statistics kernel (default: numba on CPU, pairwise on accelerators; "
                           "sequential: bench/metrics_variants.py)")
  parser.add_argument("--child-output", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)

  if args.isolate:
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
      child_json = os.path.join(tmp, "child.json")
      argv_child = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--isolate"]
      cmd = [sys.executable, os.path.abspath(__file__), *argv_child, "--child-output", child_json]
      subprocess.run(cmd, check=True)
      peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
      with open(child_json) as f:
        results = json.load(f)
    results["peak_rss_mb"] = peak_mb
    print(f"child peak RSS (getrusage RUSAGE_CHILDREN): {peak_mb:.0f} MB")
  else:
    results = run(args)
    if args.child_output:
      with open(args.child_output, "w") as f:
        json.dump(results, f)
      return
    peak_mb = None
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)
  print("RESULT " + json.dumps(results))
  print(HEADER)
  print("|" + "---|" * HEADER.count(" | ") + "---|")
  print(table_row(results, peak_mb))


if __name__ == "__main__":
  main()
