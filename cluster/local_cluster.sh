#!/usr/bin/env bash
# A local multi-node Ray cluster on ONE machine: a head node plus N worker nodes, each a separate
# raylet with its own CPUs, so that multi-node code paths (actors on different nodes, job
# submission through the dashboard, working_dir upload) run without a real cluster.
#
#   cluster/local_cluster.sh start [--workers N] [--head-cpus C] [--worker-cpus C] [--port P] [--dashboard-port D]
#   cluster/local_cluster.sh status [--port P]
#   cluster/local_cluster.sh stop [--port P] [--force] [--clean] [--all]
#
# Run `cluster/local_cluster.sh --help` for every option. See cluster/README.md.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
STATE_NAME="facegs-local-cluster.env"

usage() {
    cat <<'EOF'
Usage: cluster/local_cluster.sh COMMAND [OPTIONS]

Starts, inspects and stops a local multi-node Ray cluster on this machine: one head node and
N worker nodes (separate raylets) that all join the head's GCS. Meant for tests and demos of
`ray job submit`; for real clusters see cluster/ray-cluster-gpu.yaml and cluster/kuberay-rayjob.yaml.

Commands:
  start     start the head node, then the worker nodes, wait until all are alive, print the
            address for `ray job submit`
  status    `ray status` of the cluster on --port
  stop      stop the processes of the cluster on --port (only those: other Ray instances on the
            machine, e.g. a test's ray.init(), are left alone); --all runs `ray stop --force`
  -h, --help

Options of start:
  --workers N           worker nodes to add (default 1; 0 = head only)
  --head-cpus C         logical CPUs of the head node (default 1)
  --worker-cpus C       logical CPUs of each worker node (default 1)
  --worker-gpus G       logical GPUs of each worker node (default 0). Ray resources are logical:
                        G > 0 on a CPU machine exercises GPU scheduling (code must fall back to CPU)
  --object-store-mb M   object store of each node in MiB (default 512)
  --node-ip-address IP  passed to every `ray start` (default 127.0.0.1; note: Ray 2.60's
                        `ray start` replaces a loopback address by the machine's primary address)
  --timeout S           seconds to wait for all nodes to be alive (default 90)

Options of every command:
  --port P              GCS port of the head node (default 6379); it names the cluster
  --dashboard-port D    dashboard / job submission port (default 8265)
  --temp-dir DIR        Ray temp dir of all nodes (default /tmp/ray-facegs-<P>; keep it short:
                        Unix socket paths under it must stay below 108 bytes). A temp dir of its
                        own keeps `ray.init()` elsewhere on the machine from attaching to this cluster.

Options of stop:
  --force               SIGKILL at once (default: SIGTERM, then SIGKILL after --grace seconds)
  --grace S             seconds between SIGTERM and SIGKILL (default 10)
  --clean               also delete the cluster's temp dir (logs included)
  --all                 run `ray stop --force` instead: kills EVERY Ray process of this machine

Environment:
  RAY               the ray executable (default: the `ray` next to the current `python`, else
                    .venv/bin/ray of this repository, else `ray` on PATH). Its directory is put
                    first on PATH, so job entrypoints that call `python` use the same environment.
  RAY_AUTH_MODE     exported as "disabled" unless set (local test clusters only; real clusters
                    keep token authentication on, see cluster/README.md)

Example:
  cluster/local_cluster.sh start --workers 2 --head-cpus 1 --worker-cpus 1
  RAY_AUTH_MODE=disabled ray job submit --address http://127.0.0.1:8265 --working-dir . \
      -- python -m ray_jobs.build_dataset --subjects SUBJECTS --out OUT --preset test
  cluster/local_cluster.sh stop
EOF
}

die() { echo "local_cluster.sh: error: $*" >&2; exit 2; }

# ---------------------------------------------------------------------------------------------
# arguments
# ---------------------------------------------------------------------------------------------
CMD="${1:-}"
case "$CMD" in
    -h|--help|help) usage; exit 0 ;;
    start|stop|status) shift ;;
    "") usage >&2; exit 2 ;;
    *) die "unknown command '$CMD' (start, stop, status; --help)" ;;
