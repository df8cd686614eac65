#!/usr/bin/env bash
# bench/gpu_check.sh: facegs' GPU check, one command on a bare single-GPU machine (issue 15).
#
# The machine needs: Python 3.12 with torch (CUDA build), nvcc, g++, numpy, opencv, pyarrow,
# fsspec, scipy, tqdm, matplotlib and pytest (with their own dependencies: pillow comes with
# matplotlib, typing_extensions with torch). Not gsplat, ray or webdataset, and no network: what
# the check needs beyond that travels in bench/wheels/ (Python 3.12, manylinux x86_64), installed
# with `pip install --no-index --no-deps --target SITE` and put on PYTHONPATH. Ray is not used.
#
# Wheels (name, bytes; tests/test_gpu_check.py checks this list against the folder):
#   attrs-26.1.0-py3-none-any.whl                                                  67548
#   gsplat-1.5.3-py3-none-any.whl                                                6519041
#   jaxtyping-0.3.11-py3-none-any.whl                                              56593
#   jsonschema-4.26.0-py3-none-any.whl                                             90630
#   jsonschema_specifications-2025.9.1-py3-none-any.whl                            18437
#   markdown_it_py-4.3.0-py3-none-any.whl                                          96951
#   mdurl-0.1.2-py3-none-any.whl                                                    9979
#   ninja-1.13.2-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl          183365
#   pygments-2.21.0-py3-none-any.whl                                             1250147
#   referencing-0.37.0-py3-none-any.whl                                            26766
#   rich-15.0.0-py3-none-any.whl                                                  310654
#   rpds_py-2026.9.1-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl    371261
#   wadler_lindig-0.1.8-py3-none-any.whl                                           20840
#   total                                                                        9022212  (8.6 MiB)
# (gsplat and its needs: ninja, jaxtyping + wadler_lindig, rich + markdown-it-py + mdurl + pygments;
# facegs' manifests: jsonschema + attrs, referencing, jsonschema-specifications, rpds-py.)
#
# Steps, each timed against one budget (--budget, default 480 s = 8 minutes):
#   1. machine: python and torch versions, torch.cuda, the GPU, nvcc, g++
#   2. install the wheels into --site
#   3. build gsplat's CUDA kernels (JIT; TORCH_CUDA_ARCH_LIST = this GPU only, MAX_JOBS = cores)
#   4. pytest -m cuda: gsplat vs the torch backend and vs the fused CPU kernel
#      (tests/test_render.py, tests/test_losses.py, tests/test_cpu_kernel.py)
#   5. bench/gpu_bench.py: one subject (16 views, 512 px, 200 renders) at --preset gpu and at the
#      proposed gpu_fast; subjects per GPU-hour; fit step time vs raw gsplat.rasterization fwd+bwd
# Output: the log on stdout, bench/gpu_bench.py's JSON under --out.
#
# Exit status: 0 every step passed; 1 a step failed (the others still ran); 2 bad arguments or the
# machine lacks something (a CUDA GPU, nvcc).
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
SITE="${TMPDIR:-/tmp}/facegs-gpu-site"
OUT="$REPO/bench/out/gpu_check"
BUDGET=480
STEPS=""
DRY_RUN=0
SKIP_TESTS=0
SKIP_BENCH=0

usage() {
  cat <<EOF
Usage: bash bench/gpu_check.sh [options]

  --dry-run       check the wheels and the machine, print the steps, run nothing on the GPU
  --python PY     interpreter with torch (default: \$PYTHON or python3)
  --site DIR      where the wheels are installed (default: $SITE)
  --out DIR       results folder (default: bench/out/gpu_check)
  --budget S      seconds for the whole check (default: 480)
  --steps N       override the presets' fit steps (a shorter run; the numbers are then not the presets')
  --skip-tests    skip pytest -m cuda
  --skip-bench    skip the subject timing
  -h, --help      this help
EOF
}

die_usage() { echo "gpu_check: $1" >&2; usage >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --python) [ $# -ge 2 ] || die_usage "--python needs a value"; PY="$2"; shift ;;
    --site) [ $# -ge 2 ] || die_usage "--site needs a value"; SITE="$2"; shift ;;
    --out) [ $# -ge 2 ] || die_usage "--out needs a value"; OUT="$2"; shift ;;
    --budget) [ $# -ge 2 ] || die_usage "--budget needs a value"; BUDGET="$2"; shift
      [[ "$BUDGET" =~ ^[0-9]+$ ]] || die_usage "--budget must be a whole number of seconds, got '$BUDGET'" ;;
    --steps) [ $# -ge 2 ] || die_usage "--steps needs a value"; STEPS="$2"; shift
      [[ "$STEPS" =~ ^[1-9][0-9]*$ ]] || die_usage "--steps must be a positive integer, got '$STEPS'" ;;
    --skip-tests) SKIP_TESTS=1 ;;
    --skip-bench) SKIP_BENCH=1 ;;
    -h|--help) usage; exit 0 ;;
    *) die_usage "unknown argument '$1'" ;;
  esac
  shift
done

T0=$(date +%s)
FAILED=()
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }

# step NAME CMD...: run CMD with the time left, report its duration and status
step() {
  local name="$1"; shift
  local remaining; remaining=$(left)
  echo "== [$name] $*"
  if [ "$DRY_RUN" = 1 ]; then echo "   (dry run: not run)"; return 0; fi
  if [ "$remaining" -le 0 ]; then echo "   SKIPPED: the ${BUDGET} s budget is used up"; FAILED+=("$name"); return 1; fi
  local t=$(date +%s)
  timeout "$remaining" "$@"
  local rc=$?
  echo "   [$name] exit $rc after $(( $(date +%s) - t )) s (total $(( $(date +%s) - T0 )) s)"
  [ $rc = 0 ] || FAILED+=("$name")
  return $rc
}

