#!/usr/bin/python3
"""Independent NumPy reference for mira_knn (DINO's weighted k-NN, apps/common/knn.h).

Written from the protocol, not from the C++: float64 throughout, the k nearest found by a
threshold (np.partition) rather than a heap, ties resolved by the documented rules (equal
similarity: lower train index first; equal class score: lower class first; top-5 counts the
first min(5, k, classes) classes). Prints top-1/top-5 per k and can write the per-image top-1
predictions of the first k, which tests/test_eval_apps.cpp compares with mira_knn's image by
image.

  knn_reference.py --fashion-mnist DIR [--k 20] [--predictions-out P.npy]
  knn_reference.py --train-features X.npy --train-labels Y.npy --test-features X.npy \
                   --test-labels Y.npy [--k 10,20] [--temperature 0.07] [--json OUT]

--fashion-mnist reads the gzip'd IDX files of DIR and uses the normalised raw pixels as features,
(u8 / 255 - 0.2860) / 0.3530 (784-d; --pixel-norm none: u8 / 255), which is what
`mira_knn --features pixels` does (its default normalisation is the train set's mean and std
rounded to 4 decimals, 0.2860 and 0.3530 for Fashion-MNIST).
"""
import argparse
import gzip
import json
import sys

import numpy as np


def read_idx(path):
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    magic = int.from_bytes(data[0:4], "big")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist(d, mean=0.2860, std=0.3530):
    x_tr = read_idx(f"{d}/train-images-idx3-ubyte.gz").reshape(60000, -1).astype(np.float64) / 255.0
    y_tr = read_idx(f"{d}/train-labels-idx1-ubyte.gz").astype(np.int64)
    x_te = read_idx(f"{d}/t10k-images-idx3-ubyte.gz").reshape(10000, -1).astype(np.float64) / 255.0
    y_te = read_idx(f"{d}/t10k-labels-idx1-ubyte.gz").astype(np.int64)
    if mean is not None:
        x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    return x_tr, y_tr, x_te, y_te


def normalise(x):
    n = np.sqrt((x * x).sum(axis=1, keepdims=True))
    return x / np.maximum(n, 1e-12)


def nearest(sim, k):
    """Top-k columns of every row of sim, best first: (value desc, index asc)."""
    rows, n = sim.shape
    kth = -np.partition(-sim, k - 1, axis=1)[:, k - 1:k]  # k-th largest value per row
    out_v = np.empty((rows, k))
    out_i = np.empty((rows, k), dtype=np.int64)
    for r in range(rows):
        s = sim[r]
        greater = np.flatnonzero(s > kth[r])
        equal = np.flatnonzero(s == kth[r])[: k - len(greater)]  # lowest indices among ties
        sel = np.concatenate([greater, equal])
        order = np.lexsort((sel, -s[sel]))
        out_i[r] = sel[order]
        out_v[r] = s[sel[order]]
    return out_v, out_i


def knn(x_tr, y_tr, x_te, y_te, ks, temperature, num_classes, block=500):
    x_tr, x_te = normalise(x_tr), normalise(x_te)
    kmax = max(ks)
    preds = {k: np.empty(len(y_te), dtype=np.int64) for k in ks}
    hits1 = {k: 0 for k in ks}
    hits5 = {k: 0 for k in ks}
    for b in range(0, len(y_te), block):
        sim = x_te[b:b + block] @ x_tr.T
        v, i = nearest(sim, kmax)
        for k in ks:
            w = np.exp(v[:, :k] / temperature)
            scores = np.zeros((len(v), num_classes))
            np.add.at(scores, (np.arange(len(v))[:, None], y_tr[i[:, :k]]), w)
            ranked = np.argsort(-scores, axis=1, kind="stable")
            y = y_te[b:b + block]
            preds[k][b:b + block] = ranked[:, 0]
            hits1[k] += int((ranked[:, 0] == y).sum())
            t5 = min(5, k, num_classes)
            hits5[k] += int((ranked[:, :t5] == y[:, None]).any(axis=1).sum())
    n = len(y_te)
    return preds, [{"k": k, "top1": 100.0 * hits1[k] / n, "top5": 100.0 * hits5[k] / n} for k in ks]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fashion-mnist")
    ap.add_argument("--pixel-norm", default="0.2860,0.3530", help="MEAN,STD or none")
    ap.add_argument("--train-features")
    ap.add_argument("--train-labels")
    ap.add_argument("--test-features")
    ap.add_argument("--test-labels")
    ap.add_argument("--k", default="20")
    ap.add_argument("--temperature", type=float, default=0.07)
    ap.add_argument("--num-classes", type=int, default=0)
    ap.add_argument("--predictions-out")
    ap.add_argument("--json")
    a = ap.parse_args()
    if a.fashion_mnist:
        if a.pixel_norm == "none":
            x_tr, y_tr, x_te, y_te = fashion_mnist(a.fashion_mnist, None)
        else:
            m, s = (float(v) for v in a.pixel_norm.split(","))
            x_tr, y_tr, x_te, y_te = fashion_mnist(a.fashion_mnist, m, s)
    else:
        if not (a.train_features and a.train_labels and a.test_features and a.test_labels):
            sys.exit("give --fashion-mnist DIR or all four --train/--test features/labels")
        x_tr = np.load(a.train_features).astype(np.float64)
        y_tr = np.load(a.train_labels).astype(np.int64).reshape(-1)
        x_te = np.load(a.test_features).astype(np.float64)
        y_te = np.load(a.test_labels).astype(np.int64).reshape(-1)
    ks = [int(k) for k in a.k.split(",")]
    c = a.num_classes or int(max(y_tr.max(), y_te.max()) + 1)
    preds, results = knn(x_tr, y_tr, x_te, y_te, ks, a.temperature, c)
    for r in results:
        print(f"k={r['k']} top1 {r['top1']:.2f} top5 {r['top5']:.2f}")
    if a.predictions_out:
        np.save(a.predictions_out, preds[ks[0]])
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"protocol": "knn", "temperature": a.temperature, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
