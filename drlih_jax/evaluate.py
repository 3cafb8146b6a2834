"""Evaluation: greedy codes of the query and database splits, retrieval metrics, reports on disk.

`eval_<step>.json` in the workdir holds `metrics.full_report` (mAP@all under stable and tie-aware
ordering for the trained length and each shorter prefix in `hash.eval_bits`, mAP@k, precision within
Hamming radius 2, P@k and the precision-recall curve) plus the step, objective and split sizes. PNG plots
and a retrieval grid go to `<workdir>/eval_<step>/`.

Database order (`train.eval_database_order`). The "stable" metrics break ties in Hamming distance by
database position. A database stored class by class (the CIFAR-10 class-folder tree: 19 label changes in
59,000 images) then rewards codes that put many images on one code: if every image had the same code, a
class-0 query would score AP 1 and the stable mAP@all would be ~0.21 instead of the 0.10 of chance. So by
default ("shuffled") the database is ranked in one fixed pseudo-random order (a permutation seeded by
`DATABASE_ORDER_SEED`, the same for every run, objective and step), where tie-breaking is as good as
random. "stored" ranks it in its stored order (splits.json), as code that sorts the database list with a
stable sort does. Tie-aware metrics, precision within a radius and the precision-recall curve do not
depend on the order.

The report also holds `code_usage` (distinct database codes and the mean tie-group size per length): codes
that put many images on one code show it there, whatever the metric.
"""

from __future__ import annotations

import io
import json

from absl import logging
from etils import epath
import jax
import numpy as np

from drlih_jax import errors
from drlih_jax import metrics
from drlih_jax import reports
from drlih_jax import sharding as sharding_lib

PRECISION_KS = (100, 500, 1000)
MAP_TOP_K = (1000,)
DATABASE_ORDERS = ("shuffled", "stored")
DATABASE_ORDER_SEED = 0


def check_config(config) -> None:
  """Checks the evaluation keys: `hash.eval_bits`, `train.eval_database_order`, `train.eval_batch_size`."""
  bits = config.hash.bits
  eval_bits = config.hash.eval_bits
  if isinstance(eval_bits, (int, str)) or not all(isinstance(b, int) and not isinstance(b, bool)
                                                  for b in eval_bits):
    raise errors.ConfigError(f"hash.eval_bits must be a tuple of ints, got {eval_bits!r}")
  bad = sorted(b for b in eval_bits if b < 1 or b > bits)
  if bad:
    raise errors.ConfigError(f"hash.eval_bits {bad} must lie in 1..hash.bits={bits} (prefixes of the code)")
  order = config.train.get("eval_database_order", "shuffled")
  if order not in DATABASE_ORDERS:
    raise errors.ConfigError(f"train.eval_database_order must be one of {DATABASE_ORDERS}, got {order!r}")
  if config.train.eval_batch_size < 1:
    raise errors.ConfigError(f"train.eval_batch_size must be >= 1, got {config.train.eval_batch_size!r}")


def eval_lengths(config) -> list[int]:
  """The trained length and its evaluated prefixes, ascending (checked by `check_config`)."""
  return sorted({int(b) for b in config.hash.eval_bits} | {int(config.hash.bits)})


def encode_images(encode_fn, images: np.ndarray, batch_size: int, sharding=None) -> np.ndarray:
  """Greedy codes of uint8 images in fixed-size batches (the last one padded): [n, K] uint8."""
  n = len(images)
  codes = []
  for start in range(0, n, batch_size):
    chunk = images[start:start + batch_size]
    real = len(chunk)
    if real < batch_size:
      chunk = np.concatenate([chunk, np.zeros((batch_size - real, *chunk.shape[1:]), chunk.dtype)])
    if sharding is not None:
      chunk = sharding_lib.put_global(chunk, sharding)
    codes.append(np.asarray(jax.device_get(encode_fn(chunk)))[:real])
  return np.concatenate(codes) if codes else np.zeros((0, 0), np.uint8)


def database_order(num_database: int, order: str = "shuffled") -> np.ndarray | None:
  """The database positions in ranking order: a fixed permutation ("shuffled") or None ("stored")."""
  if order not in DATABASE_ORDERS:
    raise ValueError(f"train.eval_database_order must be one of {DATABASE_ORDERS}, got {order!r}")
  if order == "stored":
    return None
  return np.random.default_rng(DATABASE_ORDER_SEED).permutation(num_database)


def report_for_codes(query_codes, db_codes, query_labels, db_labels, prefix_lengths,
                     order: str = "shuffled") -> dict:
  """`metrics.full_report` with the database ranked in `order` (see the module docstring)."""
  positions = database_order(len(db_codes), order)
  if positions is not None:
    db_codes, db_labels = np.asarray(db_codes)[positions], np.asarray(db_labels)[positions]
  report = metrics.full_report(query_codes, db_codes, query_labels, db_labels,
                               prefix_lengths=prefix_lengths, ks=PRECISION_KS, top_k=MAP_TOP_K)
  report["database_order"] = database_order_label(order)
  report["code_usage"] = code_usage(db_codes, report["map"].keys())
  return report


