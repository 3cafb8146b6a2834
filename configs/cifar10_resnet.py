r"""CIFAR-10 from scratch at 32x32: pre-activation ResNet, class-balanced batches, on-device crop + flip.

    python -m drlih_jax.main --config=configs/cifar10_resnet.py:cifar10-2 --workdir=runs/c10_2_drlih_32 \
      --config.dataset.root=runs/data/cifar10
    python -m drlih_jax.main --config=configs/cifar10_resnet.py:cifar10-1,cpu --workdir=runs/cpu_c10_1 \
      --config.dataset.root=runs/data/cifar10 --config.objective=triplet

The text after ':' is a comma-separated list of tokens (any order, each optional):
* the protocol: "cifar10-2" (default; queries = the 10,000 test images, training set = database = the
  50,000 training images), "cifar10-1" (the DRLIH paper's: 100 queries and 500 training images per class,
  database = the 59,000 non-queries) or "cifar10" (database excludes the training images). The protocol can
  also be changed with --config.dataset.name.
* the budget: "full" (default; sized for one H100/H200), "plateau" (the "cpu" network trained until it
  stops improving: see below), "cpu" (a tiny ResNet that trains in a few
  minutes on 2 CPU cores: numbers from it are a smoke test of the recipe, not results) or "test" (seconds;
  for unit tests on a handful of images).

Data: `dataset.source = "folder"` over the CIFAR-10 JPEG class-folder tree (`<root>/{train,test}/<class>/
*.jpg`, e.g. `../shared/data/cifar10-jpeg.tar.gz` extracted; `drlih_jax/experiments.py` extracts it for you),
read with Pillow (`dataset.loader = "pillow"`: no TensorFlow needed). That copy is lossy re-encoded
(quality-75 JPEG, 4:2:0 chroma), so mAP is close to, not identical with, a number on the original pixels.

The recipe ("full"), and why:
* Backbone: pre-activation ResNet-18 layout (widths 64-128-256-512, `model.blocks_per_stage = 2` basic
  blocks per stage, 3x3 stem, no max-pool: 32x32 inputs), 512-d feature, bfloat16 compute (parameters,
  optimiser state and batch-norm statistics stay float32). Batch norm uses the statistics of the global
  batch in training (500 class-balanced images: stable statistics) and the running averages (momentum 0.9)
  to encode; no batch-norm layer is frozen.
* Batches: 10 classes x 50 images = 500 (every image is anchor, positive and negative; 8 sampled
  (positive, negative) pairs per anchor for the triplet term; the "batch" reward uses every pair).
* Augmentation: 4-pixel zero-pad random crop + horizontal flip, on the device (`input.augment`). That is
  the only augmentation the device pipeline offers; hashing has no classification head, so label
  smoothing/mixup-style regularisers do not apply. Over-fitting is fought with weight decay and the
  budget instead (cifar10-1 has only 5,000 training images: fewer steps than cifar10-2).
* Optimiser: AdamW, peak lr 2e-3 (as the prototype in ALGORITHM.md), linear warmup over 5% of the steps,
  cosine decay to 0; decoupled weight decay 0.05 (optax multiplies it by the lr: ~1e-4 shrink per step at
  the peak), applied to every parameter. These values are a reasoned starting point, not a tuned optimum.
* Agent: LSTM, hidden 256, action groups of g = 4 bits, M = 4 rollouts, reward "batch", beta = 1.
* Steps: cifar10-2 10,000 (100 epochs of 50,000 images); cifar10-1 4,000 (400 passes over its 5,000
  images, where the prototype's triplet run had already driven the loss to 0). At the prototype's 45,000-
  60,000 images/s on one H200 that is ~100 s and ~40 s of training (plus compilation and evaluation).
  `train.eval_every` evaluates during training for a learning curve.
"""

from configs import default

PROTOCOLS = ("cifar10", "cifar10-1", "cifar10-2")
BUDGETS = ("full", "plateau", "cpu", "test")
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # per-channel mean of the 50,000 training images (original pixels)
CIFAR_STD = (0.2470, 0.2435, 0.2616)   # per-channel standard deviation of the same
FULL_STEPS = {"cifar10": 4_000, "cifar10-1": 4_000, "cifar10-2": 10_000}


def parse_arg(arg: str | None) -> tuple[str, str]:
  """Splits the text after ':' into (protocol, budget); raises ValueError naming a bad token."""
  protocol, budget = "cifar10-2", "full"
  for token in (t.strip() for t in (arg or "").split(",")):
    if not token:
      continue
    if token in PROTOCOLS:
      protocol = token
    elif token in BUDGETS:
      budget = token
    else:
      raise ValueError(f"configs/cifar10_resnet.py: unknown argument {token!r}; expected a protocol "
                       f"{PROTOCOLS} and/or a budget {BUDGETS}, comma-separated (e.g. 'cifar10-1,cpu')")
  return protocol, budget


