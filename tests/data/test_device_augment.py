"""The device augmentation against its references: the numpy rule, PIL and scipy.

Same uniforms -> the same crop boxes, flips, jitter factors and branches as
augment.view_params (the host path); each resampling stage within a stated
number of uint8 levels of PIL (PIL stores each pass in uint8 with fixed-point
weights; the device keeps float32 weights and rounds where PIL does).
"""
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from mlvicx_jax.data import augment
from mlvicx_jax.data import device_augment

PARAM_FIELDS = ('flip', 'jitter', 'brightness_first', 'blur', 'solarize')


class ScriptedRng:
  """Serves one given block of uniforms as the host path's `rng.random(n)`."""

  def __init__(self, draws):
    self._draws = np.asarray(draws, np.float64)

  def random(self, n):
    assert n == len(self._draws)
    return self._draws


def smooth_film(size, seed=0):
  """A radiograph-like image: smooth ribs and noise, 0..255 with clipped ends."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[:size, :size] / size
  film = 120 + 90 * np.sin(9 * y + 2 * x) * np.cos(5 * x) + rng.normal(0, 6, (size, size))
  return np.clip(film, 0, 255).astype(np.uint8)


def draws_with_fallbacks(rng, count):
  """Uniform draws, with every 10th row forced through the centre-crop fallback."""
  draws = rng.random((count, augment.VIEW_DRAWS))
  crop = draws[::10, augment.CROP:augment.FLIP].reshape(-1, augment.CROP_TRIES, 4)
  crop[:, :, 0] = 0.99  # area near the whole image ...
  crop[:, :, 1] = rng.choice([0.0, 1.0], crop.shape[:2])  # ... at an extreme aspect ratio
  draws[::10, augment.CROP:augment.FLIP] = crop.reshape(-1, 4 * augment.CROP_TRIES)
  return draws


@pytest.mark.parametrize('shape, fallback', [
    ((96, 96), (0, 0, 96, 96)), ((100, 80), (0, 0, 100, 80)), ((60, 120), (0, 20, 60, 80))])
def test_same_draws_give_the_host_paths_parameters(shape, fallback):
  rng = np.random.default_rng(0)
  cfg = augment.default_augment_config().view2.to_dict()
  cfg.update(rotation_prob=0.3, solarize_prob=0.5)
  draws = draws_with_fallbacks(rng, 1500)
  traced = jax.jit(jax.vmap(lambda u: device_augment.view_params(u, *shape, cfg)))(
      jnp.asarray(draws, jnp.float32))
  boxes = np.stack([np.asarray(v) for v in traced['box']], axis=1)
  for i, u in enumerate(draws):
    want = augment.view_params(u, shape, cfg)
    np.testing.assert_array_equal(boxes[i], want['box'], err_msg=f'draw {i}')
    for field in PARAM_FIELDS:
      assert bool(traced[field][i]) == want[field], (i, field)
    assert bool(traced['rotate'][i]) == (want['angle'] != 0.0)
    if want['angle']:
      assert float(traced['angle'][i]) == pytest.approx(want['angle'], abs=1e-5)
    for field in ('brightness', 'contrast', 'sigma'):
      assert float(traced[field][i]) == pytest.approx(want[field], abs=1e-6)
  # torchvision's fallback: the largest centred crop within the ratio range.
  np.testing.assert_array_equal(boxes[::10], np.tile(fallback, (150, 1)))


@pytest.mark.parametrize('interpolation, out_size, levels', [
    ('bicubic', 64, 1), ('bicubic', 112, 1), ('bilinear', 64, 2), ('bilinear', 112, 2)])
def test_crop_and_resize_within_levels_of_pil(interpolation, out_size, levels):
  """Shrinking (antialiased) and enlarging crops, measured max |diff| <= levels/255."""
  rng = np.random.default_rng(1)
  film = smooth_film(96)
  noise = (rng.random((96, 96)) * 255).astype(np.uint8)  # bicubic overshoot gets clipped
  worst = 0.0
  for image in (film, noise):
    for u in rng.random((25, 4 * augment.CROP_TRIES)):
      box = augment.random_resized_crop_box(u, 96, 96, (0.08, 1.0), (3 / 4, 4 / 3))
      want = augment.crop_resize(image, box, out_size, interpolation).astype(np.float32)
      rows = device_augment.resample_matrix(box[0], box[2], 96, out_size, interpolation)
      cols = device_augment.resample_matrix(box[1], box[3], 96, out_size, interpolation)
      got = np.round(np.clip(rows @ np.clip(np.round(image.astype(np.float32) @ cols.T),
                                             0, 255), 0, 255))
      worst = max(worst, np.abs(got - want).max())
  assert worst <= levels


def test_resample_rows_are_pils_weights_for_a_whole_image_shrink():
  """Antialiased shrink 96 -> 48 px: PIL's bicubic footprint is 8 taps, weights sum to 1."""
  rows = np.asarray(device_augment.resample_matrix(0.0, 96.0, 96, 48, 'bicubic'))
  np.testing.assert_allclose(rows.sum(axis=1), 1.0, atol=1e-6)
  assert (np.count_nonzero(rows[10]) == 8)
  impulse = np.zeros((96, 96), np.uint8)
  impulse[:, 40] = 200  # one bright column -> PIL's weights along that column
  want = np.asarray(Image.fromarray(impulse).resize((48, 48), Image.Resampling.BICUBIC),
                    np.float32)[0]
  got = np.clip(np.round(200 * rows[:, 40]), 0, 255)
  np.testing.assert_allclose(got, want, atol=1)


