"""Scalar metrics to TensorBoard event files, from process 0 only, on local disks and object stores alike.

tensorboardX writes the event files (no TensorFlow needed). For a URL workdir (`gs://...`) its record
writer is replaced, through tensorboardX's own `register_writer_factory`, by one that goes through
`etils.epath`, the project's single path layer: an object store cannot append, so each flush rewrites the
object with every record so far (the way TensorFlow's GCS writer works). tensorboardX flushes every
`flush_secs` and on close.
"""

from __future__ import annotations

import io

from etils import epath
import jax
from tensorboardX import record_writer

_SCHEMES = ("gs", "s3")


class _EpathRecordWriter:
  """A tensorboardX record writer whose file is an epath object, rewritten whole on each flush."""

  def __init__(self, path: str):
    self._path = epath.Path(path)
    self._buffer = io.BytesIO()
    self._flushed = 0

  def write(self, data: bytes) -> None:
    self._buffer.write(data)

  def flush(self) -> None:
    size = self._buffer.tell()
    if size != self._flushed:
      self._path.write_bytes(self._buffer.getvalue())
      self._flushed = size

  def close(self) -> None:
    self.flush()


class _EpathWriterFactory:

  def open(self, path: str) -> _EpathRecordWriter:
    return _EpathRecordWriter(path)

  def directory_check(self, path: str) -> None:
    epath.Path(path).mkdir(parents=True, exist_ok=True)


for _scheme in _SCHEMES:
  record_writer.register_writer_factory(_scheme, _EpathWriterFactory())


class MetricWriter:
  """Writes scalars under `<workdir>/tensorboard`; a no-op on processes other than 0."""

  def __init__(self, workdir, flush_secs: int = 60):
    self._writer = None
    if jax.process_index() == 0:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._writer = SummaryWriter(str(epath.Path(workdir) / "tensorboard"), flush_secs=flush_secs)

  def scalars(self, step: int, values: dict) -> None:
    if self._writer is None:
      return
    for name, value in values.items():
      self._writer.add_scalar(name, float(value), int(step))

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None
