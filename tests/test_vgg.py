"""Tests for the VGG-19-BN backbone and its torchvision/timm weight loader.

The reference is a plain-torch replica of torchvision's ``vgg19_bn`` (same module
names, so the same ``state_dict`` keys), since torchvision itself does not import
beside this torch. Its weights and batch-norm running statistics are randomised,
saved as safetensors, loaded with our loader and the 4096-d feature (output of
``classifier[3]``) compared.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from drlih_jax.models import vgg as vgg_lib
from drlih_jax.models import weights as weights_lib

CFG_E = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
         512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]


def _rel_err(a, b):
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _torch_vgg19_bn(torch):
  """torchvision's vgg19_bn, rebuilt from torch.nn with torchvision's names."""
  nn = torch.nn

  class VGG(nn.Module):

    def __init__(self):
      super().__init__()
      layers = []
      cin = 3
      for v in CFG_E:
        if v == "M":
          layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
          layers += [nn.Conv2d(cin, v, kernel_size=3, padding=1),
                     nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
          cin = v
      self.features = nn.Sequential(*layers)
      self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
      self.classifier = nn.Sequential(
          nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(p=0.5),
          nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(p=0.5),
          nn.Linear(4096, 1000))

    def feature(self, x):
      """Output of classifier[3] (fc7, before its ReLU)."""
      x = torch.flatten(self.avgpool(self.features(x)), 1)
      return self.classifier[:4](x)

  return VGG()


@pytest.fixture(scope="module")
def torch_ref(tmp_path_factory):
  """(torch module, safetensors path, numpy state dict) with random weights and stats."""
  torch = pytest.importorskip("torch", reason="torch not installed: reference test skipped")
  st_torch = pytest.importorskip("safetensors.torch", reason="safetensors not installed")
  torch.manual_seed(0)
  model = _torch_vgg19_bn(torch)
  gen = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.Conv2d):
        torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        m.bias.normal_(0.0, 0.05, generator=gen)
      elif isinstance(m, torch.nn.Linear):
        m.weight.normal_(0.0, 0.01, generator=gen)
        m.bias.normal_(0.0, 0.05, generator=gen)
      elif isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5, generator=gen)
        m.bias.normal_(0.0, 0.2, generator=gen)
    # Calibrate the running statistics on a random batch (momentum 1: running =
    # batch statistics), then perturb them so they are non-trivial and differ
    # from any test batch's statistics.
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.momentum = 1.0
    model.train()
    model.features(torch.randn(4, 3, 64, 64, generator=gen))
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.momentum = 0.1
        m.running_mean.add_(0.1 * torch.randn(m.num_features, generator=gen))
        m.running_var.mul_(torch.empty(m.num_features).uniform_(0.7, 1.4, generator=gen))
  model.eval()
  path = tmp_path_factory.mktemp("vgg") / "vgg19_bn.safetensors"
  state = {k: v.contiguous() for k, v in model.state_dict().items()}
  st_torch.save_file(state, str(path))
  np_state = {k: v.numpy() for k, v in state.items()}
  return model, str(path), np_state


@pytest.fixture(scope="module")
def loaded(torch_ref):
  _, path, _ = torch_ref
  return weights_lib.load_vgg19_bn_torchvision(path)


@functools.lru_cache(maxsize=None)
def _eval_fn(dtype=jnp.float32):
  model = vgg_lib.VGG19BN(dtype=dtype)
  return jax.jit(lambda v, x: model.apply(v, x, train=False))


def _torch_feature(torch_ref, x_nhwc, train=False):
  import torch  # pylint: disable=g-import-not-at-top
  model = torch_ref[0]
  with torch.no_grad():
    return model.feature(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))).numpy()


# ----------------------------------------------------------------------------- FLOPs


def test_flops_hand_count():
  # Multiply-adds, layer by layer at 224 (H*W * 9 * Cin * Cout), hand-listed.
  convs_224 = [
      (224, 3, 64), (224, 64, 64),
      (112, 64, 128), (112, 128, 128),
      (56, 128, 256), (56, 256, 256), (56, 256, 256), (56, 256, 256),
      (28, 256, 512), (28, 512, 512), (28, 512, 512), (28, 512, 512),
      (14, 512, 512), (14, 512, 512), (14, 512, 512), (14, 512, 512),
  ]
  conv_macs = sum(s * s * 9 * ci * co for s, ci, co in convs_224)
  assert conv_macs == 19_508_428_800  # Summed by hand per stage.
  fc_macs = 25088 * 4096 + 4096 * 4096
  assert vgg_lib.vgg19_bn_flops(224) == 2 * (conv_macs + fc_macs) == 39_255_932_928
  # Adding the 1000-way layer gives torchvision's published 19.63 G multiply-adds.
  assert abs((conv_macs + fc_macs + 4096 * 1000) / 1e9 - 19.63) < 0.005
  # 32x32: spatial sides 32, 16, 8, 4, 2 -> conv cost scales by (32/224)^2 exactly;
  # the head is the same (the 1x1 map is pooled up to 7x7).
  assert vgg_lib.vgg19_bn_flops(32) == 2 * (conv_macs * 32 * 32 // (224 * 224) + fc_macs)
  assert vgg_lib.vgg19_bn_flops((224, 32)) == 2 * (conv_macs * 32 // 224 + fc_macs)


# ------------------------------------------------------------------- adaptive pooling


@pytest.mark.parametrize("h,w", [(7, 7), (1, 1), (2, 3), (5, 9), (10, 14), (13, 8)])
def test_adaptive_avg_pool_matches_torch(h, w):
  torch = pytest.importorskip("torch", reason="torch not installed")
  x = np.random.default_rng(h * 100 + w).normal(size=(2, h, w, 3)).astype(np.float32)
  got = np.asarray(vgg_lib.adaptive_avg_pool2d(jnp.asarray(x), 7))
  want = torch.nn.functional.adaptive_avg_pool2d(
      torch.from_numpy(x.transpose(0, 3, 1, 2)), (7, 7)).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_adaptive_pool_matrix_hand_cases():
  # 1 -> 7 replicates; 14 -> 7 averages pairs; 10 -> 7 uses overlapping windows
  # [floor(7i/... )]: i=0: [0,2), i=1: [1,3), i=2: [2,5), ... (torch's rule).
  np.testing.assert_array_equal(vgg_lib._adaptive_pool_matrix(1, 7), np.ones((7, 1)))
  m14 = vgg_lib._adaptive_pool_matrix(14, 7)
  np.testing.assert_array_equal(m14, np.kron(np.eye(7), [[0.5, 0.5]]))
  m10 = vgg_lib._adaptive_pool_matrix(10, 7)
  np.testing.assert_allclose(m10[0], [0.5, 0.5, 0, 0, 0, 0, 0, 0, 0, 0])
  np.testing.assert_allclose(m10[1], [0, 0.5, 0.5, 0, 0, 0, 0, 0, 0, 0])
  np.testing.assert_allclose(m10[2], [0, 0, 1 / 3, 1 / 3, 1 / 3, 0, 0, 0, 0, 0])
  with pytest.raises(ValueError, match="in_size=0"):
    vgg_lib._adaptive_pool_matrix(0, 7)


# -------------------------------------------------------- equivalence with torchvision


def test_feature_matches_torch_224(torch_ref, loaded):
  x = np.random.default_rng(0).normal(size=(2, 224, 224, 3)).astype(np.float32)
  want = _torch_feature(torch_ref, x)
  got = np.asarray(_eval_fn()(loaded, x))
  assert got.shape == (2, 4096) and got.dtype == np.float32
  assert np.std(want) > 1e-3  # A non-degenerate reference.
  assert _rel_err(got, want) < 1e-4


def test_feature_matches_torch_32(torch_ref, loaded):
  # 32x32 leaves a 1x1 map that AdaptiveAvgPool2d replicates to 7x7.
  x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
  want = _torch_feature(torch_ref, x)
  got = np.asarray(_eval_fn()(loaded, x))
  assert np.std(want) > 1e-3
  assert _rel_err(got, want) < 1e-4


def test_feature_matches_torch_odd_size(torch_ref, loaded):
  # 80x80 -> a 2x2 map, pooled to 7x7 with torch's overlapping windows.
  x = np.random.default_rng(2).normal(size=(1, 80, 80, 3)).astype(np.float32)
  want = _torch_feature(torch_ref, x)
  got = np.asarray(_eval_fn()(loaded, x))
  assert _rel_err(got, want) < 1e-4


def test_bf16_compute_close_to_float32(loaded):
  # bf16 has an 8-bit mantissa (relative rounding 2^-9 ~ 2e-3 per op); through 18
  # layers the feature drifts by a few percent. Bound: 5% relative error.
  x = np.random.default_rng(3).normal(size=(2, 64, 64, 3)).astype(np.float32)
  ref = np.asarray(_eval_fn()(loaded, x))
  got = _eval_fn(jnp.bfloat16)(loaded, x)
  assert got.dtype == jnp.bfloat16
  err = _rel_err(np.asarray(got, np.float32), ref)
  assert 0.0 < err < 5e-2


def test_train_mode_matches_torch_and_updates_stats(torch_ref, loaded):
  """Batch statistics, and the running-stat update (momentum 0.9 == torch's 0.1)."""
  import torch  # pylint: disable=g-import-not-at-top
  model_t = torch_ref[0]
  x = np.random.default_rng(4).normal(size=(4, 32, 32, 3)).astype(np.float32)
  state_before = {k: v.clone() for k, v in model_t.state_dict().items()}
  try:
    model_t.train()
    model_t.classifier[2].p = 0.0  # Dropout off: the comparison is deterministic.
    with torch.no_grad():
      want = model_t.feature(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    bn_last = model_t.features[50]  # bn15 (the 16th BatchNorm).
    # torch's running_var uses the unbiased batch variance; Flax the biased one.
    n = 4 * 2 * 2  # Batch x the 2x2 map entering the last conv stage's BN.
    old_var = state_before["features.50.running_var"].numpy()
    batch_var_unbiased = (bn_last.running_var.numpy() - 0.9 * old_var) / 0.1
    want_var = 0.9 * old_var + 0.1 * batch_var_unbiased * (n - 1) / n
    want_mean = bn_last.running_mean.numpy().copy()  # .numpy() shares memory.
  finally:
    model_t.load_state_dict(state_before)
    model_t.classifier[2].p = 0.5
    model_t.eval()
  model = vgg_lib.VGG19BN(dropout_rate=0.0)
  got, updates = jax.jit(
      lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(loaded, x)
  assert _rel_err(got, want) < 1e-4
  np.testing.assert_allclose(updates["batch_stats"]["bn15"]["mean"], want_mean,
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(updates["batch_stats"]["bn15"]["var"], want_var,
                             rtol=1e-4, atol=1e-5)


def test_axis_name_averages_batch_stats_over_shards(loaded):
  """Under a named map, axis_name makes BatchNorm use the global-batch statistics."""
  x = np.random.default_rng(5).normal(size=(4, 32, 32, 3)).astype(np.float32)
  full = vgg_lib.VGG19BN(dropout_rate=0.0)
  want = np.asarray(jax.jit(
      lambda v, x: full.apply(v, x, train=True, mutable=["batch_stats"])[0])(loaded, x))

  def sharded(module):
    f = lambda v, xs: module.apply(v, xs, train=True, mutable=["batch_stats"])[0]
    out = jax.jit(jax.vmap(f, in_axes=(None, 0), axis_name="data"))(
        loaded, x.reshape(2, 2, 32, 32, 3))
    return np.asarray(out).reshape(4, -1)

  got = sharded(vgg_lib.VGG19BN(dropout_rate=0.0, axis_name="data"))
  assert _rel_err(got, want) < 1e-4
  # Without axis_name each shard normalises with its own statistics.
  local = sharded(vgg_lib.VGG19BN(dropout_rate=0.0))
  assert _rel_err(local, want) > 1e-2


def test_dropout_active_only_in_train(loaded):
  x = np.random.default_rng(6).normal(size=(2, 32, 32, 3)).astype(np.float32)
  model = vgg_lib.VGG19BN()
  f = jax.jit(lambda v, x, r: model.apply(
      v, x, train=True, rngs={"dropout": r}, mutable=["batch_stats"])[0])
  a = np.asarray(f(loaded, x, jax.random.PRNGKey(0)))
  b = np.asarray(f(loaded, x, jax.random.PRNGKey(1)))
  no_drop = np.asarray(jax.jit(lambda v, x: vgg_lib.VGG19BN(dropout_rate=0.0).apply(
      v, x, train=True, mutable=["batch_stats"])[0])(loaded, x))
  assert _rel_err(a, b) > 1e-2
  assert _rel_err(a, no_drop) > 1e-2


def test_rejects_small_or_non_nhwc_input():
  model = vgg_lib.VGG19BN()
  with pytest.raises(ValueError, match="H, W >= 32"):
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)),
                                      train=False))
  with pytest.raises(ValueError, match="4-D"):
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((16, 16, 3)),
                                      train=False))


