"""U-Net with a (pretrained) ResNet encoder, for SIIM-ACR segmentation.

The encoder is the downstream ResNet trunk (`models.build_backbone`); its five
`maps` (stem at stride 2, layer1..layer4 at strides 4..32) are the skips. The
decoder is randomly initialised: per level, upsample to the skip's size,
concatenate the skip, then conv3x3-BN-ReLU twice; a last level upsamples to
the input resolution, and a 1x1 conv gives one logit per pixel.

Parameters live under `encoder` (the trunk's own tree, so pretrained trunk
variables drop in unchanged) and `decoder`.
"""
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mlvicx_jax.models import resnet

# Decoder widths, deepest first: one per skip (layer3, layer2, layer1, stem)
# and one for the full-resolution level (the common ResNet18 U-Net choice).
DEFAULT_DECODER_WIDTHS = (256, 128, 64, 32, 16)


def upsample_to(x: jax.Array, height: int, width: int) -> jax.Array:
  """Bilinear resize (half-pixel centres), so odd skip sizes still line up."""
  return jax.image.resize(x, (x.shape[0], height, width, x.shape[-1]),
                          method='bilinear', antialias=False)


class ConvBNReLU(nn.Module):
  """Two 3x3 conv + BatchNorm + ReLU layers (the U-Net decoder block)."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    norm = resnet.batch_norm(train, self.dtype)
    for i in range(2):
      x = nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                  kernel_init=resnet.conv_kernel_init, dtype=self.dtype,
                  name=f'conv{i + 1}')(x)
      x = nn.relu(norm(name=f'bn{i + 1}')(x))
    return x


class UNetDecoder(nn.Module):
  """Maps [stem, layer1, ..., layer4] and the input size -> (N, H, W, 1) logits."""
  widths: Sequence[int] = DEFAULT_DECODER_WIDTHS
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, maps: Sequence[jax.Array], output_size: tuple[int, int],
               train: bool):
    skips = list(maps[:-1])[::-1]  # deepest first: layer3 ... stem
    if len(self.widths) != len(skips) + 1:
      raise ValueError(f'decoder widths {tuple(self.widths)} must have '
                       f'{len(skips) + 1} entries: one per skip and one for '
                       'the input resolution')
    x = maps[-1]
    for level, (skip, width) in enumerate(zip(skips, self.widths)):
      x = upsample_to(x, skip.shape[1], skip.shape[2])
      x = jnp.concatenate([x, skip.astype(x.dtype)], axis=-1)
      x = ConvBNReLU(width, self.dtype, name=f'up{level}')(x, train)
    x = upsample_to(x, *output_size)
    x = ConvBNReLU(self.widths[-1], self.dtype, name=f'up{len(skips)}')(x, train)
    logits = nn.Conv(1, (1, 1), dtype=self.dtype, name='logits')(x)
    return logits.astype(jnp.float32)


class UNet(nn.Module):
  """Encoder (ResNet trunk) + U-Net decoder; one logit per input pixel.

  `encoder_train=False` keeps the encoder's BatchNorm in inference mode while
  the decoder trains (the frozen protocol); by default it follows `train`.
  """
  encoder: nn.Module  # e.g. models.build_backbone(cfg); its params sit under 'encoder'
  decoder_widths: Sequence[int] = DEFAULT_DECODER_WIDTHS
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True, encoder_train: Optional[bool] = None):
    if encoder_train is None:
      encoder_train = train
    maps = self.encoder(x, encoder_train)['maps']
    decoder = UNetDecoder(tuple(self.decoder_widths), self.dtype, name='decoder')
    return decoder(maps, x.shape[1:3], train)
