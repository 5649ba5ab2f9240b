"""NIH BBox_List_2017.csv: its real quirks, the stored boxes, and the synthetic writer's."""
import csv
import json
import os
import shutil

import numpy as np
from PIL import Image
import pytest

from mlvicx_jax import synthetic
from mlvicx_jax.data import prepare as prepare_lib
from mlvicx_jax.data import sources

SOURCE = 96  # Synthetic PNG side.
STORED = 64  # Build size: every box is scaled by 2/3, or per image for resized PNGs.
# SPEC section 3 order, and the box list's spelling, written out independently of the code.
NIH_LABELS = ['Atelectasis', 'Cardiomegaly', 'Effusion', 'Infiltration', 'Mass', 'Nodule',
              'Pneumonia', 'Pneumothorax', 'Consolidation', 'Edema', 'Emphysema',
              'Fibrosis', 'Pleural_Thickening', 'Hernia']
CLASS = {**{name: i for i, name in enumerate(NIH_LABELS)}, 'Infiltrate': 3}
BOX_FINDINGS = {'Atelectasis', 'Cardiomegaly', 'Effusion', 'Infiltrate', 'Mass', 'Nodule',
                'Pneumonia', 'Pneumothorax'}
HEADER = 'Image Index,Finding Label,Bbox [x,y,w,h],,,'
NOT_DOWNLOADED = '99999999_000.png'
# Resized PNGs (width, height): the scale comes from each PNG, not from 1024 or the list.
RESIZED = ((120, 80), (72, 100))


def read_csv_rows(path):
  with open(path, newline='') as f:
    return list(csv.reader(f))


def labels_of(raw):
  with open(raw / 'Data_Entry_2017.csv', newline='') as f:
    return {r['Image Index']: set(r['Finding Labels'].split('|')) for r in csv.DictReader(f)}


def metadata(path):
  return json.loads((path / 'metadata.json').read_text())


def split_records(out, split):
  source = sources.data_source(str(out), 'nih', split)
  return [source[i] for i in range(len(source))]


@pytest.fixture(scope='module')
def raw(tmp_path_factory):
  """A 40-image synthetic NIH whose box list is replaced by hand-written rows with every quirk."""
  raw = tmp_path_factory.mktemp('nih_boxes_raw')
  synthetic.generate('nih', str(raw), 40, seed=1, image_size=SOURCE)
  test = open(raw / 'test_list.txt').read().split()
  train_val = open(raw / 'train_val_list.txt').read().split()
  labels = labels_of(raw)
  a, b = test[:2]
  c, d, absent = train_val[:3]
  for name, size in zip((a, c), RESIZED):
    path = raw / 'images' / name
    with Image.open(path) as image:
      image.resize(size).save(path)
  os.remove(raw / 'images' / absent)
  # b gets a finding its Data_Entry labels do not list (kept, counted).
  unlisted = next(f for f in ('Mass', 'Pneumothorax', 'Atelectasis') if f not in labels[b])
  lines = [
      HEADER,
      f'{a},Nodule,10.084745762712,12.5,20.25,18.75',
      f'{b},Cardiomegaly,20.0,30.333333333,40.0,30.0',
      f'{a},Infiltrate,60.1,5.5,30.7,40.2',  # Real spelling of Infiltration.
      f'{NOT_DOWNLOADED},Mass,1.0,2.0,3.0,4.0',
      f'{b},{unlisted},5.0,6.0,7.0,8.0',
      f'{a},Nodule,70.0,50.0,12.5,11.25',  # Second box of the same finding.
      f'{c},Infiltration,3.0,4.0,50.0,60.0',  # The canonical spelling is accepted too.
      f'{d},Effusion,0.5,60.25,40.0,30.0',
      f'{absent},Pneumonia,10.0,10.0,10.0,10.0',
      '',
  ]
  (raw / 'BBox_List_2017.csv').write_text('\n'.join(lines))
  return raw


@pytest.fixture(scope='module')
def built(raw, tmp_path_factory):
  out = tmp_path_factory.mktemp('nih_boxes_out')
  return out, prepare_lib.prepare('nih', str(raw), str(out), image_size=STORED)


