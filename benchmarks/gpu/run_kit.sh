#!/usr/bin/env bash
# The GPU run kit's one entry command (benchmarks/gpu/README.md).
#
#   bash benchmarks/gpu/run_kit.sh [--quick] [--out DIR] [--budget SECONDS] [--parts "NAME ..."] [--no-install]
#                                  [--dry-run]   (print each part's command and time limit; run nothing)
#
# 1. Installs the carried wheels (.whl/*.whl) with --no-deps into a target folder, offline, and puts the
#    repository and that folder on PYTHONPATH (the repository first).
# 2. Runs the parts, each under its own time limit (`timeout`), so that a failure or an overrun costs
#    only that part: correspondence, sampler, metrics, video, pytest (-m gpu), kernels. A part's limit
#    is its own share, cut so that the parts after it keep their minimum within the total budget;
#    time a part leaves unused goes to the later ones (kernels takes what is left).
# 3. Writes kit-<device>.json (benchmarks/gpu/kit.py summary): the device, each part's status, seconds
#    and file, the key figures and the pytest outcome per test.
# Every JSON and the log (kit.log) go into one folder: --out, else $KIT_OUT, else $OUT (the device
# machine's output folder), else results/benchmarks/kit. At most 7 files: the device sends back 8.
#
# --quick: the same parts on the CPU (CUDA hidden), tiny backbones, few steps, `pytest -m gpu
# --collect-only`: the rehearsal (benchmarks/gpu/rehearse.sh, tests/test_gpu_kit.py).
#
# Environment: PYTHON (python3), KIT_WHEELS (.whl), KIT_SITE (/tmp/site), KIT_OUT, KIT_BUDGET (seconds,
# 470; quick: 900), KIT_PARTS (all), KIT_NO_INSTALL=1 (the packages are in KIT_SITE already, or none needed).
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
WHEELS="${KIT_WHEELS:-$REPO/.whl}"
SITE="${KIT_SITE:-/tmp/site}"
OUTDIR="${KIT_OUT:-${OUT:-$REPO/results/benchmarks/kit}}"
QUICK=0
BUDGET="${KIT_BUDGET:-}"
PARTS="${KIT_PARTS:-correspondence sampler metrics video pytest kernels}"
INSTALL=1
[ "${KIT_NO_INSTALL:-0}" = 1 ] && INSTALL=0
DRY_RUN=0
while [ $# -gt 0 ]; do
  case "$1" in
    --quick|--cpu) QUICK=1 ;;
    --out) OUTDIR="$2"; shift ;;
    --budget) BUDGET="$2"; shift ;;
    --parts) PARTS="$2"; shift ;;
    --no-install) INSTALL=0 ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "run_kit.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$BUDGET" ] || BUDGET=$([ "$QUICK" = 1 ] && echo 900 || echo 470)

if [ "$DRY_RUN" = 1 ]; then
  INSTALL=0
else
  mkdir -p "$OUTDIR"
  OUTDIR="$(cd "$OUTDIR" && pwd)"
fi
WORK="$(mktemp -d /tmp/semantix-kit.XXXXXX)"
STATUS="$WORK/status.tsv"
: > "$STATUS"
TEE_PID=""
if [ "$DRY_RUN" = 0 ]; then
  exec > >(tee -a "$OUTDIR/kit.log") 2>&1
  TEE_PID=$!
fi
START=$(date +%s)
DEADLINE=$((START + BUDGET))

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled MPLBACKEND=Agg
export TOKENIZERS_PARALLELISM=false SEMANTIX_CACHE="$WORK/cache"
if [ "$QUICK" = 1 ]; then
  export CUDA_VISIBLE_DEVICES=""
fi
echo "== GPU run kit: $(date -u +%FT%TZ), repo $REPO, out $OUTDIR, budget ${BUDGET}s, quick=$QUICK, python $PYTHON"

