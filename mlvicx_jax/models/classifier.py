"""Downstream classifier: a (pretrained) trunk plus one linear layer (SPEC section 4)."""
import flax.linen as nn
import jax.numpy as jnp


def linear_head(num_classes: int, name: str = 'head') -> nn.Dense:
  """torch.nn.Linear's weight init (uniform +-1/sqrt(fan_in)); zero bias."""
  return nn.Dense(num_classes, name=name,
                  kernel_init=nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform'))


class Classifier(nn.Module):
  """Trunk + one linear layer on the pooled features -> logits.

  `map_delta` (added to the last stage's map before pooling) and
  `return_map` exist for Grad-CAM: d logits / d map_delta = d logits / d map.
  """
  backbone: nn.Module  # models.build_backbone(cfg, ...); params under 'backbone'
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = True, map_delta=None, return_map: bool = False):
    out = self.backbone(x, train)
    feature_map = out['maps'][-1]
    features = out['features']
    if map_delta is not None:
      feature_map = feature_map.astype(jnp.float32) + map_delta
      features = jnp.mean(feature_map, axis=(1, 2))
    logits = linear_head(self.num_classes)(features)
    return (logits, feature_map) if return_map else logits