esac

WORKERS=1 HEAD_CPUS=1 WORKER_CPUS=1 WORKER_GPUS=0 PORT=6379 DASH_PORT=8265 OBJ_MB=512
NODE_IP=127.0.0.1 TIMEOUT=90 TEMP_DIR="" FORCE=0 GRACE=10 CLEAN=0 ALL=0

need_value() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
    opt="$1"
    if [[ "$opt" == --*=* ]]; then set -- "${opt%%=*}" "${opt#*=}" "${@:2}"; opt="$1"; fi
    case "$opt" in
        -h|--help) usage; exit 0 ;;
        --workers) need_value "$@"; WORKERS="$2"; shift 2 ;;
        --head-cpus) need_value "$@"; HEAD_CPUS="$2"; shift 2 ;;
        --worker-cpus) need_value "$@"; WORKER_CPUS="$2"; shift 2 ;;
        --worker-gpus) need_value "$@"; WORKER_GPUS="$2"; shift 2 ;;
        --object-store-mb) need_value "$@"; OBJ_MB="$2"; shift 2 ;;
        --node-ip-address) need_value "$@"; NODE_IP="$2"; shift 2 ;;
        --timeout) need_value "$@"; TIMEOUT="$2"; shift 2 ;;
        --port) need_value "$@"; PORT="$2"; shift 2 ;;
        --dashboard-port) need_value "$@"; DASH_PORT="$2"; shift 2 ;;
        --temp-dir) need_value "$@"; TEMP_DIR="$2"; shift 2 ;;
        --force) FORCE=1; shift ;;
        --grace) need_value "$@"; GRACE="$2"; shift 2 ;;
        --clean) CLEAN=1; shift ;;
        --all) ALL=1; shift ;;
        *) die "unknown option '$opt' (see --help)" ;;
    esac
done

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }
for pair in "--workers:$WORKERS" "--head-cpus:$HEAD_CPUS" "--worker-cpus:$WORKER_CPUS" \
            "--worker-gpus:$WORKER_GPUS" "--object-store-mb:$OBJ_MB" "--port:$PORT" \
            "--dashboard-port:$DASH_PORT" "--timeout:$TIMEOUT" "--grace:$GRACE"; do
    is_uint "${pair#*:}" || die "${pair%%:*} must be a non-negative integer, got '${pair#*:}'"
