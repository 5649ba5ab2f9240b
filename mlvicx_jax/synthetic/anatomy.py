"""Normal anatomy of a procedural frontal chest film, in a patient frame.

A film is composed in "density" space (u to the patient's left = image right,
v downwards, about -1..1) on a `Canvas`; `findings` adds to it and `phantom`
exposes it. Patient traits (`Patient`) stay fixed across one patient's films.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import numpy as np
from PIL import Image


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


def build_anatomy(patient: Patient, findings: Sequence[str], rng) -> Anatomy:
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


def ipow(x: np.ndarray, n: int) -> np.ndarray:
  """x ** n by repeated squaring (numpy's general power is slow)."""
  result, base = None, x
  while n:
    if n & 1:
      result = base if result is None else result * base
    n >>= 1
    if n:
      base = base * base
  return result


def soft(signed: np.ndarray, edge: float) -> np.ndarray:
  """0..1 inside-ness of a signed distance-like field, antialiased over `edge`."""
  return np.clip(0.5 + signed / edge, 0.0, 1.0)


def ellipse_sd(u, v, cu, cv, a, b):
  return (1.0 - np.sqrt(((u - cu) / a) ** 2 + ((v - cv) / b) ** 2)) * min(a, b)


HEART_SHEAR = 0.4  # The heart leans: its apex lies low on the patient's left.


def heart_sd(anat: Anatomy, u, v):
  """Sheared ellipse with horizontal/vertical half-extents heart_a/heart_b."""
  dv = v - anat.heart_v
  return ellipse_sd(u - HEART_SHEAR * dv, dv, anat.heart_u, 0.0, anat.heart_a,
                     anat.heart_b)


def lung_sd(anat: Anatomy, side: int, u, v, lateral: float | None = None):
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
  ellipse = ellipse_sd(w_taper, v, centre, 0.5 * (anat.apex + bottom), 1.08 * half,
                        0.5 * (bottom - anat.apex))
  dome = base - anat.dome[side] * np.clip(1.0 - ((w - centre) / half) ** 2, 0.0, 1.0)
  sd = np.minimum(np.minimum(ellipse, dome - v), w - anat.medial)
  sd = np.minimum(sd, -heart_sd(anat, u, v))
  if side == 1:  # The aortic knob indents the left upper lung.
    knob = np.sqrt((u - 0.11) ** 2 + (v + 0.42) ** 2) - anat.knob_r
    sd = np.minimum(sd, knob)
  return sd


@functools.lru_cache(maxsize=8)
def pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray, float]:
  unit = min(height, width) / 2.0
  y = ((np.arange(height, dtype=np.float32) + 0.5 - height / 2.0) / unit)[:, None]
  x = ((np.arange(width, dtype=np.float32) + 0.5 - width / 2.0) / unit)[None, :]
  return x, y, unit


def smooth_noise(rng, shape, cells: int) -> np.ndarray:
  """Band-limited noise in about [-1, 1]: a cells x cells grid, upsampled."""
  height, width = shape
  coarse = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32) / 1.2
  fine = Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR)
  return np.asarray(fine)


class Canvas:
  """Density image and coordinates of one film being drawn."""

  def __init__(self, rng, height, width, patient: Patient, anat: Anatomy):
    self.rng = rng
    self.shape = (height, width)
    self.anat = anat
    x, y, unit = pixel_grid(height, width)
    self.scale = patient.scale
    self.edge = 1.5 / (unit * patient.scale)  # About 1.5 px in patient units.
    cx, cy = rng.normal(0.0, 0.045), rng.normal(0.05, 0.04)
    angle = math.radians(rng.normal(0.0, 3.0))
    c, s = math.cos(angle), math.sin(angle)
    self.u = ((x - cx) * c + (y - cy) * s) / patient.scale
    self.v = (-(x - cx) * s + (y - cy) * c) / patient.scale
    self.lung_sd = {side: lung_sd(anat, side, self.u, self.v) for side in (-1, 1)}
    self.lungs = {side: soft(sd, self.edge) for side, sd in self.lung_sd.items()}
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
      if lung_sd(anat, s, s * w, v) > margin:
        return s, s * w, v
    return s, s * 0.45, 0.5 * (anat.apex + anat.base[s])


