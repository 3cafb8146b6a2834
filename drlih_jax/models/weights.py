"""Loads ImageNet VGG-19-BN weights (torchvision or timm layout) into ``VGG19BN``.

The checkpoint is a safetensors file read with ``safetensors.numpy`` (no torch at
run time). Two layouts are accepted, detected from the keys:

* torchvision ``vgg19_bn``: ``features.N.{weight,bias}`` (conv),
  ``features.N.{weight,bias,running_mean,running_var,num_batches_tracked}`` (BN),
  ``classifier.0.*`` = Linear(25088, 4096) -> our ``fc6``,
  ``classifier.3.*`` = Linear(4096, 4096) -> our ``fc7``,
  ``classifier.6.*`` (the 1000-way layer) ignored.
* timm ``vgg19_bn``: the same ``features.N.*``; the head is a ConvMlp:
  ``pre_logits.fc1.*`` = Conv2d(512, 4096, 7) -> ``fc6`` (weight (4096, 512, 7, 7)),
  ``pre_logits.fc2.*`` = Conv2d(4096, 4096, 1) -> ``fc7`` (weight (4096, 4096, 1, 1)),
  ``head.fc.*`` (the 1000-way layer) ignored. timm builds these from torchvision's
  checkpoint by reshaping ``classifier.0``/``classifier.3``, so both layouts hold
  the same numbers.

``num_batches_tracked`` is ignored. Conversions: conv OIHW -> HWIO; fc6's torch
input order (C, H, W) -> ours (H, W, C); Linear (out, in) -> Dense (in, out).
"""

from typing import Any, Dict, List, Mapping, Optional, Tuple

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np

from drlih_jax import errors

from drlih_jax.models.vgg import NUM_CONVS, POOL_OUTPUT_SIZE, VGG19_CFG, VGG19BN

_IGNORED_PREFIXES = ("classifier.6.", "head.fc.")
_IGNORED_SUFFIXES = (".num_batches_tracked",)


def vgg19_bn_torch_feature_indices() -> List[Tuple[int, int, int]]:
  """Torch ``features`` indices of each conv and its BatchNorm.

  Returns:
    A list of ``(our_conv_index, torch_conv_index, torch_bn_index)``, one per conv.
  """
  out = []
  idx = 0
  conv = 0
  for v in VGG19_CFG:
    if v == "M":
      idx += 1
      continue
    out.append((conv, idx, idx + 1))  # Conv2d, BatchNorm2d, ReLU.
    idx += 3
    conv += 1
  return out


def _expected_shapes(layout: str, feature_dim: int) -> Dict[str, Tuple[int, ...]]:
  """Torch key -> shape for the layers this model loads."""
  shapes: Dict[str, Tuple[int, ...]] = {}
  channels = [v for v in VGG19_CFG if v != "M"]
  cin = 3
  for (conv, ti, bi), cout in zip(vgg19_bn_torch_feature_indices(), channels):
    del conv
    shapes[f"features.{ti}.weight"] = (cout, cin, 3, 3)
    shapes[f"features.{ti}.bias"] = (cout,)
    for name in ("weight", "bias", "running_mean", "running_var"):
      shapes[f"features.{bi}.{name}"] = (cout,)
    cin = cout
  flat = cin * POOL_OUTPUT_SIZE * POOL_OUTPUT_SIZE
  if layout == "torchvision":
    shapes["classifier.0.weight"] = (feature_dim, flat)
    shapes["classifier.0.bias"] = (feature_dim,)
    shapes["classifier.3.weight"] = (feature_dim, feature_dim)
    shapes["classifier.3.bias"] = (feature_dim,)
  else:
    shapes["pre_logits.fc1.weight"] = (feature_dim, cin, POOL_OUTPUT_SIZE, POOL_OUTPUT_SIZE)
    shapes["pre_logits.fc1.bias"] = (feature_dim,)
    shapes["pre_logits.fc2.weight"] = (feature_dim, feature_dim, 1, 1)
    shapes["pre_logits.fc2.bias"] = (feature_dim,)
  return shapes


def _detect_layout(keys, source: str) -> str:
  has_tv = any(k.startswith("classifier.") for k in keys)
  has_timm = any(k.startswith("pre_logits.") for k in keys)
  if has_tv and has_timm:
    raise errors.DataError(
        f"{source}: has both torchvision ('classifier.*') and timm ('pre_logits.*') "
        "head keys; cannot tell the layout")
  if has_timm:
    return "timm"
  if has_tv:
    return "torchvision"
  raise errors.DataError(
      f"{source}: no head keys found: expected 'classifier.0.weight' (torchvision) "
      f"or 'pre_logits.fc1.weight' (timm); first keys: {sorted(keys)[:8]}")