# ------------------------------------------------------------------------ the loader


def test_loaded_tree_matches_init(loaded):
  weights_lib.check_vgg19_bn_tree(loaded)
  # fc6: torch row (o, c*49 + h*7 + w) lands at our row h*7*512 + w*512 + c.
  assert loaded["params"]["fc6"]["kernel"].shape == (25088, 4096)


def test_fc6_and_conv_layout(torch_ref, loaded):
  sd = torch_ref[2]
  w6 = sd["classifier.0.weight"]
  k6 = loaded["params"]["fc6"]["kernel"]
  for o, c, h, w in [(0, 0, 0, 0), (5, 300, 2, 6), (4095, 511, 6, 6), (17, 3, 6, 1)]:
    assert k6[h * 7 * 512 + w * 512 + c, o] == w6[o, c * 49 + h * 7 + w]
  np.testing.assert_array_equal(loaded["params"]["fc7"]["kernel"], sd["classifier.3.weight"].T)
  # features.40 is the 13th conv (conv12): conv k sits at 3k + (number of pools before it).
  np.testing.assert_array_equal(loaded["params"]["conv12"]["kernel"][1, 2, 7, 9],
                                sd["features.40.weight"][9, 7, 1, 2])
  np.testing.assert_array_equal(loaded["batch_stats"]["bn12"]["var"],
                                sd["features.41.running_var"])
  np.testing.assert_array_equal(loaded["params"]["bn0"]["scale"], sd["features.1.weight"])


