"""Defaults shared by every config: the DRLIH agent, objective, optimiser and loop settings.

Dataset configs (`digits.py`, `cifar.py`, ...) start from `get_config()` here and override what differs.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Returns the default configuration (the embedded digits dataset, small CNN, 32-bit codes)."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  # Devices of the ("data",) mesh: 0 = every device of every process; n = the first n devices.
  config.mesh_devices = 0

  # Objective: "drlih" (policy gradient + auxiliary triplet term), "triplet" (the auxiliary term alone,
  # the ablation), "official" (the released code's loss; see ALGORITHM.md item 9).
  config.objective = "drlih"

  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = "digits"          # protocol name, see drlih_jax/data/protocols.py
  config.dataset.source = "digits"
  config.dataset.root = ""                # class-folder root or list-file image root
  config.dataset.list_dir = ""
  config.dataset.data_dir = ml_collections.config_dict.placeholder(str)  # tfds data dir
  config.dataset.split_seed = 0
  config.dataset.image_size = ml_collections.config_dict.placeholder(int)
  config.dataset.on_bad_image = "error"
  config.dataset.loader = "auto"
  config.dataset.num_workers = 8
  config.dataset.num_queries = 360        # digits only: queries drawn class-balanced
  # Per-channel normalisation applied on the device to uint8 pixels (scaled to [0, 1] first).
  config.dataset.mean = (0.5,)
  config.dataset.std = (0.25,)

  # Input pipeline: "resident" (the training split on the device as uint8, batches drawn and augmented in
  # the jitted step) or "streaming" (tf.data decodes and augments this process's shard on the host).
  config.input = ml_collections.ConfigDict()
  config.input.mode = "resident"
  config.input.classes_per_batch = 10     # classes drawn per batch (single-label data)
  config.input.images_per_class = 8       # images per drawn class
  config.input.augment = ""               # "" | "crop_flip"
  config.input.crop_padding = 4
  # Larger views for big backbones: resize the stored images to `resize` on the device, then take a random
  # `crop` (with flip) in training and the centre crop when encoding (0: off). See drlih_jax/resize.py.
  config.input.resize = 0
  config.input.crop = 0

  config.model = ml_collections.ConfigDict()
  config.model.backbone = "small_cnn"     # "small_cnn" | "resnet" | "vgg19_bn"
  config.model.widths = (32, 64)          # small_cnn conv widths (one 3x3 conv + pool per width); resnet stages
  config.model.blocks_per_stage = 2       # resnet: basic blocks per stage
  config.model.feature_dim = 128
  config.model.cell = "lstm"              # "lstm" | "gru" | "rnn" (tanh)
  config.model.hidden = 128
  config.model.action_embed = 32          # width of the embedding of the previous action group
  config.model.dtype = "float32"          # compute dtype; parameters stay float32
  config.model.pretrained = ""            # vgg19_bn only: torchvision/timm safetensors ImageNet weights

  config.hash = ml_collections.ConfigDict()
  config.hash.bits = 32
  config.hash.group = 4                   # bits per action group (one agent step)
  config.hash.eval_bits = (12, 16, 24, 32)  # prefixes of the greedy code to evaluate

  config.rl = ml_collections.ConfigDict()
  config.rl.rollouts = 4                  # M sampled rollouts per image
  config.rl.gamma = 1.0
  config.rl.alpha = 0.5                   # prefix hinge margin per bit
  config.rl.reward = "batch"              # "batch" | "triplet"
  config.rl.beta = 1.0                    # weight of the auxiliary triplet term
  config.rl.eta = 0.0                     # entropy bonus
  config.rl.triplets_per_anchor = 4       # sampled (positive, negative) pairs per anchor, triplet term
  config.rl.triplet_margin = 1.0
  config.rl.official_lambda = 0.001       # objective "official": weight of the log-pi term

  config.optim = ml_collections.ConfigDict()
  config.optim.name = "adamw"             # "adamw" | "sgd" (paper: momentum 0.9, step decay)
  config.optim.learning_rate = 2e-3
  config.optim.warmup_steps = 100
  config.optim.weight_decay = 1e-4
  config.optim.momentum = 0.9
  config.optim.decay_every = 10_000       # sgd: lr x decay_factor every decay_every steps
  config.optim.decay_factor = 0.1
  config.optim.grad_clip = 0.0            # global-norm clip; 0 disables

  config.train = ml_collections.ConfigDict()
  config.train.steps = 1000
  config.train.log_every = 100
  config.train.eval_every = 0             # 0: evaluate only at the end
  config.train.checkpoint_every = 500
  config.train.keep_checkpoints = 3
  config.train.eval_batch_size = 1024
  config.train.eval_database_order = "shuffled"  # ties of the stable metrics: "shuffled" | "stored"
  config.train.max_nonfinite_in_a_row = 10
  # Ending earlier than train.steps (see drlih_jax/train.py): a time budget over every session of the run,
  # and a stopping rule read at each evaluation (needs eval_every): stop when the tie-aware mAP@all of the
  # full code gained less than stop_min_gain over the last stop_window of the run's steps.
  config.train.max_minutes = 0.0          # 0: no time budget
  config.train.stop_min_gain = 0.0        # 0: no stopping rule
  config.train.stop_window = 0.2          # the last fifth
  config.train.stop_patience = 1          # evaluations in a row that must find the gain too small
  return config
