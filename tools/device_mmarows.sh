#!/usr/bin/env bash
# The tensor-core updates (kernels/cuda/mira_mmarows.cu, MiraPlanOptions::mma_rows) against the
# f16 copy's default kernel in one short device call (session 17's script): tools/device_focus.sh
# with their rows, Nsight Compute's per-instruction samples of the concurrent row, the kernel's
# SASS, and racecheck / synccheck at N 256.
#   tools/device_mmarows.sh [LOG_DIR]
V="fused f16-cache,fused f16-cache mma-rows concurrent,fused f16-cache mma-rows sequential,fused"
MIRA_FOCUS_VARIANTS=$V MIRA_FOCUS_NCU="fused f16-cache mma-rows concurrent" MIRA_FOCUS_SASS=mira_mmarows.cu.o \
  MIRA_FOCUS_NS="256 64" MIRA_FOCUS_SANITIZE="fused f16-cache mma-rows concurrent" exec bash "$(dirname "$0")/device_focus.sh" "$@"
