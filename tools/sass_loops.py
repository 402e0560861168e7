#!/usr/bin/env python3
"""Inner loops of a kernel's SASS, with their instruction mix: a way to count what a hot loop
issues per element without a GPU.

    cuobjdump -sass -arch sm_90 OBJ.o > k.sass      # cuobjdump: CUDA toolkit, or tools/fetch_sass_tools.sh
    tools/sass_loops.py k.sass mira_fused_kernelIffLi2ELi2ELi0ELi0E [--min-ffma 30]

Prints, for each backward branch of the first function whose mangled name contains the given
text, the loop's address range, its length and counts of FFMA, shared (LDS) and generic or
global loads, shuffles, barriers, local-memory traffic (spills) and calls. Static counts: a
loop body's instructions, not how many times each runs.
"""
import argparse
import re


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("sass")
    ap.add_argument("kernel", help="text the mangled function name contains")
    ap.add_argument("--min-ffma", type=int, default=0, help="only loops with at least this many FFMA")
    args = ap.parse_args()
    parts = re.split(r"\n\s+Function : ", open(args.sass).read())
    for part in parts[1:]:
        name = part.split("\n", 1)[0].strip()
        if args.kernel not in name:
            continue
        ins = []
        for line in part.split("\n"):
            m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
            if m:
                ins.append((int(m.group(1), 16), m.group(2).strip()))
        at = {a: i for i, (a, _) in enumerate(ins)}
        print(f"{name}: {len(ins)} instructions")
        for i, (a, text) in enumerate(ins):
            m = re.search(r"BRA\s+(?:\S+\s+)?(0x[0-9a-f]+)\s*$", text)
            if not ("BRA" in text and m):
                continue
            target = int(m.group(1), 16)
            if target >= a or target not in at:
                continue
            body = [t for _, t in ins[at[target]:i + 1]]

            def count(pattern):
                return sum(1 for t in body if re.search(pattern, t))

            ffma = count(r"\bFFMA\b")
            if ffma < args.min_ffma:
                continue
            kinds = {"LDS": r"LDS", "LD/LDG": r"\bLD\.|LDG", "SHFL": r"SHFL", "BAR": r"BAR\.",
                     "LDL/STL": r"LDL|STL", "CALL": r"CALL"}
            mix = ", ".join(f"{k} {count(p)}" for k, p in kinds.items())
            print(f"  loop {target:#06x}-{a:#06x}: {len(body)} instr, FFMA {ffma}, {mix}")
        return
    print(f"no function containing {args.kernel!r}")


if __name__ == "__main__":
    main()
