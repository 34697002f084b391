#!/usr/bin/env bash
# One call on a lent GPU (at most 10 minutes): cove-tiny's training run, the export's edit gates,
# the CUDA tests, `cove bench speed` at SD 2.1's shapes, then `cove bench profile` of one
# denoising step. Everything it returns goes under $OUT, these 6 files (the device returns at most 8):
#   export.tar                 the trained pipeline (fp16) with its training.json, log.jsonl (the loss) and
#                              probes.jsonl (attention entropy, CGA's change, the clip gain, how far COVE moves the prediction,
#                              every PROBE_EVERY steps)
#   quality_export.json        `cove.tiny.quality` on the export (edits, correspondence, probes, then the
#                              other gates' parts while QUALITY_SECONDS last; written after each part, so a
#                              timeout keeps what it measured; `--update` it on the CPU with the parts missing)
#   benchmarks_speed_cuda.json (rewritten after every section)
#   profile.json, profile.txt  one UNet call per mode under torch.profiler (F = FRAMES' first)
#   gpu.log                    the machine, then each step's output under a "== step ==" line: training,
#                              quality and whether the export may ship in place of the shipped model
#                              (`--compare`), CUDA tests, benchmark, profile
# Run from the repository root: `bash benchmarks/gpu.sh`, in one device call with carry [".whl"] and
# timeout_s 600. The GPU image lacks diffusers: first, here,
#   pip download --no-deps -d .whl "diffusers==$(python -c 'import diffusers; print(diffusers.__version__)')"
# (.whl/ is git-ignored; the script installs what it holds). Settings (environment):
#   TOTAL_SECONDS=570 (each step's timeout is cut to what is left of it, in the order above)
#   DEVICE=cuda  TRAIN_MINUTES=4.5  PROBE_EVERY=200  CLIPS=0.5  CLIP_FRAMES=4  CLIP_T=each  QUALITY_SECONDS=60  QUALITY_PARTS="edits correspondence probes reconstruction prompt"
#   BENCH_SECONDS=120  WORKERS=14  BATCH=1024  FALLBACK_BATCH=256 (a second run with what is left of the minutes,
#   where the first exported nothing)  FRAMES=8,16  MEMORY_FRAMES=  SIZE=512  STEPS=20,10  ARCH=sd21  DTYPE=fp16
#   BENCH_PARTS=correspondence,merging,layer,edit  STORES=auto (the PnP store the edits use: auto, host, device, recompute; the last lease measured host)
#   (MEMORY_FRAMES=64,128 adds the long clips' peak memory, ~2.5 min on an H200: docs/benchmarks_speed_cuda.json
#   holds them from an earlier lease; merge a new run's sections into it rather than replace it)
# A dry run on a CPU at tiny sizes (the bench's other parts run at SD's shapes, minutes each on a CPU):
#   DEVICE=cpu TRAIN_MINUTES=0.3 PROBE_EVERY=5 QUALITY_PARTS=correspondence WORKERS=2 BATCH=4 CLIP_FRAMES=2 FRAMES=2 MEMORY_FRAMES=3
#   SIZE=64 STEPS=1,1 ARCH=small DTYPE=fp32 BENCH_PARTS=edit COVE_TEST_DEVICE=cpu bash benchmarks/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu-out}
mkdir -p "$OUT"
DEVICE=${DEVICE:-cuda}
TOTAL_SECONDS=${TOTAL_SECONDS:-570}
left() {  # a step's timeout: $1 seconds, or what is left of TOTAL_SECONDS when less (at least 1)
  local rest=$((TOTAL_SECONDS - SECONDS))
  if [ "$rest" -lt "$1" ]; then echo $((rest > 1 ? rest : 1)); else echo "$1"; fi
}
export PYTHONUNBUFFERED=1 COVE_TEST_DEVICE=${COVE_TEST_DEVICE:-$DEVICE}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then  # packages the GPU machine lacks (diffusers)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # cove from this working tree
LOG="$OUT/gpu.log"
step() { echo "== $1 ($SECONDS s) ==" >>"$LOG"; }
step machine
{ date -u; nproc; nvidia-smi 2>&1 | head -15; python3 -c "import torch, diffusers, transformers; print(torch.__version__, diffusers.__version__, transformers.__version__)"; } >>"$LOG" 2>&1

