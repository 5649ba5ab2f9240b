"""grain loaders over a small synthetic NIH/SIIM build, and the augmentations."""
import numpy as np
import pytest

from mlvicx_jax.data import augment
from mlvicx_jax.data import pipelines
from mlvicx_jax.data import sources
from mlvicx_jax.data import prepare as prepare_lib
from mlvicx_jax import synthetic

SIZE = 64
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('pipelines')
  for dataset, count in (('nih', 48), ('siim', 40)):
    raw = root / f'{dataset}_raw'
    synthetic.generate(dataset, str(raw), num_images=count, seed=11, image_size=SIZE)
    prepare_lib.prepare(dataset, str(raw), str(root / 'out'), image_size=SIZE)
  return str(root / 'out')


def take(iterator, count):
  return [next(iterator) for _ in range(count)]


def assert_batches_equal(a, b):
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def pretrain(data_dir, seed=3, **kwargs):
  return pipelines.pretrain_loader(data_dir, 'nih', image_size=32, global_batch_size=8,
                                   seed=seed, shard_index=0, shard_count=1, **kwargs)


def test_pretrain_views_shape_differ_and_reproducible(data_dir):
  first = next(iter(pretrain(data_dir)))
  assert first['view1'].shape == first['view2'].shape == (8, 32, 32, 3)
  assert first['view1'].dtype == np.float32
  # Gray replicated: undoing the per-channel normalisation gives equal channels.
  gray = first['view1'] * STD + MEAN
  np.testing.assert_allclose(gray[..., 0], gray[..., 2], atol=1e-5)
  assert not np.allclose(first['view1'], first['view2'])
  assert_batches_equal([first], [next(iter(pretrain(data_dir)))])
  assert not np.allclose(first['view1'], next(iter(pretrain(data_dir, seed=4)))['view1'])


def test_pretrain_state_save_restore(data_dir):
  iterator = iter(pretrain(data_dir))
  take(iterator, 2)
  state = iterator.get_state()
  expected = take(iterator, 3)
  restored = iter(pretrain(data_dir))
  restored.set_state(state)
  assert_batches_equal(take(restored, 3), expected)


def test_pretrain_state_restore_with_a_worker_process(data_dir):
  iterator = iter(pretrain(data_dir, worker_count=1))
  take(iterator, 1)
  state = iterator.get_state()
  expected = take(iterator, 2)
  restored = iter(pretrain(data_dir, worker_count=1))
  restored.set_state(state)
  assert_batches_equal(take(restored, 2), expected)
  # Same stream as without workers: augmentations depend on the record only.
  assert_batches_equal(take(iter(pretrain(data_dir)), 3)[1:], expected)


def test_eval_covers_every_example_once_across_shards(data_dir):
  expected = sources.file_names(data_dir, 'nih', 'test')
  seen, batch_counts = [], []
  for shard in range(2):
    loader = pipelines.classification_loader(
        data_dir, 'nih', split='test', image_size=SIZE, batch_size=4, seed=0, train=False,
        shard_index=shard, shard_count=2)
    batches = list(loader)
    batch_counts.append(len(batches))
    for batch in batches:
      assert batch['image'].shape == (4, SIZE, SIZE, 3) and batch['label'].shape == (4, 14)
      seen += [n.decode() for n, m in zip(batch['file_name'], batch['mask']) if m]
      assert not batch['label'][~batch['mask']].any()
  assert sorted(seen) == sorted(expected) and len(set(seen)) == len(seen)
  assert batch_counts[0] == batch_counts[1]


def test_eval_images_and_labels_match_the_source(data_dir):
  source = sources.data_source(data_dir, 'nih', 'validation')
  by_name = {source[i]['file_name']: source[i] for i in range(len(source))}
  loader = pipelines.classification_loader(
      data_dir, 'nih', split='validation', image_size=SIZE, batch_size=8, seed=0,
      train=False, shard_index=0, shard_count=1)
  for batch in loader:
    for i in np.flatnonzero(batch['mask']):
      record = by_name[batch['file_name'][i]]
      np.testing.assert_array_equal(batch['label'][i], record['label'])
      expected = (record['image'][..., 0] / 255.0 - MEAN[1]) / STD[1]  # Same size: no resize.
      np.testing.assert_allclose(batch['image'][i, ..., 1], expected, atol=1e-5)


def test_label_fraction_subsets_nested_in_training(data_dir):
  def names(fraction):
    loader = pipelines.classification_loader(
        data_dir, 'nih', split='train', image_size=32, batch_size=4, seed=0, train=True,
        label_fraction=fraction, shard_index=0, shard_count=1)
    return {n for b in loader for n, m in zip(b['file_name'], b['mask']) if m}
  small, large, full = names(0.1), names(0.3), names(1.0)
  assert small < large < full
  total = sources.num_examples(data_dir, 'nih', 'train')
  assert len(full) == total and len(small) == round(0.1 * total)


