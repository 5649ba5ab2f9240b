"""The stem's 3x3, stride-2 max pool with a backward pass that keeps a byte per output.

Autodiff of `nn.max_pool` gives XLA a select-and-scatter, which XLA's CPU
compiler rewrites as a reduce-window carrying four int32 index maps the size
of the padded input (about 53 MB each per view at batch 16 and 224 px, eight
per step): the stem's pool cost more than its convolution's backward pass.
Here the forward pass takes the maximum over the nine strided views of the
padded map and records which view won (int8); the backward pass sends each
output's gradient to that position, one parity plane of the padded map at a
time, interleaved.
The winner is the first maximum in row-major window order, the rule of
select-and-scatter and of torch's max_pool2d, so ties (the zeros after ReLU)
go where they went before; tests/models/test_pooling.py checks values and
gradients against `nn.max_pool`.
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax

WINDOW, STRIDE = 3, 2  # torchvision's stem: kernel 3, stride 2, padding 1


def _output_size(size: int) -> int:
  return (size - 1) // STRIDE + 1


def _views(x):
  """The nine strided (N, H_out, W_out, C) views of x padded by one with -inf, k = 3 * di + dj.

  XLA writes the padded map once and reads it nine times in the max's loop;
  padding each strided view by itself instead made it write five views out.
  """
  n, h, w, c = x.shape
  out_h, out_w = _output_size(h), _output_size(w)
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  return [lax.slice(padded, (0, di, dj, 0),
                    (n, di + STRIDE * (out_h - 1) + 1, dj + STRIDE * (out_w - 1) + 1, c),
                    (1, STRIDE, STRIDE, 1))
          for di in range(WINDOW) for dj in range(WINDOW)]


def _forward(x):
  best, winner = None, None
  for k, view in enumerate(_views(x)):
    if best is None:
      best, winner = view, jnp.zeros(view.shape, jnp.int8)
    else:
      later_wins = view > best  # strict: an equal later value leaves the first maximum
      best = jnp.where(later_wins, view, best)
      winner = jnp.where(later_wins, jnp.int8(k), winner)
  return best, winner


def _backward(h, w, winner, grad):
  """Padded row 2a + s (and column 2b + t) takes the window offsets with that parity:
  offset 0 of output a, offset 2 of output a - 1 (s = 0), offset 1 of output a (s = 1).
  The four parity planes are interleaved by a stack and a reshape, so XLA writes the
  gradient once, in one loop (a sum of nine padded planes became nine written maps)."""
  n, out_h, out_w, c = grad.shape
  zero = jnp.zeros((), jnp.float32)

  def shifted(k):
    """Window offset k's share, on the (out_h + 1, out_w + 1) grid of its parity plane."""
    di, dj = divmod(k, WINDOW)
    part = jnp.where(winner == k, grad.astype(jnp.float32), zero)
    return jnp.pad(part, ((0, 0), (di // 2, 1 - di // 2), (dj // 2, 1 - dj // 2), (0, 0)))

  parity = {0: (0, 2), 1: (1,)}  # window offsets whose padded position has that parity
  planes = [[sum(shifted(WINDOW * di + dj) for di in parity[s] for dj in parity[t])
             for t in (0, 1)] for s in (0, 1)]
  rows = jnp.stack([jnp.stack(planes[s], axis=3) for s in (0, 1)], axis=2)
  padded = rows.reshape(n, 2 * (out_h + 1), 2 * (out_w + 1), c)
  return (padded[:, 1:h + 1, 1:w + 1, :].astype(grad.dtype),)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _pool(x, h, w):
  del h, w  # the input size, static: the backward pass needs it, a residual would trace it
  return _forward(x)[0]


_pool.defvjp(lambda x, h, w: _forward(x), _backward)


def stem_max_pool(x):
  """Max pool of an (N, H, W, C) map: window 3, stride 2, padding 1 (torch's -inf padding)."""
  return _pool(x, x.shape[1], x.shape[2])
