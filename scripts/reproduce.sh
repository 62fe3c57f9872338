#!/usr/bin/env bash
# The full study in one command: compare (experiments/configs/full.toml),
# scaling, spectrum, then the README's Findings section and docs/findings/.
# 24 minutes on a 2-core CPU shared with other work (scaling 9, spectrum
# 0.5, compare 14); the same command runs on a GPU or TPU.
#
#   scripts/reproduce.sh                  # results/<study>-<UTC time>/
#   RUN=20261204 scripts/reproduce.sh     # reuse a name: resumes it
#
# A study whose results.json already exists under that name is not run
# again, and compare resumes its own unfinished runs, so after a kill the
# same RUN picks up where it stopped. PYTHON picks the interpreter (default
# .venv/bin/python); RESULTS the results folder (default results).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-.venv/bin/python}"
RESULTS="${RESULTS:-results}"
RUN="${RUN:-$(date -u +%Y%m%dT%H%M%SZ)}"

FAILED=()

step() {
  # step NAME COMMAND...: runs a study unless its results are already there.
  # A study that fails is reported at the end; the others still run.
  local name="$1"
  shift
  if [[ -f "$RESULTS/$name-$RUN/results.json" ]]; then
    echo "== $name: $RESULTS/$name-$RUN already done, skipped"
    return
  fi
  echo "== $name: started $(date -u +%H:%M:%S)"
  local start=$SECONDS
  if "$@" --out "$RESULTS" --run-id "$name-$RUN"; then
    echo "== $name: finished in $((SECONDS - start)) s"
  else
    echo "== $name: FAILED after $((SECONDS - start)) s"
    FAILED+=("$name")
  fi
}

# The two short studies first (about 12 minutes together), so that a long
# compare that is stopped early still leaves them finished.
# Linear algebra is timed single-threaded (the study sets this itself when
# unset; set here so that the log shows it).
OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 OMP_NUM_THREADS=1 \
  XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
  step scaling "$PYTHON" -m experiments.scaling
step spectrum "$PYTHON" -m experiments.spectrum
step compare "$PYTHON" -m experiments.compare --config experiments/configs/full.toml
"$PYTHON" scripts/findings.py --results "$RESULTS" --elapsed-seconds "$SECONDS"
echo "== done: README.md (Findings) and docs/findings/ rebuilt from run $RUN"
if ((${#FAILED[@]})); then
  echo "== failed: ${FAILED[*]}" >&2
  exit 1
fi