def expected_boxes(raw):
  """{image: (N, 5)} from the box list by hand: each PNG's own size, file order."""
  rows = read_csv_rows(raw / 'BBox_List_2017.csv')
  assert ','.join(rows[0]) == HEADER and len(rows[0]) == 9
  out = {}
  for name, finding, *box in (r for r in rows[1:] if r):
    path = raw / 'images' / name
    if not path.exists():
      continue
    with Image.open(path) as image:
      width, height = image.size
    x, y, w, h = (float(v) for v in box)
    scaled = [x * STORED / width, y * STORED / height, w * STORED / width, h * STORED / height]
    out.setdefault(name, []).append(scaled + [CLASS[finding]])
  return {name: np.array(boxes) for name, boxes in out.items()}


def test_boxes_are_scaled_to_the_stored_image_with_their_class(raw, built):
  out, _ = built
  expected = expected_boxes(raw)
  assert len(expected[open(raw / 'test_list.txt').read().split()[0]]) == 3
  seen = {}
  for split in ('train', 'validation', 'test'):
    for record in split_records(out, split):
      name = record['file_name'].decode()
      stored = record['boxes']
      assert stored.dtype == np.float32 and stored.shape[1:] == (5,)
      if name not in expected:
        assert stored.shape == (0, 5)
        continue
      np.testing.assert_allclose(stored, expected[name], rtol=1e-6)
      seen[name] = split
      # sources.boxes reads the same values without decoding images.
      np.testing.assert_array_equal(sources.boxes(str(out), 'nih', split)[name], stored)
  assert set(seen) == set(expected)
  everything = sources.boxes(str(out), 'nih', 'test', include_empty=True)
  assert len(everything) == len(open(raw / 'test_list.txt').read().split())
  assert set(sources.boxes(str(out), 'nih', 'test')) == {n for n, s in seen.items() if s == 'test'}


def test_metadata_counts_and_skipped_rows(raw, built):
  out, path = built
  expected = expected_boxes(raw)
  split_of = {r['file_name'].decode(): s for s in ('train', 'validation', 'test')
              for r in split_records(out, s)}
  meta = metadata(path)
  for split in ('train', 'validation', 'test'):
    boxed = [n for n in expected if split_of[n] == split]
    assert meta['num_boxes'][split] == sum(len(expected[n]) for n in boxed)
    assert meta['num_box_images'][split] == len(boxed)
  assert meta['boxes_skipped_not_in_download'] == 2
  labels = labels_of(raw)
  unlisted = sum(NIH_LABELS[int(c)] not in labels[n] for n, boxes in expected.items()
                 for c in boxes[:, 4])
  assert unlisted >= 1 and meta['boxes_finding_not_in_labels'] == unlisted
  report = json.loads((path / 'skipped.json').read_text())
  box_rows = {s['file_name']: s for s in report['skipped'] if s['reason'].startswith('box row: ')}
  absent = open(raw / 'train_val_list.txt').read().split()[2]
  assert set(box_rows) == {NOT_DOWNLOADED, absent}
  assert 'line 5' in box_rows[NOT_DOWNLOADED]['reason']
  assert 'Data_Entry_2017.csv' in box_rows[NOT_DOWNLOADED]['reason']
  assert 'line 10' in box_rows[absent]['reason'] and 'absent' in box_rows[absent]['reason']
  assert box_rows[absent]['split'] in ('train', 'validation')
  assert report['by_reason']['box row'] == 2


@pytest.mark.parametrize('row, line, field', [
    ('{name},Nodule,1.0,2.0,3.0', 3, '5 fields'),
    ('{name},Nodule,1.0,2.0,3.0,4.0,5.0', 3, '7 fields'),
    ('{name},Nodule,one,2.0,3.0,4.0', 3, "field 'x'"),
    ('{name},Nodule,1.0,2.0,0,4.0', 3, "field 'w'"),
    ('{name},Nodule,1.0,2.0,3.0,-4.0', 3, "field 'h'"),
    ('{name},Fracture,1.0,2.0,3.0,4.0', 3, "unknown finding 'Fracture'"),
])
def test_malformed_rows_stop_the_build_naming_file_line_and_field(raw, tmp_path, row, line,
                                                                  field):
  copy = tmp_path / 'raw'
  shutil.copytree(raw, copy)
  name = open(raw / 'test_list.txt').read().split()[0]
  good = f'{name},Mass,1.0,2.0,3.0,4.0'
  (copy / 'BBox_List_2017.csv').write_text(f'{HEADER}\n{good}\n{row.format(name=name)}\n')
  out = tmp_path / 'out'
  with pytest.raises(ValueError, match=f'BBox_List_2017.csv: line {line}: .*{field}'):
    prepare_lib.prepare('nih', str(copy), str(out), image_size=STORED)
  assert not (out / 'nih').exists()


