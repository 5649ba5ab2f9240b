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
import functools
import math
from typing import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

FINDINGS = (
    'atelectasis', 'cardiomegaly', 'effusion', 'infiltration', 'mass',
    'nodule', 'pneumonia', 'pneumothorax', 'consolidation', 'edema',
    'emphysema', 'fibrosis', 'pleural_thickening', 'hernia',
    'aortic_enlargement', 'calcification', 'lung_opacity', 'other_lesion',
    'ild')

NORMAL_CTR = (0.38, 0.47)  # Cardiothoracic ratio of a normal heart.
ENLARGED_CTR = (0.56, 0.68)  # Cardiomegaly: CTR > 0.5 with a clear margin.


@dataclasses.dataclass
class Patient:
  """Traits that stay the same across one patient's films."""
  scale: float  # Thorax size relative to the field of view.
  ctr: float  # Normal cardiothoracic ratio of this patient.
  body_density: float  # Soft-tissue thickness.
  female: bool
  dome_right: float
  dome_left: float
  lateral: float  # Lateral lung edge.
  apex: float


def sample_patient(rng: np.random.Generator) -> Patient:
  return Patient(
      scale=rng.uniform(0.84, 1.08),
      ctr=rng.uniform(*NORMAL_CTR),
      body_density=rng.uniform(0.44, 0.56),
      female=bool(rng.random() < 0.5),
      dome_right=rng.uniform(0.38, 0.46),
      dome_left=rng.uniform(0.43, 0.50),
      lateral=rng.uniform(0.70, 0.78),
      apex=rng.uniform(-0.82, -0.74),
  )


@dataclasses.dataclass
class Anatomy:
  """Geometry of one film in the patient frame."""
  base: dict[int, float]  # Diaphragm height per side (-1: patient right).
  dome: dict[int, float]
  lateral: float
  medial: float
  apex: float
  heart_u: float
  heart_v: float
  heart_a: float
  heart_b: float
  knob_r: float
  air: float  # How much density lung air removes.
  markings: float  # Strength of vessel markings.


def _anatomy(patient: Patient, findings: Sequence[str], rng) -> Anatomy:
  # Draw every random number whatever the findings, so that a film with and
  # one without a finding share everything else (a clean counterfactual).
  normal_knob, big_knob = rng.uniform(0.05, 0.065), rng.uniform(0.10, 0.13)
  enlarged_ctr = rng.uniform(*ENLARGED_CTR)
  emphysema_base = rng.uniform(0.07, 0.11, 2)
  emphysema_dome = rng.uniform(0.01, 0.03, 2)
  atelectasis_side, atelectasis_lift = int(rng.choice([-1, 1])), rng.uniform(0.06, 0.10)
  ctr = patient.ctr
  if 'cardiomegaly' in findings:
    ctr = enlarged_ctr
  base = {-1: patient.dome_right, 1: patient.dome_left}
  dome = {-1: 0.10, 1: 0.09}
  apex, air, markings = patient.apex, 0.40, 1.0
  if 'emphysema' in findings:  # Hyperinflation: low, flat domes, dark lungs.
    for i, side in enumerate(base):
      base[side] += emphysema_base[i]
      dome[side] = emphysema_dome[i]
    apex -= 0.03
    air, markings = 0.47, 0.45
    ctr = min(ctr, NORMAL_CTR[0] + 0.02)  # Narrow "tubular" heart.
  if 'atelectasis' in findings:  # Volume loss lifts one hemidiaphragm.
    base[atelectasis_side] -= atelectasis_lift
  if 'fibrosis' in findings:
    for side in base:
      base[side] -= 0.04
  heart_a = ctr * patient.lateral  # Horizontal half-extent.
  heart_b = 0.3 + 0.3 * (ctr - 0.42)  # Vertical half-extent.
  return Anatomy(
      base=base, dome=dome, lateral=patient.lateral, medial=0.085, apex=apex,
      heart_u=0.25 * heart_a, heart_v=base[1] - 0.5 * heart_b,
      heart_a=heart_a, heart_b=heart_b,
      knob_r=big_knob if 'aortic_enlargement' in findings else normal_knob,
      air=air, markings=markings)


# ----------------------------------------------------------------------------
# Fields.


