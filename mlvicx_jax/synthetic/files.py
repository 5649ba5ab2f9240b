"""Files in the formats of the real releases: 8-bit PNGs, CSVs, DICOMs.

The JPEG-baseline DICOMs are encoded with Pillow and encapsulated with
pydicom (pydicom cannot encode JPEG itself); pydicom decodes them with its
Pillow plugin.
"""
from __future__ import annotations

import csv
import io
from typing import Sequence

import numpy as np
from PIL import Image


def to_uint8(image: np.ndarray) -> np.ndarray:
  return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def save_png(path: str, pixels: np.ndarray, rgba: bool = False) -> None:
  image = Image.fromarray(pixels)
  if rgba:
    image = image.convert('RGBA')
  image.save(path, format='PNG', compress_level=1)


def new_uid(rng) -> str:
  from pydicom.uid import generate_uid  # pylint: disable=g-import-not-at-top
  return generate_uid(prefix='1.2.276.0.7230010.3.1.4.', entropy_srcs=[rng.bytes(16).hex()])


def write_dicom(path: str, pixels: np.ndarray, *, patient_id: str,
                study_uid: str, series_uid: str, sop_uid: str,
                photometric: str = 'MONOCHROME2', bits_stored: int = 8,
                window: tuple[float, float] | None = None,
                rescale: tuple[float, float] | None = None,
                voi_lut: tuple[int, np.ndarray, int] | None = None,
                jpeg: bool = False) -> None:
  """Writes a single-frame grayscale DICOM (uncompressed, or JPEG baseline).

  window: (centre, width); rescale: (slope, intercept); voi_lut:
  (first_mapped_value, lut_entries, bits_per_entry).
  """
  import pydicom  # pylint: disable=g-import-not-at-top
  from pydicom.dataset import FileMetaDataset  # pylint: disable=g-import-not-at-top
  from pydicom.encaps import encapsulate  # pylint: disable=g-import-not-at-top
  from pydicom import uid as uids  # pylint: disable=g-import-not-at-top

  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = uids.DigitalXRayImageStorageForPresentation
  meta.MediaStorageSOPInstanceUID = sop_uid
  meta.TransferSyntaxUID = uids.JPEGBaseline8Bit if jpeg else uids.ExplicitVRLittleEndian
  ds = pydicom.Dataset()
  ds.file_meta = meta
  ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, sop_uid
  ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
  ds.PatientID, ds.Modality, ds.BodyPartExamined = patient_id, 'CR', 'CHEST'
  ds.ViewPosition = 'PA'
  ds.Rows, ds.Columns = pixels.shape
  ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
  ds.BitsAllocated = 8 if pixels.dtype == np.uint8 else 16
  ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, 0
  if window is not None:
    ds.WindowCenter, ds.WindowWidth = f'{window[0]:.1f}', f'{window[1]:.1f}'
  if rescale is not None:
    ds.RescaleSlope, ds.RescaleIntercept = f'{rescale[0]:g}', f'{rescale[1]:g}'
    ds.RescaleType = 'US'
  if voi_lut is not None:
    first, lut, lut_bits = voi_lut
    item = pydicom.Dataset()
    item.LUTDescriptor = [len(lut) % 65536, int(first), lut_bits]
    item.LUTData = np.asarray(lut, '<u2').tobytes()
    ds.VOILUTSequence = pydicom.Sequence([item])
    ds['VOILUTSequence'][0]['LUTData'].VR = 'OW'
  if jpeg:
    if pixels.dtype != np.uint8:
      raise ValueError('JPEG baseline needs 8-bit pixels')
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format='JPEG', quality=92)
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds['PixelData'].VR = 'OB'
    ds.LossyImageCompression = '01'
  else:
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds['PixelData'].VR = 'OW' if pixels.dtype != np.uint8 else 'OB'
  ds.save_as(path, enforce_file_format=True)



def write_csv(path: str, header: Sequence[str], rows) -> None:
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f, lineterminator='\n')
    writer.writerow(header)
    writer.writerows(rows)