def code_usage(db_codes, prefix_lengths) -> dict:
  """How many distinct codes the database uses, per prefix length, and how large its tie groups are.

  Returns:
    {"L": {"distinct": number of distinct L-bit codes, "mean_tie_group": sum_c n_c^2 / N, the expected
    number of database items (itself included) sharing the code of a database item drawn at random}}.
  """
  codes = np.asarray(db_codes, np.uint8)
  out = {}
  for length in sorted(int(L) for L in prefix_lengths):
    if not len(codes):
      out[str(length)] = {"distinct": 0, "mean_tie_group": 0.0}
      continue
    counts = _code_counts(codes[:, :length]).astype(np.float64)
    out[str(length)] = {"distinct": int(len(counts)), "mean_tie_group": float(np.sum(counts ** 2) / len(codes))}
  return out


def _code_counts(codes: np.ndarray) -> np.ndarray:
  """How many rows share each distinct row of {0,1} codes (in no particular order).

  Rows are packed into big-endian 64-bit words, so a code of up to 64 bits is one integer and
  `np.unique` sorts integers instead of byte rows (~25x faster at 1,000,000 rows).
  """
  packed = np.packbits(codes, axis=1)
  words = -(-packed.shape[1] // 8)
  padded = np.zeros((len(packed), 8 * words), np.uint8)
  padded[:, :packed.shape[1]] = packed
  keys = padded.view(">u8")  # (rows, words)
  if words == 1:
    return np.unique(keys[:, 0], return_counts=True)[1]
  return np.unique(keys, axis=0, return_counts=True)[1]


def database_order_label(order: str) -> str:
  """How reports name an order: "stored" or "shuffled (seed 0)"."""
  return f"{order} (seed {DATABASE_ORDER_SEED})" if order == "shuffled" else order


def evaluate_codes(query_codes, db_codes, query_labels, db_labels, config) -> dict:
  """The full metrics report of one pair of code sets (JSON-serialisable)."""
  return report_for_codes(query_codes, db_codes, query_labels, db_labels, eval_lengths(config),
                          config.train.get("eval_database_order", "shuffled"))


def run_evaluation(encode_fn, data, config, *, batch_size: int, sharding=None):
  """Encodes query and database, returns (report, query_codes, db_codes)."""
  query_codes = encode_images(encode_fn, data.query.images, batch_size, sharding)
  db_codes = encode_images(encode_fn, data.database.images, batch_size, sharding)
  report = evaluate_codes(query_codes, db_codes, data.query.labels, data.database.labels, config)
  return report, query_codes, db_codes


def write_report(workdir, name: str, step: int, report: dict, config, data=None, query_codes=None,
                 db_codes=None, plots: bool = True, extra: dict | None = None) -> epath.Path:
  """Writes `<workdir>/<name>.json` (and, with `plots`, its PNGs in `<workdir>/<name>/`); returns the JSON path.

  Args:
    workdir: the run directory (local or a URL).
    name: the report's name (`run_record.report_name`: `eval_<step>` or `eval_<step>.<options>`).
    step: the evaluated checkpoint's step.
    report: `evaluate_codes`' report.
    config: the run config (objective, bits and dataset are recorded).
    data, query_codes, db_codes: for the retrieval grid.
    plots: write the PR / P@k / mAP-vs-bits plots and the retrieval grid.
    extra: more JSON fields (e.g. the training wall time at this step).
  """
  payload = dict(report, step=int(step), objective=config.objective, bits=int(config.hash.bits),
                 dataset=config.dataset.name, **(extra or {}))
  path = epath.Path(workdir) / f"{name}.json"
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(payload, indent=1, sort_keys=True))
  if plots and data is not None:
    plot_dir = epath.Path(workdir) / name
    plot_dir.mkdir(parents=True, exist_ok=True)
    reports.write_plots(report, str(plot_dir))
    order = database_order(len(db_codes), config.train.get("eval_database_order", "shuffled"))
    reports.retrieval_grid(data.query.images, query_codes, data.query.labels, data.database.images,
                           db_codes, data.database.labels, str(plot_dir / "retrieval_grid.png"),
                           database_order=order)
  logging.info("Wrote %s: mAP@all %s", path,
               ", ".join(f"{k} bits {v:.4f}" for k, v in sorted(report["map"].items(), key=lambda kv: int(kv[0]))))
  return path


def write_codes(path, codes: np.ndarray, labels: np.ndarray, ids: np.ndarray, step: int,
                paths=None) -> epath.Path:
  """Writes {0,1} codes packed 8 per byte (faiss IndexBinary layout) with labels, ids (and image paths).

  `paths` (the images' paths relative to the dataset root, when the source has files) lead each row back to
  its file.
  """
  buffer = io.BytesIO()
  extra = {} if paths is None else {"paths": np.asarray(paths, dtype=str)}
  np.savez(buffer, codes=np.packbits(codes, axis=1), bits=np.int32(codes.shape[1]), labels=labels, ids=ids,
           step=np.int64(step), **extra)
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(buffer.getvalue())
  return path