def _ipow(x: np.ndarray, n: int) -> np.ndarray:
  """x ** n by repeated squaring (numpy's general power is slow)."""
  result, base = None, x
  while n:
    if n & 1:
      result = base if result is None else result * base
    n >>= 1
    if n:
      base = base * base
  return result


def _soft(signed: np.ndarray, edge: float) -> np.ndarray:
  """0..1 inside-ness of a signed distance-like field, antialiased over `edge`."""
  return np.clip(0.5 + signed / edge, 0.0, 1.0)


def _ellipse_sd(u, v, cu, cv, a, b):
  return (1.0 - np.sqrt(((u - cu) / a) ** 2 + ((v - cv) / b) ** 2)) * min(a, b)


HEART_SHEAR = 0.4  # The heart leans: its apex lies low on the patient's left.


def _heart_sd(anat: Anatomy, u, v):
  """Sheared ellipse with horizontal/vertical half-extents heart_a/heart_b."""
  dv = v - anat.heart_v
  return _ellipse_sd(u - HEART_SHEAR * dv, dv, anat.heart_u, 0.0, anat.heart_a,
                     anat.heart_b)


def _lung_sd(anat: Anatomy, side: int, u, v, lateral: float | None = None):
  """Signed distance-like field of one lung (positive inside)."""
  w = side * u
  lateral = anat.lateral if lateral is None else lateral
  base = anat.base[side]
  centre = 0.5 * (anat.medial + lateral)
  half = 0.5 * (lateral - anat.medial)
  bottom = base + 0.25
  # Narrow apex, wide base: stretch the lateral distance more near the top.
  t = np.clip((v - anat.apex) / (base - anat.apex), 0.0, 1.0)
  w_taper = anat.medial + (w - anat.medial) / (0.62 + 0.43 * np.sqrt(t))
  ellipse = _ellipse_sd(w_taper, v, centre, 0.5 * (anat.apex + bottom), 1.08 * half,
                        0.5 * (bottom - anat.apex))
  dome = base - anat.dome[side] * np.clip(1.0 - ((w - centre) / half) ** 2, 0.0, 1.0)
  sd = np.minimum(np.minimum(ellipse, dome - v), w - anat.medial)
  sd = np.minimum(sd, -_heart_sd(anat, u, v))
  if side == 1:  # The aortic knob indents the left upper lung.
    knob = np.sqrt((u - 0.11) ** 2 + (v + 0.42) ** 2) - anat.knob_r
    sd = np.minimum(sd, knob)
  return sd


@functools.lru_cache(maxsize=8)
def _pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray, float]:
  unit = min(height, width) / 2.0
  y = ((np.arange(height, dtype=np.float32) + 0.5 - height / 2.0) / unit)[:, None]
  x = ((np.arange(width, dtype=np.float32) + 0.5 - width / 2.0) / unit)[None, :]
  return x, y, unit


def _smooth_noise(rng, shape, cells: int) -> np.ndarray:
  """Band-limited noise in about [-1, 1]: a cells x cells grid, upsampled."""
  height, width = shape
  coarse = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32) / 1.2
  fine = Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR)
  return np.asarray(fine)


class _Canvas:
  """Density image and coordinates of one film being drawn."""

  def __init__(self, rng, height, width, patient: Patient, anat: Anatomy):
    self.rng = rng
    self.shape = (height, width)
    self.anat = anat
    x, y, unit = _pixel_grid(height, width)
    self.scale = patient.scale
    self.edge = 1.5 / (unit * patient.scale)  # About 1.5 px in patient units.
    cx, cy = rng.normal(0.0, 0.045), rng.normal(0.05, 0.04)
    angle = math.radians(rng.normal(0.0, 3.0))
    c, s = math.cos(angle), math.sin(angle)
    self.u = ((x - cx) * c + (y - cy) * s) / patient.scale
    self.v = (-(x - cx) * s + (y - cy) * c) / patient.scale
    self.lung_sd = {side: _lung_sd(anat, side, self.u, self.v) for side in (-1, 1)}
    self.lungs = {side: _soft(sd, self.edge) for side, sd in self.lung_sd.items()}
    self.lung = np.maximum(self.lungs[-1], self.lungs[1])
    self.density = np.zeros(self.shape, np.float32)
    self.vessels = np.zeros(self.shape, np.float32)
    self.markings_gain = np.ones(self.shape, np.float32)

  def disc(self, cu, cv, radius, softness=0.15):
    dist = np.sqrt((self.u - cu) ** 2 + (self.v - cv) ** 2)
    return 1.0 / (1.0 + np.exp(np.clip((dist - radius) / (softness * radius + self.edge), -30, 30)))

  def point_in_lung(self, side=None, zone=(0.0, 1.0), margin=0.05):
    """A random point inside a lung, `zone` as a fraction from apex to base."""
    anat = self.anat
    for _ in range(200):
      s = int(self.rng.choice([-1, 1])) if side is None else side
      frac = self.rng.uniform(*zone)
      v = anat.apex + frac * (anat.base[s] - anat.apex)
      w = self.rng.uniform(anat.medial, anat.lateral)
      if _lung_sd(anat, s, s * w, v) > margin:
        return s, s * w, v
    return s, s * 0.45, 0.5 * (anat.apex + anat.base[s])


