"""Build a labelled signed-distance head (:class:`SynthHead`) from :class:`~facegs.synth.params.HeadParams`.

Geometry is modelled at unit scale in the HEAD frame (metres; +x the subject's LEFT, +y up, +z out
of the face; origin at the head centre) and scaled by ``params.scale`` in :class:`SynthHead`.
Landmarks of the base head: chin -0.115, mouth line -0.068, nose tip about -0.03, eyes +0.005,
brows +0.025, front hairline about +0.085, crown +0.11, ears at x = +-0.078.

Every primitive carries a celebamask19 class (see :mod:`facegs.core.labels`). Eyes, ears, nose and lips
are real geometry (eyeballs in carved sockets, ear shells with a carved concha, lips around an
optionally carved mouth cavity with teeth and tongue), so a profile view hides the far eye and ear
by occlusion, not by a rule. Brows are painted on the skin (see :func:`brow_mask`). The geometry
itself is always left-right symmetric; asymmetry comes from hair parting, one-sided earrings,
textures, lights and the head pose.

Materials (``MAT_*``) select the texture and the specular response in :mod:`facegs.synth.texture`.

Long module: one head, built part by part (skull, face, eyes, nose, mouth, ears, hair, accessories)
from one shared set of proportions; the parts read in the order they are assembled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from facegs.core.labels import get_label_set
from facegs.synth import sdf
from facegs.synth.params import HeadParams
from facegs.synth.sdf import Cluster, Group, Part, Scene

Tensor = torch.Tensor
_LS = get_label_set("celebamask19")
C = {name: _LS.index(name) for name in _LS.classes}

(MAT_SKIN, MAT_LIP, MAT_EYE, MAT_TEETH, MAT_MOUTH, MAT_TONGUE, MAT_HAIR, MAT_BROW, MAT_HAT, MAT_CLOTH,
 MAT_NECKLACE, MAT_FRAME, MAT_LENS, MAT_EARRING) = range(14)
MATERIAL_NAMES = ("skin", "lip", "eye", "teeth", "mouth", "tongue", "hair", "brow", "hat", "cloth", "necklace",
                  "frame", "lens", "earring")

LENS_GROUP = "lenses"

# Bounding spheres of the whole subject (head frame, unit scale): rays start and stop at them.
HEAD_BOUND = ((0.0, 0.01, 0.0), 0.19)
TORSO_BOUND = ((0.0, -0.27, -0.02), 0.245)

Bound = tuple[Sequence[float], float]
Item = tuple[str, tuple[sdf.SdfFn, Bound], int, int, float]  # (name, (fn, bound), class, material, k)


@dataclass
class Anchors:
    """Landmarks that textures and painted regions need (unit scale, head frame, left side x > 0)."""

    eye_center: tuple[float, float, float]
    eye_radius: float
    brow: dict[str, float]
    cranium_center: tuple[float, float, float]
    hair_part: float


@dataclass
class SynthHead:
    """A built subject: the labelled scene, landmarks and the parameters it came from.

    :meth:`distance` and :meth:`classify` take HEAD-frame points in metres, ``[N, 3]`` or
    ``(x, y, z)`` float32 tensors, and apply the subject's overall ``scale``.
    """

    params: HeadParams
    scene: Scene
    anchors: Anchors
    scale: float
    cache: dict = field(default_factory=dict, repr=False)

    @property
    def world_from_head(self) -> np.ndarray:
        """[4, 4] float64 ground-truth head pose (head -> world)."""
        return self.params.world_from_head_matrix

    def distance_xyz(self, x: Tensor, y: Tensor, z: Tensor, skip: frozenset[str] = frozenset()) -> Tensor:
        """Signed distance [N] (metres) at head-frame coordinates ``x, y, z`` [N]."""
        s = 1.0 / self.scale
        return self.scene.distance_xyz(x * s, y * s, z * s, skip) * self.scale

    def distance(self, p: Tensor, skip: frozenset[str] = frozenset()) -> Tensor:
        """Signed distance [N] (metres) at head-frame points ``p`` [N, 3]."""
        return self.distance_xyz(p[:, 0].contiguous(), p[:, 1].contiguous(), p[:, 2].contiguous(), skip)

    def classify(self, p: Tensor, skip: frozenset[str] = frozenset()) -> tuple[Tensor, Tensor]:
        """(part index [N] int64, celebamask19 class [N] uint8) of surface points ``p`` [N, 3] (metres)."""
        q = p / self.scale
        return self.scene.classify(q[:, 0].contiguous(), q[:, 1].contiguous(), q[:, 2].contiguous(), skip)

    def bounds(self) -> list[tuple[np.ndarray, float]]:
        """Bounding spheres (centre [3], radius) of the subject in the head frame, metres."""
        s = self.scale
        return [(np.asarray(c) * s, r * s) for c, r in (HEAD_BOUND, TORSO_BOUND)]


# ----------------------------------------------------------------------------------------------
# helpers: primitives with bounding spheres, groups, clusters
# ----------------------------------------------------------------------------------------------


def _ell(c: Sequence[float], r: Sequence[float], rot: np.ndarray | None = None) -> tuple[sdf.SdfFn, Bound]:
    return sdf.sd_ellipsoid(c, r, rot), (tuple(c), float(max(r)))


def _cap(a: Sequence[float], b: Sequence[float], r: float) -> tuple[sdf.SdfFn, Bound]:
    a_, b_ = np.asarray(a, float), np.asarray(b, float)
    return sdf.sd_capsule(a, b, r), (tuple((a_ + b_) / 2), float(np.linalg.norm(b_ - a_) / 2 + r))


@dataclass
class _G:
    """A group with the bounding spheres of its parts (left side only for mirrored groups)."""

    group: Group
    bounds: list[Bound]


LR = {C["l_eye"]: C["r_eye"], C["l_ear"]: C["r_ear"], C["l_brow"]: C["r_brow"]}


def _grp(name: str, op: str, items: list[Item], mirror: bool = False) -> _G:
    parts = [Part(n, fn, cls, mat, k, cls_right=LR.get(cls) if mirror else None) for n, (fn, _), cls, mat, k in items]
    return _G(Group(name, op, parts, mirror=mirror), [b for _, (_, b), *_ in items])


def _cluster(name: str, gs: list[_G], dense: bool = False, mirror_bound: bool = False, margin: float = 0.002) -> Cluster:
    """Cluster of groups with a bounding sphere enclosing all their parts' bounds."""
    groups = [g.group for g in gs]
    if dense:
        return Cluster(name, groups)
    spheres = []
    for g in gs:
        for c, r in g.bounds:
            c = np.asarray(c, dtype=np.float64)
            if mirror_bound:
                spheres.append((np.array([abs(c[0]), c[1], c[2]]), r))
            else:
                spheres.append((c, r))
                if g.group.mirror:
                    spheres.append((c * np.array([-1.0, 1.0, 1.0]), r))
    cs = np.array([c for c, _ in spheres])
    rs = np.array([r for _, r in spheres])
    center = 0.5 * (cs.min(axis=0) + cs.max(axis=0))
    radius = float(np.max(np.linalg.norm(cs - center, axis=1) + rs)) + margin
    return Cluster(name, groups, tuple(float(v) for v in center), radius, mirror_bound)


