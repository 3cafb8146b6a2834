"""The drlih_class_folder tfds dataset (the builder is in drlih_class_folder_dataset_builder.py)."""