def test_timm_layout_loads_the_same(torch_ref, loaded):
  sd = dict(torch_ref[2])
  timm = {k: v for k, v in sd.items() if k.startswith("features.")}
  timm["pre_logits.fc1.weight"] = sd["classifier.0.weight"].reshape(4096, 512, 7, 7)
  timm["pre_logits.fc1.bias"] = sd["classifier.0.bias"]
  timm["pre_logits.fc2.weight"] = sd["classifier.3.weight"].reshape(4096, 4096, 1, 1)
  timm["pre_logits.fc2.bias"] = sd["classifier.3.bias"]
  timm["head.fc.weight"] = sd["classifier.6.weight"]
  timm["head.fc.bias"] = sd["classifier.6.bias"]
  got = weights_lib.convert_vgg19_bn_state_dict(timm, source="timm-test")
  jax.tree_util.tree_map(np.testing.assert_array_equal, got, loaded)


def test_loader_errors_name_the_bad_keys(torch_ref):
  sd = dict(torch_ref[2])
  bad = dict(sd)
  del bad["features.41.running_var"]
  with pytest.raises(ValueError, match=r"missing keys \['features.41.running_var'\]"):
    weights_lib.convert_vgg19_bn_state_dict(bad, source="ckpt.safetensors")
  bad = dict(sd, **{"features.99.weight": np.zeros(3, np.float32)})
  with pytest.raises(ValueError, match=r"unexpected keys \['features.99.weight'\]"):
    weights_lib.convert_vgg19_bn_state_dict(bad)
  bad = dict(sd, **{"classifier.3.weight": np.zeros((4096, 1000), np.float32)})
  with pytest.raises(ValueError,
                     match=r"classifier.3.weight: expected \(4096, 4096\), got \(4096, 1000\)"):
    weights_lib.convert_vgg19_bn_state_dict(bad)
  with pytest.raises(ValueError, match="no head keys"):
    weights_lib.convert_vgg19_bn_state_dict(
        {k: v for k, v in sd.items() if k.startswith("features.")})


