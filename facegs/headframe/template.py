"""The reference head: landmark positions in the head frame (metres) and their relative weights.

The positions are the mean landmark centroids of 12 synthetic subjects (facegs.synth seeds 0-11,
facescape rig, 80 px, ground-truth labels, symmetrised), made by
:func:`facegs.headframe.calibrate.calibrate_template`, so the template's origin is the synthetic
generator's head origin.
"""

from __future__ import annotations

# landmark name -> canonical classes whose points define it
LANDMARK_CLASSES: dict[str, tuple[str, ...]] = {
    "l_eye": ("l_eye",),
    "r_eye": ("r_eye",),
    "l_brow": ("l_brow",),
    "r_brow": ("r_brow",),
    "l_ear": ("l_ear",),
    "r_ear": ("r_ear",),
    "nose": ("nose",),
    "mouth": ("mouth", "u_lip", "l_lip"),
    "eye_g": ("eye_g",),
}


LR_LANDMARK_PAIRS: tuple[tuple[str, str], ...] = (("l_eye", "r_eye"), ("l_brow", "r_brow"), ("l_ear", "r_ear"))


# Landmark centroids in the head frame (metres) of the reference head: the mean over 12 synthetic
# subjects (facegs.synth seeds 0-11, facescape rig, 80 px, ground-truth labels, symmetrised), made by
# calibrate_template. "nose@eye_g" replaces "nose" when glasses are present (the frame hides the
# upper nose, which moves the visible nose's centroid down).
TEMPLATE: dict[str, tuple[float, float, float]] = {
    "l_eye": (0.0305, 0.0037, 0.0783),
    "r_eye": (-0.0305, 0.0037, 0.0783),
    "l_brow": (0.0319, 0.0304, 0.0797),
    "r_brow": (-0.0319, 0.0304, 0.0797),
    "l_ear": (0.0828, -0.0018, -0.0033),
    "r_ear": (-0.0828, -0.0018, -0.0033),
    "nose": (0.0, -0.0185, 0.0981),
    "nose@eye_g": (0.0, -0.0252, 0.0989),
    "mouth": (0.0, -0.0686, 0.0848),
    "eye_g": (0.0, 0.0062, 0.0907),
}


# landmarks whose visible part changes when glasses are worn: separate template entries "name@eye_g"
GLASSES_VARIANTS = ("nose",)


ORIGIN_FROM_EAR_MIDPOINT = tuple(-0.5 * (a + b) for a, b in zip(TEMPLATE["l_ear"], TEMPLATE["r_ear"]))


# relative trust of each landmark in the fit
LANDMARK_WEIGHTS: dict[str, float] = {
    "l_eye": 1.0, "r_eye": 1.0, "l_brow": 0.7, "r_brow": 0.7, "l_ear": 1.0, "r_ear": 1.0,
    "nose": 1.0, "mouth": 1.0, "eye_g": 0.3,
}