# 0. the wheels listed above are the folder's, with their sizes
echo "== [wheels] bench/wheels against this script's header"
WHEEL_ERR=0
n=0
while read -r name size; do
  f="$REPO/bench/wheels/$name"
  if [ ! -f "$f" ]; then echo "   missing: $name"; WHEEL_ERR=1
  elif [ "$(stat -c %s "$f")" != "$size" ]; then echo "   size of $name is $(stat -c %s "$f"), header says $size"; WHEEL_ERR=1
  fi
  n=$((n + 1))
done < <(sed -n 's/^#   \([^ ]*\.whl\) *\([0-9]*\)$/\1 \2/p' "${BASH_SOURCE[0]}")
for f in "$REPO"/bench/wheels/*.whl; do
  grep -q "^#   $(basename "$f") " "${BASH_SOURCE[0]}" || { echo "   not in the header: $(basename "$f")"; WHEEL_ERR=1; }
done
[ "$WHEEL_ERR" = 0 ] && echo "   ok: $n wheels" || { echo "gpu_check: the wheel folder does not match the header" >&2; exit 2; }

# 1. machine
echo "== [machine]"
MACHINE_ERR=0
if ! "$PY" -c "import sys; print('   python', sys.version.split()[0])"; then echo "   no python at '$PY'"; MACHINE_ERR=1; fi
"$PY" -c "import sys; sys.exit(0 if sys.version_info[:2] == (3, 12) else 1)" 2>/dev/null \
  || echo "   note: the wheels are built for Python 3.12 (rpds-py is binary); pip will refuse them on another version"
if ! "$PY" - <<'EOF'
import torch
print("   torch", torch.__version__, "CUDA", torch.version.cuda, "available:", torch.cuda.is_available())
if torch.cuda.is_available():
    print("   GPU", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability(), "count", torch.cuda.device_count())
raise SystemExit(0 if torch.cuda.is_available() else 3)
EOF
then echo "   no CUDA GPU visible to torch"; MACHINE_ERR=1; fi
if command -v nvcc >/dev/null; then echo "   nvcc: $(nvcc --version | tail -1)"; else echo "   nvcc not on PATH (gsplat's JIT build needs it)"; MACHINE_ERR=1; fi
command -v g++ >/dev/null && echo "   g++: $(g++ --version | head -1)" || echo "   g++ not on PATH (the fused CPU kernel falls back to torch)"
echo "   cores: $(nproc), budget ${BUDGET} s"
if [ "$MACHINE_ERR" = 1 ]; then
  if [ "$DRY_RUN" = 1 ]; then echo "   (dry run: a real run would stop here with exit 2)"; else exit 2; fi
fi

export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PATH="$SITE/bin:$SITE/ninja/data/bin:$PATH"
export PYTHONUNBUFFERED=1
export FACEGS_THREADS="${FACEGS_THREADS:-1}"
CAP=$("$PY" -c "import torch; c = torch.cuda.get_device_capability(); print(f'{c[0]}.{c[1]}')" 2>/dev/null || echo "9.0")
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$CAP}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"

step install "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
  "$REPO"/bench/wheels/*.whl

step gsplat-build "$PY" - <<'EOF'
import time, torch
t = time.perf_counter()
from gsplat import rasterization  # the JIT build of the CUDA kernels happens on first use
dev = "cuda"
n = 64
means = torch.randn(n, 3, device=dev) * 0.2
means[:, 2] += 2.0
quats = torch.randn(n, 4, device=dev)
scales = torch.full((n, 3), 0.05, device=dev)
opac = torch.full((n,), 0.5, device=dev)
cols = torch.rand(n, 3, device=dev)
vm = torch.eye(4, device=dev)[None]
K = torch.tensor([[[50.0, 0, 32], [0, 50.0, 32], [0, 0, 1]]], device=dev)
out, alpha, _ = rasterization(means, quats, scales, opac, cols, vm, K, 64, 64, packed=False)
torch.cuda.synchronize()
print(f"   gsplat kernels built and ran in {time.perf_counter() - t:.1f} s; alpha max {float(alpha.max()):.3f}")
EOF

if [ "$SKIP_TESTS" = 0 ]; then
  (cd "$REPO" && step pytest-cuda "$PY" -m pytest -m cuda -q -p no:cacheprovider \
    tests/test_render.py tests/test_losses.py tests/test_cpu_kernel.py) || FAILED+=("pytest-cuda")
fi

if [ "$SKIP_BENCH" = 0 ]; then
  step subject-bench "$PY" "$REPO/bench/gpu_bench.py" --out "$OUT" ${STEPS:+--steps "$STEPS"}
fi

echo "== done in $(( $(date +%s) - T0 )) s"
if [ "$DRY_RUN" = 1 ]; then
  "$PY" "$REPO/bench/gpu_bench.py" --dry-run --out "$OUT" ${STEPS:+--steps "$STEPS"} >/dev/null 2>&1 \
    && echo "   gpu_bench.py --dry-run: ok" || echo "   gpu_bench.py --dry-run failed (run it for the message)"
  exit 0
fi
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "FAILED: $(printf '%s\n' "${FAILED[@]}" | sort -u | tr '\n' ' ')"
  exit 1
fi
echo "all steps passed; results in $OUT"