def test_segmentation_masks_follow_the_image(data_dir):
  loader = pipelines.segmentation_loader(
      data_dir, 'siim', split='train', image_size=48, batch_size=4, seed=1, train=True,
      shard_index=0, shard_count=1)
  batch = next(iter(loader))
  assert batch['mask_target'].shape == (4, 48, 48, 1)
  assert set(np.unique(batch['mask_target'])) <= {0.0, 1.0}
  # Joint geometry: an image equal to its mask stays equal to it after augmentation.
  rng = np.random.default_rng(0)
  mask = np.zeros((SIZE, SIZE), np.uint8)
  mask[10:40, 5:25] = 255
  cfg = augment.default_classification_augment_config().view.to_dict()
  cfg.update(jitter_prob=0.0, rotation_prob=1.0, crop_scale=(0.3, 0.6))
  for _ in range(5):
    image, target = augment.augment_image_and_mask(mask, mask, rng, cfg, 40)
    inside = (image > 0.5) == (target > 127)
    assert inside.mean() > 0.97


def test_segmentation_eval_masks_match_source(data_dir):
  source = sources.data_source(data_dir, 'siim', 'validation')
  by_name = {source[i]['file_name']: source[i]['mask'][..., 0] > 127 for i in range(len(source))}
  loader = pipelines.segmentation_loader(
      data_dir, 'siim', split='validation', image_size=SIZE, batch_size=8, seed=0,
      train=False, shard_index=0, shard_count=1)
  count = 0
  for batch in loader:
    for i in np.flatnonzero(batch['mask']):
      np.testing.assert_array_equal(batch['mask_target'][i, ..., 0] > 0.5,
                                    by_name[batch['file_name'][i]])
      count += 1
  assert count == len(source)


def test_random_resized_crop_box_within_bounds_and_scale():
  rng = np.random.default_rng(0)
  for _ in range(200):
    draws = rng.random(4 * augment.CROP_TRIES)
    top, left, h, w = augment.random_resized_crop_box(draws, 100, 80, (0.08, 1.0), (3 / 4, 4 / 3))
    assert 0 <= top and top + h <= 100 and 0 <= left and left + w <= 80
    assert 0.06 * 8000 <= h * w <= 8000  # Area fraction in [0.08, 1] up to rounding.


def test_blur_matches_an_explicit_23_tap_kernel():
  x = np.random.default_rng(1).random((30, 30)).astype(np.float32)
  sigma, radius = 1.3, 11
  taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
  taps /= taps.sum()
  padded = np.pad(x, radius, mode='reflect')  # torch 'reflect' padding.
  rows = np.stack([np.convolve(r, taps, mode='valid') for r in padded])
  expected = np.stack([np.convolve(c, taps, mode='valid') for c in rows.T]).T
  np.testing.assert_allclose(augment.gaussian_blur(x, sigma, 23), expected, atol=1e-5)


def test_pointwise_ops_by_hand():
  x = np.array([0.1, 0.5, 0.6, 0.9], np.float32)
  np.testing.assert_allclose(augment.solarize(x, 128), [0.1, 0.5, 0.4, 0.1], atol=1e-6)
  np.testing.assert_allclose(augment.adjust_contrast(x, 2.0),
                             np.clip(0.525 + 2 * (x - 0.525), 0, 1), atol=1e-6)
  np.testing.assert_allclose(augment.adjust_brightness(x, 1.5), [0.15, 0.75, 0.9, 1.0], atol=1e-6)


def test_default_augment_config_matches_spec():
  aug = augment.default_augment_config()
  assert (aug.view1.blur_prob, aug.view2.blur_prob) == (1.0, 0.1)
  assert (aug.view1.solarize_prob, aug.view2.solarize_prob) == (0.0, 0.2)
  for view in (aug.view1, aug.view2):
    assert tuple(view.crop_scale) == (0.08, 1.0) and view.hflip_prob == 0.5
    assert view.jitter_prob == 0.8 and view.brightness == view.contrast == 0.4
    assert tuple(view.blur_sigma) == (0.1, 2.0) and view.blur_kernel_size == 23


def test_missing_build_names_the_folder(tmp_path):
  with pytest.raises(FileNotFoundError, match='prepare'):
    pipelines.pretrain_loader(str(tmp_path), 'vinbig', image_size=32, global_batch_size=4,
                              seed=0, shard_index=0, shard_count=1)


def test_pretrain_global_batches_do_not_depend_on_the_process_count(data_dir):
  """Two shards' batches together hold exactly the rows of the one-shard batch."""
  whole = take(iter(pretrain(data_dir)), 2)
  halves = [take(iter(pipelines.pretrain_loader(
      data_dir, 'nih', image_size=32, global_batch_size=8, seed=3, shard_index=i,
      shard_count=2)), 2) for i in range(2)]
  for b in range(2):
    rows = lambda views: sorted(map(bytes, np.concatenate(views).round(5)))
    merged = [halves[0][b]['view1'], halves[1][b]['view1']]
    assert rows(merged) == rows([whole[b]['view1']])
