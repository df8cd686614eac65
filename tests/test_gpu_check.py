"""bench/gpu_check.sh without a GPU: the wheel set, an isolated import, the script's arguments, the
timing code on the CPU.

The GPU machine has Python 3.12 with torch, numpy, opencv, pyarrow, fsspec, scipy, tqdm,
matplotlib and pytest (and their own dependencies) and nothing else: every other requirement of
the wheels and of the facegs modules the check imports must be a wheel in bench/wheels.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.sh"
WHEELS = REPO / "bench" / "wheels"
PREINSTALLED = ("torch", "numpy", "opencv-python-headless", "pyarrow", "fsspec", "scipy", "tqdm", "matplotlib", "pytest")
GPU_ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
           "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}  # fmt: skip
# what the check imports (gpu_check.sh's steps, the cuda tests, bench/gpu_bench.py)
MODULES = ("facegs.fit.loop", "facegs.factory.subject", "facegs.synth.generate", "facegs.label.noise",
           "facegs.train.losses", "facegs.splat.rasterize", "facegs.splat.cpu_kernel", "gsplat", "gsplat.strategy")  # fmt: skip


def header() -> dict[str, int]:
    rows = re.findall(r"^#   (\S+\.whl) +(\d+)$", SCRIPT.read_text(), flags=re.M)
    return {name: int(size) for name, size in rows}


def wheel_requires(path: Path) -> tuple[str, list[Requirement]]:
    with zipfile.ZipFile(path) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    name = re.search(r"^Name: (.+)$", meta, flags=re.M).group(1).strip()
    reqs = [Requirement(r) for r in re.findall(r"^Requires-Dist: (.+)$", meta, flags=re.M)]
    return canonicalize_name(name), [r for r in reqs if r.marker is None or r.marker.evaluate(GPU_ENV)]


def closure(names) -> set[str]:
    """The given installed distributions and everything they require (as installed here)."""
    seen, todo = set(), [canonicalize_name(n) for n in names]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        for r in md.requires(n) or []:
            req = Requirement(r)
            if req.marker is None or req.marker.evaluate({**GPU_ENV, "extra": ""}):
                try:
                    md.distribution(req.name)
                except md.PackageNotFoundError:
                    continue
                todo.append(canonicalize_name(req.name))
    return seen


def test_header_lists_the_wheel_folder_and_sizes():
    h = header()
    files = {p.name: p.stat().st_size for p in WHEELS.glob("*.whl")}
    assert h == files
    total = int(re.search(r"^#   total +(\d+)", SCRIPT.read_text(), flags=re.M).group(1))
    assert total == sum(files.values())
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    repo_bytes = sum((REPO / f.decode()).stat().st_size for f in tracked if f and (REPO / f.decode()).is_file())
    wheels_untracked = sum(s for n, s in files.items() if f"bench/wheels/{n}".encode() not in tracked)
    assert repo_bytes + wheels_untracked <= 64 * 2**20, "the repo and its wheels must travel in 64 MiB"
    # one version of each distribution (two stop pip's --no-deps install)
    names = [wheel_requires(p)[0] for p in WHEELS.glob("*.whl")]
    assert len(names) == len(set(names))


def test_every_requirement_is_a_wheel_or_preinstalled():
    shipped = {wheel_requires(p)[0]: p for p in WHEELS.glob("*.whl")}
    versions = {n: re.match(r"[^-]+-([^-]+)-", p.name).group(1) for n, p in shipped.items()}
    pre = closure(PREINSTALLED)
    missing = []
    for name, path in shipped.items():
        for r in wheel_requires(path)[1]:
            n = canonicalize_name(r.name)
            if n in shipped:
                assert r.specifier.contains(versions[n], prereleases=True), f"{name} needs {r}, shipped {versions[n]}"
            elif n not in pre:
                missing.append(f"{name} -> {r}")
    assert not missing, missing
    # facegs' own dependencies: preinstalled, shipped, or not needed by the check (Ray jobs, shards, SfM)
    not_needed = {"ray", "webdataset", "pycolmap"}
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for r in map(Requirement, deps):
        n = canonicalize_name(r.name)
        if r.marker is not None and not r.marker.evaluate(GPU_ENV):
            continue
        assert n in shipped or n in pre or n in not_needed, f"facegs needs {r}: ship it or preinstall it"


def _link_dists(names: set[str], into: Path) -> None:
    """Symlink the top-level modules of installed distributions ``names`` into ``into``."""
    for n in names:
        dist = md.distribution(n)
        site = Path(dist.locate_file(""))
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for t in tops:
            src = site / t
            if src.exists() and not (into / t).exists() and not t.endswith(".dist-info"):
                (into / t).symlink_to(src)


def test_wheels_install_and_facegs_imports_with_only_them(tmp_path):
    """pip installs the set for CPython 3.12 manylinux with --no-index --no-deps; then, in an
    interpreter without site-packages, facegs' modules for the check import from those wheels plus
    the preinstalled packages only (ray and webdataset stay unimportable). Binary wheels built for
    3.12 cannot load in this 3.11 interpreter: the same version installed here stands in."""
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--target",
           str(site), "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp", "--platform",
           "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64", *map(str, WHEELS.glob("*.whl"))]  # fmt: skip
    r = subprocess.run(pip, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    pre = tmp_path / "pre"
    pre.mkdir()
    _link_dists(closure(PREINSTALLED), pre)
    here = f"{sys.version_info[0]}{sys.version_info[1]}"
    for p in WHEELS.glob("*-cp3*.whl"):  # binary wheels for another interpreter: the same version from here
        name, version = re.match(r"([^-]+)-([^-]+)-", p.name).groups()
        if f"cp{here}" not in p.name:
            assert md.version(name) == version, f"{name} {version} is shipped; {md.version(name)} is installed here"
            _link_dists({canonicalize_name(name)}, pre)
    code = ("import importlib, sys\n"
            f"for m in {MODULES!r}: importlib.import_module(m)\n"
            "for m in ('ray', 'webdataset'):\n"
            "    try:\n        importlib.import_module(m)\n    except ImportError:\n        pass\n"
            "    else:\n        sys.exit(f'{m} is importable: the environment is not isolated')\n"
            "import gsplat, jsonschema; print('OK', gsplat.__file__, jsonschema.__file__)\n")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = os.pathsep.join([str(pre), str(site), str(REPO)])
    r = subprocess.run([sys.executable, "-S", "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK" in r.stdout and str(site) in r.stdout.split()[1] and str(site) in r.stdout.split()[2]


def _script(*args: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300, **kw)


def test_script_arguments():
    r = _script("--help")
    assert r.returncode == 0 and "Usage: bash bench/gpu_check.sh" in r.stdout
    for bad in (["--bogus"], ["--steps", "0"], ["--steps", "x"], ["--budget", "-1"], ["--python"]):
        r = _script(*bad)
        assert r.returncode == 2, (bad, r.stdout, r.stderr)
        assert "gpu_check:" in r.stderr and "Usage" in r.stderr


def test_dry_run_checks_wheels_and_machine_and_runs_nothing(tmp_path):
    r = _script("--dry-run", "--python", sys.executable, "--site", str(tmp_path / "site"), "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok: 13 wheels" in r.stdout
    for name in ("install", "gsplat-build", "pytest-cuda", "subject-bench"):
        assert f"== [{name}]" in r.stdout
    assert r.stdout.count("(dry run: not run)") == 4
    assert "gpu_bench.py --dry-run: ok" in r.stdout
    assert not (tmp_path / "site").exists() and not (tmp_path / "o").exists()
    if "available: False" in r.stdout:
        assert "a real run would stop here with exit 2" in r.stdout


@pytest.mark.slow
def test_gpu_bench_code_path_on_the_cpu(tmp_path):
    """bench/gpu_bench.py --smoke: synthesis, two presets through refine + renders, the timing table."""
    r = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_bench.py"), "--smoke", "--out", str(tmp_path)],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "subjects/GPU-hour" in r.stdout and (tmp_path / "gpu_bench.json").is_file()
