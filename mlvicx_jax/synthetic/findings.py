"""Findings drawn on a `anatomy.Canvas`: each changes anatomy or adds density
and returns its footprints (float maps, one per instance), from which datasets
take boxes and masks."""
from __future__ import annotations

import math

import numpy as np

from mlvicx_jax.synthetic.anatomy import Canvas, ellipse_sd, ipow, lung_sd, smooth_noise, soft

# Findings. Each returns a list of footprints (float arrays, one per instance).


def _nodule(cv: Canvas):
  out = []
  for _ in range(1 + int(cv.rng.random() < 0.25)):
    _, cu, cvv = cv.point_in_lung(zone=(0.15, 0.85), margin=0.08)
    blob = cv.disc(cu, cvv, cv.rng.uniform(0.045, 0.07))
    cv.density += cv.rng.uniform(0.26, 0.38) * blob
    out.append(blob)
  return out


def _mass(cv: Canvas):
  _, cu, cvv = cv.point_in_lung(zone=(0.1, 0.8), margin=0.12)
  radius = cv.rng.uniform(0.11, 0.18)
  angle = np.arctan2(cv.v - cvv, cv.u - cu)
  p1, p2 = cv.rng.uniform(0, 2 * np.pi, 2)
  lobes = 1.0 + 0.12 * np.sin(3 * angle + p1) + 0.08 * np.sin(5 * angle + p2)
  dist = np.sqrt((cv.u - cu) ** 2 + (cv.v - cvv) ** 2) / lobes
  blob = soft(radius - dist, 0.2 * radius)
  cv.density += cv.rng.uniform(0.32, 0.42) * blob
  return [blob]


def _effusion(cv: Canvas, sides=None):
  anat, out = cv.anat, []
  sides = sides or ([-1, 1] if cv.rng.random() < 0.3 else [int(cv.rng.choice([-1, 1]))])
  for side in sides:
    height = cv.rng.uniform(0.12, 0.32)
    t = np.clip((side * cv.u - anat.medial) / (anat.lateral - anat.medial), 0, 1)
    surface = anat.base[side] - height * (0.45 + 0.9 * t ** 2)  # Meniscus.
    fluid = cv.lungs[side] * soft(cv.v - surface, 3 * cv.edge)
    cv.density += anat.air * 0.95 * fluid
    cv.markings_gain *= 1.0 - fluid
    out.append(fluid)
  return out


def _patch(cv: Canvas, zone, size, density, cells, threshold, blur_edge):
  side, cu, cvv = cv.point_in_lung(zone=zone, margin=0.05)
  a, b = size * cv.rng.uniform(0.8, 1.2), size * cv.rng.uniform(0.7, 1.1)
  region = soft(ellipse_sd(cv.u, cv.v, cu, cvv, a, b), blur_edge)
  texture = np.clip((smooth_noise(cv.rng, cv.shape, cells) + threshold) * 2.5, 0, 1)
  patch = region * texture * cv.lungs[side]
  cv.density += density * patch
  return patch


def _consolidation(cv: Canvas):
  patch = _patch(cv, (0.45, 0.95), cv.rng.uniform(0.17, 0.25), 0.34, 12, 0.75, 0.06)
  # Air bronchograms: dark branching lines inside the dense region.
  bronchi = ipow(1.0 - np.abs(smooth_noise(cv.rng, cv.shape, 14)), 14)
  cv.density -= 0.12 * bronchi * patch
  return [patch]


def _pneumonia(cv: Canvas):
  out = []
  for _ in range(1 + int(cv.rng.random() < 0.35)):
    out.append(_patch(cv, (0.35, 0.95), cv.rng.uniform(0.15, 0.23), 0.27, 9, 0.45, 0.12))
  return out


def _lung_opacity(cv: Canvas):
  return [_patch(cv, (0.2, 0.9), cv.rng.uniform(0.13, 0.2), 0.26, 10, 0.6, 0.08)]


def _infiltration(cv: Canvas):
  sides = [-1, 1] if cv.rng.random() < 0.5 else [int(cv.rng.choice([-1, 1]))]
  streaks = ipow(1.0 - np.abs(smooth_noise(cv.rng, cv.shape, 18)), 4)
  haze = 0.5 + 0.5 * np.clip(smooth_noise(cv.rng, cv.shape, 5) + 0.5, 0, 1)
  out = []
  for side in sides:
    anat = cv.anat
    low = anat.apex + cv.rng.uniform(0.3, 0.5) * (anat.base[side] - anat.apex)
    zone = cv.lungs[side] * soft(cv.v - low, 0.15)
    out.append(zone * haze)
    cv.density += (0.09 + 0.12 * streaks) * zone * haze
  return out


def _atelectasis(cv: Canvas):
  side, cu, cvv = cv.point_in_lung(zone=(0.6, 0.85), margin=0.07)
  angle = math.radians(cv.rng.uniform(-20, 20))
  du, dv = cv.u - cu, cv.v - cvv
  along = du * math.cos(angle) + dv * math.sin(angle)
  across = -du * math.sin(angle) + dv * math.cos(angle)
  length = cv.rng.uniform(0.16, 0.24)
  band = soft(cv.rng.uniform(0.022, 0.035) - np.abs(across), cv.edge) * soft(
      length - np.abs(along), 0.05) * cv.lungs[side]
  cv.density += 0.3 * band
  return [band]


