#!/usr/bin/env python3
"""Draws the convergence of the MIRA assignment and of Sinkhorn-Knopp (the paper's Fig. 2).

Reads the JSON lines of `mira_assign --convergence` (a file, or stdin with "-") and writes a
PNG: the sum of squared errors to the long-run solution against the iteration, log scale.

    build/bench/mira_assign --convergence > conv.jsonl
    /usr/bin/python3 tools/plot_convergence.py conv.jsonl --out docs/img/convergence.png
"""
import argparse
import json
import sys

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402


def read_lines(path):
    stream = sys.stdin if path == "-" else open(path, encoding="utf-8")
    config, curves = {}, {}
    with stream:
        for n, line in enumerate(stream, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{n}: not JSON ({e})")
            if "config" in rec:
                config = rec["config"]
            elif "method" in rec and "sse" in rec:
                curves.setdefault(rec["method"], []).append((rec["iter"], rec["sse"]))
    if not curves:
        sys.exit(f"{path}: no convergence records (expected lines with 'method', 'iter', 'sse')")
    return config, curves


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", help="JSON lines from mira_assign --convergence, or - for stdin")
    ap.add_argument("--out", default="convergence.png", help="PNG to write")
    ap.add_argument("--floor", type=float, default=1e-30, help="plot SSE values below this at the floor")
    args = ap.parse_args()

    config, curves = read_lines(args.input)
    labels = {
        "mira": "MIRA (fixed point, a = -beta/(1-beta))",
        "sinkhorn": "Sinkhorn-Knopp (eps = %g)" % config.get("eps", 0.05),
    }
    styles = {"mira": dict(color="tab:blue", marker="o"), "sinkhorn": dict(color="tab:orange", marker="s")}
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=150)
    for method, pts in sorted(curves.items()):
        pts.sort()
        xs = [p[0] for p in pts]
        ys = [max(p[1], args.floor) for p in pts]
        ax.semilogy(xs, ys, label=labels.get(method, method), markersize=3, linewidth=1.2, **styles.get(method, {}))
    ax.set_xlabel("iterations")
    ax.set_ylabel("SSE to the %s-iteration solution" % config.get("ref_iters", "long-run"))
    title = "Assignment convergence"
    if config:
        title += "  (N=%s, K=%s, tau_t=%g, beta=%.3g, %s)" % (
            config.get("N"), config.get("K"), config.get("tau", float("nan")), config.get("beta", float("nan")),
            config.get("precision", ""))
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", linewidth=0.3, alpha=0.6)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