@pytest.mark.parametrize('degrees', [-10.0, -3.3, 7.25])
def test_rotation_within_one_level_of_pil(degrees):
  film = smooth_film(96, seed=2)
  want = np.asarray(Image.fromarray(film).rotate(degrees, resample=Image.Resampling.BICUBIC,
                                                 fillcolor=0), np.float32)
  got = np.clip(np.round(device_augment.rotate(jnp.asarray(film, jnp.float32), degrees)), 0, 255)
  assert np.abs(np.asarray(got) - want).max() <= 1


@pytest.mark.parametrize('sigma', [0.1, 0.7, 2.0])
def test_blur_matrix_is_scipys_reflect_blur(sigma):
  x = np.random.default_rng(3).random((40, 40)).astype(np.float32)
  blur = np.asarray(device_augment.blur_matrix(sigma, 40, 23))
  np.testing.assert_allclose(blur @ x @ blur.T, augment.gaussian_blur(x, sigma, 23), atol=1e-5)


def test_whole_views_match_the_host_path_for_the_same_draws():
  """Both views' recipes, 200 draws each: mean |diff| and the share of pixels off.

  Measured on this film: mean |diff| 8e-7 (view1) and 6e-7 (view2), max 0.0070
  (1.8 levels), no pixel more than 2.5 levels off. The bound allows a few
  pixels to cross the solarise threshold (a 1-level resampling difference
  moves the contrast mean) on another CPU's rounding.
  """
  rng = np.random.default_rng(4)
  film = smooth_film(96, seed=5)
  aug = augment.default_augment_config()
  for cfg in (aug.view1.to_dict(), dict(aug.view2.to_dict(), solarize_prob=0.5)):
    draws = rng.random((200, augment.VIEW_DRAWS))
    device = jax.jit(jax.vmap(lambda u: device_augment.augment_view(
        jnp.asarray(film, jnp.float32), u, cfg, 64)))(jnp.asarray(draws, jnp.float32))
    host = np.stack([augment.augment_view(film, ScriptedRng(u), cfg, 64) for u in draws])
    diff = np.abs(np.asarray(device) - host)
    assert diff.mean() < 2e-5
    assert (diff > 2.5 / 255).mean() < 1e-3


def test_views_depend_on_seed_position_and_view_only():
  images = np.stack([smooth_film(96, seed=s) for s in range(6)])[..., None]
  positions = np.array([5, 17, 2, 40_000_000, 9, 3], np.uint32)
  make = jax.jit(lambda im, pos, seed: device_augment.two_views(
      im, pos, seed=seed, aug=augment.default_augment_config(), size=64),
      static_argnames='seed')
  v1, v2 = make(images, positions, 0)
  order = np.array([3, 0, 5, 1, 4, 2])
  p1, p2 = make(images[order], positions[order], 0)
  np.testing.assert_array_equal(np.asarray(p1), np.asarray(v1)[order])
  np.testing.assert_array_equal(np.asarray(p2), np.asarray(v2)[order])
  assert v1.shape == (6, 64, 64, 3) and v1.dtype == jnp.float32
  # The two views of one example, and another seed, differ.
  assert np.abs(np.asarray(v1) - np.asarray(v2)).mean() > 0.05
  assert np.abs(np.asarray(make(images, positions, 1)[0]) - np.asarray(v1)).mean() > 0.05
  # ImageNet normalisation of a replicated grey channel.
  mean, std = np.array(augment.default_augment_config().mean), np.array(
      augment.default_augment_config().std)
  grey = np.asarray(v1) * std + mean
  np.testing.assert_allclose(grey[..., 0], grey[..., 2], atol=1e-5)
  assert grey.min() >= -1e-5 and grey.max() <= 1 + 1e-5


def test_draws_are_uniform_and_the_branch_rates_follow_the_config():
  """Over 4,000 positions the flip/blur/solarise rates are the configured ones."""
  positions = jnp.arange(4000, dtype=jnp.uint32)
  aug = augment.default_augment_config()
  for view, cfg in enumerate((aug.view1, aug.view2)):
    draws = device_augment.view_draws(7, positions, view)
    params = jax.vmap(lambda u, cfg=cfg.to_dict(): device_augment.view_params(
        u, 96, 96, cfg))(draws)
    for field, prob in (('flip', cfg.hflip_prob), ('blur', cfg.blur_prob),
                        ('solarize', cfg.solarize_prob), ('jitter', cfg.jitter_prob)):
      rate = float(np.mean(params[field]))
      assert abs(rate - prob) < 4 * np.sqrt(prob * (1 - prob) / 4000) + 1e-9, (view, field)
  u0, u1 = device_augment.view_draws(7, positions, 0), device_augment.view_draws(7, positions, 1)
  assert abs(float(np.corrcoef(np.ravel(u0), np.ravel(u1))[0, 1])) < 0.01


@pytest.mark.parametrize('on, backend, want', [
    ('auto', 'cpu', 'host'), ('auto', 'gpu', 'device'), ('auto', 'tpu', 'device'),
    ('host', 'gpu', 'host'), ('device', 'cpu', 'device'), (None, 'gpu', 'host')])
def test_placement_resolves_auto_by_backend(monkeypatch, on, backend, want):
  """'auto' means the device on accelerators; a config without the field is 'host'."""
  monkeypatch.setattr(jax, 'default_backend', lambda: backend)
  aug = augment.default_augment_config().to_dict()
  if on is None:
    del aug['on']
  else:
    aug['on'] = on
  assert augment.placement(aug) == want
