r"""CIFAR-10 in the paper's setting: VGG-19-BN, the released code's objective ("official"), 224 views.

    python -m drlih_jax.main --config=configs/cifar.py --workdir=runs/cifar_official_32 \
      --config.model.pretrained=/path/to/vgg19_bn.safetensors \
      --config.hash.bits=32          # 12, 24, 32 or 48 as in the paper

The data comes from the official tfds `cifar10` (downloaded and prepared into the tfds data dir on first
use, where the internet is reachable). To read a class-folder tree instead (e.g. the JPEG copy of
CIFAR-10, `<root>/{train,test}/<class>/*.jpg`), add
`--config.dataset.source=folder --config.dataset.root=/path/to/cifar10`.

What matches the released code (ALGORITHM.md, "What the authors' released code does"):
* VGG-19-BN (ImageNet weights from `model.pretrained`, a torchvision/timm safetensors file; "" trains from
  scratch) with the Linear(25088,4096)-ReLU-Dropout-Linear(4096,4096) head, the tanh-RNN agent with
  hidden = 4096 and one bit per step (hash.group = 1), the loss 0.001 * logpi * L_tri + 0.999 * L_tri.
* SGD momentum 0.9, weight decay 5e-4 on every parameter, lr 1e-3 x0.1 every 10,000 steps.
* ImageNet normalisation; training views are random 224 crops + horizontal flips, encoding views the
  centre 224 crop. The released code crops from images pre-resized on disk (size not stated); here the
  32x32 images are resized on the device to 256 (`input.resize`, torchvision's usual 256 -> 224) and
  cropped to 224 (`input.crop`), see `drlih_jax/resize.py`.
* Protocol cifar10-1: 500 training images per class, 100 queries per class, database = every non-query.

What differs (our pipeline, kept on purpose so all objectives share one training step):
* Batches are class-balanced and triplets are drawn inside the batch (`triplets.sample_triplets`); each
  image is encoded once and serves as anchor, positive and negative. The released code draws 16 triplets
  per step, each from its own random class pair, and runs the network three times (anchors, positives,
  negatives: 48 images, batch-norm statistics per group of 16). Here one step encodes 48 images
  (6 classes x 8 images, the same number of images per step) and uses one triplet per anchor (48 triplets,
  averaged like the released code's 16): the gradient is an average over more triplets, with the same
  backbone work per step.
* The triplet sampler can pair any two classes of the batch; batch-norm statistics are those of the 48.
"""

from configs import default


def get_config():
  """CIFAR-10 (cifar10-1, official tfds source), VGG-19-BN, objective "official", 32 bits.

  Only what differs from `configs/default.py` is set here.
  """
  config = default.get_config()
  config.objective = "official"

  config.dataset.name = "cifar10-1"
  config.dataset.source = "tfds"                   # or "folder" with dataset.root = <root>/{train,test}/<class>/
  config.dataset.mean = (0.485, 0.456, 0.406)      # ImageNet statistics, as the released code
  config.dataset.std = (0.229, 0.224, 0.225)

  config.input.classes_per_batch = 6               # 6 x 8 = 48 images per step = the released 16 triplets x 3
  config.input.resize = 256                        # on-device bilinear resize of the 32x32 images
  config.input.crop = 224                          # random crop + flip in training, centre crop to encode

  config.model.backbone = "vgg19_bn"
  config.model.feature_dim = 4096
  # model.pretrained: path or gs:// URL of ImageNet vgg19_bn safetensors ("" = from scratch).

  config.hash.group = 1                            # one bit per step; the paper reports 12, 24, 32, 48 bits
  config.hash.eval_bits = ()                       # the paper trains each length separately

  config.rl.triplets_per_anchor = 1

  config.optim.name = "sgd"                        # momentum 0.9, x0.1 every optim.decay_every = 10,000 steps
  config.optim.learning_rate = 1e-3
  config.optim.weight_decay = 5e-4

  config.train.steps = 30_000
  config.train.checkpoint_every = 2_000
  config.train.eval_batch_size = 256
  return config
