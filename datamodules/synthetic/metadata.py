"""Metadata of the synthetic lesions: patients -> lesions -> images, one row per image in
PAD-UFES-20's columns and value formats.

Most patients have one lesion, some two or three; a lesion has one or two photos. Class
frequencies follow PAD-UFES-20 (``CLASS_PRIOR``). Per class, ``CLASS_METADATA`` sets the age, how
often each of the six lesion questions is answered ``True``, the diameter and the likely body
regions. It is what tells SCC from ACK, whose pictures are drawn alike: SCC bleeds, is raised,
grew and hurts far more often, in older patients. It also separates SEK (older patients) from
the naevi that look like it.

Format quirks of the real data are kept: ``UNK`` answers to the questions, and gender, history,
background, Fitzpatrick and diameter fields blank for non-biopsied patients.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from datamodules.sources import pad_ufes20

if TYPE_CHECKING:  # only a type here; config imports this module to generate the dataset
    from datamodules.synthetic.config import SyntheticConfig

#: Share of each diagnosis, PAD-UFES-20's own (e.g. ACK 730 and MEL 52 of 2,298 images).
CLASS_PRIOR = {"ACK": 0.318, "BCC": 0.368, "MEL": 0.023, "NEV": 0.106, "SCC": 0.084, "SEK": 0.101}

#: Per class: mean/sd of age, P(True) of the six questions, diameter mean (mm), likely regions.
CLASS_METADATA = {
    "ACK": dict(age=(64, 11), itch=0.55, grew=0.25, hurt=0.15, changed=0.10, bleed=0.10,
                elevation=0.30, diameter=8, regions=["FACE", "FOREARM", "ARM", "HAND", "NOSE", "SCALP"]),
    "SCC": dict(age=(69, 10), itch=0.45, grew=0.85, hurt=0.60, changed=0.45, bleed=0.75,
                elevation=0.85, diameter=8, regions=["FACE", "FOREARM", "ARM", "HAND", "NOSE", "LIP"]),
    "BCC": dict(age=(62, 12), itch=0.30, grew=0.60, hurt=0.20, changed=0.30, bleed=0.45,
                elevation=0.60, diameter=9, regions=["FACE", "NOSE", "BACK", "CHEST", "NECK", "EAR"]),
    "MEL": dict(age=(56, 14), itch=0.25, grew=0.80, hurt=0.15, changed=0.75, bleed=0.30,
                elevation=0.40, diameter=12, regions=["BACK", "CHEST", "ARM", "THIGH", "FACE"]),
    "NEV": dict(age=(31, 12), itch=0.10, grew=0.20, hurt=0.05, changed=0.15, bleed=0.05,
                elevation=0.45, diameter=5, regions=["BACK", "CHEST", "ABDOMEN", "FACE", "ARM"]),
    "SEK": dict(age=(66, 10), itch=0.40, grew=0.35, hurt=0.05, changed=0.15, bleed=0.05,
                elevation=0.70, diameter=9, regions=["BACK", "CHEST", "FACE", "ABDOMEN", "NECK"]),
}  # fmt: skip
QUESTIONS = ["itch", "grew", "hurt", "changed", "bleed", "elevation"]
BACKGROUNDS = ["POMERANIA", "GERMANY", "BRAZIL", "ITALY", "NETHERLANDS", "POLAND", "PORTUGAL"]


def _age_likelihood(cls: str, age: float) -> float:
    mean, sd = CLASS_METADATA[cls]["age"]
    return math.exp(-0.5 * ((age - mean) / sd) ** 2) / sd


def sample_metadata(config: SyntheticConfig) -> list[dict]:
    """Rows in PAD-UFES-20's columns, ordered patient by patient."""
    rng = np.random.default_rng([config.seed, 0])
    classes = list(CLASS_PRIOR)
    prior = np.array([CLASS_PRIOR[c] for c in classes])
    rows, lesion_counter, image_counter = [], 0, 0
    for patient in range(config.n_patients):
        first = classes[rng.choice(len(classes), p=prior / prior.sum())]
        mean, sd = CLASS_METADATA[first]["age"]
        age = int(np.clip(round(rng.normal(mean, sd)), 6, 95))
        biopsied = rng.random() < 0.6  # history fields are blank for non-biopsied rows, as in PAD
        patient_fields = {
            "patient_id": f"PAT_{patient + 1}",
            "age": str(age),
            "gender": rng.choice(["MALE", "FEMALE"]) if biopsied else "",
            "smoke": _bool(rng, 0.15) if biopsied else "",
            "drink": _bool(rng, 0.3) if biopsied else "",
            "pesticide": _bool(rng, 0.3) if biopsied else "",
            "skin_cancer_history": _bool(rng, 0.45) if biopsied else "",
            "cancer_history": _bool(rng, 0.5) if biopsied else "",
            "has_piped_water": _bool(rng, 0.7) if biopsied else "",
            "has_sewage_system": _bool(rng, 0.5) if biopsied else "",
            "background_father": rng.choice(BACKGROUNDS) if biopsied else "",
            "background_mother": rng.choice(BACKGROUNDS) if biopsied else "",
            "fitspatrick": f"{float(rng.choice([1, 2, 3, 4, 5, 6], p=[.12, .45, .28, .1, .04, .01])):.1f}"
            if biopsied else "",
        }  # fmt: skip
        n_lesions = int(rng.choice([1, 2, 3], p=[0.82, 0.14, 0.04]))
        for k in range(n_lesions):
            if k == 0:
                cls = first
            else:  # further lesions of the same patient agree with the patient's age
                weights = prior * np.array([_age_likelihood(c, age) for c in classes])
                cls = classes[rng.choice(len(classes), p=weights / weights.sum())]
            spec = CLASS_METADATA[cls]
            lesion_counter += 1
            d1 = max(1.0, rng.normal(spec["diameter"], spec["diameter"] * 0.3))
            lesion_fields = {
                "lesion_id": str(lesion_counter),
                "diagnostic": cls,
                "region": rng.choice(spec["regions"]) if rng.random() < 0.8 else rng.choice(pad_ufes20.REGIONS),
                "diameter_1": f"{d1:.1f}" if biopsied else "",
                "diameter_2": f"{d1 * rng.uniform(0.6, 1.0):.1f}" if biopsied else "",
                "biopsed": str(biopsied or cls in ("BCC", "MEL", "SCC")),
                "_diameter": d1,
            }
            for q in QUESTIONS:
                lesion_fields[q] = "UNK" if rng.random() < 0.05 else _bool(rng, spec[q])
            n_images = int(rng.choice([1, 2], p=[0.7, 0.3]))
            for _ in range(n_images):
                image_counter += 1
                rows.append({
                    **patient_fields,
                    **lesion_fields,
                    "img_id": f"PAT_{patient + 1}_{lesion_counter}_{image_counter}.png",
                })
    return rows


def true_diameter_mm(row: dict) -> float:
    """The lesion's true diameter, which sets its drawn size. Rows report ``diameter_1`` only for
    biopsied lesions, as PAD does, so ``sample_metadata`` also keeps it in ``_diameter`` (a key
    outside PAD's columns, never written to the CSV)."""
    for key in ("_diameter", "diameter_1"):
        if row.get(key) not in (None, ""):
            return float(row[key])
    return 7.0


def _bool(rng: np.random.Generator, p_true: float) -> str:
    return "True" if rng.random() < p_true else "False"
