"""Data: TFDS builders, synthetic chest X-rays, grain pipelines.

  info        class names and dataset facts (dataset_info)
  prepare     python -m mlvicx_jax.data.prepare: build array_record files
  synthetic   python -m mlvicx_jax.data.synthetic: fake data in real layouts
  pipelines   pretrain_loader, classification_loader, segmentation_loader
  augment     default_augment_config and the numpy augmentations
  splits      seeded splits and label_fraction_indices
"""
