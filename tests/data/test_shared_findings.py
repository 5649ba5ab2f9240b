"""The shared vocabulary of findings: every name is a class of its dataset, and pairs.

References: the class-list constants the builders use (data/info.py, PadChest's
builder), and the equivalences the issue names (Effusion = Pleural Effusion =
pleural effusion = Pleural effusion; Infiltration / infiltrates; ...).
"""
import pytest

from mlvicx_jax.data import info
from mlvicx_jax.data import shared_findings
from mlvicx_jax.data.builders import padchest

CLASS_LISTS = {'nih': info.NIH_CLASSES, 'chexpert': info.CHEXPERT_CLASSES,
               'vinbig': info.VINBIG_CLASSES, 'rsna': info.RSNA_CLASSES,
               'padchest': padchest.CLASSES}


def test_every_name_is_a_class_of_its_dataset():
  assert set(shared_findings.DATASETS) == set(CLASS_LISTS)
  for finding in shared_findings.FINDINGS:
    assert len(finding.names) >= 2, finding.name  # a finding of one dataset transfers nowhere
    assert finding.source.strip(), finding.name
    for dataset, name in finding.names.items():
      assert name in CLASS_LISTS[dataset], (finding.name, dataset, name)
  for dataset in CLASS_LISTS:
    assert shared_findings.NAME_SOURCES[dataset].strip()


def test_no_class_stands_for_two_findings():
  names = [f.name for f in shared_findings.FINDINGS]
  assert len(set(names)) == len(names)
  for dataset in CLASS_LISTS:
    used = [f.names[dataset] for f in shared_findings.FINDINGS if dataset in f.names]
    assert len(set(used)) == len(used), dataset


def test_the_issues_equivalences():
  effusion = shared_findings.finding('pleural effusion').names
  assert effusion == {'nih': 'Effusion', 'chexpert': 'Pleural Effusion',
                      'padchest': 'pleural effusion', 'vinbig': 'Pleural effusion'}
  assert ('infiltration', 'Infiltration', 'infiltrates') in shared_findings.shared(
      'nih', 'padchest')
  assert ('pleural thickening', 'Pleural_Thickening', 'pleural thickening') in (
      shared_findings.shared('nih', 'padchest'))
  assert ('hernia', 'Hernia', 'hiatal hernia') in shared_findings.shared('nih', 'padchest')
  assert shared_findings.shared('nih', 'rsna') == [('pneumonia', 'Pneumonia', 'Pneumonia')]
  assert 'Nodule/Mass' not in [f.names.get('vinbig') for f in shared_findings.FINDINGS]


def test_shared_pairs_are_symmetric_and_read_the_builds_classes():
  for a in CLASS_LISTS:
    for b in CLASS_LISTS:
      forward = shared_findings.shared(a, b)
      assert [(c, y, x) for c, x, y in forward] == shared_findings.shared(b, a)
      for common, name_a, name_b in forward:  # both classes are in both full lists
        assert name_a in CLASS_LISTS[a] and name_b in CLASS_LISTS[b]
  # A build with a subset of classes (CheXpert's competition five) shares only those.
  competition = shared_findings.shared('nih', 'chexpert', b_classes=info.CHEXPERT_COMPETITION)
  assert {b for _, _, b in competition} == set(info.CHEXPERT_COMPETITION)
  assert shared_findings.shared('nih', 'chexpert', b_classes=('Edema', 'Pleural Effusion')) == [
      ('pleural effusion', 'Effusion', 'Pleural Effusion'), ('edema', 'Edema', 'Edema')]


def test_unknown_dataset_is_named():
  with pytest.raises(ValueError, match='mimic'):
    shared_findings.shared('nih', 'mimic')
  with pytest.raises(ValueError, match='unknown finding'):
    shared_findings.finding('fever')
