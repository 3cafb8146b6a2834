"""Evaluation reports on disk: PNG plots of retrieval metrics and a retrieval grid.

Plots are drawn with matplotlib's Agg canvas directly (`matplotlib.figure.Figure` +
`FigureCanvasAgg`), without pyplot, so nothing changes the process-wide backend and no display is
needed. The grid is composed in numpy and encoded with Pillow. PNGs are encoded in memory and written
with `etils.epath`, so output paths may be local or remote (`gs://...`).

`write_plots` turns a `metrics.full_report` dict into the three metric plots.
"""

from __future__ import annotations

import io
from typing import Mapping, Sequence

from etils import epath
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np
from PIL import Image

from drlih_jax import metrics

GREEN = (40, 170, 60)
RED = (210, 40, 40)
QUERY_FRAME = (60, 90, 200)
BACKGROUND = (255, 255, 255)


def new_figure(figsize=(5.5, 4.0)):
  """A pyplot-free figure with one axes: (figure, axes)."""
  fig = Figure(figsize=figsize, dpi=100)
  FigureCanvasAgg(fig)
  return fig, fig.add_subplot(1, 1, 1)


def _write_png(data: bytes, path) -> str:
  """Writes PNG bytes to a local or remote path, creating its folder; returns the path as a string."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data)
  return str(path)


def save_figure(fig, path: str) -> str:
  """Writes `fig` as a PNG (creating the folder, tight layout); returns `path`."""
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png")
  return _write_png(buffer.getvalue(), path)


def _sorted_lengths(mapping: Mapping) -> list:
  return sorted(mapping, key=lambda key: int(key))


def _line_plot(lines, path, *, title: str, xlabel: str, ylabel: str, marker: str, xlim=None, xticks=None) -> str:
  """One line per (label, xs, ys) in `lines` on a [0, 1.02] y-axis, with grid and legend; saved to `path`."""
  fig, ax = new_figure()
  for label, xs, ys in lines:
    ax.plot(xs, ys, marker=marker, label=label)
  if xticks is not None:
    ax.set_xticks(xticks)
  if xlim is not None:
    ax.set_xlim(*xlim)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_ylim(0, 1.02)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()
  return save_figure(fig, path)


def _paired_curves(curves: Mapping, what: str, first: str, second: str):
  """[(bits, first array, second array)] in length order, checking the two arrays agree in shape."""
  if not curves:
    raise ValueError(f"{what}: no curves given")
  out = []
  for bits in _sorted_lengths(curves):
    a, b = (np.asarray(v, np.float64) for v in curves[bits])
    if a.shape != b.shape:
      raise ValueError(f"{what}: {bits} bits: {first} {a.shape} and {second} {b.shape} differ in shape")
    out.append((bits, a, b))
  return out


def plot_pr_curves(curves: Mapping[int, tuple[Sequence[float], Sequence[float]]], path: str,
                   title: str = "Precision-recall over Hamming radius") -> str:
  """Precision against recall, one line per code length.

  Args:
    curves: {code length: (precision, recall)}, each sequence over Hamming radius 0..K.
    path: output PNG path.
    title: plot title.

  Returns:
    path.
  """
  lines = [(f"{bits} bits", recall, precision)
           for bits, precision, recall in _paired_curves(curves, "plot_pr_curves", "precision", "recall")]
  return _line_plot(lines, path, title=title, xlabel="recall", ylabel="precision", marker=".", xlim=(0, 1.02))


def plot_precision_at_k(curves: Mapping[int, tuple[Sequence[int], Sequence[float]]], path: str,
                        title: str = "Precision@k") -> str:
  """Precision@k against k, one line per code length.

  Args:
    curves: {code length: (ks, precisions)}.
    path: output PNG path.
    title: plot title.

  Returns:
    path.
  """
  lines = []
  for bits, ks, values in _paired_curves(curves, "plot_precision_at_k", "ks", "values"):
    order = np.argsort(ks)
    lines.append((f"{bits} bits", ks[order], values[order]))
  return _line_plot(lines, path, title=title, xlabel="k (retrieved items)", ylabel="precision@k", marker="o")


def plot_map_vs_bits(series: Mapping[str, Mapping[int, float]], path: str,
                     title: str = "mAP versus code length") -> str:
  """mAP against code length, one line per named series (e.g. tie rule or cut-off).

  Args:
    series: {label: {code length: mAP}}.
    path: output PNG path.
    title: plot title.

  Returns:
    path.
  """
  if not series:
    raise ValueError("plot_map_vs_bits: no series given")
  lines, all_bits = [], set()
  for label, values in series.items():
    bits = _sorted_lengths(values)
    all_bits.update(int(b) for b in bits)
    lines.append((label, [int(b) for b in bits], [float(values[b]) for b in bits]))
  return _line_plot(lines, path, title=title, xlabel="code length (bits)", ylabel="mAP", marker="o",
                    xticks=sorted(all_bits))


def write_plots(report: Mapping, out_dir: str) -> list[str]:
  """The PR-curve, P@k and mAP-versus-bits plots of a `full_report` dict; returns the paths."""
  out_dir = epath.Path(out_dir)
  paths = []
  curves = {int(b): (c["precision"], c["recall"]) for b, c in report["pr_curve"].items()}
  paths.append(plot_pr_curves(curves, out_dir / "pr_curve.png"))
  p_at_k = report.get("precision_at_k", {})
  if p_at_k:
    ks = sorted(p_at_k, key=int)
    lengths = _sorted_lengths(next(iter(p_at_k.values())))
    curves = {int(b): ([int(k) for k in ks], [p_at_k[k][b] for k in ks]) for b in lengths}
    paths.append(plot_precision_at_k(curves, out_dir / "precision_at_k.png"))
  series = {"mAP@all, stable ties": report["map"],
            "mAP@all, tie-aware": report["map_average_ties"]}
  for k, values in sorted(report.get("map_at_k", {}).items(), key=lambda kv: int(kv[0])):
    series[f"mAP@{k}, stable ties"] = values
  paths.append(plot_map_vs_bits(series, out_dir / "map_vs_bits.png"))
  return paths


# ----------------------------------------------------------------------------------------------
# Retrieval grid.


def _as_rgb(images, name: str) -> np.ndarray:
  arr = np.asarray(images)
  if arr.dtype != np.uint8:
    raise ValueError(f"{name}: expected uint8 images, got dtype {arr.dtype}")
  if arr.ndim == 3:
    arr = arr[..., None]
  if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
    raise ValueError(f"{name}: expected images of shape (n, H, W[, 1|3|4]), got {np.shape(images)}")
  if arr.shape[-1] == 1:
    arr = np.repeat(arr, 3, axis=-1)
  return arr[..., :3]


def _framed(image: np.ndarray, color, scale: int, border: int) -> np.ndarray:
  if scale > 1:
    image = image.repeat(scale, axis=0).repeat(scale, axis=1)
  h, w, _ = image.shape
  out = np.empty((h + 2 * border, w + 2 * border, 3), np.uint8)
  out[...] = color
  out[border:border + h, border:border + w] = image
  return out


def retrieval_grid(query_images, query_codes, query_labels, db_images, db_codes, db_labels,
                   path: str, num_queries: int = 8, top: int = 10,
                   query_indices: Sequence[int] | None = None,
                   database_order: Sequence[int] | None = None) -> str:
  """Writes a grid: per row a query image (blue frame) and its `top` nearest database images.

  Database images are ranked by Hamming distance, ties broken in `database_order` (the order the
  stable metrics rank the database in), and framed green when relevant to the query
  (`metrics.relevance`: a shared label) and red otherwise.

  Args:
    query_images: (n_q, H, W[, C]) uint8.
    query_codes: (n_q, K) {0,1}.
    query_labels: (n_q,) class ids or (n_q, L) multi-hot.
    db_images: (n_db, H, W[, C]) uint8, same H and W as the queries.
    db_codes: (n_db, K) {0,1}.
    db_labels: (n_db,) or (n_db, L).
    path: output PNG path.
    num_queries: rows (queries spread evenly over the query set unless `query_indices` is given).
    top: retrieved images per row.
    query_indices: explicit query rows to show.
    database_order: the database positions in ranking order, a permutation of range(n_db)
      (`evaluate.database_order`); tied items appear in this order. None: stored order (index).

  Returns:
    path.
  """
  q_img = _as_rgb(query_images, "query_images")
  d_img = _as_rgb(db_images, "db_images")
  q_codes = np.asarray(query_codes)
  d_codes = np.asarray(db_codes)
  q_lab = np.asarray(query_labels)
  d_lab = np.asarray(db_labels)
  for name, arr, n in (("query_codes", q_codes, len(q_img)), ("query_labels", q_lab, len(q_img)),
                       ("db_codes", d_codes, len(d_img)), ("db_labels", d_lab, len(d_img))):
    if len(arr) != n:
      raise ValueError(f"retrieval_grid: {name} has {len(arr)} rows, the images have {n}")
  if q_codes.ndim != 2 or d_codes.ndim != 2 or q_codes.shape[1] != d_codes.shape[1]:
    raise ValueError(f"retrieval_grid: codes must be (n, K) with equal K, got {q_codes.shape} and "
                     f"{d_codes.shape}")
  if q_img.shape[1:] != d_img.shape[1:]:
    raise ValueError(f"retrieval_grid: query images {q_img.shape[1:]} and database images "
                     f"{d_img.shape[1:]} differ in size")
  if len(q_img) == 0 or len(d_img) == 0:
    raise ValueError("retrieval_grid: needs at least one query and one database image")
  if database_order is None:
    database_order = np.arange(len(d_img))
  database_order = np.asarray(database_order)
  if not np.array_equal(np.sort(database_order), np.arange(len(d_img))):
    raise ValueError(f"retrieval_grid: database_order must be a permutation of the {len(d_img)} "
                     f"database positions, got shape {database_order.shape}")
  if d_lab.ndim == 2:
    q_lab, d_lab = q_lab != 0, d_lab != 0  # any nonzero multi-hot entry is a label
  if query_indices is None:
    count = min(num_queries, len(q_img))
    query_indices = np.unique(np.linspace(0, len(q_img) - 1, count).round().astype(int))
  top = min(top, len(d_img))
  height, width = q_img.shape[1:3]
  scale = max(1, -(-64 // max(height, width)))  # small images (32x32) are enlarged for viewing
  border = max(2, scale * max(height, width) // 16)
  gap = 2 * border
  x_bits = d_codes.astype(bool)
  rows = []
  for qi in query_indices:
    distance = np.count_nonzero(x_bits != q_codes[qi].astype(bool)[None, :], axis=1)
    order = database_order[np.argsort(distance[database_order], kind="stable")[:top]]
    relevant = metrics.relevance(q_lab[qi:qi + 1], d_lab[order])[0]
    tiles = [_framed(q_img[qi], QUERY_FRAME, scale, border)]
    tiles.append(np.full((tiles[0].shape[0], gap, 3), BACKGROUND, np.uint8))
    for j, rel in zip(order, relevant):
      tiles.append(_framed(d_img[j], GREEN if rel else RED, scale, border))
      tiles.append(np.full((tiles[0].shape[0], border, 3), BACKGROUND, np.uint8))
    rows.append(np.concatenate(tiles[:-1], axis=1))
    rows.append(np.full((border, rows[-1].shape[1], 3), BACKGROUND, np.uint8))
  grid = np.concatenate(rows[:-1], axis=0)
  buffer = io.BytesIO()
  Image.fromarray(grid).save(buffer, format="PNG")
  return _write_png(buffer.getvalue(), path)