# ----------------------------------------------------------------------------
# Normal anatomy.


def _draw_anatomy(cv: _Canvas, patient: Patient):
  anat, u, v, edge, rng = cv.anat, cv.u, cv.v, cv.edge, cv.rng
  w = np.abs(u)
  slope = np.clip((v + 1.12) / 0.42, 0.0, 1.0)
  half_width = 0.24 + 0.7 * slope * slope * (3 - 2 * slope)
  body = _soft(half_width - w, 2 * edge)
  cv.density += patient.body_density * body
  if rng.random() < 0.5:  # Arms beside the chest.
    arms = _soft(np.minimum(w - 0.97, 1.25 - w), 2 * edge) * _soft(v + 0.7, 0.1)
    cv.density += 0.8 * patient.body_density * arms

  # Lungs: air, vessel markings that fade from the hila to the periphery.
  hilum = np.exp(-np.sqrt((w - 0.22) ** 2 + (v + 0.12) ** 2) / 0.55)
  ridges = np.zeros(cv.shape, np.float32)
  for cells, gain in ((10, 1.0), (22, 0.6)):
    ridges += gain * _ipow(1.0 - np.abs(_smooth_noise(rng, cv.shape, cells)), 6)
  for side in (-1, 1):
    depth = np.clip(0.6 + cv.lung_sd[side] / 0.3, 0.6, 1.0)
    cv.density -= anat.air * cv.lungs[side] * depth
  cv.vessels = 0.055 * anat.markings * ridges * (0.3 + hilum)

  # Spine, posterior and anterior ribs, clavicles, humeral heads.
  spine = _soft(0.075 - w, edge) * body
  cv.density += spine * (0.11 + 0.025 * np.cos(2 * np.pi * v / 0.115))
  spacing = rng.uniform(0.118, 0.132)
  in_chest = _soft(np.minimum(w - 0.06, anat.lateral + 0.06 - w), edge) * _soft(
      np.minimum(v - anat.apex + 0.08, max(anat.base.values()) + 0.12 - v), edge)
  phase = (v - anat.apex - (-0.2 * w + 0.75 * w ** 2)) / spacing
  cv.density += 0.055 * in_chest * _ipow((np.cos(2 * np.pi * phase) + 1.0) / 2.0, 10)
  phase = (v - anat.apex - 0.05 - 0.45 * (0.8 - w)) / spacing / 1.05
  front = _soft(np.minimum(w - 0.25, anat.lateral - w), edge)
  cv.density += 0.025 * in_chest * front * _ipow((np.cos(2 * np.pi * phase) + 1.0) / 2.0, 8)
  clavicle_v = -0.68 - 0.16 * (w - 0.08) + 0.1 * (w - 0.35) ** 2
  clavicle = _soft(0.028 - np.abs(v - clavicle_v), edge) * _soft(
      np.minimum(w - 0.07, 0.66 - w), edge)
  cv.density += 0.13 * clavicle
  cv.density += 0.2 * _soft(_ellipse_sd(w, v, 0.93, -0.74, 0.12, 0.13), edge)

  # Aortic knob and gastric bubble.
  cv.density += 0.04 * _soft(anat.knob_r - np.sqrt((u - 0.11) ** 2 + (v + 0.42) ** 2), edge)
  if rng.random() < 0.7:
    bubble = _soft(_ellipse_sd(u, v, 0.33, anat.base[1] + 0.1, 0.1, 0.055), edge)
    cv.density -= 0.2 * bubble * body
  if patient.female:
    for side in (-1, 1):
      breast = _soft(_ellipse_sd(side * u, v, 0.5, 0.42, 0.34, 0.26), 6 * edge)
      cv.density += 0.06 * breast