# -- 1. install ---------------------------------------------------------------------------------------
INSTALL_STATUS=skipped
WHEEL_NAMES=()
if [ "$INSTALL" = 1 ]; then
  shopt -s nullglob
  WHEEL_FILES=("$WHEELS"/*.whl)
  shopt -u nullglob
  if [ ${#WHEEL_FILES[@]} -eq 0 ]; then
    echo "== install: no wheels in $WHEELS: wheel install skipped (run benchmarks/gpu/download_wheels.py first)"
    INSTALL_STATUS="skipped: no wheels in $WHEELS"
  else
    for f in "${WHEEL_FILES[@]}"; do WHEEL_NAMES+=("$(basename "$f")"); done
    echo "== install: ${#WHEEL_FILES[@]} wheels -> $SITE"
    if "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --disable-pip-version-check --target "$SITE" "${WHEEL_FILES[@]}"; then
      INSTALL_STATUS=ok
    else
      INSTALL_STATUS=failed
      echo "== install FAILED: the parts run on what the machine has"
    fi
  fi
else
  echo "== install: skipped (--no-install): packages from $SITE as they are"
  INSTALL_STATUS="skipped: --no-install, the packages in $SITE as they were"
fi
export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
cd "$REPO" || exit 1
[ "$DRY_RUN" = 1 ] || "$PYTHON" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0))" || true

# -- 2. parts -----------------------------------------------------------------------------------------
# name: own limit, minimum kept for it when earlier parts run long (seconds); GPU, then quick (CPU).
declare -A LIMIT MINIMUM
if [ "$QUICK" = 1 ]; then
  LIMIT=([correspondence]=60 [sampler]=240 [metrics]=120 [video]=120 [pytest]=120 [kernels]=60)
  MINIMUM=([correspondence]=20 [sampler]=60 [metrics]=30 [video]=40 [pytest]=30 [kernels]=20)
else
  LIMIT=([correspondence]=45 [sampler]=240 [metrics]=60 [video]=90 [pytest]=100 [kernels]=240)
  MINIMUM=([correspondence]=15 [sampler]=150 [metrics]=30 [video]=45 [pytest]=50 [kernels]=0)
fi
SLUG_CMD="import torch; print((torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu').lower().replace(' ', '-'))"
SLUG=dry-run
[ "$DRY_RUN" = 1 ] || SLUG="$("$PYTHON" -c "$SLUG_CMD" 2>/dev/null || echo unknown)"
JUNIT="$WORK/pytest-gpu-$SLUG.xml"
# `pytest -m gpu` on the test files that hold gpu tests: collecting every file would import what only
# the CPU tests need (data_prep's `datasets`), which the GPU machine lacks and the kit does not carry.
GPU_TESTS="$(grep -l 'mark\.gpu' tests/test_*.py | tr '\n' ' ')"
# With the kernels part in the run, pytest leaves out the test that times the same variants (kernels
# measures them with more steps, torch.compile included, and records each one's error against float32).
case " $PARTS " in
  *" kernels "*) GPU_TESTS="$GPU_TESTS --deselect tests/test_gpu.py::test_kernel_benchmark_variants_run_and_keep_the_numbers" ;;
esac

part_command() {
  case "$1:$QUICK" in
    correspondence:0) echo "$PYTHON -m benchmarks.gpu.kit correspondence --out $OUTDIR" ;;
    correspondence:1) echo "$PYTHON -m benchmarks.gpu.kit correspondence --out $OUTDIR --side 16 --channels 32 --repeats 1" ;;
    sampler:0) echo "$PYTHON -m benchmarks.sampler --backbone sd15_random --steps 60 --repeats 1 --sweep 1 --skip correspondence kernels --out $OUTDIR --methods semantix styleid eye_for_an_eye cross_image_attention stylegallery" ;;
    sampler:1) echo "$PYTHON -m benchmarks.sampler --backbone tiny --steps 2 --repeats 1 --sweep 1 --skip correspondence kernels --out $OUTDIR --methods" ;;
    metrics:0) echo "$PYTHON -m benchmarks.metrics --device cuda --sizes 512 --samples 2 --repeats 1 --out $OUTDIR" ;;
    metrics:1) echo "$PYTHON -m benchmarks.metrics --sizes 64 --samples 1 --repeats 1 --no-compute --out $OUTDIR --metrics artfid fid lpips colour_histogram ssim_grey" ;;
    video:0) echo "$PYTHON -m benchmarks.video --frames 16 --steps 10 --repeats 1 --out $OUTDIR" ;;
    video:1) echo "$PYTHON -m benchmarks.video --frames 2 --steps 2 --repeats 1 --out $OUTDIR" ;;
    pytest:0) echo "$PYTHON -m pytest -m gpu -p no:cacheprovider --timeout 100 -q -rA --junitxml $JUNIT $GPU_TESTS" ;;
    pytest:1) echo "$PYTHON -m pytest -m gpu -p no:cacheprovider --collect-only -q $GPU_TESTS" ;;
    kernels:0) echo "$PYTHON -m benchmarks.gpu.kit kernels --out $OUTDIR --steps 10 --repeats 2" ;;
    kernels:1) echo "$PYTHON -m benchmarks.gpu.kit kernels --out $OUTDIR --steps 2 --repeats 1 --no-compile" ;;
  esac
}

ALL_PARTS=(correspondence sampler metrics video pytest kernels)
for i in "${!ALL_PARTS[@]}"; do
  name="${ALL_PARTS[$i]}"
  case " $PARTS " in *" $name "*) ;; *) continue ;; esac
  reserve=0
  for later in "${ALL_PARTS[@]:$((i + 1))}"; do
    case " $PARTS " in *" $later "*) reserve=$((reserve + MINIMUM[$later])) ;; esac
  done
  now=$(date +%s)
  limit=$(( DEADLINE - now - reserve - 5 ))  # 5 s for the summary
  [ "$limit" -gt "${LIMIT[$name]}" ] && limit=${LIMIT[$name]}
  command="$(part_command "$name")"
  if [ "$limit" -lt 10 ]; then
    echo "== $name: skipped, no time left in the ${BUDGET}s budget"
    printf '%s\tskipped\t-1\t0\t%s\t%s\n' "$name" "$limit" "$command" >> "$STATUS"
    continue
  fi
  if [ "$DRY_RUN" = 1 ]; then
    printf '%s\t%s\t%s\n' "$name" "${LIMIT[$name]}" "$command"
    continue
  fi
  echo "== $name (limit ${limit}s): $command"
  t0=$(date +%s.%N)
  # shellcheck disable=SC2086  # the command is split into words on purpose
  timeout --kill-after=10 "$limit" $command
  rc=$?
  t1=$(date +%s.%N)
  seconds=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
  case "$rc" in 0) status=ok ;; 124|137) status=timeout ;; *) status=failed ;; esac
  echo "== $name: $status (exit $rc) after ${seconds}s"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$seconds" "$limit" "$command" >> "$STATUS"
done

# -- 3. summary ---------------------------------------------------------------------------------------
if [ "$DRY_RUN" = 1 ]; then
  rm -rf "$WORK"
  exit 0
fi
ELAPSED=$(( $(date +%s) - START ))
SUMMARY_ARGS=(--out "$OUTDIR" --status "$STATUS" --budget "$BUDGET" --elapsed "$ELAPSED"
              --install-status "$INSTALL_STATUS" --site "$SITE" --junit "$JUNIT")
[ "$QUICK" = 1 ] && SUMMARY_ARGS+=(--quick)
[ ${#WHEEL_NAMES[@]} -gt 0 ] && SUMMARY_ARGS+=(--wheels "${WHEEL_NAMES[@]}")
timeout 60 "$PYTHON" -m benchmarks.gpu.kit summary "${SUMMARY_ARGS[@]}"
summary_rc=$?
echo "== done in $(( $(date +%s) - START ))s: $(cut -f1,2 "$STATUS" | tr '\t\n' ': ')"
rm -rf "$WORK"
exec >&- 2>&-
[ -n "$TEE_PID" ] && wait "$TEE_PID" 2>/dev/null  # the log is complete when the command returns
exit "$summary_rc"
