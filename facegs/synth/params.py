"""Per-subject parameters of a procedural head, sampled deterministically from an integer seed.

:func:`sample_head_params` draws everything from ``numpy.random.default_rng(seed)`` (no global
random state): proportions, skin tone, hair style and colour, an open or closed mouth, optional
glasses, hat, earrings and necklace, clothing, background palette, lights, texture seeds and the
ground-truth head pose ``world_from_head``. :class:`HeadParams` is a frozen dataclass that
round-trips through JSON (:meth:`HeadParams.to_dict` / :meth:`HeadParams.from_dict`); it is stored
in the manifest's ``source.params`` so a subject can be re-rendered exactly.

``symmetric=True`` yields a left-right mirror-symmetric subject (for tests): identity head pose,
centred hair parting, earrings on both ears or none, symmetric lights and textures.

Proportions are dimensionless factors around 1 applied to a base head of about 15 cm width and
23 cm chin-to-crown height (metres throughout). Colours are sRGB triples in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

HAIR_STYLES = ("bald", "buzz", "short", "medium", "long")
HAT_STYLES = ("cap", "beanie")
GLASSES_STYLES = ("round", "rect")
EARRING_STYLES = ("stud", "hoop")
CLOTH_PATTERNS = ("plain", "stripes", "checks", "dots")

SKIN_TONES = np.array(
    [
        [0.97, 0.82, 0.71],
        [0.93, 0.74, 0.60],
        [0.86, 0.64, 0.49],
        [0.76, 0.54, 0.38],
        [0.62, 0.42, 0.29],
        [0.46, 0.30, 0.20],
        [0.33, 0.21, 0.14],
    ]
)
HAIR_COLOURS = np.array(
    [
        [0.06, 0.05, 0.05],  # black
        [0.17, 0.11, 0.07],  # dark brown
        [0.33, 0.21, 0.12],  # brown
        [0.50, 0.23, 0.10],  # auburn
        [0.78, 0.62, 0.38],  # blond
        [0.60, 0.60, 0.60],  # grey
        [0.42, 0.18, 0.50],  # dyed purple
    ]
)
HAIR_COLOUR_P = np.array([0.26, 0.24, 0.18, 0.08, 0.12, 0.07, 0.05])
IRIS_COLOURS = np.array([[0.25, 0.15, 0.08], [0.12, 0.07, 0.04], [0.25, 0.45, 0.65], [0.30, 0.45, 0.25], [0.45, 0.35, 0.20]])

Vec3 = tuple[float, float, float]


def _rgb(a: np.ndarray | list[float]) -> Vec3:
    a = np.clip(np.asarray(a, dtype=np.float64), 0.0, 1.0)
    return (round(float(a[0]), 4), round(float(a[1]), 4), round(float(a[2]), 4))


@dataclass(frozen=True)
class GlassesParams:
    style: str
    frame_rgb: Vec3
    lens_rgb: Vec3
    transmittance: float  # 0 = opaque sunglasses, 1 = clear


@dataclass(frozen=True)
class HatParams:
    style: str
    rgb: Vec3
    rgb2: Vec3
    stripes: bool


@dataclass(frozen=True)
class EarringParams:
    style: str
    rgb: Vec3
    sides: str  # "both" | "left" | "right" (the subject's own sides)


@dataclass(frozen=True)
class NecklaceParams:
    rgb: Vec3
    pendant: bool


@dataclass(frozen=True)
class ClothParams:
    pattern: str
    rgb: Vec3
    rgb2: Vec3
    scale: float  # pattern period in metres


@dataclass(frozen=True)
class LightParams:
    direction: Vec3  # unit vector from the scene towards the light, WORLD frame
    intensity: float


@dataclass(frozen=True)
class HeadParams:
    """Everything that defines one synthetic subject. See the module docstring for units."""

    seed: int
    symmetric: bool
    # proportions (factors around 1)
    scale: float = 1.0
    head_width: float = 1.0
    head_height: float = 1.0
    head_depth: float = 1.0
    jaw_width: float = 1.0
    chin: float = 1.0
    cheek: float = 1.0
    eye_spacing: float = 1.0
    eye_height: float = 0.0  # metres, offset of the eye line
    eye_size: float = 1.0
    eye_open: float = 1.0
    brow_height: float = 1.0
    brow_thickness: float = 1.0
    brow_arch: float = 1.0
    nose_length: float = 1.0
    nose_width: float = 1.0
    nose_projection: float = 1.0
    mouth_width: float = 1.0
    lip_fullness: float = 1.0
    mouth_open: float = 0.0  # 0 = closed, 1 = wide open
    ear_size: float = 1.0
    ear_flare: float = 1.0
    neck_radius: float = 1.0
    # appearance
    skin_rgb: Vec3 = (0.86, 0.64, 0.49)
    lip_rgb: Vec3 = (0.70, 0.35, 0.35)
    iris_rgb: Vec3 = (0.25, 0.15, 0.08)
    brow_rgb: Vec3 = (0.17, 0.11, 0.07)
    freckles: float = 0.3
    hair_style: str = "short"
    hair_rgb: Vec3 = (0.17, 0.11, 0.07)
    hair_thickness: float = 0.012
    hairline: float = 0.085  # y of the front hairline (metres, head frame)
    hair_part: float = 0.0  # x of the parting (metres); 0 = centred
    glasses: GlassesParams | None = None
    hat: HatParams | None = None
    earrings: EarringParams | None = None
    necklace: NecklaceParams | None = None
    cloth: ClothParams = field(default_factory=lambda: ClothParams("plain", (0.2, 0.3, 0.5), (0.8, 0.8, 0.8), 0.03))
    # scene
    background_palette: tuple[Vec3, ...] = ((0.5, 0.5, 0.5), (0.3, 0.3, 0.35), (0.7, 0.65, 0.6), (0.2, 0.25, 0.2))
    plain_rgb: Vec3 = (0.55, 0.55, 0.55)
    lights: tuple[LightParams, ...] = (LightParams((0.3, 0.5, 0.8), 0.8),)
    ambient: float = 0.3
    exposure: float = 1.0  # gain on the subject's lighting (brighter for darker skin, like auto exposure)
    world_from_head: tuple[tuple[float, ...], ...] = tuple(tuple(float(i == j) for j in range(4)) for i in range(4))
    texture_seed: int = 0
    background_seed: int = 0

    # -- serialisation -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict (tuples become lists)."""
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> HeadParams:
        """Inverse of :meth:`to_dict`."""
        nested = {"glasses": GlassesParams, "hat": HatParams, "earrings": EarringParams, "necklace": NecklaceParams,
                  "cloth": ClothParams}
        kw: dict[str, Any] = {}
        names = {f.name for f in fields(HeadParams)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown HeadParams fields: {sorted(unknown)}")
        for k, v in d.items():
            if k in nested:
                kw[k] = None if v is None else nested[k](**{kk: _tuplify(vv) for kk, vv in v.items()})
            elif k == "lights":
                kw[k] = tuple(LightParams(tuple(x["direction"]), float(x["intensity"])) for x in v)
            else:
                kw[k] = _tuplify(v)
        return HeadParams(**kw)

    @property
    def world_from_head_matrix(self) -> np.ndarray:
        """[4, 4] float64 head -> world transform."""
        return np.asarray(self.world_from_head, dtype=np.float64)

    def with_overrides(self, **kw: Any) -> HeadParams:
        """Copy with some fields replaced (``dataclasses.replace``)."""
        return replace(self, **kw)


def _tuplify(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_tuplify(x) for x in v)
    return v


# ----------------------------------------------------------------------------------------------
# sampling
# ----------------------------------------------------------------------------------------------


def _random_rotation(rng: np.random.Generator, min_deg: float, max_deg: float) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    a = math.radians(rng.uniform(min_deg, max_deg))
    Kx = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(a) * Kx + (1 - math.cos(a)) * (Kx @ Kx)


def _mix(rng: np.random.Generator, table: np.ndarray, p: np.ndarray | None = None, jitter: float = 0.03) -> Vec3:
    i = rng.choice(len(table), p=p)
    return _rgb(table[i] * rng.uniform(0.92, 1.08) + rng.normal(0, jitter, 3))


def _saturated(rng: np.random.Generator, s_lo: float = 0.35, s_hi: float = 0.85, v_lo: float = 0.3, v_hi: float = 0.9) -> Vec3:
    h, s, v = rng.uniform(0, 1), rng.uniform(s_lo, s_hi), rng.uniform(v_lo, v_hi)
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p_, q_, t_ = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t_, p_), (q_, v, p_), (p_, v, t_), (p_, q_, v), (t_, p_, v), (v, p_, q_)][i]
    return _rgb(rgb)