# ----------------------------------------------------------------------------
# Findings. Each returns a list of footprints (float arrays, one per instance).


def _nodule(cv: _Canvas):
  out = []
  for _ in range(1 + int(cv.rng.random() < 0.25)):
    _, cu, cvv = cv.point_in_lung(zone=(0.15, 0.85), margin=0.08)
    blob = cv.disc(cu, cvv, cv.rng.uniform(0.045, 0.07))
    cv.density += cv.rng.uniform(0.26, 0.38) * blob
    out.append(blob)
  return out


def _mass(cv: _Canvas):
  _, cu, cvv = cv.point_in_lung(zone=(0.1, 0.8), margin=0.12)
  radius = cv.rng.uniform(0.11, 0.18)
  angle = np.arctan2(cv.v - cvv, cv.u - cu)
  p1, p2 = cv.rng.uniform(0, 2 * np.pi, 2)
  lobes = 1.0 + 0.12 * np.sin(3 * angle + p1) + 0.08 * np.sin(5 * angle + p2)
  dist = np.sqrt((cv.u - cu) ** 2 + (cv.v - cvv) ** 2) / lobes
  blob = _soft(radius - dist, 0.2 * radius)
  cv.density += cv.rng.uniform(0.32, 0.42) * blob
  return [blob]


def _effusion(cv: _Canvas, sides=None):
  anat, out = cv.anat, []
  sides = sides or ([-1, 1] if cv.rng.random() < 0.3 else [int(cv.rng.choice([-1, 1]))])
  for side in sides:
    height = cv.rng.uniform(0.12, 0.32)
    t = np.clip((side * cv.u - anat.medial) / (anat.lateral - anat.medial), 0, 1)
    surface = anat.base[side] - height * (0.45 + 0.9 * t ** 2)  # Meniscus.
    fluid = cv.lungs[side] * _soft(cv.v - surface, 3 * cv.edge)
    cv.density += anat.air * 0.95 * fluid
    cv.markings_gain *= 1.0 - fluid
    out.append(fluid)
  return out


def _patch(cv: _Canvas, zone, size, density, cells, threshold, blur_edge):
  side, cu, cvv = cv.point_in_lung(zone=zone, margin=0.05)
  a, b = size * cv.rng.uniform(0.8, 1.2), size * cv.rng.uniform(0.7, 1.1)
  region = _soft(_ellipse_sd(cv.u, cv.v, cu, cvv, a, b), blur_edge)
  texture = np.clip((_smooth_noise(cv.rng, cv.shape, cells) + threshold) * 2.5, 0, 1)
  patch = region * texture * cv.lungs[side]
  cv.density += density * patch
  return patch


def _consolidation(cv: _Canvas):
  patch = _patch(cv, (0.45, 0.95), cv.rng.uniform(0.17, 0.25), 0.34, 12, 0.75, 0.06)
  # Air bronchograms: dark branching lines inside the dense region.
  bronchi = _ipow(1.0 - np.abs(_smooth_noise(cv.rng, cv.shape, 14)), 14)
  cv.density -= 0.12 * bronchi * patch
  return [patch]


def _pneumonia(cv: _Canvas):
  out = []
  for _ in range(1 + int(cv.rng.random() < 0.35)):
    out.append(_patch(cv, (0.35, 0.95), cv.rng.uniform(0.15, 0.23), 0.27, 9, 0.45, 0.12))
  return out


def _lung_opacity(cv: _Canvas):
  return [_patch(cv, (0.2, 0.9), cv.rng.uniform(0.13, 0.2), 0.26, 10, 0.6, 0.08)]


