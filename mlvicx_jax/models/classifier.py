"""Downstream classifier: a (pretrained) trunk plus one linear layer (SPEC section 4)."""
import flax.linen as nn


def linear_head(num_classes: int, name: str = 'head') -> nn.Dense:
  """torch.nn.Linear's weight init (uniform +-1/sqrt(fan_in)); zero bias."""
  return nn.Dense(num_classes, name=name,
                  kernel_init=nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform'))


class Classifier(nn.Module):
  """Trunk + one linear layer on the pooled features -> logits.

  `map_delta` (added to the map of `map_level`: -1 or 4 the last stage, 3 the
  one before, ...) and `return_map` exist for Grad-CAM:
  d logits / d map_delta = d logits / d map.
  """
  backbone: nn.Module  # models.build_backbone(cfg, ...); params under 'backbone'
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = True, map_delta=None, return_map: bool = False,
               map_level: int = -1):
    if map_delta is None:
      out = self.backbone(x, train)
    else:
      num_levels = len(self.backbone.stage_sizes) + 1
      out = self.backbone(x, train, deltas={map_level % num_levels: map_delta})
    feature_map = out['maps'][map_level]
    logits = linear_head(self.num_classes)(out['features'])
    return (logits, feature_map) if return_map else logits
