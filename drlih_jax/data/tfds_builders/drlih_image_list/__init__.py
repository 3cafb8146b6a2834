"""The drlih_image_list tfds dataset (the builder is in drlih_image_list_dataset_builder.py)."""
