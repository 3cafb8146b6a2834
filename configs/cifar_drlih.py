r"""CIFAR-10 with the paper-scale backbone and this project's DRLIH objective (ALGORITHM.md items 1-8).

    python -m drlih_jax.main --config=configs/cifar_drlih.py --workdir=runs/cifar_drlih_32 \
      --config.model.pretrained=/path/to/vgg19_bn.safetensors  # data: as configs/cifar.py

Everything of `configs/cifar.py` (VGG-19-BN, 256 -> 224 views, SGD schedule, cifar10-1, 48 images per step)
except the objective: policy gradient over M = 4 sampled rollouts with the "batch" reward plus the triplet
term, an LSTM agent and action groups of g = 4 bits (8 steps at 32 bits).
"""

from configs import cifar


def get_config():
  """VGG-19-BN, objective "drlih", 32 bits in groups of 4 (what differs from `configs/cifar.py`)."""
  config = cifar.get_config()
  config.objective = "drlih"
  config.hash.group = 4
  config.hash.eval_bits = (12, 16, 24, 32)
  config.model.hidden = 256
  config.rl.triplets_per_anchor = 4
  return config
