"""The paper's tables (paper_results.py) vs numbers typed from SPEC and shared/paper_results.md."""

import pathlib
import re

import pytest

import conftest
from mlvicx_jax.report import paper_results

REPO = pathlib.Path(conftest.REPO)
PAPER_MD = REPO.parent / 'shared' / 'paper_results.md'


def test_paper_headline_numbers():
  # SPEC section 4, typed here independently of paper_results.py.
  finetune = [paper_results.paper_value('I', 'nih finetune', 'MLVICX', f)
              for f in ('1%', '10%', '30%', 'ALL')]
  assert finetune == [0.642, 0.733, 0.763, 0.790]
  assert paper_results.paper_value('II', ('nih', 'frozen'), 'mlvicx',
                                   0.01) == 0.601
  assert paper_results.paper_value('III', 'siim fine-tune', 'MLVICX',
                                   1.0) == 0.59
  assert [paper_results.paper_value('IV', 'finetune', v, '1%')
          for v in ('L_G+L_L', 'L_L', 'L_G')] == [0.642, 0.637, 0.631]
  assert paper_results.paper_reference('nih', 'finetune', 1.0) == 0.790
  assert paper_results.paper_reference('siim', 'frozen', 0.1) is None
  with pytest.raises(ValueError, match='unknown method'):
    paper_results.paper_reference('nih', 'frozen', 0.1, 'SwAV')
  with pytest.raises(KeyError, match='Table I is NIH'):
    paper_results.paper_value('I', 'rsna finetune', 'MLVICX', 0.1)


def _markdown_tables(text):
  """{section title: [row cells]} of every pipe table, header row first."""
  tables = {}
  for section in text.split('\n## ')[1:]:
    title, *lines = section.splitlines()
    rows = [[c.strip() for c in line.strip().strip('|').split('|')]
            for line in lines if line.startswith('|')
            and not line.startswith('|---')]
    tables[title.split(':')[0].strip()] = rows
  return tables


@pytest.mark.skipif(not PAPER_MD.exists(),
                    reason=f'{PAPER_MD} absent (needs ../shared beside repo)')
def test_paper_tables_match_shared_markdown():
  tables = _markdown_tables(PAPER_MD.read_text(encoding='utf-8'))
  fraction = {'1%': 0.01, '10%': 0.1, '30%': 0.3, '100%': 1.0, 'ALL': 1.0}
  task = {'NIH': 'nih', 'Vinbig-CXR': 'vinbig', 'RSNA': 'rsna'}
  checked = 0

  header, *rows = tables['Table I']
  for method, *cells in rows:
    for col, cell in zip(header[1:], cells):
      assert paper_results.paper_value('I', 'nih finetune', method,
                                       fraction[col]) == float(cell)
      checked += 1

  header, *rows = tables['Table II']
  for setting, frac, *cells in rows:
    data, protocol = setting.rsplit(' ', 1)
    for method, cell in zip(header[2:], cells):
      assert paper_results.paper_value(
          'II', (task[data], protocol), method,
          fraction[frac]) == float(cell), (setting, frac, method)
      checked += 1

  header, *rows = tables['Table III']
  for method, *cells in rows:
    for col, cell in zip(header[1:], cells):
      protocol, frac = col.split()
      mean, sd = (float(x) for x in cell.split('±'))
      setting = ('siim', protocol)
      value = fraction['ALL' if frac == 'all' else frac]
      assert paper_results.paper_value('III', setting, method, value) == mean
      assert paper_results.paper_sd(setting, method, value) == sd
      checked += 1

  header, *rows = tables['Table IV']
  for protocol, global_loss, local_loss, *cells in rows:
    variant = '+'.join(name for name, used in (('L_G', global_loss),
                                               ('L_L', local_loss))
                       if used == 'yes')
    for col, cell in zip(header[3:], cells):
      assert paper_results.paper_value('IV', protocol, variant,
                                       fraction[col]) == float(cell)
      checked += 1
  assert checked == 12 * 4 + 20 * 12 + 12 * 4 + 6 * 3

  p_values = re.findall(r'([\d.]+e-\d+) \((\d+%)\)', PAPER_MD.read_text())
  assert len(p_values) == 3
  for text, frac in p_values:
    assert paper_results.SIGNIFICANCE['p_values'][fraction[frac]] == float(
        text)