def _march_surface(scene: Scene, origin: Sequence[float], direction: Sequence[float], t_max: float = 0.6) -> np.ndarray:
    """First surface point [3] of ``scene`` along a ray (for a few landmarks at build time)."""
    o = np.asarray(origin, dtype=np.float64)
    d = np.asarray(direction, dtype=np.float64)
    d = d / np.linalg.norm(d)
    t = 0.0
    for _ in range(300):
        p = torch.tensor(o + t * d, dtype=torch.float32)
        dist = float(scene.distance_xyz(p[0:1], p[1:2], p[2:3])[0])
        if abs(dist) < 1e-6 or t > t_max:
            break
        t += 0.9 * dist
    return o + t * d


def _normal(scene: Scene, p: np.ndarray, h: float = 5e-4) -> np.ndarray:
    """Unit surface normal [3] of ``scene`` at ``p`` [3] (central differences)."""
    pts = np.stack([p + h * e for e in np.eye(3)] + [p - h * e for e in np.eye(3)]).astype(np.float32)
    t = torch.from_numpy(pts)
    d = scene.distance_xyz(t[:, 0].contiguous(), t[:, 1].contiguous(), t[:, 2].contiguous()).double().numpy()
    g = d[:3] - d[3:]
    return g / np.linalg.norm(g)


