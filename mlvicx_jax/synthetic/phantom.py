"""Procedural chest radiographs with findings whose labels follow the drawing.

A frontal (PA/AP) chest film is composed in "density" space in a patient
frame (u to the patient's left = image right, v downwards, about -1..1),
then exposed: intensity = 1 - exp(-k * density), so bone and fluid are
bright and air dark as on film. Patient size, position, rotation, exposure,
noise, sharpening, collimation, side markers and ECG leads vary from image
to image, so that a model has to learn anatomy to separate the findings.

Findings change anatomy (cardiomegaly: wider heart; emphysema: taller,
darker lungs with flat domes; atelectasis: elevated hemidiaphragm and a
plate-like band) or add density inside the lungs (nodule, mass, effusion with
a meniscus, consolidation, ...). Each drawn instance returns its footprint,
from which datasets take boxes (VinBig, RSNA) or masks (SIIM). Sizes are
chosen to stay visible at 96-128 px.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from scipy import ndimage

from mlvicx_jax.synthetic import anatomy
from mlvicx_jax.synthetic import findings as findings_lib
from mlvicx_jax.synthetic.anatomy import Patient, sample_patient

FINDINGS = (
    'atelectasis', 'cardiomegaly', 'effusion', 'infiltration', 'mass',
    'nodule', 'pneumonia', 'pneumothorax', 'consolidation', 'edema',
    'emphysema', 'fibrosis', 'pleural_thickening', 'hernia',
    'aortic_enlargement', 'calcification', 'lung_opacity', 'other_lesion',
    'ild')


@dataclasses.dataclass
class Film:
  image: np.ndarray  # float32 (H, W) in [0, 1], bright = dense.
  footprints: dict[str, list[np.ndarray]]  # Per finding, one map per instance.
  heart_width_px: float  # For checks: the drawn cardiothoracic geometry.
  thorax_width_px: float


def render(rng: np.random.Generator, height: int, width: int,
           findings: Sequence[str] = (), patient: Patient | None = None,
           view: str = 'PA') -> Film:
  """Draws one frontal chest film with the given findings."""
  unknown = set(findings) - set(FINDINGS)
  if unknown:
    raise ValueError(f'unknown findings {sorted(unknown)}; known: {FINDINGS}')
  patient = patient or sample_patient(rng)
  # Separate streams: adding a finding changes nothing but the finding.
  anatomy_rng, canvas_rng, findings_rng, exposure_rng = rng.spawn(4)
  anat = anatomy.build_anatomy(patient, findings, anatomy_rng)
  if view == 'AP':  # Divergent beam magnifies the heart a little.
    anat.heart_a *= 1.05
  cv = anatomy.Canvas(canvas_rng, height, width, patient, anat)
  anatomy.draw_anatomy(cv, patient)
  cv.rng = findings_rng
  footprints = {}
  ordered = sorted(findings, key=lambda f: (findings_lib.ORDER.index(f) if f in findings_lib.ORDER else 99, f))
  for finding in ordered:
    if finding == 'cardiomegaly':
      footprints[finding] = [anatomy.soft(anatomy.heart_sd(anat, cv.u, cv.v), cv.edge)]
    else:
      footprints[finding] = findings_lib.DRAW[finding](cv)
  cv.density += cv.vessels * cv.markings_gain * cv.lung
  image = _expose(cv, exposure_rng)
  px = anatomy.pixel_grid(height, width)[2] * patient.scale
  return Film(image, footprints, 2 * anat.heart_a * px, 2 * anat.lateral * px)


def _expose(cv: anatomy.Canvas, rng) -> np.ndarray:
  """Film response, exposure, detector blur, noise and acquisition clutter."""
  density = ndimage.gaussian_filter(cv.density, rng.uniform(0.4, 0.9))
  k = rng.uniform(1.9, 2.6)
  image = (1.0 - np.exp(-k * np.maximum(density, 0.0))) / (1.0 - math.exp(-k * 1.05))
  if rng.random() < 0.35:  # Unsharp masking of processed digital films.
    image += rng.uniform(0.3, 0.8) * (image - ndimage.gaussian_filter(image, 4.0))
  image = np.clip(image * rng.uniform(0.85, 1.15) + rng.uniform(-0.07, 0.07), 0, 1)
  image = image ** rng.uniform(0.75, 1.35)
  image += rng.normal(0.0, rng.uniform(0.008, 0.03), cv.shape).astype(np.float32)
  height, width = cv.shape
  if rng.random() < 0.3:  # Collimation: unexposed, bright borders.
    for edge in rng.choice(4, size=rng.integers(1, 3), replace=False):
      depth = int(rng.uniform(0.02, 0.06) * min(cv.shape))
      sl = [np.s_[:depth, :], np.s_[-depth:, :], np.s_[:, :depth], np.s_[:, -depth:]][edge]
      image[sl] = rng.uniform(0.8, 0.95)
  if rng.random() < 0.5:  # Side marker letter in an upper corner.
    s = max(3, min(cv.shape) // 20)
    r0 = int(rng.uniform(0.03, 0.1) * height)
    c0 = int((rng.uniform(0.03, 0.1) if rng.random() < 0.5 else rng.uniform(0.82, 0.9)) * width)
    image[r0:r0 + 2 * s, c0:c0 + max(1, s // 3)] = 1.0
    image[r0 + 2 * s - max(1, s // 3):r0 + 2 * s, c0:c0 + s] = 1.0
  if rng.random() < 0.15:  # ECG leads: bright wires ending in round electrodes.
    for _ in range(rng.integers(2, 4)):
      cu, cvv = rng.uniform(-0.7, 0.7), rng.uniform(-0.7, 0.3)
      wire = np.abs(cv.v - cvv - 0.3 * np.sin(3 * cv.u + rng.uniform(0, 6))) < 0.006
      wire &= (cv.u > cu) & (cv.u < cu + rng.uniform(0.3, 0.8))
      image[wire] = 0.95
      image[np.sqrt((cv.u - cu) ** 2 + (cv.v - cvv - 0.3 * np.sin(3 * cu)) ** 2) < 0.03] = 0.97
  return np.clip(image, 0.0, 1.0).astype(np.float32)


def box_of(footprint: np.ndarray, threshold: float = 0.3):
  """(x_min, y_min, x_max, y_max) in pixels of footprint > threshold, or None."""
  rows = np.flatnonzero((footprint > threshold).any(axis=1))
  cols = np.flatnonzero((footprint > threshold).any(axis=0))
  if rows.size == 0:
    return None
  return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


__all__ = ['FINDINGS', 'Film', 'Patient', 'box_of', 'render', 'sample_patient']