done
(( PORT > 0 && PORT < 65536 && DASH_PORT > 0 && DASH_PORT < 65536 )) || die "ports must be in 1..65535"
(( PORT != DASH_PORT )) || die "--port and --dashboard-port must differ"
(( OBJ_MB >= 80 )) || die "--object-store-mb must be at least 80 (Ray's minimum is 75 MiB)"
TEMP_DIR="${TEMP_DIR:-/tmp/ray-facegs-$PORT}"
[[ "$TEMP_DIR" == /* ]] || TEMP_DIR="$PWD/$TEMP_DIR"
TEMP_DIR="${TEMP_DIR%/}"
STATE_FILE="$TEMP_DIR/$STATE_NAME"

# ---------------------------------------------------------------------------------------------
# environment: which ray, which python
# ---------------------------------------------------------------------------------------------
if [[ -n "${RAY:-}" ]]; then
    RAY_BIN="$(command -v "$RAY" || true)"
    [[ -n "$RAY_BIN" ]] || die "RAY=$RAY is not an executable"
else
    PY_ON_PATH="$(command -v python || command -v python3 || true)"
    if [[ -n "$PY_ON_PATH" && -x "$(dirname "$PY_ON_PATH")/ray" ]]; then
        RAY_BIN="$(dirname "$PY_ON_PATH")/ray"
    elif [[ -x "$REPO_ROOT/.venv/bin/ray" ]]; then
        RAY_BIN="$REPO_ROOT/.venv/bin/ray"
    else
        RAY_BIN="$(command -v ray || true)"
        [[ -n "$RAY_BIN" ]] || die "no 'ray' found: activate the environment that has ray[default] or set RAY=/path/to/ray"
    fi
fi
RAY_DIR="$(cd "$(dirname "$RAY_BIN")" && pwd)"
RAY_BIN="$RAY_DIR/$(basename "$RAY_BIN")"
# The python of ray's environment (helpers below, and `python` of job entrypoints): the
# interpreter in the ray script's shebang, else the python next to it.
PY="$(head -c 300 "$RAY_BIN" | sed -n '1s/^#![[:space:]]*//p' | awk '{print $1}')"
if [[ -z "$PY" || ! -x "$PY" || "$(basename "$PY")" == env ]]; then
    if [[ -x "$RAY_DIR/python" ]]; then PY="$RAY_DIR/python"; else PY="$(command -v python3 || true)"; fi
fi
[[ -n "$PY" && -x "$PY" ]] || die "no python found for $RAY_BIN"
export PATH="$RAY_DIR:$PATH"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
export RAY_USAGE_STATS_ENABLED="${RAY_USAGE_STATS_ENABLED:-0}"

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
port_free() {  # port_free PORT -> 0 when nothing listens on it (loopback or any address)
    "$PY" - "$1" <<'PYEOF'
import socket, sys
port = int(sys.argv[1])
for host in ("127.0.0.1", "0.0.0.0"):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT of a stopped cluster is fine
    try:
        s.bind((host, port))
    except OSError:
        sys.exit(1)
    finally:
        s.close()
PYEOF
}

free_ports() {  # free_ports N -> N distinct free TCP ports
    "$PY" - "$1" <<'PYEOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
PYEOF
}

# cluster_procs MODE: the processes of this cluster only, found by its temp dir and GCS port:
# every process whose command line names the temp dir or the GCS address, the PIDs recorded at
# start, and all their descendants (workers, actors, job drivers). MODE: list | record | kill | kill9.
cluster_procs() {
    "$PY" - "$1" "$TEMP_DIR" "$PORT" "$GRACE" "$STATE_FILE" <<'PYEOF'
import importlib.util, os, re, signal, sys, time
mode, temp_dir, port, grace, state_file = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5]
try:
    import psutil
except ImportError:  # ray vendors psutil under ray/thirdparty_files
    spec = importlib.util.find_spec("ray")
    if spec is None or spec.origin is None:
        sys.exit(f"local_cluster.sh: error: {sys.executable} has neither psutil nor ray (set RAY=/path/to/venv/bin/ray)")
    sys.path.insert(0, os.path.join(os.path.dirname(spec.origin), "thirdparty_files"))
    import psutil

dir_re = re.compile(r"(^|[=\s])" + re.escape(temp_dir) + r"(/|$)")
gcs_re = re.compile(r"^--(gcs[-_]address|address)=[^\s:]+:" + re.escape(port) + r"$")
recorded = {}
if os.path.exists(state_file):
    for line in open(state_file):
        if line.startswith("PIDS="):
            for item in line.split("=", 1)[1].split():
                pid, _, ctime = item.partition("@")
                recorded[int(pid)] = float(ctime or 0)
me = {os.getpid(), *[p.pid for p in psutil.Process().parents()]}
roots = set()
for p in psutil.process_iter(["pid", "cmdline", "create_time"]):
    try:
        args = p.info["cmdline"] or []
        if p.pid in me:
            continue
        rec = recorded.get(p.pid)
        if rec is not None and abs(rec - p.info["create_time"]) < 1.0:
            roots.add(p)
        elif any(dir_re.search(a) for a in args) or any(gcs_re.match(a) for a in args):
            # not a shell or an editor that merely mentions the path: only Ray's own programs
            exe = " ".join(args[:3])
            if "ray" in exe or "gcs_server" in exe or "raylet" in exe:
                roots.add(p)
    except psutil.Error:
        pass
procs = {}
for p in roots:
    procs[p.pid] = p
    try:
        for c in p.children(recursive=True):
            if c.pid not in me:
                procs[c.pid] = c
    except psutil.Error:
        pass
procs = list(procs.values())
if mode == "record":
    items = []
    for p in sorted(procs, key=lambda p: p.pid):
        try:
            items.append(f"{p.pid}@{p.create_time()}")
        except psutil.Error:
            pass
    print(" ".join(items))
    sys.exit(0)
if mode == "list":
    for p in sorted(procs, key=lambda p: p.pid):
        try:
            print(p.pid, " ".join(p.cmdline())[:150])
        except psutil.Error:
            pass
    sys.exit(0)
if not procs:
    print("no processes of this cluster are running")
    sys.exit(0)
# raylets first (their workers and agents follow them), the GCS last, like `ray stop`
def rank(p):
    try:
        name = p.name()
    except psutil.Error:
        return 1
    return 0 if name == "raylet" else 2 if name == "gcs_server" else 1
sig = signal.SIGKILL if mode == "kill9" else signal.SIGTERM
for p in sorted(procs, key=rank):
    try:
        p.send_signal(sig)
    except psutil.Error:
        pass
gone, alive = psutil.wait_procs(procs, timeout=0 if mode == "kill9" else grace)
for p in alive:
    try:
        p.kill()
    except psutil.Error:
        pass
gone2, alive = psutil.wait_procs(alive, timeout=5)
print(f"stopped {len(procs) - len(alive)} process(es) of the cluster"
      + (f" ({len(gone2)} needed SIGKILL)" if gone2 and mode != "kill9" else "")
      + (f"; still alive: {[p.pid for p in alive]}" if alive else ""))
sys.exit(1 if alive else 0)
PYEOF
}

record_pids() {  # the PIDs of the cluster's processes (with start times), for `stop`
    local pids
    pids="$(cluster_procs record)"
    {
        echo "PORT=$PORT"
        echo "DASHBOARD_PORT=$DASH_PORT"
        echo "RAY_JOB_ADDRESS=http://127.0.0.1:$DASH_PORT"
        echo "GCS_ADDRESS=$(cat "$TEMP_DIR/ray_current_cluster" 2>/dev/null || echo "?:$PORT")"
        echo "NODES=$((WORKERS + 1))"
        echo "PIDS=$pids"
    } > "$STATE_FILE"
}

wait_for_nodes() {  # wait_for_nodes N: until the dashboard reports N alive nodes
    "$PY" - "$DASH_PORT" "$1" "$TIMEOUT" <<'PYEOF'
import json, sys, time, urllib.request
port, want, timeout = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
url = f"http://127.0.0.1:{port}/api/v0/nodes?limit=1000"
deadline, alive, err = time.time() + timeout, -1, None
while time.time() < deadline:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            nodes = json.load(r)["data"]["result"]["result"]
        alive = sum(n.get("state") == "ALIVE" for n in nodes)
        if alive >= want:
            cpus = sum(n.get("resources_total", {}).get("CPU", 0) for n in nodes if n.get("state") == "ALIVE")
            gpus = sum(n.get("resources_total", {}).get("GPU", 0) for n in nodes if n.get("state") == "ALIVE")
            print(f"{alive} node(s) alive, {cpus:g} CPU, {gpus:g} GPU")
            sys.exit(0)
    except Exception as e:  # dashboard still starting
        err = e
    time.sleep(1.0)
print(f"timed out after {timeout:g} s: {alive} of {want} node(s) alive (last error: {err})", file=sys.stderr)
sys.exit(1)
PYEOF
}

# ---------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------
do_start() {
    port_free "$PORT" || die "port $PORT is in use (another cluster? '$0 status --port $PORT' / 'stop --port $PORT')"
    port_free "$DASH_PORT" || die "dashboard port $DASH_PORT is in use (choose another with --dashboard-port)"
    local running
    running="$(cluster_procs list)" || die "cannot list processes (see above)"
    [[ -z "$running" ]] || die "processes of a cluster with temp dir $TEMP_DIR are still running: '$0 stop --port $PORT' first"
    mkdir -p "$TEMP_DIR"
    local log="$TEMP_DIR/facegs-local-cluster.log"
    : > "$log"
    # Ports Ray would otherwise take at fixed defaults, which clash between nodes of one machine
    # (dashboard agent: 52365 on every node) or with another Ray instance (client server: 10001).
    local ports
    read -r -a ports <<< "$(free_ports $((WORKERS + 2)))"
    local obj=$((OBJ_MB * 1024 * 1024))

    # Stop whatever this call started if anything below fails.
    trap 'echo "local_cluster.sh: start failed; log: $log" >&2; tail -n 30 "$log" >&2 || true; cluster_procs kill9 >&2 || true' ERR

    echo "starting head node: $HEAD_CPUS CPU, GCS port $PORT, dashboard 127.0.0.1:$DASH_PORT (ray: $RAY_BIN)"
    "$RAY_BIN" start --head \
        --node-ip-address "$NODE_IP" --port "$PORT" \
        --dashboard-host 127.0.0.1 --dashboard-port "$DASH_PORT" \
        --num-cpus "$HEAD_CPUS" --num-gpus 0 \
        --temp-dir "$TEMP_DIR" --object-store-memory "$obj" \
        --dashboard-agent-listen-port "${ports[0]}" --ray-client-server-port "${ports[1]}" \
        --disable-usage-stats >> "$log" 2>&1
    local i
    for ((i = 1; i <= WORKERS; i++)); do
        echo "starting worker node $i/$WORKERS: $WORKER_CPUS CPU, $WORKER_GPUS GPU"
        "$RAY_BIN" start --address "127.0.0.1:$PORT" \
            --node-ip-address "$NODE_IP" \
            --num-cpus "$WORKER_CPUS" --num-gpus "$WORKER_GPUS" \
            --object-store-memory "$obj" \
            --dashboard-agent-listen-port "${ports[$((i + 1))]}" \
            --disable-usage-stats >> "$log" 2>&1
    done
    wait_for_nodes $((WORKERS + 1))
    trap - ERR
    record_pids
    cat <<EOF
Ray cluster is up: 1 head + $WORKERS worker node(s); GCS $(cat "$TEMP_DIR/ray_current_cluster" 2>/dev/null || echo "port $PORT"); logs under $TEMP_DIR
Submit jobs with:
  RAY_AUTH_MODE=$RAY_AUTH_MODE ray job submit --address http://127.0.0.1:$DASH_PORT --working-dir . -- python -m ray_jobs.build_dataset ...
Stop with:
  $0 stop --port $PORT
RAY_JOB_ADDRESS=http://127.0.0.1:$DASH_PORT
EOF
}

do_status() {
    echo "cluster on GCS port $PORT (temp dir $TEMP_DIR); job submission address: http://127.0.0.1:$DASH_PORT"
    "$RAY_BIN" status --address "127.0.0.1:$PORT"
}

do_stop() {
    if (( ALL )); then
        echo "ray stop --force: stopping EVERY Ray process of this machine"
        "$RAY_BIN" stop --force
    elif (( FORCE )); then
        cluster_procs kill9
    else
        cluster_procs kill
    fi
    rm -f "$STATE_FILE"
    if (( CLEAN )) && [[ -d "$TEMP_DIR" ]]; then
        # only a directory that looks like a Ray temp dir
        if [[ -e "$TEMP_DIR/session_latest" || -e "$TEMP_DIR/facegs-local-cluster.log" ]]; then
            rm -rf -- "$TEMP_DIR"
            echo "removed $TEMP_DIR"
        else
            echo "not removing $TEMP_DIR: it does not look like a Ray temp dir" >&2
        fi
    fi
}

case "$CMD" in
    start) do_start ;;
    status) do_status ;;
    stop) do_stop ;;
esac
