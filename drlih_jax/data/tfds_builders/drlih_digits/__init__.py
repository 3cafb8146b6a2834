"""The drlih_digits tfds dataset (the builder is in drlih_digits_dataset_builder.py)."""
