"""The MLVICX encoder: ResNet trunk with context bottlenecks and two heads."""
from typing import Callable, Optional

import flax.linen as nn


class MLVICX(nn.Module):
  """One view in, `features` (pooled trunk output), `z` and `m` out.

  The two views are separate calls, so BatchNorm statistics are per view.
  The comparison methods reuse it: `global_head` is their projector, and
  BYOL and SimSiam add a `predictor` on z, whose output is `p`.
  """
  backbone: Callable[..., nn.Module]
  global_head: Optional[Callable[..., nn.Module]]
  multilevel_branch: Optional[Callable[..., nn.Module]]
  predictor: Optional[Callable[..., nn.Module]] = None

  @nn.compact
  def __call__(self, x, train: bool = True):
    trunk = self.backbone(name='backbone')(x, train)
    out = {'features': trunk['features']}
    if self.global_head is not None:
      out['z'] = self.global_head(name='global_head')(trunk['features'], train)
      if self.predictor is not None:
        out['p'] = self.predictor(name='predictor')(out['z'], train)
    if self.multilevel_branch is not None:
      out['m'] = self.multilevel_branch(name='multilevel')(trunk['maps'], train)
    return out