def test_without_the_box_list_the_build_is_unchanged_but_for_empty_boxes(raw, built, tmp_path):
  copy = tmp_path / 'raw'
  shutil.copytree(raw, copy)
  os.remove(copy / 'BBox_List_2017.csv')
  out = tmp_path / 'out'
  path = prepare_lib.prepare('nih', str(copy), str(out), image_size=STORED)
  assert 'num_boxes' not in metadata(path)
  with pytest.raises(ValueError, match='no boxes'):
    sources.boxes(str(out), 'nih', 'test')
  with_boxes, _ = built
  for split in ('train', 'validation', 'test'):
    plain = split_records(out, split)
    assert all(r['boxes'].shape == (0, 5) for r in plain)
    assert [set(r) for r in plain] == [set(r) for r in split_records(with_boxes, split)]
    for a, b in zip(plain, split_records(with_boxes, split)):
      assert a['file_name'] == b['file_name']
      np.testing.assert_array_equal(a['image'], b['image'])
      np.testing.assert_array_equal(a['label'], b['label'])


def test_synthetic_box_list_has_the_real_format_and_boxes_drawn_lesions(tmp_path):
  raw = tmp_path / 'raw'
  counts = synthetic.generate('nih', str(raw), 80, seed=0, image_size=SOURCE)
  assert open(raw / 'BBox_List_2017.csv').readline() == HEADER + '\n'
  rows = read_csv_rows(raw / 'BBox_List_2017.csv')[1:]
  assert rows and all(len(r) == 6 for r in rows)
  assert {r[1] for r in rows} <= BOX_FINDINGS and 'Infiltration' not in {r[1] for r in rows}
  assert all('.' in v for r in rows for v in r[2:])
  test = set(open(raw / 'test_list.txt').read().split())
  labels = labels_of(raw)
  names = [r[0] for r in rows]
  assert set(names) <= test and counts['num_boxes'] == len(rows)
  for name, finding, *box in rows:  # Boxes come from what was drawn and lie inside the film.
    assert ('Infiltration' if finding == 'Infiltrate' else finding) in labels[name]
    x, y, w, h = (float(v) for v in box)
    assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= SOURCE and y + h <= SOURCE
  pairs = [(r[0], r[1]) for r in rows]
  assert len(set(pairs)) < len(pairs)  # Some image has two boxes of one finding.
  out = tmp_path / 'out'
  prepare_lib.prepare('nih', str(raw), str(out), image_size=STORED)
  stored = sources.boxes(str(out), 'nih', 'test')
  assert set(stored) == set(names) and len(stored) == counts['num_box_images']
  with pytest.raises(KeyError):
    sources.boxes(str(out), 'nih', 'train')[names[0]]
  images = {r['file_name'].decode(): r['image'][..., 0] for r in split_records(out, 'test')}
  denser = []
  for name, boxes in stored.items():
    assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, :2] + boxes[:, 2:4] <= STORED + 1e-4)
    image = images[name].astype(np.float64)
    for x, y, w, h, c in boxes:
      if NIH_LABELS[int(c)] in ('Cardiomegaly', 'Mass'):  # Dense, with lung around them.
        denser.append(_mean_inside(image, x, y, w, h) > _mean_around(image, x, y, w, h))
  assert denser and all(denser)


def _mean_inside(image, x, y, w, h):
  return image[int(y):int(np.ceil(y + h)), int(x):int(np.ceil(x + w))].mean()


def _mean_around(image, x, y, w, h):
  """Mean of a ring half the box's larger side wide around it."""
  margin = max(w, h) / 2
  ring = np.zeros(image.shape, bool)
  ring[max(0, int(y - margin)):int(np.ceil(y + h + margin)),
       max(0, int(x - margin)):int(np.ceil(x + w + margin))] = True
  ring[int(y):int(np.ceil(y + h)), int(x):int(np.ceil(x + w))] = False
  return image[ring].mean()
