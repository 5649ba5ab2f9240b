"""The MLVICX encoder: ResNet trunk with context bottlenecks and two heads."""
from typing import Callable, Optional

import flax.linen as nn
import jax.numpy as jnp


class MLVICX(nn.Module):
  """One view in, `features` (pooled trunk output), `z` and `m` out.

  With a tuple of views in, the trunk runs once per view (BatchNorm
  statistics per view, running statistics chained in the tuple's order, as
  separate calls) and the heads once on all views: their Linear layers are
  one matmul each, so their weights are read once. Every output then has a
  leading view axis.
  The comparison methods reuse it: `global_head` is their projector, and
  BYOL and SimSiam add a `predictor` on z, whose output is `p`.
  """
  backbone: Callable[..., nn.Module]
  global_head: Optional[Callable[..., nn.Module]]
  multilevel_branch: Optional[Callable[..., nn.Module]]
  predictor: Optional[Callable[..., nn.Module]] = None

  @nn.compact
  def __call__(self, x, train: bool = True):
    views = isinstance(x, (tuple, list))
    backbone = self.backbone(name='backbone')
    trunks = [backbone(view, train) for view in x] if views else backbone(x, train)
    features = jnp.stack([t['features'] for t in trunks]) if views else trunks['features']
    out = {'features': features}
    if self.global_head is not None:
      out['z'] = self.global_head(name='global_head')(features, train)
      if self.predictor is not None:
        out['p'] = self.predictor(name='predictor')(out['z'], train)
    if self.multilevel_branch is not None:
      maps = [t['maps'] for t in trunks] if views else trunks['maps']
      out['m'] = self.multilevel_branch(name='multilevel')(maps, train, views=views)
    return out
