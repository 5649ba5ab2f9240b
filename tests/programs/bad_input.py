"""Every program given a missing, empty, truncated or wrong-kind input (issue 20).

`cases(tmp)` writes the inputs under tmp and returns (program, input, argv);
`run(argv)` runs one and returns (exit code, output). The test asserts one
`error:` line and no traceback for each; `python tests/programs/bad_input.py`
prints what each prints (the table in docs/faults.md).
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _write(path, text='', mode='w'):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, mode) as f:
    f.write(text)
  return path


def cases(tmp: str) -> list[tuple[str, str, list[str]]]:
  missing = os.path.join(tmp, 'missing')
  empty_dir = os.path.join(tmp, 'empty_dir')
  os.makedirs(empty_dir, exist_ok=True)
  empty_py = _write(os.path.join(tmp, 'empty.py'))
  truncated_py = _write(os.path.join(tmp, 'truncated.py'),
                        'import ml_collections\n\ndef get_config(arg=""):\n  return dict(a=(1')
  image = os.path.join(tmp, 'images', 'film.png')
  os.makedirs(os.path.dirname(image), exist_ok=True)
  Image.fromarray(np.zeros((96, 96), np.uint8)).save(image)
  empty_file = _write(os.path.join(tmp, 'empty.bin'))
  truncated_pt = _write(os.path.join(tmp, 'truncated.pt'), b'PK\x03\x04\x14\x00\x00\x00', 'wb')
  json_file = _write(os.path.join(tmp, 'other.json'), json.dumps({'hello': 1}))
  truncated_record = _write(os.path.join(tmp, 'runs', 'run_record_nih_frozen_f1_seed0.json'),
                            '{"task": "nih", "protocol": "fro')
  wrong_record = _write(os.path.join(tmp, 'runs_wrong', 'run_record_nih_frozen_f1_seed0.json'),
                        json.dumps({'hello': 1}))
  truncated_csv = _write(os.path.join(tmp, 'raw_nih', 'Data_Entry_2017.csv'),
                         'Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age\n'
                         '00000001_000.png,Cardiomegaly,0,1,58\n00000002_000.png,Effu')
  os.makedirs(os.path.join(tmp, 'raw_nih', 'images'), exist_ok=True)
  shutil.copy(image, os.path.join(tmp, 'raw_nih', 'images', '00000001_000.png'))
  _write(os.path.join(tmp, 'raw_nih', 'train_val_list.txt'), '00000001_000.png\n')
  _write(os.path.join(tmp, 'raw_nih', 'test_list.txt'), '00000002_000.png\n')
  work = os.path.join(tmp, 'work')
  main = ['-m', 'mlvicx_jax.main', f'--workdir={work}']
  evaluate = ['-m', 'mlvicx_jax.evaluate', f'--workdir={work}']
  gradcam = ['-m', 'mlvicx_jax.gradcam', f'--images={os.path.dirname(image)}', f'--out={work}']
  prepare = ['-m', 'mlvicx_jax.data.prepare', '--dataset=nih', f'--data_dir={work}']
  to_torch = ['-m', 'mlvicx_jax.tools.export_torch', f'--output={work}/x.pt']
  from_torch = ['-m', 'mlvicx_jax.tools.import_torch', f'--output={work}/ckpt']
  return [
      ('main', 'missing config', main + [f'--config={missing}.py']),
      ('main', 'empty config', main + [f'--config={empty_py}']),
      ('main', 'truncated config', main + [f'--config={truncated_py}']),
      ('main', 'wrong-kind config', main + ['--config=configs/eval/nih.py']),
      ('main', 'missing data_dir', main + ['--config=configs/nih.py', f'--config.data_dir={missing}']),
      ('main', 'empty data_dir', main + ['--config=configs/nih.py', f'--config.data_dir={empty_dir}']),
      ('demo', 'missing config', ['-m', 'mlvicx_jax.demo', f'--workdir={work}',
                                  f'--config={missing}.py']),
      ('demo', 'wrong-kind config', ['-m', 'mlvicx_jax.demo', f'--workdir={work}',
                                     '--config=configs/nih.py']),
      ('evaluate', 'missing config', evaluate + [f'--config={missing}.py']),
      ('evaluate', 'wrong-kind config', evaluate + ['--config=configs/nih.py']),
      ('evaluate', 'missing checkpoint', evaluate + [
          '--config=configs/eval/nih.py', f'--config.checkpoint={missing}',
          f'--config.data_dir={empty_dir}']),
      ('evaluate', 'empty checkpoint', evaluate + [
          '--config=configs/eval/nih.py', f'--config.checkpoint={empty_dir}',
          f'--config.data_dir={empty_dir}']),
      ('report', 'missing runs', ['-m', 'mlvicx_jax.report', f'--runs={missing}']),
      ('report', 'empty runs', ['-m', 'mlvicx_jax.report', f'--runs={empty_dir}']),
      ('report', 'truncated record', ['-m', 'mlvicx_jax.report',
                                      f'--runs={os.path.dirname(truncated_record)}']),
      ('report', 'wrong-kind record', ['-m', 'mlvicx_jax.report',
                                       f'--runs={os.path.dirname(wrong_record)}']),
      ('gradcam', 'missing checkpoint', gradcam + [f'--checkpoint={missing}']),
      ('gradcam', 'empty checkpoint', gradcam + [f'--checkpoint={empty_dir}']),
      ('gradcam', 'wrong-kind checkpoint', gradcam + [f'--checkpoint={json_file}']),
      ('data.prepare', 'missing manual_dir', prepare + [f'--manual_dir={missing}']),
      ('data.prepare', 'empty manual_dir', prepare + [f'--manual_dir={empty_dir}']),
      ('data.prepare', 'truncated CSV', prepare + [f'--manual_dir={os.path.dirname(truncated_csv)}']),
      ('data.verify', 'missing data_dir', ['-m', 'mlvicx_jax.data.verify', f'--data_dir={missing}']),
      ('data.verify', 'empty data_dir', ['-m', 'mlvicx_jax.data.verify', f'--data_dir={empty_dir}']),
      ('tools.import_torch', 'missing file', from_torch + [f'--input={missing}.pt']),
      ('tools.import_torch', 'empty file', from_torch + [f'--input={empty_file}']),
      ('tools.import_torch', 'truncated file', from_torch + [f'--input={truncated_pt}']),
      ('tools.import_torch', 'wrong-kind file', from_torch + [f'--input={json_file}']),
      ('tools.export_torch', 'missing checkpoint', to_torch + [f'--checkpoint={missing}']),
      ('tools.export_torch', 'empty checkpoint', to_torch + [f'--checkpoint={empty_dir}']),
      ('tools.export_torch', 'wrong-kind checkpoint', to_torch + [f'--checkpoint={json_file}']),
  ]


def run(argv: list[str]) -> tuple[int, str]:
  out = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True,
                       env=dict(os.environ, JAX_PLATFORMS='cpu'), timeout=300, check=False)
  return out.returncode, out.stdout + out.stderr


def error_lines(output: str) -> list[str]:
  return [line for line in output.splitlines() if line.startswith('error:')]


if __name__ == '__main__':
  with tempfile.TemporaryDirectory() as tmp:
    print('| program | input | exit | what it prints |\n|---|---|---|---|')
    for program, what, argv in cases(tmp):
      code, output = run(argv)
      lines = error_lines(output) or output.strip().splitlines()[-1:]
      shown = ' / '.join(lines).replace(tmp, 'TMP').replace('|', '\\|')
      flag = '' if len(error_lines(output)) == 1 and 'Traceback' not in output else ' **(!)**'
      print(f'| {program} | {what} | {code} | `{shown}`{flag} |', flush=True)