def convert_vgg19_bn_state_dict(
    state_dict: Mapping[str, np.ndarray],
    source: str = "<state dict>",
    feature_dim: int = 4096,
) -> Dict[str, Dict[str, Any]]:
  """Converts a torchvision/timm ``vgg19_bn`` state dict to ``VGG19BN`` variables.

  Args:
    state_dict: Torch key -> array (numpy or anything ``np.asarray`` accepts).
    source: Name used in error messages (e.g. the file path).
    feature_dim: Width of fc6/fc7 expected in the checkpoint.

  Returns:
    ``dict(params=..., batch_stats=...)`` of float32 numpy arrays, laid out as
    ``VGG19BN().init`` lays them out.

  Raises:
    ValueError: Naming every missing, unexpected or wrongly shaped key.
  """
  keys = set(state_dict)
  layout = _detect_layout(keys, source)
  expected = _expected_shapes(layout, feature_dim)
  ignored = {k for k in keys
             if k.startswith(_IGNORED_PREFIXES) or k.endswith(_IGNORED_SUFFIXES)}
  missing = sorted(set(expected) - keys)
  unexpected = sorted(keys - set(expected) - ignored)
  bad_shapes = []
  for k in sorted(set(expected) & keys):
    got = tuple(np.shape(state_dict[k]))
    if got != expected[k]:
      bad_shapes.append(f"{k}: expected {expected[k]}, got {got}")
  problems = []
  if missing:
    problems.append(f"missing keys {missing}")
  if unexpected:
    problems.append(f"unexpected keys {unexpected}")
  if bad_shapes:
    problems.append("shape mismatches [" + "; ".join(bad_shapes) + "]")
  if problems:
    raise errors.DataError(
        f"{source}: not a {layout} vgg19_bn state dict: " + "; ".join(problems))

  def get(k: str) -> np.ndarray:
    return np.asarray(state_dict[k], dtype=np.float32)

  params: Dict[str, Any] = {}
  batch_stats: Dict[str, Any] = {}
  for conv, ti, bi in vgg19_bn_torch_feature_indices():
    params[f"conv{conv}"] = {
        "kernel": np.ascontiguousarray(get(f"features.{ti}.weight").transpose(2, 3, 1, 0)),
        "bias": get(f"features.{ti}.bias"),
    }
    params[f"bn{conv}"] = {
        "scale": get(f"features.{bi}.weight"),
        "bias": get(f"features.{bi}.bias"),
    }
    batch_stats[f"bn{conv}"] = {
        "mean": get(f"features.{bi}.running_mean"),
        "var": get(f"features.{bi}.running_var"),
    }
  if layout == "torchvision":
    fc6_w, fc6_b = get("classifier.0.weight"), get("classifier.0.bias")
    fc7_w, fc7_b = get("classifier.3.weight"), get("classifier.3.bias")
  else:
    fc6_w, fc6_b = get("pre_logits.fc1.weight"), get("pre_logits.fc1.bias")
    fc7_w, fc7_b = get("pre_logits.fc2.weight"), get("pre_logits.fc2.bias")
  cin = [v for v in VGG19_CFG if v != "M"][-1]
  s = POOL_OUTPUT_SIZE
  # Torch flattens (C, H, W); we flatten (H, W, C).
  fc6_kernel = (fc6_w.reshape(feature_dim, cin, s, s)
                .transpose(2, 3, 1, 0).reshape(s * s * cin, feature_dim))
  params["fc6"] = {"kernel": np.ascontiguousarray(fc6_kernel), "bias": fc6_b}
  params["fc7"] = {
      "kernel": np.ascontiguousarray(fc7_w.reshape(feature_dim, feature_dim).T),
      "bias": fc7_b,
  }
  assert len(batch_stats) == NUM_CONVS
  return {"params": params, "batch_stats": batch_stats}


def load_vgg19_bn_torchvision(path: str, feature_dim: int = 4096) -> Dict[str, Dict[str, Any]]:
  """Reads a torchvision or timm ``vgg19_bn`` safetensors file into ``VGG19BN`` variables.

  Args:
    path: A ``.safetensors`` file (float32 or float16 tensors; numpy cannot hold
      bfloat16, so convert such files to float32 first).
    feature_dim: Width of fc6/fc7 expected in the checkpoint.

  Returns:
    ``dict(params=..., batch_stats=...)`` of float32 numpy arrays, ready for
    ``VGG19BN().apply``.

  Raises:
    MissingExtraError: If ``safetensors`` is not installed (names the pip command).
    ValueError: Naming the missing/unexpected/misshapen keys and the file.
  """
  safetensors_numpy = errors.require_module("safetensors.numpy", "model.pretrained (reading safetensors weights)",
                                           "pip install 'drlih_jax[weights]'")
  # Read through etils.epath, so the file may be local or a gs:// URL.
  state_dict = safetensors_numpy.load(epath.Path(path).read_bytes())
  return convert_vgg19_bn_state_dict(state_dict, source=path, feature_dim=feature_dim)


def _path_str(path) -> str:
  return "/".join(str(getattr(p, "key", p)) for p in path)


def check_vgg19_bn_tree(
    variables: Mapping[str, Any],
    model: Optional[VGG19BN] = None,
    image_size: int = 224,
) -> None:
  """Checks that ``variables`` has exactly the structure and shapes of ``model.init``.

  Uses ``jax.eval_shape``, so nothing is computed or allocated.

  Args:
    variables: ``dict(params=..., batch_stats=...)``, e.g. from
      ``load_vgg19_bn_torchvision``.
    model: The module to compare with (default ``VGG19BN()``).
    image_size: Input side used to trace ``init`` (the parameter shapes do not
      depend on it).

  Raises:
    ValueError: Naming every missing or extra leaf and every shape mismatch.
  """
  model = VGG19BN() if model is None else model
  ref = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0),
                         jnp.zeros((1, image_size, image_size, 3), jnp.float32),
                         train=False))
  want = {_path_str(p): tuple(x.shape)
          for p, x in jax.tree_util.tree_flatten_with_path(dict(ref))[0]}
  have = {_path_str(p): tuple(np.shape(x))
          for p, x in jax.tree_util.tree_flatten_with_path(dict(variables))[0]}
  problems = []
  missing = sorted(set(want) - set(have))
  extra = sorted(set(have) - set(want))
  if missing:
    problems.append(f"missing {missing}")
  if extra:
    problems.append(f"unexpected {extra}")
  bad = [f"{k}: expected {want[k]}, got {have[k]}"
         for k in sorted(set(want) & set(have)) if want[k] != have[k]]
  if bad:
    problems.append("shape mismatches [" + "; ".join(bad) + "]")
  if problems:
    raise errors.DataError("VGG19BN variables do not match the model: " + "; ".join(problems))
