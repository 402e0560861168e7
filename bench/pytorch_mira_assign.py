#!/usr/bin/env python3
"""PyTorch version of the official MIRA assignment, the competitor of bench/mira_assign.

The function below follows the official code's iteration (spec section 1: softmax of
L / (tau_t (1 - beta)), v from the column sums from u = 1, `iters` updates with the exponent
-beta / (1 - beta), final row normalisation) for one process: the all-reduce of the column
sums is the identity there. It runs eagerly in fp32 under no_grad, as in training, one call
per view. Usually run by `mira_assign --time`, which passes the same logits and validates
--out against the engine's CPU reference; on its own:

    python3 bench/pytorch_mira_assign.py --logits L.npy [--out T.npy] [--tau 0.225] [--beta 0.6667]
        [--iters 30] [--reps 50] [--warmup 5] [--device cuda|cpu]

L.npy: f32 (N, K) or (V, N, K). Prints one JSON line: median and min ms per call over all
views, CUDA events after warm-up (wall clock on the CPU), inputs rotated over four sets (the
given logits and three row rotations of them) so that no run finds the previous one's data in
cache.
"""
import argparse
import json
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F


@torch.no_grad()
def official_mira(logits, tau, beta, iters):
    n = logits.shape[0]  # global batch = local batch with one process
    p = F.softmax(logits / tau / (1 - beta), dim=1)
    expo = -beta / (1 - beta)
    col = p.sum(dim=0)  # all-reduced in the multi-GPU code
    v = (col / n).pow(1 - beta)
    for _ in range(iters):
        ratio = p / (v.pow(expo) * p).sum(dim=1, keepdim=True)
        col = ratio.sum(dim=0)  # all-reduced in the multi-GPU code
        v = (col / n).pow(1 - beta)
    t = v.pow(expo) * p
    return t / t.sum(dim=1, keepdim=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--logits", required=True)
    ap.add_argument("--out")
    ap.add_argument("--tau", type=float, default=0.225)
    ap.add_argument("--beta", type=float, default=2.0 / 3.0)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    arr = np.load(args.logits)
    shape = arr.shape
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise SystemExit("--logits: (N, K) or (V, N, K) expected, got shape %s" % (arr.shape,))
    dev = torch.device(args.device)
    base = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).to(dev)
    sets = [base] + [torch.roll(base, shifts=s, dims=1).contiguous() for s in (1, 2, 3)]

    def call(views):
        return [official_mira(views[v], args.tau, args.beta, args.iters) for v in range(views.shape[0])]

    out = call(sets[0])
    if args.out:
        np.save(args.out, torch.stack(out).reshape(shape).cpu().numpy())

    for r in range(args.warmup):
        call(sets[r % len(sets)])
    times = []
    if dev.type == "cuda":
        torch.cuda.synchronize()
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(args.reps)]
        for r, (a, b) in enumerate(events):
            a.record()
            call(sets[r % len(sets)])
            b.record()
        torch.cuda.synchronize()
        times = [a.elapsed_time(b) for a, b in events]
        device_name = torch.cuda.get_device_name(dev)
    else:
        for r in range(args.reps):
            t0 = time.perf_counter()
            call(sets[r % len(sets)])
            times.append((time.perf_counter() - t0) * 1e3)
        device_name = "cpu (%d threads)" % torch.get_num_threads()
    v, n, k = base.shape
    print(json.dumps({
        "variant": "pytorch",
        "device": device_name,
        "torch": torch.__version__,
        "N": n, "K": k, "views": v, "iters": args.iters,
        "median_ms": statistics.median(times),
        "min_ms": min(times),
    }))


if __name__ == "__main__":
    main()
