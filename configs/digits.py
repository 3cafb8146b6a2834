"""The embedded dataset: scikit-learn's 8x8 digits, 360 queries / 1,437-image database = training set.

    python -m drlih_jax.main --config=configs/digits.py --workdir=runs/digits
"""

from configs import default


def get_config():
  """Digits with the DRLIH objective (the README's quickstart)."""
  config = default.get_config()
  return config
