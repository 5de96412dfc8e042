"""Pictures of the synthetic lesions: a metadata row in, an RGB photo and its lesion mask out.

A lesion is drawn once on a patch of skin (``draw_lesion``: what the class and the patient
decide); each photo of it re-frames that drawing and adds its own light and distractors
(``photograph``), so photos of one lesion are near-duplicates, as in PAD-UFES-20.

* **ABCD cues per class**: Asymmetry (low-frequency warping of the outline), Border irregularity
  (high-frequency ripples, sharp or blurred edge), Colour variegation (one to four colours mixed
  by a smooth random field), Diameter (``diameter_1/2`` in mm, which sets the drawn size).

  ==== =========================================================================================
  NEV  small, round, symmetric, smooth sharp border, one even brown
  SEK  medium, "stuck-on" sharp border, tan with bright keratin dots and dark cracks
  MEL  large, asymmetric, ragged border, two to four colours (brown, black, blue-grey, red)
  BCC  pink pearly nodule, bright rolled rim, red branching vessels, sometimes a dark ulcer
  ACK  red scaly patch, blurred border, white scale flecks
  SCC  drawn by exactly the same rules as ACK: **only the metadata tells them apart**
       (SCC bleeds, is raised, grew and hurts far more often, in older patients)
  ==== =========================================================================================

  NEV and SEK also overlap partly (a share of naevi are textured); age separates them (SEK in
  older patients).
* **Distractors independent of the label**: hairs, ruler marks, dark vignetted corners, skin
  tone from the Fitzpatrick type, uneven lighting, sensor noise, random framing and rotation.

Every random draw comes from the generator passed in, in a fixed order: reordering draws here
changes every picture, which needs a new ``GENERATOR_VERSION`` (in ``config``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

from datamodules.synthetic.metadata import true_diameter_mm

if TYPE_CHECKING:  # only a type here; config imports this module to generate the dataset
    from datamodules.synthetic.config import SyntheticConfig

SKIN = np.array([
    [0.96, 0.84, 0.76], [0.92, 0.77, 0.66], [0.84, 0.66, 0.53],
    [0.70, 0.52, 0.40], [0.52, 0.37, 0.27], [0.36, 0.25, 0.18],
])  # fmt: skip
BROWN = np.array([0.50, 0.33, 0.22])
TAN = np.array([0.66, 0.50, 0.34])
MEL_PALETTE = np.array([[0.38, 0.22, 0.13], [0.12, 0.08, 0.08], [0.38, 0.42, 0.52], [0.60, 0.27, 0.22]])
PINK = np.array([0.93, 0.68, 0.68])
RED = np.array([0.80, 0.40, 0.36])


def _smooth_field(rng: np.random.Generator, size: int, scale: int) -> np.ndarray:
    """A smooth random field in [0, 1] (upsampled low-resolution noise)."""
    coarse = rng.random((scale, scale)).astype(np.float32)
    field = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    field -= field.min()
    return field / max(float(field.max()), 1e-6)


def _outline(rng, asymmetry: float, ripple: float, samples: int = 720) -> tuple[np.ndarray, np.ndarray]:
    """Radius multiplier per angle: low harmonics warp the shape, high ones ripple the border.

    Returned as a table over ``samples`` angles (looked up per pixel), which is far cheaper
    than evaluating the harmonics on every pixel.
    """
    angles = np.linspace(-np.pi, np.pi, samples + 1, dtype=np.float32)
    r = np.ones_like(angles)
    for k in (1, 2, 3):
        r += asymmetry * rng.uniform(0.3, 1.0) / k * np.cos(k * angles + rng.uniform(0, 2 * np.pi))
    for k in range(5, 16):
        r += ripple * rng.uniform(0, 1.0) * 3 / k * np.cos(k * angles + rng.uniform(0, 2 * np.pi))
    r[-1] = r[0]  # periodic
    return angles, np.clip(r, 0.35, None)


CANVAS = 192  #: side of the canvas a lesion is drawn on, before each photo frames it


def render_lesion(row: dict, rng: np.random.Generator, config: SyntheticConfig):
    """One photo (RGB uint8) and its lesion mask for a metadata row, drawn from one generator."""
    return photograph(*draw_lesion(row, rng), rng, config)


def draw_lesion(row: dict, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The lesion on its patch of skin (float RGB canvas) and its mask: everything the class and
    the patient decide. Framing, light and distractors belong to each photo (``photograph``)."""
    cls = row["diagnostic"]
    size = CANVAS
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    fitz = int(float(row["fitspatrick"])) if row["fitspatrick"] else int(rng.choice([2, 3]))
    skin = np.clip(SKIN[fitz - 1] * (1 + rng.normal(0, 0.03, 3)), 0, 1)
    image = np.broadcast_to(skin, (size, size, 3)).astype(np.float32)
    image = image * (0.92 + 0.08 * _smooth_field(rng, size, 4))[..., None]  # skin mottling

    # Diameter: the lesion's size on the skin follows its diameter in mm (the photo's zoom varies).
    radius = size * float(np.clip(0.06 + 0.016 * true_diameter_mm(row), 0.08, 0.34))
    cx, cy = size / 2, size / 2
    theta = np.arctan2(yy - cy, xx - cx)
    dist = np.hypot(xx - cx, yy - cy)
    aspect = rng.uniform(0.8, 1.0)
    rot = rng.uniform(0, np.pi)
    dist = dist * np.sqrt(np.cos(theta - rot) ** 2 + (np.sin(theta - rot) / aspect) ** 2)

    asym, ripple, softness = {
        "NEV": (0.04, 0.01, 1.2),
        "SEK": (0.08, 0.02, 1.2),
        "MEL": (0.30, 0.10, 1.8),
        "BCC": (0.08, 0.03, 2.2),
        "ACK": (0.15, 0.04, 6.5),
        "SCC": (0.15, 0.04, 6.5),
    }[cls]
    angles, table = _outline(rng, asym, ripple)
    r_theta = radius * np.interp(theta, angles, table).astype(np.float32)
    inside = 1.0 / (1.0 + np.exp(np.clip((dist - r_theta) / softness, -50, 50)))  # soft lesion alpha
    mask = (dist <= r_theta).astype(np.uint8)

    lesion = _lesion_colour(cls, rng, size, dist, r_theta)
    alpha = inside * {"BCC": 0.8, "ACK": 0.75, "SCC": 0.75}.get(cls, 0.95)
    image = image * (1 - alpha[..., None]) + lesion * alpha[..., None]
    image = _class_details(cls, rng, image, mask, dist, r_theta, cx, cy)
    return image.astype(np.float32), mask