# 1. cove-tiny: design a, from INIT (the last lease's export; the shipped weights grow into it), bf16, batch 1024 (the step is
#    launch-bound: 64 -> 256 took about as long a step; 26 MB of bf16 activations an image, 27 GB), data echoing x2
#    (each rendered batch trains two steps), the cosine fitted to the minutes, an fp16 export; a share CLIPS of each batch
#    as clips of CLIP_FRAMES frames under spatial-temporal attention (single frames alone left the attention near-uniform).
TRAIN_MINUTES=${TRAIN_MINUTES:-4.5}
BATCH=${BATCH:-1024}
FALLBACK_BATCH=${FALLBACK_BATCH:-256}
train() {  # $1: batch, $2: minutes
  rm -rf runs/gpu runs/gpu-export
  timeout "$(left "$(python3 -c "print(int($2 * 60 + 100))")")" python3 -m cove.tiny.train \
    --device "$DEVICE" --bf16 --design a --init "${INIT:-benchmarks/cove-tiny-a}" --batch "$1" --echo 2 \
    --workers "${WORKERS:-14}" --mid-t 0.5 --lr 4e-4 --warmup 100 --steps 1000000 \
    --clips "${CLIPS:-0.5}" --clip-frames "${CLIP_FRAMES:-4}" --clip-t "${CLIP_T:-each}" \
    --minutes "$2" --fit-minutes --export-dtype float16 --save-every 1000000 --probe-every "${PROBE_EVERY:-200}" \
    --work runs/gpu --out runs/gpu-export >>"$LOG" 2>&1
  echo "train: exit $? (batch $1)" >>"$LOG"
}
step train
TRAIN_START=$SECONDS
train "$BATCH" "$TRAIN_MINUTES"
if [ ! -f runs/gpu-export/training.json ] && [ "$BATCH" -gt "$FALLBACK_BATCH" ]; then
  # no export (out of memory at the first step, say): what is left of the minutes at FALLBACK_BATCH
  REST=$(python3 -c "print(round(max(0.5, ${TRAIN_MINUTES} - ($SECONDS - $TRAIN_START) / 60), 2))")
  echo "train: no export at batch $BATCH; again at batch $FALLBACK_BATCH for $REST min" >>"$LOG"
  train "$FALLBACK_BATCH" "$REST"
fi
if [ -f runs/gpu-export/training.json ]; then
  cp runs/gpu/log.jsonl runs/gpu-export/log.jsonl
  cp runs/gpu/probes.jsonl runs/gpu-export/probes.jsonl 2>/dev/null
  tar cf "$OUT/export.tar" -C runs gpu-export
fi

# 2. the export's gates on the device, edits first (`--model`: the folder the training run exported)
if [ -f runs/gpu-export/training.json ]; then
  step quality
  timeout "$(left "${QUALITY_SECONDS:-60}")" python3 -m cove.tiny.quality --model runs/gpu-export --device "$DEVICE" \
    --only ${QUALITY_PARTS:-edits correspondence probes reconstruction prompt} --out "$OUT/quality_export.json" >>"$LOG" 2>&1
  echo "quality: exit $?" >>"$LOG"
  step verdict
  python3 -m cove.tiny.quality --compare "$OUT/quality_export.json" --out docs/quality.json >>"$LOG" 2>&1
fi

# 3. the CUDA tests (correspondence, CGA and a two-step edit on the device against the CPU)
step "cuda tests"
timeout "$(left 60)" python3 -m pytest tests/test_cuda.py -q -p no:cacheprovider >>"$LOG" 2>&1
echo "cuda tests: exit $?" >>"$LOG"

# 4. the speed benchmark: warm-up, timed edits at FRAMES, peak memory at MEMORY_FRAMES (2+2 steps) if set
step bench
timeout "$(left "${BENCH_SECONDS:-120}")" python3 -m cove.app.cli bench speed --device "$DEVICE" --dtype "${DTYPE:-fp16}" \
  --arch "${ARCH:-sd21}" --frames "${FRAMES:-8,16}" ${MEMORY_FRAMES:+--memory-frames "$MEMORY_FRAMES"} \
  --size "${SIZE:-512}" --steps "${STEPS:-20,10}" --stores "${STORES:-auto}" --parts "${BENCH_PARTS:-correspondence,merging,layer,edit}" \
  -o "$OUT/benchmarks_speed_cuda.json" >>"$LOG" 2>&1
echo "bench: exit $?" >>"$LOG"

# 5. one denoising step of a COVE and of a spatial-temporal edit under torch.profiler (cove:: ranges)
PROFILE_FRAMES=${FRAMES:-8,16}
PROFILE_FRAMES=${PROFILE_FRAMES%%,*}  # the first of FRAMES
step profile
timeout "$(left 40)" python3 -m cove.app.cli bench profile --device "$DEVICE" --dtype "${DTYPE:-fp16}" \
  --arch "${ARCH:-sd21}" --frames "$PROFILE_FRAMES" --size "${SIZE:-512}" \
  -o "$OUT/profile.json" >>"$LOG" 2>&1
echo "profile: exit $?" >>"$LOG"
step done
grep -E "^== |exit [0-9]+|no export|not finite|ship|passed|failed" "$LOG" | tail -n 40