def _infiltration(cv: _Canvas):
  sides = [-1, 1] if cv.rng.random() < 0.5 else [int(cv.rng.choice([-1, 1]))]
  streaks = _ipow(1.0 - np.abs(_smooth_noise(cv.rng, cv.shape, 18)), 4)
  haze = 0.5 + 0.5 * np.clip(_smooth_noise(cv.rng, cv.shape, 5) + 0.5, 0, 1)
  out = []
  for side in sides:
    anat = cv.anat
    low = anat.apex + cv.rng.uniform(0.3, 0.5) * (anat.base[side] - anat.apex)
    zone = cv.lungs[side] * _soft(cv.v - low, 0.15)
    out.append(zone * haze)
    cv.density += (0.09 + 0.12 * streaks) * zone * haze
  return out


def _atelectasis(cv: _Canvas):
  side, cu, cvv = cv.point_in_lung(zone=(0.6, 0.85), margin=0.07)
  angle = math.radians(cv.rng.uniform(-20, 20))
  du, dv = cv.u - cu, cv.v - cvv
  along = du * math.cos(angle) + dv * math.sin(angle)
  across = -du * math.sin(angle) + dv * math.cos(angle)
  length = cv.rng.uniform(0.16, 0.24)
  band = _soft(cv.rng.uniform(0.022, 0.035) - np.abs(across), cv.edge) * _soft(
      length - np.abs(along), 0.05) * cv.lungs[side]
  cv.density += 0.3 * band
  return [band]


def _pneumothorax(cv: _Canvas):
  anat = cv.anat
  side = int(cv.rng.choice([-1, 1]))
  shrink = cv.rng.uniform(0.18, 0.4)
  hu, hv = side * 0.3, anat.base[side] - 0.15  # Lung collapses towards here.
  collapsed = _soft(_lung_sd(anat, side, hu + (cv.u - hu) / (1 - shrink),
                             hv + (cv.v - hv) / (1 - shrink)), cv.edge)
  region = np.clip(cv.lungs[side] - collapsed, 0.0, 1.0)
  cv.markings_gain *= 1.0 - region  # No lung markings beyond the pleural line.
  cv.density -= 0.06 * region
  cv.density += 0.05 * collapsed * cv.lungs[side]
  line = np.clip(collapsed * (1.0 - collapsed) * 4.0, 0, 1) * cv.lungs[side]
  cv.density += 0.12 * line
  return [region]


def _edema(cv: _Canvas):
  haze = np.zeros(cv.shape, np.float32)
  for side in (-1, 1):
    haze += np.exp(-((cv.u - side * 0.26) ** 2 + (cv.v + 0.05) ** 2) / (2 * 0.2 ** 2))
  haze *= cv.lung
  kerley = _soft(0.012 - np.abs(((cv.v * 16) % 1.0) - 0.5) / 16, cv.edge) * _soft(
      np.abs(cv.u) - (cv.anat.lateral - 0.12), cv.edge) * _soft(cv.v - 0.05, cv.edge)
  cv.density += 0.22 * haze + 0.1 * kerley * cv.lung
  return [haze]


def _emphysema(cv: _Canvas):
  out = []
  if cv.rng.random() < 0.6:  # Bullae: round dark spaces without markings.
    _, cu, cvv = cv.point_in_lung(zone=(0.05, 0.4), margin=0.1)
    bulla = cv.disc(cu, cvv, cv.rng.uniform(0.08, 0.13), softness=0.05)
    cv.density -= 0.07 * bulla * cv.lung
    cv.markings_gain *= 1.0 - bulla
    out.append(bulla)
  return out or [cv.lung]


def _reticular(cv: _Canvas, where: np.ndarray, gain: float):
  net = _ipow(1.0 - np.abs(_smooth_noise(cv.rng, cv.shape, 34)), 6)
  net += _ipow(1.0 - np.abs(_smooth_noise(cv.rng, cv.shape, 20)), 6)
  cv.density += gain * net * where
  return [where]


def _fibrosis(cv: _Canvas):
  periphery = _soft(np.abs(cv.u) - 0.35, 0.2) * _soft(cv.v + 0.1, 0.25)
  return _reticular(cv, periphery * cv.lung, 0.16)


def _ild(cv: _Canvas):
  return _reticular(cv, cv.lung * _soft(cv.v + 0.55, 0.2), 0.12)