def _frame_along(n: np.ndarray, roll_deg: float = 0.0) -> np.ndarray:
    """Head -> local [3, 3] whose local +z is ``n`` and local +x is horizontal, rolled about z."""
    z = n / np.linalg.norm(n)
    x = np.cross(np.array([0.0, 1.0, 0.0]), z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    a = math.radians(roll_deg)
    xr, yr = math.cos(a) * x + math.sin(a) * y, -math.sin(a) * x + math.cos(a) * y
    return np.stack([xr, yr, z])


# ----------------------------------------------------------------------------------------------
# the builder
# ----------------------------------------------------------------------------------------------


@dataclass
class _Landmarks:
    """Feature positions snapped to the base (skull + face) surface, unit scale, left side."""

    ex: float  # eye centre x (left eye; the right one mirrors it)
    ey: float
    ps_eye: np.ndarray  # [3] base-surface point in front of the eye
    n_eye: np.ndarray  # [3] surface normal there
    brow_y: float
    zs_brow: float
    y_root: float  # nose root / tip
    z_root: float
    y_tip: float
    z_tip: float
    ym: float  # mouth line
    zm: float
    xe: float  # side of the head at the ear
    ear_y: float
    ear_z: float


def _landmarks(P: HeadParams, base: Scene) -> _Landmarks:
    H, D = P.head_height, P.head_depth
    ex, ey = 0.031 * P.head_width * P.eye_spacing, 0.005 * H + P.eye_height
    ps_eye = _march_surface(base, (ex, ey, 0.3), (0, 0, -1))
    brow_y = ey + 0.021 * P.brow_height
    y_root, y_tip, ym = ey + 0.007, -0.031 * P.nose_length, -0.068 * H
    ear_y, ear_z = 0.0, -0.008 * D
    front = lambda x, y: float(_march_surface(base, (x, y, 0.3), (0, 0, -1))[2])  # noqa: E731
    return _Landmarks(
        ex=ex, ey=ey, ps_eye=ps_eye, n_eye=_normal(base, ps_eye), brow_y=brow_y, zs_brow=front(ex, brow_y),
        y_root=y_root, z_root=front(0.0, y_root), y_tip=y_tip, z_tip=front(0.0, y_tip) + 0.021 * P.nose_projection,
        ym=ym, zm=front(0.0, ym), xe=float(_march_surface(base, (0.3, ear_y, ear_z), (-1, 0, 0))[0]), ear_y=ear_y, ear_z=ear_z,
    )


def _core_cluster(P: HeadParams, cc: Sequence[float], cr: Sequence[float]) -> Cluster:
    """Skull, lower face, chin, jaw angles and cheekbones (evaluated everywhere)."""
    W, H, D = P.head_width, P.head_height, P.head_depth
    skin = C["skin"]
    face_r = (0.063 * W * P.jaw_width**0.5, 0.072 * H, 0.068 * D)
    core = _grp("core", "blend", [
        ("cranium", _ell(cc, cr), skin, MAT_SKIN, 0.0),
        ("face", _ell((0.0, -0.045 * H, 0.018 * D), face_r), skin, MAT_SKIN, 0.03),
        ("chin", _ell((0.0, -0.097 * H, 0.058 * D), tuple(np.array([0.021, 0.018, 0.02]) * P.chin)), skin, MAT_SKIN, 0.015),
    ])
    jaw = _grp("jaw_cheeks", "blend", [
        ("jaw", _ell((0.046 * W * P.jaw_width, -0.07 * H, -0.004 * D), (0.021, 0.03, 0.034)), skin, MAT_SKIN, 0.022),
        ("cheek", _ell((0.047 * W, -0.022 * H, 0.04 * D), tuple(np.array([0.026, 0.022, 0.026]) * P.cheek)), skin, MAT_SKIN, 0.02),
    ], mirror=True)
    return _cluster("core", [core, jaw], dense=True)


def _socket(P: HeadParams, L: _Landmarks) -> tuple[tuple[float, ...], tuple[float, float, float], np.ndarray]:
    """Eye socket ellipsoid (centre, radii, head->local rotation), aligned with the surface normal."""
    c = tuple(float(v) for v in L.ps_eye + 0.001 * L.n_eye)
    r = (0.0165 * P.eye_size, 0.0076 * P.eye_size * P.eye_open, 0.009)
    return c, r, _frame_along(L.n_eye, 6.0)


def _face_clusters(P: HeadParams, L: _Landmarks) -> list[Cluster]:
    """Brow ridges and eye sockets, nose with nostrils, lips with an optional mouth cavity."""
    skin, nose_c = C["skin"], C["nose"]
    nw, mw, lf, mo = P.nose_width, P.mouth_width, P.lip_fullness, P.mouth_open
    sc, sr, srot = _socket(P, L)
    ridge = _ell((L.ex * 1.03, L.brow_y - 0.001, L.zs_brow - 0.0075), (0.02, 0.0065, 0.0095))
    brows_eyes = _cluster("brows_eyes", [
        _grp("brow_ridge", "blend", [("brow_ridge", ridge, skin, MAT_SKIN, 0.012)], mirror=True),
        _grp("sockets", "carve", [("socket", _ell(sc, sr, srot), skin, MAT_SKIN, 0.0025)], mirror=True),
    ], mirror_bound=True)
    a, b = (0.0, L.y_root, L.z_root - 0.0035), (0.0, L.y_tip, L.z_tip - 0.0105 * nw)
    bridge = (sdf.sd_round_cone(a, b, 0.0062, 0.0105 * nw),
              ((0.0, (a[1] + b[1]) / 2, (a[2] + b[2]) / 2), 0.5 * float(np.linalg.norm(np.subtract(b, a))) + 0.012))
    ala = _ell((0.0118 * nw, L.y_tip - 0.004, L.z_tip - 0.0145), (0.0075 * nw, 0.0065, 0.0085))
    nostril = _ell((0.0062 * nw, L.y_tip - 0.0105, L.z_tip - 0.0115), (0.0038 * nw, 0.0024, 0.0052), sdf.rot_xyz(-25))
    nose = _cluster("nose", [
        _grp("nose", "blend", [("nose", bridge, nose_c, MAT_SKIN, 0.009)]),
        _grp("alae", "blend", [("ala", ala, nose_c, MAT_SKIN, 0.006)], mirror=True),
        _grp("nostrils", "carve", [("nostril", nostril, nose_c, MAT_MOUTH, 0.0015)], mirror=True),
    ])
    ym, zm = L.ym, L.zm
    u_lip = _ell((0, ym + 0.0045 + 0.003 * mo, zm - 0.002), (0.024 * mw, 0.0048 * lf, 0.0075), sdf.rot_xyz(-12))
    l_lip = _ell((0, ym - 0.0055 - 0.0065 * mo, zm - 0.003), (0.0215 * mw, 0.0058 * lf, 0.008), sdf.rot_xyz(10))
    mouth = [_grp("lips", "blend", [("u_lip", u_lip, C["u_lip"], MAT_LIP, 0.004), ("l_lip", l_lip, C["l_lip"], MAT_LIP, 0.004)])]
    if mo > 0:
        cavity = _ell((0, ym - 0.002 * mo, zm - 0.011), (0.0185 * mw, 0.0018 + 0.0068 * mo, 0.017))
        mouth.append(_grp("mouth_cavity", "carve", [("cavity", cavity, C["mouth"], MAT_MOUTH, 0.002)]))
    return [brows_eyes, nose, _cluster("mouth", mouth)]


def _ear_cluster(P: HeadParams, L: _Landmarks) -> Cluster:
    """Ear shells blended onto the head, each with a carved concha (both labelled l_ear / r_ear)."""
    es = P.ear_size
    rot = sdf.rot_xyz(-12.0, -12.0 * P.ear_flare, 0.0)
    c = (L.xe + 0.004, L.ear_y, L.ear_z)
    concha_c = tuple(np.asarray(c) + rot.T @ np.array([0.0095, 0.002, 0.002]))
    shell, concha = _ell(c, (0.0085, 0.03 * es, 0.0185 * es), rot), _ell(concha_c, (0.0052, 0.017 * es, 0.0095 * es), rot)
    return _cluster("ears", [
        _grp("ears", "blend", [("ear", shell, C["l_ear"], MAT_SKIN, 0.005)], mirror=True),
        _grp("conchas", "carve", [("concha", concha, C["l_ear"], MAT_SKIN, 0.002)], mirror=True),
    ], mirror_bound=True)


def _inside_clusters(P: HeadParams, L: _Landmarks) -> tuple[list[Cluster], tuple[float, float, float], float]:
    """Eyeballs (clipped to their sockets), and teeth and tongue when the mouth is open."""
    eye_r = 0.0122 * P.eye_size
    eye_c = tuple(float(v) for v in L.ps_eye - (eye_r + 0.0008) * L.n_eye)
    ball = sdf.sd_sphere(eye_c, eye_r)
    hull = sdf.sd_ellipsoid(*_socket(P, L))

    def eye(x: Tensor, y: Tensor, z: Tensor) -> Tensor:  # the eyeball, only inside its socket
        return torch.maximum(ball(x, y, z), hull(x, y, z) - 0.0005)

    out = [_cluster("eyes", [_grp("eyes", "union", [("eye", (eye, (eye_c, eye_r)), C["l_eye"], MAT_EYE, 0.0)], mirror=True)],
                    mirror_bound=True)]
    mo, mw, ym, zm = P.mouth_open, P.mouth_width, L.ym, L.zm
    if mo > 0:
        tc = (0.0, ym + 0.0035 * mo, zm - 0.0095)
        teeth = (sdf.sd_round_box(tc, (0.015 * mw, 0.0042, 0.005), 0.0018), (tc, 0.017))
        tongue = _ell((0, ym - 0.007 - 0.006 * mo, zm - 0.02), (0.016 * mw, 0.006, 0.016))
        out.append(_cluster("mouth_inside", [_grp("mouth_inside", "union", [
            ("teeth", teeth, C["mouth"], MAT_TEETH, 0.0), ("tongue", tongue, C["mouth"], MAT_TONGUE, 0.0)])]))
    return out, (eye_c[0], eye_c[1], eye_c[2]), eye_r


def build_head(params: HeadParams) -> SynthHead:
    """Compose the labelled SDF scene of one subject (unit scale) and its landmarks.

    Order matters: blends and carves of the skin first, then the hard unions (eyeballs, hair,
    accessories, clothing), so accessories never melt into the skin.
    """
    P = params
    H, D = P.head_height, P.head_depth
    cc = (0.0, 0.015 * H, -0.012 * D)  # cranium centre and radii
    cr = (0.077 * P.head_width, 0.095 * H, 0.098 * D)
    clusters = [_core_cluster(P, cc, cr)]
    L = _landmarks(P, Scene(clusters.copy()))
    neck_r = 0.052 * P.neck_radius
    neck_top, neck_bot = (0.0, -0.07 * H, -0.025 * D), (0.0, -0.32, -0.035 * D)
    clusters.append(_cluster("neck", [_grp("neck", "blend", [("neck", _cap(neck_top, neck_bot, neck_r), C["neck"], MAT_SKIN, 0.025)])]))
    clusters += _face_clusters(P, L)
    clusters.append(_ear_cluster(P, L))
    inside, eye_c, eye_r = _inside_clusters(P, L)
    clusters += inside

    t_hair = P.hair_thickness if P.hair_style != "bald" else 0.0
    if P.hair_style != "bald":
        clusters.append(_cluster("hair", [_hair_group(P, cc, cr, t_hair)]))
    if P.hat is not None:
        clusters.append(_cluster("hat", [_hat_group(P, cc, cr, t_hair)]))
    if P.glasses is not None:
        clusters.extend(_glasses_clusters(P, Scene(clusters.copy()), L.ex, L.ey, float(L.ps_eye[2]), L.xe))
    if P.earrings is not None:
        clusters.append(_earring_cluster(P, L.xe, L.ear_y, L.ear_z, P.ear_size))
    if P.necklace is not None:
        clusters.append(_cluster("necklace", [_necklace_group(P, neck_r, neck_top, neck_bot)]))
    shoulders = _ell((0.0, -0.272, -0.028 * D), (0.19, 0.085, 0.11))
    clusters.append(_cluster("cloth", [_grp("cloth", "union", [("shoulders", shoulders, C["cloth"], MAT_CLOTH, 0.0)])]))

    anchors = Anchors(
        eye_center=eye_c,
        eye_radius=float(eye_r),
        brow=dict(x=float(L.ex + 0.001), y=float(L.brow_y + 0.002), half_width=0.0185 * P.head_width,
                  thickness=0.0045 * P.brow_thickness, arch=0.0035 * P.brow_arch, z_min=float(L.zs_brow - 0.03)),
        cranium_center=(float(cc[0]), float(cc[1]), float(cc[2])),
        hair_part=float(P.hair_part),
    )
    return SynthHead(params=P, scene=Scene(clusters), anchors=anchors, scale=float(P.scale))


def _hair_group(P: HeadParams, cc: Sequence[float], cr: Sequence[float], t: float) -> _G:
    """Hair: a shell over the skull cut along a hairline, plus a drape for medium/long styles."""
    cz = float(cc[2])
    shell = sdf.sd_ellipsoid(cc, tuple(r + t for r in cr))
    y_front, y_side, y_back = P.hairline * P.head_height, 0.033, -0.045
    if P.hair_style == "buzz":
        y_side, y_back = 0.04, -0.03

    def hairline_y(x: Tensor, z: Tensor) -> Tensor:
        zc = z - cz
        c = zc / torch.sqrt(x * x + zc * zc).clamp_min(1e-6)  # cos(azimuth): 1 front, -1 back
        cp = c.clamp_min(0.0)
        front = y_side + (y_front - y_side) * (cp * (1.6 - 0.6 * cp))  # ~ c^0.7, cheaper
        back = y_side + (y_back - y_side) * (-c).clamp_min(0.0)
        return torch.where(c >= 0, front, back)

    def cap(x: Tensor, y: Tensor, z: Tensor) -> Tensor:
        return sdf.smax(shell(x, y, z), (hairline_y(x, z) - y) * 0.6, 0.004)

    fn = cap
    bound: Bound = (cc, max(cr) + t + 0.002)
    if P.hair_style in ("medium", "long"):
        y_bottom = -0.095 if P.hair_style == "medium" else -0.21
        upper = sdf.sd_ellipsoid((0.0, 0.0, -0.02), (cr[0] + t + 0.014, 0.12, cr[2] + t - 0.004))
        lower = sdf.sd_round_box((0.0, y_bottom / 2, -0.04), (cr[0] + t + 0.006, -y_bottom / 2, 0.075), 0.03)
        z_cut = 0.014

        def capdrape(x: Tensor, y: Tensor, z: Tensor) -> Tensor:
            drape = sdf.smax(sdf.smin(upper(x, y, z), lower(x, y, z), 0.03), z - z_cut, 0.008)
            return torch.minimum(cap(x, y, z), drape)

        fn = capdrape
        bound = ((0.0, (0.13 + y_bottom) / 2 - 0.01, -0.02), (0.13 - y_bottom) / 2 + 0.09)
    return _grp("hair", "union", [("hair", (fn, bound), C["hair"], MAT_HAIR, 0.0)])


def _hat_group(P: HeadParams, cc: Sequence[float], cr: Sequence[float], t_hair: float) -> _G:
    assert P.hat is not None
    infl = t_hair + 0.008
    dome = sdf.sd_ellipsoid(cc, tuple(r + infl for r in cr))
    y0, slope = (0.046, 0.09) if P.hat.style == "cap" else (0.042, 0.1)
    norm = 1.0 / math.sqrt(1 + slope * slope)

    def dome_cut(x: Tensor, y: Tensor, z: Tensor) -> Tensor:
        return torch.maximum(dome(x, y, z), (y0 + slope * z - y) * norm)

    items: list[Item] = [("hat_dome", (dome_cut, (cc, max(cr) + infl)), C["hat"], MAT_HAT, 0.0)]
    if P.hat.style == "cap":
        zf = cc[2] + cr[2] + infl
        yv = y0 + slope * zf + 0.001
        visor_e = sdf.sd_ellipsoid((0.0, yv - 0.002, zf + 0.012), (0.072, 0.0045, 0.062), sdf.rot_xyz(-10))

        def visor(x: Tensor, y: Tensor, z: Tensor) -> Tensor:
            return torch.maximum(visor_e(x, y, z), zf - 0.012 - z)

        items.append(("hat_visor", (visor, ((0.0, yv, zf + 0.012), 0.075)), C["hat"], MAT_HAT, 0.0))
    return _grp("hat", "union", items)


def _glasses_clusters(P: HeadParams, scene_so_far: Scene, ex: float, ey: float, zs_eye: float, xe: float) -> list[Cluster]:
    assert P.glasses is not None
    rx, ry = (0.0175, 0.0158) if P.glasses.style == "round" else (0.0205, 0.0135)
    gx, gy = ex + 0.0015, ey + 0.0005
    z_nose = _march_surface(scene_so_far, (0.0, gy + 0.003, 0.3), (0, 0, -1))[2]
    gz = max(zs_eye + 0.014, z_nose + 0.003)
    eg = C["eye_g"]
    side = _march_surface(scene_so_far, (0.3, gy + 0.004, 0.045), (-1, 0, 0))[0]
    a = (gx + rx + 0.0005, gy + 0.003, gz - 0.001)
    b = (max(side + 0.005, a[0] + 0.004), gy + 0.005, 0.045)
    c = (xe - 0.0005, gy + 0.012, -0.012)
    inner = (gx - rx - 0.0005, gy + 0.003, gz)
    mid = (0.0, gy + 0.007, gz + 0.002)
    front = _cluster("glasses", [
        _grp(LENS_GROUP, "union", [("lens", _ell((gx, gy, gz), (rx + 0.0008, ry + 0.0008, 0.0012)), eg, MAT_LENS, 0.0)], mirror=True),
        _grp("frames", "union", [
            ("rim", (sdf.sd_ring2d((gx, gy, gz), (rx, ry), 0.0014, 0.0022), ((gx, gy, gz), max(rx, ry) + 0.004)), eg, MAT_FRAME, 0.0),
            ("temple_front", _cap(a, b, 0.0013), eg, MAT_FRAME, 0.0),
        ], mirror=True),
        _grp("bridge", "union", [
            ("bridge_l", _cap(inner, mid, 0.0014), eg, MAT_FRAME, 0.0),
            ("bridge_r", _cap((-inner[0], inner[1], inner[2]), mid, 0.0014), eg, MAT_FRAME, 0.0),
        ]),
    ])
    temples = _cluster("temples", [_grp("temples", "union", [("temple_back", _cap(b, c, 0.0013), eg, MAT_FRAME, 0.0)], mirror=True)],
                       mirror_bound=True)
    return [front, temples]


def _earring_cluster(P: HeadParams, xe: float, ear_y: float, ear_z: float, es: float) -> Cluster:
    assert P.earrings is not None
    x, y, z = xe + 0.006, ear_y - 0.026 * es, ear_z + 0.004
    sign = -1.0 if P.earrings.sides == "right" else 1.0  # a right-only earring is built at x < 0
    if P.earrings.style == "stud":
        c = (sign * x, y, z)
        shape = (sdf.sd_sphere(c, 0.0035), (c, 0.0035))
    else:
        rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # local y = head x: ring in the yz plane
        c = (sign * (x + 0.001), y - 0.0095, z)
        shape = (sdf.sd_torus(c, 0.0095, 0.0014, rot), (c, 0.011))
    g = _grp("earrings", "union", [("earring", shape, C["ear_r"], MAT_EARRING, 0.0)], mirror=P.earrings.sides == "both")
    return _cluster("earrings", [g], mirror_bound=True)


def _necklace_group(P: HeadParams, neck_r: float, neck_top: Sequence[float], neck_bot: Sequence[float]) -> _G:
    assert P.necklace is not None
    a = math.radians(25.0)
    yc = -0.165
    f = (yc - neck_top[1]) / (neck_bot[1] - neck_top[1])
    zc = neck_top[2] + f * (neck_bot[2] - neck_top[2])
    R = neck_r / math.cos(a) + 0.004
    rot = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(a), math.sin(a)], [0.0, -math.sin(a), math.cos(a)]])
    items: list[Item] = [("chain", (sdf.sd_torus((0.0, yc, zc), R, 0.0022, rot), ((0.0, yc, zc), R + 0.003)), C["neck_l"], MAT_NECKLACE, 0.0)]
    if P.necklace.pendant:
        pc = (0.0, yc - R * math.sin(a) - 0.0065, zc + R * math.cos(a) + 0.002)
        items.append(("pendant", _ell(pc, (0.0055, 0.0065, 0.003)), C["neck_l"], MAT_NECKLACE, 0.0))
    return _grp("necklace", "union", items)


def brow_mask(p: Tensor, anchors: Anchors) -> Tensor:
    """Painted-brow test at unit-scale head-frame points ``p`` [N, 3] -> bool [N] (either side)."""
    b = anchors.brow
    u = (p[:, 0].abs() - b["x"]) / b["half_width"]
    y_arc = b["y"] + b["arch"] * (1.0 - u * u) - 0.0012 * u
    half = 0.5 * b["thickness"] * (1.0 - 0.45 * u.clamp(-1, 1) ** 2) * (1.0 + 0.25 * (-u).clamp_min(0))
    return (u.abs() < 1.0) & ((p[:, 1] - y_arc).abs() < half) & (p[:, 2] > b["z_min"])