def _unit(v: np.ndarray) -> Vec3:
    v = np.asarray(v, dtype=np.float64)
    v = v / np.linalg.norm(v)
    return (round(float(v[0]), 5), round(float(v[1]), 5), round(float(v[2]), 5))


def sample_head_params(seed: int, symmetric: bool = False) -> HeadParams:
    """Sample a subject from ``seed`` (deterministic: same seed, same subject).

    ``symmetric=True``: mirror-symmetric subject with ``world_from_head`` = identity.
    """
    rng = np.random.default_rng(int(seed))
    u = rng.uniform

    skin = SKIN_TONES[rng.integers(len(SKIN_TONES))] * u(0.94, 1.06) + rng.normal(0, 0.015, 3)
    skin_rgb = _rgb(skin)
    lipstick = rng.uniform() < 0.2
    lip_rgb = _saturated(rng, 0.5, 0.8, 0.45, 0.75) if lipstick else _rgb(np.asarray(skin_rgb) * [0.85, 0.55, 0.55])
    hair_rgb = _mix(rng, HAIR_COLOURS, HAIR_COLOUR_P)
    brow_rgb = _rgb(np.asarray(hair_rgb) * 0.6 if rng.uniform() < 0.8 else HAIR_COLOURS[1])
    hair_style = str(rng.choice(HAIR_STYLES, p=[0.08, 0.12, 0.32, 0.23, 0.25]))

    glasses = None
    if u() < 0.3:
        sun = u() < 0.35
        glasses = GlassesParams(
            style=str(rng.choice(GLASSES_STYLES)),
            frame_rgb=_saturated(rng, 0.1, 0.7, 0.05, 0.6),
            lens_rgb=_rgb([0.08, 0.09, 0.11]) if sun else _rgb([0.75, 0.8, 0.85]),
            transmittance=round(float(u(0.05, 0.2) if sun else u(0.7, 0.85)), 3),
        )
    hat = None
    if u() < 0.22:
        hat = HatParams(style=str(rng.choice(HAT_STYLES)), rgb=_saturated(rng), rgb2=_saturated(rng), stripes=bool(u() < 0.5))
    earrings = None
    if u() < 0.3:
        sides = "both" if symmetric or u() < 0.6 else str(rng.choice(["left", "right"]))
        earrings = EarringParams(style=str(rng.choice(EARRING_STYLES)),
                                 rgb=_rgb([0.95, 0.78, 0.35]) if u() < 0.6 else _rgb([0.82, 0.82, 0.86]), sides=sides)
    necklace = None
    if u() < 0.3:
        necklace = NecklaceParams(rgb=_rgb([0.95, 0.78, 0.35]) if u() < 0.6 else _rgb([0.82, 0.82, 0.86]), pendant=bool(u() < 0.6))
    cloth = ClothParams(pattern=str(rng.choice(CLOTH_PATTERNS)), rgb=_saturated(rng), rgb2=_saturated(rng, 0.0, 0.5, 0.6, 1.0),
                        scale=round(float(u(0.012, 0.035)), 4))

    # lights in the world frame (world ~ head frame up to a small rotation): a key, a fill, a rim
    if symmetric:
        lights = (
            LightParams(_unit([0.0, 0.6, 0.8]), 0.55),
            LightParams(_unit([0.8, 0.2, 0.3]), 0.3),
            LightParams(_unit([-0.8, 0.2, 0.3]), 0.3),
        )
    else:
        az = math.radians(u(-70, 70))
        el = math.radians(u(20, 55))
        key = [math.sin(az) * math.cos(el), math.sin(el), math.cos(az) * math.cos(el)]
        fill = [-key[0] * 1.2, 0.1, 0.6]
        lights = (
            LightParams(_unit(key), round(float(u(0.6, 0.85)), 3)),
            LightParams(_unit(fill), round(float(u(0.2, 0.35)), 3)),
            LightParams(_unit([u(-0.3, 0.3), 0.5, -1.0]), round(float(u(0.15, 0.3)), 3)),
        )

    wfh = np.eye(4)
    if not symmetric:
        wfh[:3, :3] = _random_rotation(rng, 3.0, 10.0)
        wfh[:3, 3] = rng.uniform(-0.015, 0.015, 3)

    palette = tuple(_saturated(rng, 0.1, 0.8, 0.15, 0.95) for _ in range(4))
    return HeadParams(
        seed=int(seed),
        symmetric=bool(symmetric),
        scale=round(float(u(0.93, 1.06)), 4),
        head_width=round(float(u(0.92, 1.08)), 4),
        head_height=round(float(u(0.95, 1.05)), 4),
        head_depth=round(float(u(0.95, 1.05)), 4),
        jaw_width=round(float(u(0.85, 1.15)), 4),
        chin=round(float(u(0.8, 1.2)), 4),
        cheek=round(float(u(0.8, 1.2)), 4),
        eye_spacing=round(float(u(0.93, 1.07)), 4),
        eye_height=round(float(u(-0.004, 0.004)), 5),
        eye_size=round(float(u(0.9, 1.1)), 4),
        eye_open=round(float(u(0.8, 1.15)), 4),
        brow_height=round(float(u(0.85, 1.15)), 4),
        brow_thickness=round(float(u(0.7, 1.3)), 4),
        brow_arch=round(float(u(0.3, 1.5)), 4),
        nose_length=round(float(u(0.88, 1.12)), 4),
        nose_width=round(float(u(0.85, 1.2)), 4),
        nose_projection=round(float(u(0.8, 1.2)), 4),
        mouth_width=round(float(u(0.88, 1.12)), 4),
        lip_fullness=round(float(u(0.75, 1.3)), 4),
        mouth_open=round(float(u(0.4, 1.0)), 4) if u() < 0.4 else 0.0,
        ear_size=round(float(u(0.9, 1.1)), 4),
        ear_flare=round(float(u(0.6, 1.4)), 4),
        neck_radius=round(float(u(0.9, 1.1)), 4),
        skin_rgb=skin_rgb,
        lip_rgb=lip_rgb,
        iris_rgb=_mix(rng, IRIS_COLOURS),
        brow_rgb=brow_rgb,
        freckles=round(float(u(0.1, 1.0)), 4),
        hair_style=hair_style,
        hair_rgb=hair_rgb,
        hair_thickness=round(float(u(0.005, 0.009) if hair_style == "buzz" else u(0.01, 0.018)), 4),
        hairline=round(float(u(0.055, 0.09)), 4),
        hair_part=0.0 if symmetric else round(float(u(-0.035, 0.035)), 4),
        glasses=glasses,
        hat=hat,
        earrings=earrings,
        necklace=necklace,
        cloth=cloth,
        background_palette=palette,
        plain_rgb=_saturated(rng, 0.0, 0.4, 0.3, 0.85),
        lights=lights,
        ambient=round(float(u(0.25, 0.35)), 3),
        exposure=round(float(np.clip(0.45 / float(np.dot(skin_rgb, [0.3, 0.59, 0.11])), 1.0, 1.5)), 4),
        world_from_head=tuple(tuple(float(x) for x in row) for row in wfh),
        texture_seed=int(rng.integers(0, 2**31 - 1)),
        background_seed=int(rng.integers(0, 2**31 - 1)),
    )
