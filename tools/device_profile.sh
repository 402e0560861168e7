#!/usr/bin/env bash
# Where the GPU time goes, ours against PyTorch's, in one device call: runs
# tools/device_check.sh without its benchmarks (the build and the GPU tests, logs packed into
# LOG_DIR/check.tgz); the MIRA assignment with its per-phase trace; then the bf16 ResNet-50
# multi-crop step as it is (same-size crops grouped, vectorised batch norm), with the scalar
# batch norm (MIRA_BN_VEC=0), ungrouped, and with the opt-in MIRA_CONV_GEMM=1 (small-map
# convolutions as im2col + cuBLAS), against PyTorch (AMP bf16); ResNet-18 at 32 px likewise;
# batch 128 per view; the op profile (MIRA_PROFILE=1); 2 global crops only; our convolutions shape by
# shape against PyTorch's; mira_pretrain end to end on the photos. The rows run in order of
# importance and none starts after MIRA_DEADLINE_S (default 480 s); each has MIRA_ROW_TIMEOUT s
# (default 120).
#   tools/device_profile.sh [LOG_DIR]
set -u
T0=$(date +%s)
cd "$(dirname "$0")/.." || exit 2
LOG_DIR=${1:-${OUT:-./device_logs}}
R=$LOG_DIR/steps.log
DEADLINE=${MIRA_DEADLINE_S:-480}  # no row starts later than this after the start
ROW_TIMEOUT=${MIRA_ROW_TIMEOUT:-120}
# shellcheck source=tools/device_rows.sh
source tools/device_rows.sh
B=${MIRA_DEVICE_BUILD:-build-device}/bench
ARGS="--device cuda --arch resnet50 --cifar-stem 0 --batch ${MIRA_STEP_BATCH:-64} --global-size 224 --local-crops 6
--local-size 96 --proj-hidden 2048 --proj-out 256 --prototypes 3000 --steps 10 --warmup 3"
# shellcheck disable=SC2086
{
  # The MIRA assignment (issue 3): the standard row against PyTorch, then one row per block
  # (N = 132: the fixed cost of the passes' grid barriers and reductions), each with the
  # per-phase trace (--trace: where a launch's time goes); 60 iterations (the slope) further down.
  run assign $B/mira_assign --time --device cuda --trace
  # The step (same-size crops grouped and vectorised batch norm: the defaults since
  # 2026-11-26) as it is, with the scalar batch norm, ungrouped, with the opt-in, against
  # PyTorch in the same call; then ResNet-18 at 32 px and batch 128 likewise.
  run ours_default $B/train_step $ARGS --optim lars --dtype bf16
  MIRA_BN_VEC=0 run ours_scalar_bn $B/train_step $ARGS --optim lars --dtype bf16
  run torch_default python3 bench/pytorch_mira_step.py $ARGS
  R18="--device cuda --arch resnet18 --batch 256 --global-size 32 --steps 20"
  run ours_r18 $B/train_step $R18 --dtype bf16
  MIRA_BN_VEC=0 run ours_r18_scalar_bn $B/train_step $R18 --dtype bf16
  run torch_r18 python3 bench/pytorch_mira_step.py $R18
  run ours_b128 $B/train_step ${ARGS/--batch 64/--batch 128} --optim lars --dtype bf16
  run torch_b128 python3 bench/pytorch_mira_step.py ${ARGS/--batch 64/--batch 128}
  run assign_n132 $B/mira_assign --time --device cuda --n 132 --pytorch none --trace
  MIRA_CONV_GEMM=1 run ours_convgemm $B/train_step $ARGS --optim lars --dtype bf16
  MIRA_CONV_GEMM=1 run ours_r18_convgemm $B/train_step $R18 --dtype bf16
  run ours_r18_convgemm_pq1024 env MIRA_CONV_GEMM=1 MIRA_CONV_GEMM_MAX_PQ=1024 $B/train_step $R18 --dtype bf16
  run ours_ungrouped $B/train_step $ARGS --optim lars --dtype bf16 --group-crops 0
  run assign_iters60 $B/mira_assign --time --device cuda --iters 60 --pytorch none
  MIRA_PROFILE=1 run ours_profile $B/train_step $ARGS --optim lars --dtype bf16
  MIRA_PROFILE=1 run ours_r18_profile $B/train_step $R18 --dtype bf16
  # Two global crops only (target of performance.md: >= 1.25x).
  run ours_2crops $B/train_step ${ARGS/--local-crops 6/--local-crops 0} --optim lars --dtype bf16
  run torch_2crops python3 bench/pytorch_mira_step.py ${ARGS/--local-crops 6/--local-crops 0}
  run torch_benchmark python3 bench/pytorch_mira_step.py $ARGS --cudnn-benchmark 1
  # Our convolutions shape by shape against PyTorch's (cuDNN via ATen) on the same shapes.
  run conv_shapes python3 bench/pytorch_conv_shapes.py "$LOG_DIR/stderr_ours_profile.log"
  # End to end: mira_pretrain on the photos (one ImageFolder class), ResNet-50 multi-crop, bf16,
  # GPU augmentation, 16 decode threads, batch 64: is the step or the input the bound?
  PHOTOS=data_cache/photos/x
  [[ -d $PHOTOS ]] || PHOTOS=.device_deps/photos
  if [[ -d $PHOTOS ]]; then
    IF=$(mktemp -d)
    mkdir -p "$IF/c0"
    find "$(cd "$PHOTOS" && pwd)" -iname '*.jpg' | head -n 400 | while read -r f; do ln -s "$f" "$IF/c0/$(basename "$f")"; done
    run pretrain_e2e ${MIRA_DEVICE_BUILD:-build-device}/apps/mira_pretrain \
      --config configs/imagenet_resnet50_400ep_multicrop.json --data "$IF" --out "$IF/run_e2e" \
      --set train.batch_size=64 --set train.epochs=12 --set train.max_steps=40 --set train.log_every=10 \
      --set train.dtype=bf16 --set data.threads=16 --set eval.test_data="" --set train.checkpoint_every=100000
  fi
}
# The assignment's variants as one short line each (the full JSON stays in steps.log), then the
# five fastest valid plans at the issue's shape.
python3 tools/assign_summary.py "$R" | grep -v '^=='
grep -E '^==|ms_per_step|^rc|img/s|Duration|Throughput|Registers|Achieved Occupancy|Barrier|Stall' "$R" | sed -E 's/.*"ms_per_step": ([0-9.]+), "img_per_s": ([0-9.]+).*/  ms \1 img\/s \2/'
(cd "$LOG_DIR" && tar czf check.tgz check && rm -rf check && tar czf stderr.tgz stderr_*.log && rm -f stderr_*.log)
ls "$LOG_DIR"