def _pleural_thickening(cv: _Canvas):
  side = int(cv.rng.choice([-1, 1]))
  anat = cv.anat
  width = cv.rng.uniform(0.045, 0.07)
  inner = _soft(_lung_sd(anat, side, cv.u, cv.v + width, lateral=anat.lateral - width), cv.edge)
  band = np.clip(cv.lungs[side] - inner, 0, 1)
  lo, hi = sorted(cv.rng.uniform(anat.apex, anat.base[side] - 0.1, 2))
  band *= _soft(np.minimum(cv.v - lo + 0.15, hi + 0.15 - cv.v), 0.05)
  cv.density += 0.36 * band
  return [band]


def _hernia(cv: _Canvas):
  anat = cv.anat
  radius = cv.rng.uniform(0.1, 0.14)
  cu, cvv = cv.rng.uniform(-0.04, 0.08), anat.base[1] - radius * 0.7
  sac = _soft(radius - np.sqrt((cv.u - cu) ** 2 + (cv.v - cvv) ** 2), cv.edge * 2)
  air = sac * _soft(cvv - 0.2 * radius - cv.v, cv.edge)  # Air above a fluid level.
  cv.density += 0.15 * sac - 0.35 * air
  return [sac]


def _aortic_enlargement(cv: _Canvas):
  knob = cv.disc(0.11, -0.42, cv.anat.knob_r, softness=0.08)
  cv.density += 0.05 * knob
  return [knob]


def _calcification(cv: _Canvas):
  out = np.zeros(cv.shape, np.float32)
  _, cu, cvv = cv.point_in_lung(zone=(0.15, 0.8), margin=0.08)
  for _ in range(cv.rng.integers(2, 6)):
    du, dv = cv.rng.normal(0, 0.04, 2)
    out = np.maximum(out, cv.disc(cu + du, cvv + dv, cv.rng.uniform(0.02, 0.032), 0.1))
  cv.density += 0.55 * out
  return [out]


def _other_lesion(cv: _Canvas):
  """A lytic/sclerotic bone lesion over the lateral ribs."""
  side = int(cv.rng.choice([-1, 1]))
  cvv = cv.rng.uniform(cv.anat.apex + 0.2, cv.anat.base[side] - 0.15)
  blob = cv.disc(side * (cv.anat.lateral + 0.02), cvv, cv.rng.uniform(0.05, 0.08))
  cv.density += 0.3 * blob
  return [blob]


_DRAW = {
    'atelectasis': _atelectasis, 'effusion': _effusion,
    'infiltration': _infiltration, 'mass': _mass, 'nodule': _nodule,
    'pneumonia': _pneumonia, 'pneumothorax': _pneumothorax,
    'consolidation': _consolidation, 'edema': _edema, 'emphysema': _emphysema,
    'fibrosis': _fibrosis, 'pleural_thickening': _pleural_thickening,
    'hernia': _hernia, 'aortic_enlargement': _aortic_enlargement,
    'calcification': _calcification, 'lung_opacity': _lung_opacity,
    'other_lesion': _other_lesion, 'ild': _ild,
}
# Drawn before others: they change what later findings sit on.
_ORDER = ('emphysema', 'pneumothorax', 'effusion')


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
  anat = _anatomy(patient, findings, anatomy_rng)
  if view == 'AP':  # Divergent beam magnifies the heart a little.
    anat.heart_a *= 1.05
  cv = _Canvas(canvas_rng, height, width, patient, anat)
  _draw_anatomy(cv, patient)
  cv.rng = findings_rng
  footprints = {}
  ordered = sorted(findings, key=lambda f: (_ORDER.index(f) if f in _ORDER else 99, f))
  for finding in ordered:
    if finding == 'cardiomegaly':
      footprints[finding] = [_soft(_heart_sd(anat, cv.u, cv.v), cv.edge)]
    else:
      footprints[finding] = _DRAW[finding](cv)
  cv.density += cv.vessels * cv.markings_gain * cv.lung
  image = _expose(cv, exposure_rng)
  px = _pixel_grid(height, width)[2] * patient.scale
  return Film(image, footprints, 2 * anat.heart_a * px, 2 * anat.lateral * px)


def _expose(cv: _Canvas, rng) -> np.ndarray:
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