def get_config(arg: str | None = None):
  """CIFAR-10, ResNet from scratch, objective "drlih", 32 bits; `arg` = "<protocol>[,<budget>]"."""
  protocol, budget = parse_arg(arg)
  config = default.get_config()
  config.objective = "drlih"

  config.dataset.name = protocol
  config.dataset.source = "folder"
  config.dataset.root = ""                 # set: the extracted CIFAR-10 JPEG tree <root>/{train,test}/<class>
  config.dataset.loader = "pillow"         # no TensorFlow needed; "auto" uses tfds builders when TF imports
  config.dataset.num_workers = 8
  config.dataset.mean = CIFAR_MEAN
  config.dataset.std = CIFAR_STD

  config.input.classes_per_batch = 10
  config.input.images_per_class = 50       # batch 500
  config.input.augment = "crop_flip"
  config.input.crop_padding = 4

  config.model.backbone = "resnet"
  config.model.widths = (64, 128, 256, 512)
  config.model.blocks_per_stage = 2        # read by models.create_backbone (default 2)
  config.model.feature_dim = 512
  config.model.cell = "lstm"
  config.model.hidden = 256
  config.model.action_embed = 32
  config.model.dtype = "bfloat16"

  config.hash.bits = 32
  config.hash.group = 4
  config.hash.eval_bits = (12, 16, 24, 32)

  config.rl.rollouts = 4
  config.rl.reward = "batch"
  config.rl.alpha = 0.5
  config.rl.beta = 1.0
  config.rl.eta = 0.0
  config.rl.triplets_per_anchor = 8
  config.rl.triplet_margin = 1.0

  config.optim.name = "adamw"
  config.optim.learning_rate = 2e-3
  config.optim.weight_decay = 0.05
  config.optim.grad_clip = 0.0

  steps = FULL_STEPS[protocol]
  config.train.steps = steps
  config.train.log_every = 100
  # Follow --config.train.steps unless set themselves: five learning-curve points, 5% warmup.
  config.train.eval_every = config.train.get_ref("steps") // 5
  config.optim.warmup_steps = config.train.get_ref("steps") // 20
  config.train.checkpoint_every = 2_000
  config.train.keep_checkpoints = 1
  config.train.eval_batch_size = 2_000

  if budget in ("cpu", "plateau"):
    # ~0.15-0.2 s per step on 2 CPU cores; evaluation (encoding 60,000 images) is ~half of a run.
    config.model.widths = (16, 32, 64)
    config.model.blocks_per_stage = 1
    config.model.feature_dim = 64
    config.model.hidden = 64
    config.model.action_embed = 16
    config.model.dtype = "float32"         # bfloat16 is emulated (slow) on CPUs
    config.input.images_per_class = 10     # batch 100
    config.rl.triplets_per_anchor = 4
    config.train.steps = 300
    config.train.eval_every = 0
    config.train.log_every = 50
    config.train.checkpoint_every = 300
    config.train.eval_batch_size = 1_000
    config.dataset.num_workers = 2
  if budget == "plateau":
    # The "cpu" network trained until it stops improving, for a CPU answer at a budget where the codes are
    # good: an evaluation every 2 epochs of cifar10-2 (1,000 steps of 100 images); training ends when the
    # tie-aware mAP@all of the 32-bit code gained less than 0.005 over the last fifth of the steps at two
    # evaluations in a row, or after 60 minutes of training (both in drlih_jax/train.py), whichever comes
    # first. train.steps is a horizon the rule
    # ends long before: the cosine schedule then keeps the learning rate within 0.5% of its peak for the
    # first 45,000 steps, so what ends a run is the stopping rule, not the schedule.
    config.train.steps = 1_000_000
    config.optim.warmup_steps = 500
    config.train.eval_every = 1_000
    config.train.log_every = 100
    config.train.checkpoint_every = 500
    config.train.keep_checkpoints = 2
    config.train.max_minutes = 60.0
    config.train.stop_min_gain = 0.005
    config.train.stop_window = 0.2
    # Two evaluations in a row: at the peak learning rate one evaluation can dip by noise alone (seed 0's
    # drlih run was ended at step 4,000 by a dip of 0.0026 under patience 1; see RESULTS.md).
    config.train.stop_patience = 2
  elif budget == "test":
    config.model.widths = (8,)
    config.model.blocks_per_stage = 1
    config.model.feature_dim = 16
    config.model.hidden = 16
    config.model.action_embed = 8
    config.model.dtype = "float32"
    config.input.classes_per_batch = 4
    config.input.images_per_class = 4
    config.rl.triplets_per_anchor = 2
    config.train.steps = 10
    config.train.eval_every = 5
    config.train.log_every = 5
    config.train.checkpoint_every = 10
    config.train.eval_batch_size = 64
    config.dataset.num_workers = 2
  return config