def photograph(canvas: np.ndarray, mask: np.ndarray, rng: np.random.Generator, config: SyntheticConfig):
    """One photo of a drawn lesion: random size, zoom, rotation and framing, then lighting,
    distractors (independent of the label) and sensor noise. Returns RGB uint8 and mask uint8."""
    size = int(rng.integers(config.min_size, config.max_size + 1))
    zoom = rng.uniform(0.8, 1.2)
    matrix = cv2.getRotationMatrix2D((CANVAS / 2, CANVAS / 2), rng.uniform(0, 360), zoom * size / CANVAS)
    matrix[:, 2] += (size - CANVAS) / 2 + rng.normal(0, size * 0.05, 2)
    image = cv2.warpAffine(canvas, matrix, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT)
    mask = cv2.warpAffine(mask, matrix, (size, size), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT)
    image = _distractors(rng, image.astype(np.float64))
    image = np.clip(image + rng.normal(0, 0.015, image.shape), 0, 1)
    return (image * 255).astype(np.uint8), mask


def _lesion_colour(cls, rng, size, dist, r_theta) -> np.ndarray:
    field = _smooth_field(rng, size, 6)[..., None]
    if cls == "NEV":
        colour = BROWN * rng.uniform(0.7, 1.15) * (1 + rng.normal(0, 0.04, 3))
        return np.clip(colour * (0.95 + 0.1 * field), 0, 1)
    if cls == "SEK":
        colour = TAN * rng.uniform(0.75, 1.15) * (1 + rng.normal(0, 0.04, 3))
        return colour * (0.9 + 0.2 * field)
    if cls == "MEL":
        n = int(rng.integers(2, 5))
        picks = MEL_PALETTE[rng.choice(len(MEL_PALETTE), size=n, replace=False)]
        level = np.clip((_smooth_field(rng, size, 5) * n).astype(int), 0, n - 1)
        return picks[level] * (0.9 + 0.2 * field)
    if cls == "BCC":
        rim = np.exp(-((dist - 0.85 * r_theta) ** 2) / (2 * (0.12 * r_theta) ** 2))[..., None]
        return np.clip(PINK * (0.95 + 0.1 * field) + 0.12 * rim, 0, 1)
    # ACK and SCC: the same red scaly patch
    return RED * rng.uniform(0.85, 1.1) * (0.85 + 0.3 * field)


