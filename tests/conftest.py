"""Session-wide test settings, read before any test module imports its libraries."""

import os

# gcsfs (behind etils.epath for gs:// paths) probes each bucket's storage layout over gRPC unless this is
# off; the local GCS server of tests/test_gcs_workdir.py serves no gRPC, and the probe's retries hang a
# process for minutes. gcsfs reads the variable when it is first imported, so it is set here.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

# etils.epath picks TensorFlow's GCS client for gs:// paths whenever TensorFlow is installed, and caches
# that choice at the first gs:// path of the process; TensorFlow's client ignores STORAGE_EMULATOR_HOST.
# The gs:// tests need gcsfs (fsspec), whichever test touches a gs:// path first, so it is chosen here.
os.environ.setdefault("EPATH_USE_TF", "false")