def _pneumothorax(cv: Canvas):
  anat = cv.anat
  side = int(cv.rng.choice([-1, 1]))
  shrink = cv.rng.uniform(0.18, 0.4)
  hu, hv = side * 0.3, anat.base[side] - 0.15  # Lung collapses towards here.
  collapsed = soft(lung_sd(anat, side, hu + (cv.u - hu) / (1 - shrink),
                             hv + (cv.v - hv) / (1 - shrink)), cv.edge)
  region = np.clip(cv.lungs[side] - collapsed, 0.0, 1.0)
  cv.markings_gain *= 1.0 - region  # No lung markings beyond the pleural line.
  cv.density -= 0.06 * region
  cv.density += 0.05 * collapsed * cv.lungs[side]
  line = np.clip(collapsed * (1.0 - collapsed) * 4.0, 0, 1) * cv.lungs[side]
  cv.density += 0.12 * line
  return [region]


def _edema(cv: Canvas):
  haze = np.zeros(cv.shape, np.float32)
  for side in (-1, 1):
    haze += np.exp(-((cv.u - side * 0.26) ** 2 + (cv.v + 0.05) ** 2) / (2 * 0.2 ** 2))
  haze *= cv.lung
  kerley = soft(0.012 - np.abs(((cv.v * 16) % 1.0) - 0.5) / 16, cv.edge) * soft(
      np.abs(cv.u) - (cv.anat.lateral - 0.12), cv.edge) * soft(cv.v - 0.05, cv.edge)
  cv.density += 0.22 * haze + 0.1 * kerley * cv.lung
  return [haze]


def _emphysema(cv: Canvas):
  out = []
  if cv.rng.random() < 0.6:  # Bullae: round dark spaces without markings.
    _, cu, cvv = cv.point_in_lung(zone=(0.05, 0.4), margin=0.1)
    bulla = cv.disc(cu, cvv, cv.rng.uniform(0.08, 0.13), softness=0.05)
    cv.density -= 0.07 * bulla * cv.lung
    cv.markings_gain *= 1.0 - bulla
    out.append(bulla)
  return out or [cv.lung]


def _reticular(cv: Canvas, where: np.ndarray, gain: float):
  net = ipow(1.0 - np.abs(smooth_noise(cv.rng, cv.shape, 34)), 6)
  net += ipow(1.0 - np.abs(smooth_noise(cv.rng, cv.shape, 20)), 6)
  cv.density += gain * net * where
  return [where]


def _fibrosis(cv: Canvas):
  periphery = soft(np.abs(cv.u) - 0.35, 0.2) * soft(cv.v + 0.1, 0.25)
  return _reticular(cv, periphery * cv.lung, 0.16)


def _ild(cv: Canvas):
  return _reticular(cv, cv.lung * soft(cv.v + 0.55, 0.2), 0.12)


def _pleural_thickening(cv: Canvas):
  side = int(cv.rng.choice([-1, 1]))
  anat = cv.anat
  width = cv.rng.uniform(0.045, 0.07)
  inner = soft(lung_sd(anat, side, cv.u, cv.v + width, lateral=anat.lateral - width), cv.edge)
  band = np.clip(cv.lungs[side] - inner, 0, 1)
  lo, hi = sorted(cv.rng.uniform(anat.apex, anat.base[side] - 0.1, 2))
  band *= soft(np.minimum(cv.v - lo + 0.15, hi + 0.15 - cv.v), 0.05)
  cv.density += 0.36 * band
  return [band]


def _hernia(cv: Canvas):
  anat = cv.anat
  radius = cv.rng.uniform(0.1, 0.14)
  cu, cvv = cv.rng.uniform(-0.04, 0.08), anat.base[1] - radius * 0.7
  sac = soft(radius - np.sqrt((cv.u - cu) ** 2 + (cv.v - cvv) ** 2), cv.edge * 2)
  air = sac * soft(cvv - 0.2 * radius - cv.v, cv.edge)  # Air above a fluid level.
  cv.density += 0.15 * sac - 0.35 * air
  return [sac]


def _aortic_enlargement(cv: Canvas):
  knob = cv.disc(0.11, -0.42, cv.anat.knob_r, softness=0.08)
  cv.density += 0.05 * knob
  return [knob]


def _calcification(cv: Canvas):
  out = np.zeros(cv.shape, np.float32)
  _, cu, cvv = cv.point_in_lung(zone=(0.15, 0.8), margin=0.08)
  for _ in range(cv.rng.integers(2, 6)):
    du, dv = cv.rng.normal(0, 0.04, 2)
    out = np.maximum(out, cv.disc(cu + du, cvv + dv, cv.rng.uniform(0.02, 0.032), 0.1))
  cv.density += 0.55 * out
  return [out]


def _other_lesion(cv: Canvas):
  """A lytic/sclerotic bone lesion over the lateral ribs."""
  side = int(cv.rng.choice([-1, 1]))
  cvv = cv.rng.uniform(cv.anat.apex + 0.2, cv.anat.base[side] - 0.15)
  blob = cv.disc(side * (cv.anat.lateral + 0.02), cvv, cv.rng.uniform(0.05, 0.08))
  cv.density += 0.3 * blob
  return [blob]


DRAW = {
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
ORDER = ('emphysema', 'pneumothorax', 'effusion')