# ----------------------------------------------------------------------------
# Normal anatomy.


def draw_anatomy(cv: Canvas, patient: Patient):
  anat, u, v, edge, rng = cv.anat, cv.u, cv.v, cv.edge, cv.rng
  w = np.abs(u)
  slope = np.clip((v + 1.12) / 0.42, 0.0, 1.0)
  half_width = 0.24 + 0.7 * slope * slope * (3 - 2 * slope)
  body = soft(half_width - w, 2 * edge)
  cv.density += patient.body_density * body
  if rng.random() < 0.5:  # Arms beside the chest.
    arms = soft(np.minimum(w - 0.97, 1.25 - w), 2 * edge) * soft(v + 0.7, 0.1)
    cv.density += 0.8 * patient.body_density * arms

  # Lungs: air, vessel markings that fade from the hila to the periphery.
  hilum = np.exp(-np.sqrt((w - 0.22) ** 2 + (v + 0.12) ** 2) / 0.55)
  ridges = np.zeros(cv.shape, np.float32)
  for cells, gain in ((10, 1.0), (22, 0.6)):
    ridges += gain * ipow(1.0 - np.abs(smooth_noise(rng, cv.shape, cells)), 6)
  for side in (-1, 1):
    depth = np.clip(0.6 + cv.lung_sd[side] / 0.3, 0.6, 1.0)
    cv.density -= anat.air * cv.lungs[side] * depth
  cv.vessels = 0.055 * anat.markings * ridges * (0.3 + hilum)

  # Spine, posterior and anterior ribs, clavicles, humeral heads.
  spine = soft(0.075 - w, edge) * body
  cv.density += spine * (0.11 + 0.025 * np.cos(2 * np.pi * v / 0.115))
  spacing = rng.uniform(0.118, 0.132)
  in_chest = soft(np.minimum(w - 0.06, anat.lateral + 0.06 - w), edge) * soft(
      np.minimum(v - anat.apex + 0.08, max(anat.base.values()) + 0.12 - v), edge)
  phase = (v - anat.apex - (-0.2 * w + 0.75 * w ** 2)) / spacing
  cv.density += 0.055 * in_chest * ipow((np.cos(2 * np.pi * phase) + 1.0) / 2.0, 10)
  phase = (v - anat.apex - 0.05 - 0.45 * (0.8 - w)) / spacing / 1.05
  front = soft(np.minimum(w - 0.25, anat.lateral - w), edge)
  cv.density += 0.025 * in_chest * front * ipow((np.cos(2 * np.pi * phase) + 1.0) / 2.0, 8)
  clavicle_v = -0.68 - 0.16 * (w - 0.08) + 0.1 * (w - 0.35) ** 2
  clavicle = soft(0.028 - np.abs(v - clavicle_v), edge) * soft(
      np.minimum(w - 0.07, 0.66 - w), edge)
  cv.density += 0.13 * clavicle
  cv.density += 0.2 * soft(ellipse_sd(w, v, 0.93, -0.74, 0.12, 0.13), edge)

  # Aortic knob and gastric bubble.
  cv.density += 0.04 * soft(anat.knob_r - np.sqrt((u - 0.11) ** 2 + (v + 0.42) ** 2), edge)
  if rng.random() < 0.7:
    bubble = soft(ellipse_sd(u, v, 0.33, anat.base[1] + 0.1, 0.1, 0.055), edge)
    cv.density -= 0.2 * bubble * body
  if patient.female:
    for side in (-1, 1):
      breast = soft(ellipse_sd(side * u, v, 0.5, 0.42, 0.34, 0.26), 6 * edge)
      cv.density += 0.06 * breast

