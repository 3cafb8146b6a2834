"""Shallow hashing baselines in numpy: LSH and ITQ.

* LSH (Charikar 2002; "SimHash"): centre the features, project on K random Gaussian directions,
  take the sign.
* ITQ (Gong & Lazebnik, CVPR 2011, "Iterative Quantization"): centre, PCA to K dimensions (scikit-learn's
  `PCA`), then alternate B = sign(V R) and the orthogonal Procrustes solution R = U W^T of the SVD
  V^T B = U S W^T, which minimises the quantisation loss ||B - V R||_F^2 over orthogonal R, for a
  fixed number of iterations (50 in the paper) from a random orthogonal R.

Both return a `HashModel`; `encode(model, features)` gives {0,1} uint8 codes (bit = 1 where the
projection is >= 0), ready for `drlih_jax.metrics`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from sklearn import decomposition


@dataclasses.dataclass(frozen=True)
class HashModel:
  """A linear hash: codes = [(features - mean) @ projection >= 0].

  Attributes:
    kind: "lsh" or "itq".
    mean: (D,) feature mean removed before projecting.
    projection: (D, K) projection.
    rotation: ITQ's learned (K, K) orthogonal rotation (None for LSH).
    quantization_loss: ITQ's ||B - V R||_F^2 after each iteration's rotation update (empty for LSH).
  """
  kind: str
  mean: np.ndarray
  projection: np.ndarray
  rotation: np.ndarray | None = None
  quantization_loss: tuple[float, ...] = ()

  @property
  def bits(self) -> int:
    return int(self.projection.shape[1])


def _features(features, min_rows: int = 2) -> np.ndarray:
  x = np.asarray(features, np.float64)
  if x.ndim != 2 or x.shape[0] < min_rows:
    raise ValueError(f"features: expected a (n >= {min_rows}, D) matrix, got shape {x.shape}")
  if not np.all(np.isfinite(x)):
    raise ValueError("features: contains non-finite values")
  return x


def _check_bits(bits: int) -> int:
  bits = int(bits)
  if bits < 1:
    raise ValueError(f"bits must be >= 1, got {bits}")
  return bits


def lsh_fit(features, bits: int, seed: int = 0) -> HashModel:
  """Random-projection LSH on centred features.

  Args:
    features: (n, D) training features (only their mean is used).
    bits: code length K.
    seed: seed of the Gaussian projection.

  Returns:
    HashModel of kind "lsh".
  """
  x = _features(features)
  bits = _check_bits(bits)
  rng = np.random.default_rng(seed)
  projection = rng.standard_normal((x.shape[1], bits))
  return HashModel("lsh", x.mean(axis=0), projection)


def _signs(values: np.ndarray) -> np.ndarray:
  return np.where(values >= 0, 1.0, -1.0)


def itq_fit(features, bits: int, seed: int = 0, iterations: int = 50) -> HashModel:
  """Iterative quantisation (PCA + learned rotation).

  Args:
    features: (n, D) training features, D >= bits.
    bits: code length K.
    seed: seed of the initial random orthogonal rotation.
    iterations: alternations of the sign and Procrustes steps.

  Returns:
    HashModel of kind "itq" with its per-iteration quantisation loss.
  """
  x = _features(features)
  bits = _check_bits(bits)
  if bits > x.shape[1]:
    raise ValueError(f"ITQ needs bits <= feature dimension, got bits={bits} > D={x.shape[1]}")
  if iterations < 0:
    raise ValueError(f"iterations must be >= 0, got {iterations}")
  pca = fit_pca(x, bits)
  v = pca.transform(x)
  rng = np.random.default_rng(seed)
  rotation, _ = np.linalg.qr(rng.standard_normal((bits, bits)))
  losses = []
  for _ in range(iterations):
    b = _signs(v @ rotation)
    u, _, wt = np.linalg.svd(v.T @ b)
    rotation = u @ wt
    losses.append(float(np.sum((b - v @ rotation) ** 2)))
  return HashModel("itq", pca.mean_, pca.components_.T @ rotation, rotation, tuple(losses))


def fit_pca(features, dims: int) -> decomposition.PCA:
  """scikit-learn's PCA of (n, D) features to `dims` leading components, solved exactly.

  With n >= D the eigendecomposition of the D x D covariance ("covariance_eigh": one pass over the rows);
  otherwise the SVD of the data ("full"). Never the randomized solver, which scikit-learn's "auto" picks
  for large matrices: the components would then be approximate.
  """
  x = _features(features)
  solver = "covariance_eigh" if x.shape[0] >= x.shape[1] else "full"
  return decomposition.PCA(n_components=int(dims), svd_solver=solver).fit(x)


def pca_reduce(features: dict[str, np.ndarray], dims: int) -> dict[str, np.ndarray]:
  """Every split projected on the `dims` (at most min(n, D)) leading principal components of "train" (float32).

  ITQ's first step is the PCA to K <= dims dimensions, so ITQ on the reduced features spans the same
  subspace as ITQ on the originals (the components' signs may differ; the rotation is learned anyway),
  while each fit costs a dims x dims eigendecomposition instead of D x D (3,072 for CIFAR pixels).
  """
  train = features["train"]
  pca = fit_pca(train, min(int(dims), *np.shape(train)))  # At most as many components as the data has.
  return {split: pca.transform(np.asarray(x, np.float64)).astype(np.float32) for split, x in features.items()}


def encode(model: HashModel, features) -> np.ndarray:
  """{0,1} uint8 codes (n, K) of features under a fitted model."""
  x = _features(features, min_rows=1)
  if x.shape[1] != model.mean.shape[0]:
    raise ValueError(f"features have dimension {x.shape[1]} but the {model.kind} model was fitted "
                     f"on dimension {model.mean.shape[0]}")
  return ((x - model.mean) @ model.projection >= 0).astype(np.uint8)
