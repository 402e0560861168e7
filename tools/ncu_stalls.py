#!/usr/bin/env python3
"""Where a kernel's warps wait, from Nsight Compute's per-instruction samples: the source page
that tools/device_focus.sh saves (LOG_DIR/focus_source.csv.gz, `ncu -i REP --page source --csv
--print-source sass`).

    tools/ncu_stalls.py focus_source.csv.gz [--kernel TEXT] [--top 12] [--loops 6]

Prints, for each kernel in the file (or those whose name contains TEXT):
- its warp-state samples by stall reason, as shares of all samples;
- its loops (a backward branch to a lower address, as tools/sass_loops.py finds them), the
  outermost first, each with its share of the samples, the instructions it executed, its FFMA,
  LDS, SHFL and BAR counts, and its top stall reasons; the loops with most samples first;
- the instructions with most samples, each with its top stall reasons.
A sample is a warp seen at that instruction, issuing ("selected") or stalled for a reason:
long_sb waits on global/local memory, short_sb on shared memory or MUFU, barrier on
__syncthreads, wait on a fixed latency, math/mio/lg on a busy pipe or queue, not_selected on
another warp taking the issue slot (issue-bound), no_inst on the instruction cache.
"""
import argparse
import csv
import gzip
import io
import re
from collections import Counter


def read_kernels(path):
    """[(kernel name, header, rows)] from the source page's CSV (one block per kernel)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", newline="") as f:
        text = f.read()
    kernels = []
    name, header, rows = None, None, []
    for rec in csv.reader(io.StringIO(text)):
        if not rec:
            continue
        if rec[0] == "Kernel Name":
            if name is not None:
                kernels.append((name, header, rows))
            name, header, rows = rec[1] if len(rec) > 1 else "?", None, []
        elif rec[0] == "Address":
            header = rec
        elif header is not None and rec[0].startswith("0x") and len(rec) >= len(header) - 1:
            rows.append(dict(zip(header, rec)))
    if name is not None:
        kernels.append((name, header, rows))
    return kernels


def num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return 0.0


def stall_columns(header):
    """The per-reason sample columns of all samples (not the "(Not Issued)" ones)."""
    return [h for h in header if h.startswith("stall_") and "Not Issued" not in h]


def top_reasons(counter, total, n=4):
    items = [(k, v) for k, v in counter.most_common() if v > 0][:n]
    return ", ".join(f"{k[6:]} {100.0 * v / total:.0f}%" for k, v in items) if total > 0 else "-"


def summarize(name, header, rows, top, nloops, out):
    samples_col = "Warp Stall Sampling (All Samples)"
    reasons = stall_columns(header)
    ins = []
    for r in rows:
        a = int(r["Address"], 16)
        src = r["Source"].strip()
        st = Counter({c: num(r.get(c)) for c in reasons})
        ins.append((a, src, num(r.get(samples_col)), num(r.get("Instructions Executed")), st))
    total = sum(i[2] for i in ins)
    out.append(f"{name}: {len(ins)} instructions, {total:.0f} samples")
    if total <= 0:
        return
    allst = Counter()
    for i in ins:
        allst.update(i[4])
    out.append("  stalls: " + top_reasons(allst, total, n=8))
    at = {a: k for k, (a, *_rest) in enumerate(ins)}
    loops = []
    for k, (a, src, *_rest) in enumerate(ins):
        m = re.search(r"\bBRA\s+(?:\S+\s+)?(0x[0-9a-f]+)\s*$", src)
        if not m:
            continue
        t = int(m.group(1), 16)
        if t < a and t in at:
            loops.append((at[t], k))
    # Innermost loops (containing no other) first: the outer ones (the pass loop) hold nearly
    # every sample and say little.
    inner = {(lo, hi) for lo, hi in loops if not any(lo <= l2 and h2 <= hi and (l2, h2) != (lo, hi) for l2, h2 in loops)}
    out.append(f"  loops ({len(loops)}, {len(inner)} innermost), innermost then outer, most samples first:")
    ranked = []
    for lo, hi in loops:
        body = ins[lo:hi + 1]
        s = sum(i[2] for i in body)
        st = Counter()
        for i in body:
            st.update(i[4])

        def count(p, body=body):
            return sum(1 for i in body if re.search(p, i[1]))

        ranked.append(((lo, hi) in inner, s, lo, hi, st, count(r"\bFFMA\b"), count(r"\bLDS"), count(r"SHFL"), count(r"BAR\."),
                       max((i[3] for i in body), default=0)))
    for is_inner, s, lo, hi, st, ffma, lds, shfl, bar, execs in sorted(ranked, reverse=True)[:nloops]:
        kind = "inner" if is_inner else "outer"
        out.append(f"    {kind} {ins[lo][0]:#x}-{ins[hi][0]:#x}: {hi - lo + 1} instr (FFMA {ffma}, LDS {lds}, SHFL {shfl}, "
                   f"BAR {bar}), {100.0 * s / total:.1f}% of samples, up to {execs:.0f} warp executions; "
                   + top_reasons(st, s))
    out.append(f"  top {top} instructions:")
    for a, src, s, execs, st in sorted(ins, key=lambda i: -i[2])[:top]:
        out.append(f"    {a:#x} {100.0 * s / total:5.1f}%  {src[:60]:<60} {top_reasons(st, s, n=3)}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv", help="ncu --page source --csv --print-source sass output (.csv or .csv.gz)")
    ap.add_argument("--kernel", default="", help="only kernels whose name contains this text")
    ap.add_argument("--top", type=int, default=12, help="instructions with most samples to list")
    ap.add_argument("--loops", type=int, default=6, help="loops with most samples to list")
    args = ap.parse_args()
    out = []
    kernels = [k for k in read_kernels(args.csv) if args.kernel in k[0]]
    for name, header, rows in kernels:
        if header is None:
            continue
        summarize(name, header, rows, args.top, args.loops, out)
    if not kernels:
        out.append(f"no kernel containing {args.kernel!r} in {args.csv}")
    print("\n".join(out))


if __name__ == "__main__":
    main()
