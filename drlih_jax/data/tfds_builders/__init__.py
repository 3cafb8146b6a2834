"""The package's tfds builders, one dataset folder each, laid out as tfds expects.

* `drlih_class_folder`: a class-folder tree (`<manual_dir>/<split>/<class>/<image>`).
* `drlih_image_list`: DeepHash-pytorch list files over images (`<manual_dir>/train.txt`, ...).
* `drlih_digits`: scikit-learn's bundled 8x8 digits (no manual data).

Importing this package imports tensorflow_datasets and registers the three names, so that
`tfds.builder("drlih_class_folder", config="s224_skip", data_dir=...)` works; only the tfds path of
`drlih_jax.data` imports it (the Pillow path needs neither TensorFlow nor tensorflow_datasets). The tfds
command line builds a folder directly, e.g.

    tfds build drlih_jax/data/tfds_builders/drlih_class_folder --manual_dir=/data/cifar10_jpeg \\
        --config=native_error --data_dir=/data/tfds

`decode_config` names the configs of the first two (image size and bad-image policy).
"""

# pylint: disable=unused-import
from drlih_jax.data.tfds_builders.drlih_class_folder import drlih_class_folder_dataset_builder
from drlih_jax.data.tfds_builders.drlih_digits import drlih_digits_dataset_builder
from drlih_jax.data.tfds_builders.drlih_image_list import drlih_image_list_dataset_builder