def _class_details(cls, rng, image, mask, dist, r_theta, cx, cy) -> np.ndarray:
    size = image.shape[0]
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return image
    if cls == "SEK" or (cls == "NEV" and rng.random() < 0.2):
        # keratin dots (bright) and fissures (dark); a fifth of naevi get a few dots too
        for _ in range(int(rng.integers(8, 20)) if cls == "SEK" else int(rng.integers(2, 6))):
            j = rng.integers(len(ys))
            cv2.circle(image, (int(xs[j]), int(ys[j])), int(rng.integers(2, 4)),
                       tuple(float(v) for v in np.clip(TAN + 0.25, 0, 1)), -1, cv2.LINE_AA)
        for _ in range(int(rng.integers(2, 5)) if cls == "SEK" else 0):
            j = rng.integers(len(ys))
            end = (int(xs[j] + rng.normal(0, size * 0.06)), int(ys[j] + rng.normal(0, size * 0.06)))
            cv2.line(image, (int(xs[j]), int(ys[j])), end, (0.3, 0.2, 0.12), 2, cv2.LINE_AA)
    elif cls == "BCC":
        for _ in range(int(rng.integers(2, 5))):  # branching vessels
            angle = rng.uniform(0, 2 * np.pi)
            start = np.array([cx, cy]) + rng.uniform(0, 0.5) * r_theta.max() * np.array([np.cos(angle), np.sin(angle)])
            points = [start]
            for _ in range(4):
                angle += rng.normal(0, 0.6)
                points.append(points[-1] + rng.uniform(2, max(2.5, size * 0.05)) * np.array([np.cos(angle), np.sin(angle)]))
            cv2.polylines(image, [np.array(points, np.int32)], False, (0.75, 0.1, 0.15), 2, cv2.LINE_AA)
        if rng.random() < 0.4:  # ulcer
            cv2.circle(image, (int(cx), int(cy)), max(2, int(0.25 * np.median(r_theta))),
                       (0.45, 0.15, 0.12), -1, cv2.LINE_AA)
    elif cls in ("ACK", "SCC"):
        for _ in range(int(rng.integers(10, 25))):  # white scale flecks
            j = rng.integers(len(ys))
            axes = (int(rng.integers(2, 4)), int(rng.integers(1, 3)))
            cv2.ellipse(image, (int(xs[j]), int(ys[j])), axes, float(rng.uniform(0, 180)), 0, 360,
                        (0.95, 0.92, 0.85), -1, cv2.LINE_AA)
    return image


def _distractors(rng, image) -> np.ndarray:
    size = image.shape[0]
    if rng.random() < 0.4:  # hairs
        colour = (0.12, 0.09, 0.07) if rng.random() < 0.8 else (0.55, 0.45, 0.35)
        for _ in range(int(rng.integers(1, 9))):
            p0 = rng.uniform(0, size, 2)
            angle = rng.uniform(0, 2 * np.pi)
            bend = rng.normal(0, 0.3)
            pts = [p0]
            for _ in range(6):
                angle += bend * 0.3
                pts.append(pts[-1] + size * 0.08 * np.array([np.cos(angle), np.sin(angle)]))
            cv2.polylines(image, [np.array(pts, np.int32)], False, colour, 1, cv2.LINE_AA)
    if rng.random() < 0.2:  # ruler marks along one edge
        edge = int(rng.integers(4))
        step = max(3, size // 25)
        for t in range(step, size - step, step):
            length = 6 if (t // step) % 5 == 0 else 3
            a, b = ((t, 1), (t, 1 + length)) if edge == 0 else ((t, size - 2), (t, size - 2 - length)) \
                if edge == 1 else ((1, t), (1 + length, t)) if edge == 2 else ((size - 2, t), (size - 2 - length, t))
            cv2.line(image, a, b, (0.1, 0.1, 0.1), 1)
    if rng.random() < 0.3:  # dark corners (dermatoscope vignette)
        yy, xx = np.mgrid[0:size, 0:size]
        r = np.hypot(xx - size / 2, yy - size / 2) / (size / 2)
        image = image * np.clip(1.6 - r * rng.uniform(0.7, 0.9), 0.05, 1)[..., None]
    light = 1 + rng.uniform(-0.15, 0.15) * (np.linspace(-1, 1, size)[None, :, None])
    return image * light * rng.uniform(0.85, 1.1)
