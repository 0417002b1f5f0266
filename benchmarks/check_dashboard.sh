#!/usr/bin/env bash
# Check the asv dashboard in a real browser.
#
# Publishes asv_bench/results into asv_bench/html (asv publish), serves a
# self-contained copy of it (benchmarks/dashboard_assets.py: the JavaScript
# libraries that asv loads from CDNs are served locally, from their npm
# packages) with python -m http.server, opens it in headless Chromium and
# checks that
#   1. the benchmark grid lists every benchmark asv discovered, and
#   2. the graph page of $BENCH draws a graph: a Flot canvas with at least
#      one series, data points of at least two commits, and painted pixels;
# then saves a screenshot of that graph page.
#
# Usage: benchmarks/check_dashboard.sh [--run] [SCREENSHOT.png]
#   --run   first benchmark $BENCH on the last two commits (asv run --quick
#           HEAD~2..HEAD, in virtualenvs asv builds), so there is a history
#           to draw; without it the results already in asv_bench/results
#           are used.
#   SCREENSHOT.png   default: asv_bench/html/dashboard.png (ignored by git)
# Environment: BENCH (default bench_kernels.MLPLossGrad.time_call), PARAMS
# (the parameter values the graph shows, as in the dashboard's URLs, e.g.
# "p-kernel='mlp_loss_grad'&p-implementation='fused'"; default: all), ASV
# (default asv), CHROMIUM (default chromium), PORT (default: a free one).
# Needs: asv, git, npm, and Chromium (Debian: apt-get install chromium).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
bench="${BENCH:-bench_kernels.MLPLossGrad.time_call}"
graph="#$bench${PARAMS:+?$PARAMS}"
asv="${ASV:-asv}"
chromium="${CHROMIUM:-chromium}"
run=0
if [[ "${1:-}" == "--run" ]]; then run=1; shift; fi
shot="$(realpath -m "${1:-$root/asv_bench/html/dashboard.png}")"

command -v "$chromium" >/dev/null || { echo "no $chromium: apt-get install chromium" >&2; exit 2; }
cd "$root/asv_bench"
"$asv" machine --yes >/dev/null
if (( run )); then
    # A parameterised benchmark's name is matched as "name(param, ...)".
    "$asv" run --quick --show-stderr --bench "^${bench}(\\(|\$)" HEAD~2..HEAD
fi
"$asv" publish

work="$(mktemp -d)"
server=""
cleanup() {
    if [[ -n "$server" ]]; then kill "$server" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

python "$root/benchmarks/dashboard_assets.py" html "$work/site" --probe

port="${PORT:-$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
python -m http.server "$port" --bind 127.0.0.1 --directory "$work/site" >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 50); do
    if python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/index.html')" 2>/dev/null; then break; fi
    sleep 0.2
done

# --no-sandbox: Chromium refuses to start as root otherwise (CI runs as root).
browse() {
    timeout 120 "$chromium" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage \
        --hide-scrollbars --window-size=1400,900 --virtual-time-budget=20000 "$@" \
        2>>"$work/chromium.log"
}
# The JSON that the probe script wrote into the page.
probe() {
    browse --dump-dom "http://127.0.0.1:$port/$1" \
        | python -c 'import html, re, sys; m = re.search(r"<pre id=\"dashboard-probe\"[^>]*>(.*?)</pre>", sys.stdin.read(), re.S); print(html.unescape(m.group(1)) if m else "{}")'
}

probe "" >"$work/grid.json"
probe "$graph" >"$work/graph.json"

python - "$work/grid.json" "$work/graph.json" results/benchmarks.json "$bench" <<'EOF'
import json
import sys

grid, graph, discovered = (json.load(open(p)) for p in sys.argv[1:4])
bench = sys.argv[4]
failures = []

# 1. The grid lists every discovered benchmark (as Class.method under its module).
listed = set(grid.get("names", []))
missing = sorted(b for b in discovered if b != "version" and b.split(".", 1)[1] not in listed)
print(f"grid: {len(listed)} benchmarks listed, {len(discovered) - 1} discovered")
if missing:
    failures.append(f"not listed on the grid page: {', '.join(missing)}")

# 2. The graph page draws the benchmark's history.
main = [g for g in graph.get("graphs", []) if g["id"] == "main-graph"]
if not main:
    failures.append(f"no graph drawn on the page of {bench}")
else:
    g = main[0]
    print(f"graph of {bench}: {g['series']} series, {g['points']} points "
          f"(at most {g['longest']} in one series), {g['painted']} painted pixels "
          f"on a {g['width']}x{g['height']} canvas")
    if g["series"] < 1 or g["longest"] < 2:
        failures.append(f"graph of {bench} has no history: run it on two commits first (--run)")
    if g["painted"] <= 0:
        failures.append(f"graph canvas of {bench} is blank")

for f in failures:
    print("FAIL:", f)
sys.exit(1 if failures else 0)
EOF

browse --screenshot="$shot" "http://127.0.0.1:$port/$graph" >/dev/null
echo "dashboard OK; screenshot: $shot"
