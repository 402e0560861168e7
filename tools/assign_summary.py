#!/usr/bin/env python3
"""One short line per row of `bench/mira_assign --time` JSON in LOG (several runs may be
concatenated, with `== label` lines between them), then the five fastest valid plans at the
issue's shape (N 4096, 30 iterations) against the auto plan ("fused").

    tools/assign_summary.py LOG
"""
import json
import sys


def main(path):
    rows = []
    for line in open(path):
        if line.startswith("== "):
            print(line.rstrip()[:100])
            continue
        if not line.startswith("{") or '"variant"' not in line:
            continue
        try:
            j = json.loads(line)
        except ValueError:
            continue
        t = j.get("trace_us", {})
        tr = " ".join(f"{k}={v:.0f}" for k, v in t.items() if k != "total")
        p = j.get("plan", {})
        shape = (f" g{p['grid']}x{p['block']} c{p['cols_per_thread']} v{p['views_side_by_side']}"
                 if p else "")
        print(f"  {j['variant']:<46} {j.get('median_ms', float('nan')):7.3f} ms err "
              f"{j.get('max_abs_err', float('nan')):.1e} valid {j.get('valid')} N{j.get('N')}{shape} {tr} "
              f"{j.get('error', '')}")
        if j.get("valid") and "median_ms" in j and j.get("N") == 4096 and j.get("iters") == 30:
            rows.append(j)
    base = next((r["median_ms"] for r in rows if r["variant"] == "fused"), None)
    for r in sorted(rows, key=lambda r: r["median_ms"])[:5]:
        gain = f" ({base / r['median_ms']:.2f}x fused)" if base else ""
        print(f"  fastest: {r['variant']:<44} {r['median_ms']:7.3f} ms{gain}")


if __name__ == "__main__":
    main(sys.argv[1])
