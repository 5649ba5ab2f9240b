"""Reading radiographs (PNG, JPEG, DICOM) into 8-bit grayscale arrays.

DICOM follows the display pipeline of PS3.3 C.11: modality LUT (rescale
slope/intercept), then VOI (LUT sequence or window centre/width), then
MONOCHROME1 inversion, so that in every stored image bright means dense.
"""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

DICOM_SUFFIXES = ('.dcm', '.dicom')


def window(values: np.ndarray, center: float, width: float,
           function: str = 'LINEAR') -> np.ndarray:
  """Maps values through a DICOM VOI window onto [0, 1] (PS3.3 C.11.2.1.2)."""
  values = np.asarray(values, np.float64)
  function = (function or 'LINEAR').upper()
  if function == 'LINEAR':
    if width < 1:
      raise ValueError(f'LINEAR window width must be >= 1, got {width}')
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
  if width <= 0:
    raise ValueError(f'{function} window width must be > 0, got {width}')
  if function == 'LINEAR_EXACT':
    return np.clip((values - center) / width + 0.5, 0.0, 1.0)
  if function == 'SIGMOID':
    return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
  raise ValueError(f'unknown VOI LUT function {function!r}')


def _first(value) -> float:
  """DICOM window tags may hold several values; the first is the default."""
  try:
    return float(value[0])
  except TypeError:
    return float(value)


def dicom_to_unit(ds) -> np.ndarray:
  """A pydicom Dataset's pixels as float64 in [0, 1], bright = dense."""
  from pydicom.pixels import apply_modality_lut, apply_voi  # pylint: disable=g-import-not-at-top
  stored = ds.pixel_array
  if stored.ndim == 3:  # Colour or multi-frame: keep a single gray plane.
    stored = stored[0] if getattr(ds, 'NumberOfFrames', 1) > 1 else stored.mean(-1)
  values = apply_modality_lut(stored, ds).astype(np.float64)
  if 'VOILUTSequence' in ds:
    # The LUT's own output range (its entries) defines black and white.
    entries, first_mapped = ds.VOILUTSequence[0].LUTDescriptor[:2]
    entries = entries or 2**16
    lut = apply_voi(np.arange(first_mapped, first_mapped + entries), ds)
    low, high = float(lut.min()), float(lut.max())
    mapped = apply_voi(np.round(values).astype(np.int64), ds)
    unit = (mapped.astype(np.float64) - low) / max(high - low, 1e-12)
  elif 'WindowCenter' in ds and 'WindowWidth' in ds:
    unit = window(values, _first(ds.WindowCenter), _first(ds.WindowWidth),
                  str(ds.get('VOILUTFunction', 'LINEAR')))
  elif int(ds.get('BitsStored', 8)) <= 8 and 'RescaleSlope' not in ds:
    # 8-bit images (RSNA, SIIM) are already display values: keep them.
    info = np.iinfo(stored.dtype)
    unit = (values - info.min) / (info.max - info.min)
  else:
    # No display hint for a deep image: stretch its own range.
    low, high = values.min(), values.max()
    unit = (values - low) / max(high - low, 1e-12)
  if str(ds.get('PhotometricInterpretation', 'MONOCHROME2')) == 'MONOCHROME1':
    unit = 1.0 - unit
  return unit


def unit_to_uint8(unit: np.ndarray) -> np.ndarray:
  return np.round(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)


def read_dicom(path: str | os.PathLike) -> tuple[np.ndarray, object]:
  """Returns (uint8 grayscale image, pydicom Dataset) for a DICOM file."""
  import pydicom  # pylint: disable=g-import-not-at-top
  ds = pydicom.dcmread(os.fspath(path))
  return unit_to_uint8(dicom_to_unit(ds)), ds


def _pil_to_uint8(image: Image.Image) -> np.ndarray:
  if image.mode in ('I;16', 'I;16B', 'I;16L', 'I', 'F'):
    values = np.asarray(image, np.float64)
    low, high = values.min(), values.max()
    return unit_to_uint8((values - low) / max(high - low, 1e-12))
  if image.mode != 'L':
    image = image.convert('L')  # NIH has a few RGBA PNGs.
  return np.asarray(image, np.uint8)


def read_image(path: str | os.PathLike) -> np.ndarray:
  """Reads PNG/JPEG/DICOM fully (truncation raises) as a uint8 (H, W) array."""
  path = os.fspath(path)
  if path.lower().endswith(DICOM_SUFFIXES):
    return read_dicom(path)[0]
  with Image.open(path) as image:
    image.load()  # Decodes everything now, so truncated files fail here.
    return _pil_to_uint8(image)


def resize(image: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
  """Resizes a uint8 (H, W) array to (size, size); antialiased bicubic or nearest."""
  if image.shape == (size, size):
    return image
  resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BICUBIC
  return np.asarray(Image.fromarray(image).resize((size, size), resample))


def encode_png(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='PNG')
  return buffer.getvalue()
