r"""Where the NIH classifier looks: Grad-CAM against BBox_List_2017.csv's boxes.

  python -m mlvicx_jax.evaluate --config=configs/eval/nih_localise.py \
      --config.checkpoint=DIR --config.data_dir=TFDS_DIR --workdir=OUT
  --config=configs/eval/nih_localise.py:smoke   tiny random-init model, seconds

A classification run (configs/eval/nih.py: fine-tune, 100% labels, one seed)
whose record also holds `localisation`: for every boxed image of the test
split (others are counted), the Grad-CAM map of the logit of each boxed
finding against each box: pointing game, IoU of the map thresholded at
fractions of its maximum, AP25 / AP50 and mIoU of boxes around the map's
connected regions (EVA-X's columns), per finding and overall, with
bootstrap 95% intervals over images, beside a centre prior on the same
boxes. `localise.reference` also evaluates a reference encoder in the same
workdir ('random': the random-init row, with encoder.model_variant's
architecture; or a checkpoint, e.g. the demo's WORKDIR/random_init; '': none).
The NIH build needs BBox_List_2017.csv in its download (docs/data.md).
"""
import ml_collections

from configs.eval import common


def get_config(arg: str = ''):
  variant = arg or 'official'
  c = common.classification('nih')
  c.label_fractions = (1.0,)
  c.seeds = (0,)
  c.localise = ml_collections.ConfigDict()
  c.localise.cam_layer = 'layer4'         # 7 x 7 at 224 px; 'layer3' 14 x 14 (small nodule boxes)
  c.localise.tolerance_px = 0.0           # pointing game slack, in the 1024 px of the NIH PNGs
  c.localise.iou_thresholds = (0.25, 0.5, 0.75)  # fractions of the map's maximum
  c.localise.ap_map_threshold = 0.5       # regions of the map >= this x max give AP's boxes
  c.localise.centre_prior_sigma = 0.25    # the centre prior's sd, a fraction of the side
  c.localise.n_boot = 1000                # bootstrap resamples over images (0: none)
  c.localise.figures_per_finding = 2      # the best and the worst box by IoU
  c.localise.reference = 'random'         # also evaluate this encoder ('' for none)
  if variant == 'smoke':
    common.smoke(c)
    c.localise.n_boot = 50
  elif variant != 'official':
    raise ValueError(f"configs/eval/nih_localise.py: unknown variant {variant!r}; "
                     "use '' or 'smoke'")
  return c
