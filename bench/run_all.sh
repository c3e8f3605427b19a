#!/usr/bin/env bash
# Run every minipacs benchmark and refresh the measured part of bench/RESULTS.md.
# Usage: bench/run_all.sh [--rounds N]     (about 10 minutes on 2 cores)
# Needs: pip install -e '.[test]' and that venv's python first on PATH; DCMTK in /usr/bin; Orthanc and
# orthanc-postgresql, PostgreSQL on 127.0.0.1:5432 (user postgres, trust) for bench_store.py;
# py-spy (optional) for the profile.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=3
if [[ "${1:-}" == "--rounds" ]]; then ROUNDS="$2"; fi

# keep going through the remaining benchmarks if one fails, but report it
status=0
step() { echo; echo "=== $*"; "$@" || { echo "!!! failed: $*"; status=1; }; }

step timeout 300 python bench/gen_data.py
step timeout 1800 python bench/bench_store.py --rounds "$ROUNDS"
step timeout 300 python bench/bench_memory.py
step timeout 600 python bench/bench_memory.py --stow
step timeout 180 python bench/bench_idle.py
if command -v py-spy >/dev/null; then
  step timeout 180 python bench/profile_store.py --set small
else
  echo "py-spy not installed: skipping the profile (pip install py-spy)"
fi
step python bench/report.py
exit $status
