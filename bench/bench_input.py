"""Input throughput of each data mode on this machine (no model): images/s delivered.

Rows:
  1. Pillow: decoding the CIFAR-10 JPEG tree (60,000 files) into uint8 arrays, 1 and N threads.
  2. tf.data streaming (`drlih_jax.data.streaming`): batches/s of the cifar10-2 training set (50,000
     images) read from the tfds class-folder builder, without augmentation and with pad-crop-flip.
     The one-time tfds prepare is timed separately. Skipped, with a message, without TensorFlow.
  3. Device-resident sampling: a jitted gather of a uint8 array resident on the JAX device plus
     pad-crop/flip (a minimal version written here), and the project's `drlih_jax.input_pipeline.sample_batch`
     (class-balanced draw + crop/flip + normalise) when it imports.

Usage (from the repository root):
  python bench/bench_input.py                      # ../shared/data/cifar10-jpeg.tar.gz, temp workdir
  python bench/bench_input.py --workdir /path/dir  # keep the extracted tree and tfds data there
  python bench/bench_input.py --no-tensorflow      # as if TensorFlow were not installed
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TAR = os.path.normpath(os.path.join(REPO_ROOT, "..", "shared", "data", "cifar10-jpeg.tar.gz"))


def _timed(fn, min_seconds: float, warmup: int = 3):
  """(calls per second, calls) of fn() repeated for at least min_seconds after `warmup` calls."""
  for _ in range(warmup):
    fn()
  calls, start = 0, time.perf_counter()
  while True:
    fn()
    calls += 1
    elapsed = time.perf_counter() - start
    if elapsed >= min_seconds:
      return calls / elapsed, calls


def _extract(tar: str, workdir: str) -> str:
  root = os.path.join(workdir, "cifar10_jpeg")
  if os.path.isdir(os.path.join(root, "test")):
    return root
  os.makedirs(root, exist_ok=True)
  start = time.perf_counter()
  subprocess.run(["tar", "-xzf", tar, "-C", root], check=True)
  print(f"extracted {tar} in {time.perf_counter() - start:.1f} s")
  return root


def bench_pillow(root: str, threads: list[int]):
  from drlih_jax.data import folder_tree  # pylint: disable=import-outside-toplevel
  tree = folder_tree.list_tree(root)
  n = sum(len(v[0]) for v in tree.splits.values())
  rows, splits = [], None
  for workers in threads:
    start = time.perf_counter()
    splits = folder_tree.load_tree_pillow(tree, image_size=None, on_bad_image="error", num_workers=workers)
    elapsed = time.perf_counter() - start
    rows.append((f"Pillow decode, {workers} thread(s)", n / elapsed, f"{n} images in {elapsed:.2f} s"))
  return rows, splits


def bench_tfdata(root: str, workdir: str, batch_size: int, seconds: float):
  from drlih_jax.data import image_io  # pylint: disable=import-outside-toplevel
  if not image_io.tensorflow_available():
    print("tf.data streaming: skipped (tensorflow does not import)")
    return [("tf.data streaming", None, "skipped: tensorflow does not import")]
  import ml_collections  # pylint: disable=import-outside-toplevel
  from drlih_jax.data import streaming  # pylint: disable=import-outside-toplevel
  dataset = ml_collections.ConfigDict(dict(
      name="cifar10-2", source="folder", root=root, list_dir=None, data_dir=os.path.join(workdir, "tfds"),
      split_seed=0, image_size=None, on_bad_image="error", loader="tfds", num_workers=2))
  start = time.perf_counter()
  table = streaming.train_table(dataset)
  prepare = time.perf_counter() - start
  rows = [("tfds prepare (first run only) + read encoded table", len(table[2]) / prepare,
           f"{len(table[2])} training images in {prepare:.1f} s")]
  batch_size = 10 * (batch_size // 10)  # Class-balanced: 10 classes x batch_size // 10 images.
  for augment in ("none", "pad_crop_flip"):
    config = ml_collections.ConfigDict(dict(dataset=dataset, seed=0, input=dict(
        classes_per_batch=10, images_per_class=batch_size // 10, crop_padding=4, resize=0, crop=0,
        augment="crop_flip" if augment == "pad_crop_flip" else "")))
    iterator = streaming.make_train_iterator(config, 0, 1, 0, table=table)
    rate, calls = _timed(lambda it=iterator: next(it), seconds)
    rows.append((f"tf.data streaming, augment={augment}", rate * batch_size,
                 f"{rate:.1f} batches/s of {batch_size} ({calls} batches)"))
  return rows


def bench_device(train_images: np.ndarray, train_labels: np.ndarray, batch_size: int, seconds: float):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  images = jax.device_put(train_images)
  n, h, w, c = train_images.shape
  pad = 4

  @jax.jit
  def sample(key):
    index_key, crop_key, flip_key = jax.random.split(key, 3)
    index = jax.random.randint(index_key, (batch_size,), 0, n)
    batch = jnp.take(images, index, axis=0)
    padded = jnp.pad(batch, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = jax.random.randint(crop_key, (batch_size, 2), 0, 2 * pad + 1)
    crops = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c)))(padded, offsets)
    flips = jax.random.bernoulli(flip_key, 0.5, (batch_size,))
    return jnp.where(flips[:, None, None, None], crops[:, :, ::-1], crops)

  keys = iter(jax.random.split(jax.random.key(0), 1_000_000))
  rate, calls = _timed(lambda: sample(next(keys)).block_until_ready(), seconds)
  device = jax.devices()[0].platform
  rows = [(f"device-resident gather + pad-crop/flip ({device}, uint8)", rate * batch_size,
           f"{rate:.1f} batches/s of {batch_size} ({calls} batches)")]
  try:
    import ml_collections  # pylint: disable=import-outside-toplevel
    from drlih_jax import input_pipeline  # pylint: disable=import-outside-toplevel
    from drlih_jax.data import types  # pylint: disable=import-outside-toplevel
    per_class = max(2, batch_size // 10)
    input_config = ml_collections.ConfigDict(dict(classes_per_batch=10, images_per_class=per_class,
                                                  augment="crop_flip", crop_padding=pad))
    dataset_config = ml_collections.ConfigDict(dict(mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26)))
    split = types.Split(train_images, train_labels, np.arange(n, dtype=np.int64))
    data = input_pipeline.to_device(split, 10, input_config)
    step = jax.jit(lambda key: input_pipeline.sample_batch(key, data, input_config, dataset_config)["image"])
    rate, calls = _timed(lambda: step(next(keys)).block_until_ready(), seconds)
    b = 10 * per_class
    rows.append((f"input_pipeline.sample_batch ({device}, float32 out)", rate * b,
                 f"{rate:.1f} batches/s of {b} ({calls} batches)"))
  except Exception as exc:  # pylint: disable=broad-except
    rows.append(("input_pipeline.sample_batch", None, f"not measured: {type(exc).__name__}: {exc}"))
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--tar", default=DEFAULT_TAR, help="the CIFAR-10 JPEG tarball")
  parser.add_argument("--workdir", default=None, help="where to extract (default: a temp dir, removed after)")
  parser.add_argument("--threads", default="1,2", help="Pillow thread counts to measure")
  parser.add_argument("--batch-size", type=int, default=256)
  parser.add_argument("--seconds", type=float, default=5.0, help="minimum timing per streaming/device row")
  parser.add_argument("--no-tensorflow", action="store_true", help="behave as if TensorFlow were absent")
  args = parser.parse_args(argv)
  if args.no_tensorflow:
    sys.modules["tensorflow"] = None
    sys.modules["tensorflow_datasets"] = None
  if not os.path.exists(args.tar):
    print(f"missing {args.tar}: nothing to measure")
    return 1
  workdir = args.workdir or tempfile.mkdtemp(prefix="bench_input_")
  try:
    root = _extract(args.tar, workdir)
    rows, splits = bench_pillow(root, [int(t) for t in args.threads.split(",")])
    rows += bench_tfdata(root, workdir, args.batch_size, args.seconds)
    rows += bench_device(splits["train"].images, splits["train"].labels, args.batch_size, args.seconds)
  finally:
    if args.workdir is None:
      shutil.rmtree(workdir, ignore_errors=True)
  print(f"\n{'mode':58s} {'images/s':>10s}  detail")
  for name, rate, detail in rows:
    print(f"{name:58s} {(f'{rate:,.0f}' if rate else '-'):>10s}  {detail}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
