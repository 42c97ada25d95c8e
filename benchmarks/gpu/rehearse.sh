#!/usr/bin/env bash
# The GPU run kit's rehearsal on the CPU (benchmarks/gpu/README.md):
#
#   bash benchmarks/gpu/rehearse.sh [--download] [--out DIR]
#
# 1. (--download) fetches the kit's wheels into .whl/ and the device's own Hugging Face releases into
#    .rehearsal/wheels/ (download_wheels.py --rehearsal); without it nothing is downloaded.
# 2. Makes an environment like the GPU machine's: a fresh virtual environment holding only the
#    packages that machine has (benchmarks/gpu/mimic.py venv: links to this project's .venv, with the
#    device's releases from .rehearsal/wheels/ installed over them where present).
# 3. Runs the entry command, run_kit.sh --quick, with that environment's python: it installs .whl/*.whl
#    with --no-deps into a target folder exactly as on the device. Without wheels in .whl/ that step
#    is skipped (said so in the output) and the kit's packages are linked into the target folder from
#    .venv instead (mimic.py link-kit), so the parts still run on the device's packages plus the kit's.
#
# Environment: SOURCE_PYTHON (the interpreter whose packages are linked; .venv/bin/python),
# REHEARSAL_DIR (.rehearsal: the environment, the target folder and, by default, the output).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SOURCE_PYTHON="${SOURCE_PYTHON:-$REPO/.venv/bin/python}"
DIR="${REHEARSAL_DIR:-$REPO/.rehearsal}"
OUTDIR=""
DOWNLOAD=0
while [ $# -gt 0 ]; do
  case "$1" in
    --download) DOWNLOAD=1 ;;
    --out) OUTDIR="$2"; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "rehearse.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
OUTDIR="${OUTDIR:-$DIR/out}"
cd "$REPO"
start=$(date +%s)

if [ "$DOWNLOAD" = 1 ]; then
  "$SOURCE_PYTHON" benchmarks/gpu/download_wheels.py --rehearsal
fi
shopt -s nullglob
wheels=("$REPO"/.whl/*.whl)
shopt -u nullglob
if [ ${#wheels[@]} -gt 0 ]; then
  "$SOURCE_PYTHON" benchmarks/gpu/download_wheels.py --check
fi

rm -rf "$DIR/venv" "$DIR/site" "$OUTDIR"
mkdir -p "$DIR"
"$SOURCE_PYTHON" benchmarks/gpu/mimic.py venv "$DIR/venv" --overlay "$REPO/.rehearsal/wheels"

export PYTHON="$DIR/venv/bin/python" KIT_SITE="$DIR/site" KIT_WHEELS="$REPO/.whl"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
if [ ${#wheels[@]} -eq 0 ]; then
  echo "rehearse.sh: no wheels in .whl/: wheel install skipped; the kit's packages are linked from $SOURCE_PYTHON's environment instead"
  "$SOURCE_PYTHON" benchmarks/gpu/mimic.py link-kit "$KIT_SITE"
  export KIT_NO_INSTALL=1
fi
set +e
bash benchmarks/gpu/run_kit.sh --quick --out "$OUTDIR"
rc=$?
set -e
echo "rehearse.sh: entry command exited $rc; rehearsal took $(( $(date +%s) - start ))s; results in $OUTDIR"
exit "$rc"
