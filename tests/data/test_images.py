"""SIIM RLE, DICOM display pipeline and image reading against hand computations."""
import io

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom import uid as uids
from PIL import Image
import pytest

from mlvicx_jax.data import images as image_io
from mlvicx_jax.data import rle as rle_lib
from mlvicx_jax.synthetic import files as synthetic_files


def reference_rle_decode(rle, height, width):
  """Tiny independent decoder: walk the runs pixel by pixel, column-major."""
  mask = np.zeros((height, width), np.uint8)
  if rle.strip() == '-1':
    return mask
  values = [int(t) for t in rle.split()]
  position = 0
  for gap, length in zip(values[0::2], values[1::2]):
    position += gap
    for p in range(position, position + length):
      mask[p % height, p // height] = 1  # Column-major: rows run fastest.
    position += length
  return mask


def test_rle_decode_hand_made():
  # 4 rows x 3 columns, flattened column by column: gap 1, run 2 -> pixels
  # 1, 2 (rows 1, 2 of column 0); gap 3 from pixel 3 -> pixels 6, 7, 8
  # (rows 2, 3 of column 1 and row 0 of column 2).
  mask = rle_lib.rle_decode('1 2 3 3', 4, 3)
  expected = np.array([[0, 0, 1],
                       [1, 0, 0],
                       [1, 1, 0],
                       [0, 1, 0]], np.uint8)
  np.testing.assert_array_equal(mask, expected)
  np.testing.assert_array_equal(mask, reference_rle_decode('1 2 3 3', 4, 3))


def test_rle_empty_and_leading_space():
  assert not rle_lib.rle_decode(' -1', 5, 5).any()
  np.testing.assert_array_equal(rle_lib.rle_decode(' 0 1', 2, 2), [[1, 0], [0, 0]])


def test_rle_roundtrip_against_reference():
  rng = np.random.default_rng(0)
  for _ in range(5):
    mask = (rng.random((17, 11)) < 0.3).astype(np.uint8)
    encoded = rle_lib.rle_encode(mask)
    np.testing.assert_array_equal(reference_rle_decode(encoded, 17, 11), mask)
    np.testing.assert_array_equal(rle_lib.rle_decode(encoded, 17, 11), mask)
  assert rle_lib.rle_encode(np.zeros((3, 3))) == '-1'


@pytest.mark.parametrize('bad', ['1 2 3', '1 x', '0 5 0 5', '-1 2', '3 -2'])
def test_rle_malformed_raises(bad):
  with pytest.raises(rle_lib.RLEError):
    rle_lib.rle_decode(bad, 3, 3)  # 9 pixels: '0 5 0 5' runs past the end.


def test_window_linear_hand_values():
  # PS3.3 C.11.2.1.2.1, centre 100, width 51: ramp from 74.5 to 124.5.
  values = np.array([0, 74.5, 99.5, 124.5, 200])
  np.testing.assert_allclose(image_io.window(values, 100, 51), [0, 0, 0.5, 1, 1])
  np.testing.assert_allclose(image_io.window([90.0], 100, 20, 'LINEAR_EXACT'), [0.0])
  np.testing.assert_allclose(image_io.window([100.0], 100, 20, 'SIGMOID'), [0.5])


def _dicom(pixels, **tags):
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = uids.DigitalXRayImageStorageForPresentation
  meta.MediaStorageSOPInstanceUID = uids.generate_uid()
  meta.TransferSyntaxUID = uids.ExplicitVRLittleEndian
  ds = pydicom.Dataset()
  ds.file_meta = meta
  ds.SOPClassUID = meta.MediaStorageSOPClassUID
  ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
  ds.Rows, ds.Columns = pixels.shape
  ds.SamplesPerPixel = 1
  ds.BitsAllocated = 16 if pixels.dtype == np.uint16 else 8
  ds.PixelRepresentation = 0
  ds.PhotometricInterpretation = 'MONOCHROME2'
  ds.BitsStored = ds.BitsAllocated
  for key, value in tags.items():
    setattr(ds, key, value)
  ds.HighBit = ds.BitsStored - 1
  ds.PixelData = pixels.tobytes()
  buffer = io.BytesIO()
  ds.save_as(buffer, enforce_file_format=True)
  return buffer.getvalue()


def test_dicom_monochrome1_rescale_window_by_hand(tmp_path):
  stored = np.array([[0, 100, 200], [300, 400, 4095]], np.uint16)
  path = tmp_path / 'a.dcm'
  path.write_bytes(_dicom(stored, BitsStored=12, PhotometricInterpretation='MONOCHROME1',
                          RescaleSlope='2', RescaleIntercept='-100',
                          WindowCenter='300', WindowWidth='401'))
  # Modality values 2*s - 100 = [-100, 100, 300, 500, 700, 8090]; the window
  # ramps over [100, 500]: (m - 299.5)/400 + 0.5 -> [0, 0.00125, 0.50125, 1, 1, 1];
  # MONOCHROME1 inverts, then x 255 and round.
  expected = np.round(255 * (1 - np.array([[0, 0.00125, 0.50125], [1, 1, 1]])))
  image, _ = image_io.read_dicom(path)
  np.testing.assert_array_equal(image, expected.astype(np.uint8))
  assert image_io.read_image(path).dtype == np.uint8


def test_dicom_voi_lut_sequence_by_hand(tmp_path):
  stored = np.array([[0, 1, 2, 3]], np.uint16)
  raw = _dicom(stored, BitsStored=16)
  ds = pydicom.dcmread(io.BytesIO(raw))
  item = pydicom.Dataset()
  item.LUTDescriptor = [4, 0, 16]
  item.LUTData = [10, 10, 30, 50]  # Output range 10..50 maps to 0..1.
  ds.VOILUTSequence = pydicom.Sequence([item])
  ds['VOILUTSequence'][0]['LUTData'].VR = 'US'
  path = tmp_path / 'lut.dcm'
  ds.save_as(path, enforce_file_format=True)
  image, _ = image_io.read_dicom(path)
  np.testing.assert_array_equal(image, [[0, 0, 128, 255]])  # 127.5 rounds to 128.


def test_dicom_8bit_without_window_kept_and_deep_stretched(tmp_path):
  eight = np.array([[0, 17, 255]], np.uint8)
  path = tmp_path / 'b.dcm'
  path.write_bytes(_dicom(eight))
  np.testing.assert_array_equal(image_io.read_dicom(path)[0], eight)
  deep = np.array([[1000, 1500, 3000]], np.uint16)
  path = tmp_path / 'c.dcm'
  path.write_bytes(_dicom(deep, BitsStored=12))
  np.testing.assert_array_equal(image_io.read_dicom(path)[0],
                                [[0, round(255 * 500 / 2000), 255]])


def test_jpeg_baseline_dicom_roundtrip(tmp_path):
  pixels = (np.add.outer(np.arange(32), np.arange(40)) * 3).astype(np.uint8)
  path = str(tmp_path / 'j.dcm')
  synthetic_files.write_dicom(path, pixels, patient_id='p', study_uid='1.2.3', series_uid='1.2.4',
                        sop_uid='1.2.5', jpeg=True)
  ds = pydicom.dcmread(path)
  assert ds.file_meta.TransferSyntaxUID == uids.JPEGBaseline8Bit
  decoded = image_io.read_image(path)
  assert np.abs(decoded.astype(int) - pixels).max() <= 6  # Lossy, but close.


def test_read_image_png_modes_and_truncation(tmp_path):
  gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
  Image.fromarray(gray).convert('RGBA').save(tmp_path / 'rgba.png')
  np.testing.assert_array_equal(image_io.read_image(tmp_path / 'rgba.png'), gray)
  Image.fromarray(gray).save(tmp_path / 'full.png')
  data = (tmp_path / 'full.png').read_bytes()
  (tmp_path / 'cut.png').write_bytes(data[:len(data) // 2])
  with pytest.raises(OSError):
    image_io.read_image(tmp_path / 'cut.png')
