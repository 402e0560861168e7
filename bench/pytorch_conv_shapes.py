"""Per-shape convolution times, ours against PyTorch's (cuDNN through ATen), from an op profile.

Reads the stderr of `MIRA_PROFILE=1 build/bench/train_step ...` (rows such as
"[profile] conv2d fwd 3x3/1 256>256 6px N64 bf16   5.532   6.100   30.0": name, ms per step,
host ms per step, calls per step), times the same convolution (NHWC = channels_last, the same
dtype, padding R // 2 as in ResNet) forward, backward-data and backward-filter in PyTorch with
CUDA events (median of --reps after --warmup), and prints one JSON line per shape and a table
sorted by our time per step:

    python3 bench/pytorch_conv_shapes.py PROFILE.txt [--reps 20] [--warmup 3] [--cudnn-benchmark 0|1]
"""
import argparse
import json
import re
import statistics
import sys

import torch

ROW = re.compile(r"^\[profile\] (conv2d (fwd|bwd-data|bwd-filter) (\d+)x(\d+)/(\d+) (\d+)>(\d+) (\d+)px N(\d+) (\w+))"
                 r"\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)\s*$")


def time_ms(fn, reps, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("profile")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--cudnn-benchmark", type=int, default=0)
    a = p.parse_args()
    torch.backends.cudnn.benchmark = bool(a.cudnn_benchmark)
    dtypes = {"bf16": torch.bfloat16, "f32": torch.float32}
    rows = []
    with open(a.profile) as f:
        for line in f:
            m = ROW.match(line.strip())
            if m:
                rows.append(m)
    if not rows:
        sys.exit(f"no conv2d rows in {a.profile} (run bench/train_step with MIRA_PROFILE=1)")
    g = torch.Generator(device="cuda").manual_seed(0)
    out = []
    for m in rows:
        name, direction = m.group(1), m.group(2)
        R, S, stride, C, K, H, N = (int(m.group(i)) for i in range(3, 10))
        dt = dtypes[m.group(10)]
        ours_ms, calls = float(m.group(11)), float(m.group(13))
        pad = R // 2
        x = torch.randn(N, C, H, H, device="cuda", dtype=dt, generator=g).to(memory_format=torch.channels_last)
        w = (0.1 * torch.randn(K, C, R, S, device="cuda", dtype=dt, generator=g)).to(memory_format=torch.channels_last)
        y = torch.nn.functional.conv2d(x, w, stride=stride, padding=pad)
        dy = torch.randn_like(y).to(memory_format=torch.channels_last)
        if direction == "fwd":
            fn = lambda: torch.nn.functional.conv2d(x, w, stride=stride, padding=pad)  # noqa: E731
        else:
            mask = [direction == "bwd-data", direction == "bwd-filter", False]
            fn = lambda: torch.ops.aten.convolution_backward(  # noqa: E731
                dy, x, w, None, [stride, stride], [pad, pad], [1, 1], False, [0, 0], 1, mask)
        torch_ms = time_ms(fn, a.reps, a.warmup)
        per_call = ours_ms / calls if calls else float("nan")
        r = {"name": name, "ours_ms_per_call": round(per_call, 4), "torch_ms": round(torch_ms, 4),
             "ratio_torch_over_ours": round(torch_ms / per_call, 3) if per_call else None,
             "ours_ms_per_step": ours_ms, "calls_per_step": calls,
             "torch_ms_per_step": round(torch_ms * calls, 3), "cudnn_benchmark": a.cudnn_benchmark}
        print(json.dumps(r))
        out.append(r)
    out.sort(key=lambda r: -r["ours_ms_per_step"])
    print(f"{'shape':<52} {'ours/step':>9} {'torch/step':>10} {'ours/call':>9} {'torch/call':>10} {'torch/ours':>10}")
    for r in out:
        print(f"{r['name']:<52} {r['ours_ms_per_step']:9.3f} {r['torch_ms_per_step']:10.3f} "
              f"{r['ours_ms_per_call']:9.4f} {r['torch_ms']:10.4f} {r['ratio_torch_over_ours']:10.2f}")
    t_ours = sum(r["ours_ms_per_step"] for r in out)
    t_torch = sum(r["torch_ms_per_step"] for r in out)
    print(f"{'all convolutions':<52} {t_ours:9.3f} {t_torch:10.3f}")


if __name__ == "__main__":
    main()
