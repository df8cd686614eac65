"""The reference head: landmark positions in the head frame (metres) and their relative weights.

The positions are the mean landmark centroids of 12 synthetic subjects (facegs.synth seeds 0-11,
facescape rig, 80 px, ground-truth labels, symmetrised), made by
:func:`facegs.headframe.calibrate.calibrate_template`, so the template's origin is the synthetic
generator's head origin. :data:`PROFILE`, the face's mid-sagittal profile, comes from the same
subjects (:func:`facegs.headframe.calibrate.calibrate_profile`).
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


# The face's mid-sagittal profile, (y, z) in the head frame (metres), from the chin up to the forehead
# below the hairline: the median over the same 12 synthetic subjects of the outermost face point per
# 2-degree bin about (y, z) = (-0.03, 0), made by calibrate_profile (the nose's underside is hidden
# behind its tip there, hence the step at y = -0.042). facegs.headframe.profile registers it to a
# fitted scene's mid-plane: the rotation about x (pitch) and the origin without labels.
PROFILE: tuple[tuple[float, float], ...] = (
    (-0.1211, 0.0332), (-0.1181, 0.0356), (-0.1168, 0.0387), (-0.1159, 0.0419), (-0.1152, 0.0453), (-0.1146, 0.0488),
    (-0.1144, 0.0527), (-0.1139, 0.0566), (-0.1136, 0.0607), (-0.1124, 0.0644), (-0.1111, 0.0680), (-0.1090, 0.0711),
    (-0.1068, 0.0742), (-0.1041, 0.0767), (-0.1009, 0.0787), (-0.0975, 0.0805), (-0.0937, 0.0816), (-0.0895, 0.0818),
    (-0.0855, 0.0823), (-0.0819, 0.0830), (-0.0797, 0.0862), (-0.0767, 0.0877), (-0.0731, 0.0883), (-0.0691, 0.0878),
    (-0.0656, 0.0882), (-0.0625, 0.0893), (-0.0591, 0.0896), (-0.0554, 0.0887), (-0.0522, 0.0889), (-0.0489, 0.0890),
    (-0.0459, 0.0903), (-0.0429, 0.0916), (-0.0412, 0.1069), (-0.0378, 0.1110), (-0.0339, 0.1120), (-0.0300, 0.1122),
    (-0.0261, 0.1114), (-0.0223, 0.1098), (-0.0186, 0.1080), (-0.0151, 0.1061), (-0.0116, 0.1044), (-0.0081, 0.1029),
    (-0.0048, 0.1012), (-0.0015, 0.0995), (0.0019, 0.0981), (0.0051, 0.0965), (0.0084, 0.0950), (0.0118, 0.0938),
    (0.0151, 0.0924), (0.0183, 0.0909), (0.0216, 0.0894), (0.0252, 0.0883), (0.0290, 0.0875), (0.0329, 0.0866),
    (0.0373, 0.0861), (0.0412, 0.0849), (0.0451, 0.0834), (0.0491, 0.0819), (0.0523, 0.0795), (0.0563, 0.0777),
    (0.0599, 0.0754), (0.0632, 0.0728), (0.0669, 0.0704),
)


# landmarks whose visible part changes when glasses are worn: separate template entries "name@eye_g"
GLASSES_VARIANTS = ("nose",)


ORIGIN_FROM_EAR_MIDPOINT = tuple(-0.5 * (a + b) for a, b in zip(TEMPLATE["l_ear"], TEMPLATE["r_ear"]))


# relative trust of each landmark in the fit
LANDMARK_WEIGHTS: dict[str, float] = {
    "l_eye": 1.0, "r_eye": 1.0, "l_brow": 0.7, "r_brow": 0.7, "l_ear": 1.0, "r_ear": 1.0,
    "nose": 1.0, "mouth": 1.0, "eye_g": 0.3,
}
