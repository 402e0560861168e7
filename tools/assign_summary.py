#!/usr/bin/env python3
"""One short line per row of `bench/mira_assign --time` JSON in LOG (several runs may be
concatenated, with `== label` lines between them), then the five fastest valid plans at the
issue's shape (N 4096, 30 iterations) against the auto plan ("fused"); with --predictions
FILE (bench/assign_predictions.json), each prediction against what was measured.

    tools/assign_summary.py LOG [--predictions FILE]
"""
import argparse
import json


def check_predictions(path, measured):
    """measured: every valid row as (variant, N, iters) -> its JSON."""
    spec = json.load(open(path))
    card = spec.get("card", "?")
    print(f"  predictions ({path}, for {card}):")
    devices = sorted({j.get("device", "?") for j in measured.values()})
    if devices and not all(card in d for d in devices):
        # Same SMs and clocks on an H100 and an H200; the H100's HBM3 (3.35 TB/s against
        # 4.8) slows what reads the logits or writes the targets from and to HBM.
        print(f"    (measured on {', '.join(devices)}, not the {card} these were made for: at N 4096 the"
              f" first pass and the targets take ~40 % longer on an H100's HBM, ~+20 us per launch)")

    def verdict(value, lo, hi):
        return "held" if lo <= value <= hi else ("better" if value < lo else "MISSED")

    for p in spec["rows"]:
        key = (p["variant"], p["N"], p["iters"])
        j = measured.get(key)
        name = f"{p['variant']} N{p['N']}"
        lo, hi = p["ms"]
        if j is None:
            print(f"    {name:<34} not measured (predicted {lo:.3f}-{hi:.3f} ms)")
            continue
        ms = j["median_ms"]
        print(f"    {name:<34} {ms:7.3f} ms, predicted {lo:.3f}-{hi:.3f} (was {p.get('was_ms', float('nan')):.3f}):"
              f" {verdict(ms, lo, hi)}")
        for phase, (plo, phi) in p.get("trace_us", {}).items():
            us = j.get("trace_us", {}).get(phase)
            if us is not None:
                print(f"      {phase:<32} {us:7.0f} us, predicted {plo}-{phi}: {verdict(us, plo, phi)}")


def main(path, predictions=None):
    rows = []
    measured = {}
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
        if p.get("cluster"):  # the cluster plan: blocks per cluster x clusters per view
            shape += f" cl{p['cluster']}x{p.get('cluster_groups', 1)}"
        if p and "smem_rows" in p:  # rows per block in shared memory, of rows_per_block; the staging ring
            shape += f" smem{p['smem_rows']}/{p.get('rows_per_block', '?')}"
            if p.get("stage_rows"):
                shape += f"+ring{p['stage_rows']}"
        if p.get("grid_sync", "cooperative") != "cooperative":
            shape += f" {p['grid_sync']}"
        sms = j.get("trace_sms")  # where the traced launch's blocks ran
        if sms:
            shape += (f" sms{sms['sms']} max{sms['most_blocks_on_one']}/sm"
                      f" shared{sms['shared_by_view_groups']}")
        tl = j.get("trace_timeline")  # two blocks of an SM: rows at the same time, or apart
        if tl and tl.get("sms_with_two_blocks"):
            shape += (f" rows_overlap{tl['rows_overlap']:.2f}"
                      f" alone{tl['rows_alone']['n']}x{tl['rows_alone']['mean_us']:.2f}us"
                      f" shared{tl['rows_shared']['n']}x{tl['rows_shared']['mean_us']:.2f}us")
        ps = (tl or {}).get("pass_spread")  # per barrier group and pass: min/median/max over blocks
        if ps and ps.get("passes"):
            def mmm(x):
                return "/".join(f"{v:.2f}" for v in x)
            shape += (f" b1wait{mmm(ps['barrier1_wait_us'])}us rows{mmm(ps['rows_us'])}us"
                      f" weights{mmm(ps['weights_us'])}us late_repeat{ps['late_repeat']:.2f}")
        print(f"  {j['variant']:<46} {j.get('median_ms', float('nan')):7.3f} ms err "
              f"{j.get('max_abs_err', float('nan')):.1e} valid {j.get('valid')} N{j.get('N')}{shape} {tr} "
              f"{j.get('error', '')}{j.get('skipped', '')}")
        if j.get("valid") and "median_ms" in j:
            measured.setdefault((j["variant"], j.get("N"), j.get("iters")), j)
            if j.get("N") == 4096 and j.get("iters") == 30:
                rows.append(j)
    base = next((r["median_ms"] for r in rows if r["variant"] == "fused"), None)
    for r in sorted(rows, key=lambda r: r["median_ms"])[:5]:
        gain = f" ({base / r['median_ms']:.2f}x fused)" if base else ""
        print(f"  fastest: {r['variant']:<44} {r['median_ms']:7.3f} ms{gain}")
    if predictions:
        check_predictions(predictions, measured)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("log")
    ap.add_argument("--predictions", help="bench/assign_predictions.json")
    args = ap.parse_args()
    main(args.log, args.predictions)
