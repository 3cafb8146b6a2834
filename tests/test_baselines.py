"""Tests of the LSH and ITQ baselines (numpy) on sklearn digits and on unit properties."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from drlih_jax import baselines
from drlih_jax import metrics


@pytest.fixture(scope="module")
def digits_split():
  """360 queries (36 per class) and the other 1,437 images as database, fixed seed."""
  features, labels = load_digits(return_X_y=True)
  rng = np.random.default_rng(0)
  query = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:36] for c in range(10)])
  database = np.setdiff1d(np.arange(len(labels)), query)
  return features[query], labels[query], features[database], labels[database]


def test_itq_beats_lsh_on_digits(digits_split):
  q_feat, q_lab, db_feat, db_lab = digits_split
  assert len(q_lab) == 360 and len(db_lab) == 1437
  scores = {}
  for name, fit in (("itq", baselines.itq_fit), ("lsh", baselines.lsh_fit)):
    model = fit(db_feat, 32, seed=0)
    q_codes, db_codes = baselines.encode(model, q_feat), baselines.encode(model, db_feat)
    assert q_codes.shape == (360, 32) and q_codes.dtype == np.uint8
    stats = metrics.hamming_statistics(q_codes, db_codes, q_lab, db_lab)
    scores[name] = metrics.map_from_statistics(stats).map
  # Reference numbers (32 bits, mAP@all, stable ties): ITQ ~0.65-0.66, LSH ~0.46-0.49; chance ~0.1.
  assert scores["itq"] > 0.55
  assert 0.3 < scores["lsh"] < scores["itq"] - 0.08


def test_itq_rotation_orthogonal_and_loss_non_increasing():
  rng = np.random.default_rng(1)
  features = rng.standard_normal((300, 20)) @ rng.standard_normal((20, 20)) + 3.0
  model = baselines.itq_fit(features, 12, seed=2, iterations=30)
  np.testing.assert_allclose(model.rotation @ model.rotation.T, np.eye(12), atol=1e-10)
  losses = np.asarray(model.quantization_loss)
  assert losses.shape == (30,)
  assert np.all(np.diff(losses) <= 1e-9 * losses[0])
  assert losses[-1] < losses[0]  # the rotation actually learned something


def test_itq_codes_are_signs_of_rotated_pca_projection():
  rng = np.random.default_rng(3)
  features = rng.standard_normal((200, 10))
  model = baselines.itq_fit(features, 6, seed=0, iterations=5)
  centred = features - features.mean(axis=0)
  eigenvalues, eigenvectors = np.linalg.eigh(np.cov(centred, rowvar=False))
  pca = eigenvectors[:, np.argsort(eigenvalues)[::-1][:6]]
  # The PCA basis is defined up to sign per component; the projection must span the same space
  # and the codes must be the signs of (x - mean) @ projection.
  np.testing.assert_allclose(np.abs(pca.T @ model.projection @ model.rotation.T), np.eye(6),
                             atol=1e-8)
  expected = (centred @ model.projection >= 0).astype(np.uint8)
  np.testing.assert_array_equal(baselines.encode(model, features), expected)


def test_lsh_is_centred_random_projection_and_seeded():
  rng = np.random.default_rng(4)
  features = rng.standard_normal((50, 8)) + 10.0
  a = baselines.lsh_fit(features, 16, seed=5)
  b = baselines.lsh_fit(features, 16, seed=5)
  c = baselines.lsh_fit(features, 16, seed=6)
  np.testing.assert_array_equal(a.projection, b.projection)
  assert not np.array_equal(a.projection, c.projection)
  np.testing.assert_allclose(a.mean, features.mean(axis=0))
  codes = baselines.encode(a, features)
  # Centring makes the bits balanced-ish; without it every bit would follow the offset of +10.
  assert 0.2 < codes.mean() < 0.8
  np.testing.assert_array_equal(codes, ((features - a.mean) @ a.projection >= 0).astype(np.uint8))


def test_baseline_input_errors():
  features = np.zeros((10, 4))
  with pytest.raises(ValueError, match="bits <= feature dimension"):
    baselines.itq_fit(features, 5)
  with pytest.raises(ValueError, match="bits must be >= 1"):
    baselines.lsh_fit(features, 0)
  model = baselines.lsh_fit(features, 3)
  with pytest.raises(ValueError, match="dimension 5"):
    baselines.encode(model, np.zeros((2, 5)))
