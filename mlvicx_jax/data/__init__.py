"""Data: TFDS builders, grain pipelines, augmentation (synthetic data: mlvicx_jax.synthetic).

  info          class names and dataset facts (dataset_info)
  builders/     one TFDS builder per layout (nih, vinbig, rsna, siim, chexpert, folder)
  prepare       python -m mlvicx_jax.data.prepare: build array_record files
  sources       the prepared builds: data_source, class_names, file names and labels
  pipelines     pretrain_loader, classification_loader, segmentation_loader
  mixture       weighted mixtures of builds as one pretraining stream
  label_policy  uncertain labels (ignore / u_ones / u_zeros) and class selections
  augment       default_augment_config and the numpy augmentations
  splits        seeded splits and label_fraction_indices
"""