def test_loader_error_names_the_file(tmp_path):
  st_np = pytest.importorskip("safetensors.numpy", reason="safetensors not installed")
  path = tmp_path / "tiny.safetensors"
  st_np.save_file({"classifier.0.weight": np.zeros((2, 2), np.float32)}, str(path))
  with pytest.raises(ValueError) as e:
    weights_lib.load_vgg19_bn_torchvision(str(path))
  msg = str(e.value)
  assert str(path) in msg and "'features.0.weight'" in msg
  assert "classifier.0.weight: expected (4096, 25088), got (2, 2)" in msg


def test_check_tree_names_bad_leaf(loaded):
  bad = jax.tree_util.tree_map(lambda a: a, loaded)
  bad["params"]["conv3"]["kernel"] = np.zeros((3, 3, 128, 64), np.float32)
  del bad["batch_stats"]["bn7"]["var"]
  with pytest.raises(ValueError) as e:
    weights_lib.check_vgg19_bn_tree(bad)
  msg = str(e.value)
  assert "params/conv3/kernel: expected (3, 3, 128, 128), got (3, 3, 128, 64)" in msg
  assert "batch_stats/bn7/var" in msg


def test_max_pool_2x2_matches_flax_max_pool_values_and_relu_gradients():
  import flax.linen as flax_nn  # pylint: disable=g-import-not-at-top
  from drlih_jax.models import vgg as vgg_lib  # pylint: disable=g-import-not-at-top
  x = jax.random.normal(jax.random.key(0), (2, 9, 10, 3))  # odd height: VALID drops the last row
  np.testing.assert_array_equal(np.asarray(vgg_lib.max_pool_2x2(x)),
                                np.asarray(flax_nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")))
  # With ReLU before the pool (as in VGG), tied zero windows get no gradient either way.
  f1 = lambda v: jnp.sum(jnp.sin(vgg_lib.max_pool_2x2(jax.nn.relu(v))))
  f2 = lambda v: jnp.sum(jnp.sin(flax_nn.max_pool(jax.nn.relu(v), (2, 2), strides=(2, 2), padding="VALID")))
  np.testing.assert_allclose(np.asarray(jax.grad(f1)(x)), np.asarray(jax.grad(f2)(x)), rtol=1e-6, atol=1e-7)
