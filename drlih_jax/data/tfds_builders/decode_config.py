"""The BuilderConfigs of drlih_class_folder and drlih_image_list: how the images are decoded.

A config is named `<size>_<policy>`: the size is `native` (every image keeps its size, which all must
share) or `s<N>` (every image resized to N x N, Pillow bilinear), the policy `error` or `skip` (what a
missing, truncated or corrupt image does, see `image_io`). "native_error" is the default and the one
predefined config (so `tfds build` without `--config` prepares only it); any other valid name, e.g.
"s224_skip", is made on request (`tfds.builder("drlih_class_folder/s224_skip")`, `tfds build --config`).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Optional

import numpy as np
import tensorflow_datasets as tfds

DEFAULT_NAME = "native_error"
VERSION_2_NOTE = ("The images come in as manual_dir; configs name the decode settings; the image's relative "
                  "path is a feature; the source's fingerprint (relative paths and sizes) is in the metadata.")
_NAME = re.compile(r"^(?:native|s([1-9][0-9]*))_(error|skip)$")


@dataclasses.dataclass(eq=False)
class DecodeConfig(tfds.core.BuilderConfig):
  """How images are decoded: `image_size` (None = native) and `on_bad_image` ("error" | "skip")."""

  image_size: Optional[int] = None
  on_bad_image: str = "error"


def config_name(image_size: Optional[int], on_bad_image: str) -> str:
  """The config name of these decode settings ("native_error", "s224_skip", ...)."""
  return f"{'native' if image_size is None else f's{int(image_size)}'}_{on_bad_image}"


@functools.cache
def from_name(name: str) -> Optional[DecodeConfig]:
  """The config called `name` (one object per name), or None when the name is not `<size>_<policy>`."""
  match = _NAME.match(name)
  if match is None:
    return None
  size = None if match.group(1) is None else int(match.group(1))
  policy = match.group(2)
  what = "Images at their native size" if size is None else f"Images resized to {size}x{size}"
  outcome = "an error" if policy == "error" else "skipped"
  return DecodeConfig(name=name, image_size=size, on_bad_image=policy,
                      description=f"{what}; a bad image is {outcome}.")


class NamedDecodeConfigs:
  """Builder mixin: the predefined "native_error" config, and any other `<size>_<policy>` made on request."""

  VERSION = tfds.core.Version("2.0.0")
  BUILDER_CONFIGS = [from_name(DEFAULT_NAME)]

  @classmethod
  def get_builder_config(cls, name, version=None):
    """A predefined config, or the `<size>_<policy>` config the name describes."""
    return super().get_builder_config(name, version) or from_name(name)


def features(config: DecodeConfig, label: tfds.features.FeatureConnector) -> tfds.features.FeaturesDict:
  """image (uint8 RGB, PNG: lossless; fixed shape when resized), `label`, id (int64), path (Text)."""
  size = config.image_size
  image = tfds.features.Image(shape=(size, size, 3) if size else (None, None, 3), dtype=np.uint8,
                              encoding_format="png")
  return tfds.features.FeaturesDict({"image": image, "label": label, "id": tfds.features.Scalar(dtype=np.int64),
                                     "path": tfds.features.Text()})
