"""One vocabulary of findings across datasets: which class of each build names the same thing.

Each dataset names its findings in its own words ('Effusion' in NIH,
'Pleural Effusion' in CheXpert, 'pleural effusion' in PadChest, 'Pleural
effusion' in VinDr-CXR). FINDINGS maps a common name onto each dataset's
class, with the reason the classes are taken as one finding; NAME_SOURCES
says where each dataset's names come from. A transfer evaluation (train on
build A, test on build B: evaluate/transfer.py) scores only the findings
`shared(A, B)` lists.

Two names for one finding are not one definition: the labels come from
different labellers (NIH's and CheXpert's rule-based NLP on reports,
PadChest's physicians and a neural labeller, VinDr-CXR's and RSNA's
radiologists reading the images), so a transfer gap mixes label definitions
with image-domain shift. A class that merges two findings of another
dataset (VinDr-CXR's 'Nodule/Mass') is left out rather than mapped onto
one of them.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Sequence

from mlvicx_jax.data import info as info_lib

# Where each dataset's class names come from (the build's class list is that release's).
NAME_SOURCES = {
    'nih': "Data_Entry_2017.csv, column 'Finding Labels' (Wang et al., CVPR 2017)",
    'chexpert': 'the observation columns of train.csv / valid.csv (Irvin et al., AAAI 2019)',
    'vinbig': "train.csv, column 'class_name' (Nguyen et al., Sci. Data 2022)",
    'rsna': ("stage_2_detailed_class_info.csv: the class of Target = 1 rows is 'Lung Opacity' "
             '(Shih et al., Radiol. AI 2019); the build names it Pneumonia'),
    'padchest': ("PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv, column 'Labels' "
                 '(Bustos et al., Med. Image Anal. 2020)'),
}


@dataclasses.dataclass(frozen=True)
class Finding:
  """A common finding: its name in each dataset that has it, and why they are one."""
  name: str
  names: Mapping[str, str]  # dataset -> that dataset's class name
  source: str               # why these classes are taken as one finding


FINDINGS = (
    Finding('atelectasis', {'nih': 'Atelectasis', 'chexpert': 'Atelectasis',
                            'vinbig': 'Atelectasis', 'padchest': 'atelectasis'},
            'the same term in every label list'),
    Finding('cardiomegaly', {'nih': 'Cardiomegaly', 'chexpert': 'Cardiomegaly',
                             'vinbig': 'Cardiomegaly', 'padchest': 'cardiomegaly'},
            'the same term in every label list'),
    Finding('pleural effusion', {'nih': 'Effusion', 'chexpert': 'Pleural Effusion',
                                 'vinbig': 'Pleural effusion', 'padchest': 'pleural effusion'},
            "NIH's 'Effusion' is mined from pleural effusion mentions (Wang et al. 2017); "
            'the others name it in full'),
    Finding('infiltration', {'nih': 'Infiltration', 'vinbig': 'Infiltration',
                             'padchest': 'infiltrates'},
            "the same radiological term; PadChest's label is its plural form"),
    Finding('consolidation', {'nih': 'Consolidation', 'chexpert': 'Consolidation',
                              'vinbig': 'Consolidation', 'padchest': 'consolidation'},
            'the same term in every label list'),
    Finding('pneumonia', {'nih': 'Pneumonia', 'chexpert': 'Pneumonia', 'rsna': 'Pneumonia',
                          'padchest': 'pneumonia'},
            "a diagnosis in NIH, CheXpert and PadChest; RSNA's positive class is a lung "
            'opacity that radiologists judged suspicious for pneumonia (Shih et al. 2019), '
            'the nearest of its classes'),
    Finding('pneumothorax', {'nih': 'Pneumothorax', 'chexpert': 'Pneumothorax',
                             'vinbig': 'Pneumothorax', 'padchest': 'pneumothorax'},
            'the same term in every label list'),
    Finding('edema', {'nih': 'Edema', 'chexpert': 'Edema', 'padchest': 'pulmonary edema'},
            "pulmonary edema; NIH and CheXpert name it 'Edema'"),
    Finding('nodule', {'nih': 'Nodule', 'padchest': 'nodule'},
            "the same term; VinDr-CXR's 'Nodule/Mass' merges it with mass and is left out"),
    Finding('mass', {'nih': 'Mass', 'padchest': 'mass'},
            "the same term (PadChest's 'mass' is the parent of its 'pulmonary mass'); "
            "VinDr-CXR's 'Nodule/Mass' merges it with nodule and is left out"),
    Finding('emphysema', {'nih': 'Emphysema', 'padchest': 'emphysema'},
            'the same term in both label lists'),
    Finding('fibrosis', {'nih': 'Fibrosis', 'vinbig': 'Pulmonary fibrosis',
                         'padchest': 'pulmonary fibrosis'},
            "NIH's 'Fibrosis' is pulmonary fibrosis, the name VinDr-CXR and PadChest use"),
    Finding('pleural thickening', {'nih': 'Pleural_Thickening', 'vinbig': 'Pleural thickening',
                                   'padchest': 'pleural thickening'},
            "the same term; NIH's label joins the words with an underscore"),
    Finding('hernia', {'nih': 'Hernia', 'padchest': 'hiatal hernia'},
            "NIH's 'Hernia' label comes from reports of (mostly hiatal) hernias seen on the "
            "film; PadChest's is the hiatal hernia"),
    Finding('lung opacity', {'chexpert': 'Lung Opacity', 'vinbig': 'Lung Opacity'},
            "the same term; RSNA's 'Lung Opacity' is mapped to pneumonia, its meaning there"),
    Finding('fracture', {'chexpert': 'Fracture', 'padchest': 'fracture'},
            'the same term (any bone fracture seen on the film) in both label lists'),
)

DATASETS = tuple(NAME_SOURCES)


def class_list(dataset: str) -> tuple[str, ...]:
  """The class names of a default build of `dataset` (data.info's lists)."""
  return info_lib.dataset_info(dataset).class_names


def finding(name: str) -> Finding:
  for f in FINDINGS:
    if f.name == name:
      return f
  raise ValueError(f'unknown finding {name!r}; expected one of {[f.name for f in FINDINGS]}')


def _check_dataset(dataset: str) -> None:
  if dataset not in DATASETS:
    raise ValueError(f'no shared findings for dataset {dataset!r}; the table covers {DATASETS}')


def shared(a: str, b: str, a_classes: Optional[Sequence[str]] = None,
           b_classes: Optional[Sequence[str]] = None) -> list[tuple[str, str, str]]:
  """(common name, name in a, name in b) of every finding both datasets have, table order.

  `a_classes`, `b_classes`: the class lists of the actual builds (a build may
  hold a subset); by default the full lists (`class_list`).
  """
  _check_dataset(a)
  _check_dataset(b)
  a_classes = class_list(a) if a_classes is None else tuple(a_classes)
  b_classes = class_list(b) if b_classes is None else tuple(b_classes)
  return [(f.name, f.names[a], f.names[b]) for f in FINDINGS
          if a in f.names and b in f.names
          and f.names[a] in a_classes and f.names[b] in b_classes]
