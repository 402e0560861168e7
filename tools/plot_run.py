"""Plot a mira_pretrain run: loss, entropies and clusters in use per step from
RUN_DIR/metrics.jsonl, plus the k-NN accuracies of RUN_DIR/knn.json when present.

    /usr/bin/python3 tools/plot_run.py RUN_DIR [OUT.png]      (matplotlib from Debian)
"""
import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    run = Path(sys.argv[1])
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else run / "run.png"
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]
    if not rows:
        sys.exit(f"{run}/metrics.jsonl has no rows")
    steps = [r["step"] for r in rows]
    knn = json.loads((run / "knn.json").read_text()) if (run / "knn.json").exists() else None
    fig, axes = plt.subplots(1, 3 if knn else 2, figsize=(15 if knn else 10, 4))
    axes[0].plot(steps, [r["loss"] for r in rows])
    axes[0].set(title="MIRA loss", xlabel="step")
    ax = axes[1]
    ax.plot(steps, [r["target_entropy"] for r in rows], label="H(targets)")
    ax.plot(steps, [r["marginal_entropy"] for r in rows], label="H(marginal)")
    cfg = json.loads((run / "config.json").read_text()) if (run / "config.json").exists() else None
    if cfg:
        ax.axhline(math.log(cfg["model"]["prototypes"]), ls=":", c="gray", label="log K")
    ax.set(title="assignment entropies (nats)", xlabel="step")
    ax.legend()
    if knn:
        names = [n for n in ("mira", "random_init", "pixels") if n in knn]
        vals = [knn[n]["top1"] for n in names]
        axes[2].bar(names, vals, color=["tab:blue", "tab:gray", "tab:orange"][: len(names)])
        for i, v in enumerate(vals):
            axes[2].text(i, v + 0.5, f"{v:.1f}", ha="center")
        axes[2].set(title=f"k-NN top-1 (%), k={knn['k']}, T={knn['temperature']}, bank {knn['bank']}", ylim=(0, 100))
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
