#!/usr/bin/env python3
"""Issue 13 experiment (2026-12-07, session 14): latent sub-classes ("subtypes") per label.

Each label c gets S latent clusters (c, s); each worker has its own confusion row per cluster;
an item's label is the sum of its clusters' posteriors. S = 1 is classic Dawid-Skene. EM
starts from majority vote, the S clusters of a label split by the item's top vote share
(above / below its median). Two variants: free per-worker matrices (pseudo-count 0.01), and
per-worker matrices shrunk toward the pooled matrix of their cluster with a fixed strength
(pseudo-answers per cluster row). Prints accuracy on gold and the leave-one-item-out
predictive log-likelihood per answer (the item's expected counts taken out of the worker
and prior statistics, as `auto` scores candidates).

Needs numpy. Usage: tools/crowd-experiments/subtypes.py [STRENGTH ...]   (default 10)
Data: ../shared/datasets/crowd/<set>/{labels,gold}.csv and the seed round-1 AMT batch file.
"""
import csv, os, sys
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.path.join(ROOT, "..", "shared", "datasets")


def load_rows(rows, gold):
    it, wk, cl, seen = {}, {}, {}, set()
    I, W, L = [], [], []
    for w, t, l in rows:
        if (w, t) in seen:  # one answer per worker and task (the product's default)
            continue
        seen.add((w, t))
        I.append(it.setdefault(t, len(it))); W.append(wk.setdefault(w, len(wk))); L.append(cl.setdefault(l, len(cl)))
    g = np.full(len(it), -1)
    for t, l in gold.items():
        if t in it and l in cl:
            g[it[t]] = cl[l]
    return np.array(I), np.array(W), np.array(L), len(it), len(wk), len(cl), g


def load_set(name):
    d = os.path.join(SHARED, "crowd", name)
    rows = [(r["worker"], r["task"], r["label"]) for r in csv.DictReader(open(os.path.join(d, "labels.csv")))]
    gold = {r["task"]: r["label"] for r in csv.DictReader(open(os.path.join(d, "gold.csv")))}
    return load_rows(rows, gold)


def load_seed():
    f = os.path.join(SHARED, "seed-study", "amt", "Batch_4350992_batch_results.csv")
    rows, gold = [], {}
    for r in csv.DictReader(open(f, newline="")):
        if r["AssignmentStatus"] == "Rejected":
            continue
        url = r["Input.image_url"]
        rows.append((r["WorkerId"], url, r["Answer.category.label"]))
        gold[url] = url.split("/results/")[1].split("/")[0]
    return load_rows(rows, gold)


def em(I, W, L, n, m, k, T, strength, iters=300, prior_a=1.0):
    """EM over C = T.shape[1] clusters; strength None = free matrices. Returns posteriors, prior, base."""
    C = T.shape[1]
    old = None
    for _ in range(iters):
        pi = (T.sum(0) + prior_a) / (n + prior_a * C)
        raw = np.zeros((m * k, C)); np.add.at(raw, W * k + L, T[I])
        raw = raw.reshape(m, k, C).transpose(0, 2, 1)  # worker, cluster, answer
        if strength is None:
            base = np.full((C, k), 0.01)
        else:
            pooled = raw.sum(0) + 1.0; pooled /= pooled.sum(1, keepdims=True)
            base = strength * pooled + 0.01
        cnt = raw + base[None]
        th = cnt / cnt.sum(2, keepdims=True)
        lp = np.tile(np.log(pi), (n, 1)); np.add.at(lp, I, np.log(th)[W, :, L])
        mx = lp.max(1, keepdims=True); p = np.exp(lp - mx); s = p.sum(1, keepdims=True); T = p / s
        ll = (np.log(s) + mx).sum()
        if old is not None and abs(ll - old) < 1e-8 * abs(ll):
            break
        old = ll
    return T, base


def loo(I, W, L, n, m, k, T, base, prior_a=1.0):
    C = T.shape[1]
    raw = np.zeros((m * k, C)); np.add.at(raw, W * k + L, T[I])
    tot = np.zeros((m, C)); np.add.at(tot, W, T[I]); tot += base.sum(1)[None]
    pic = T.sum(0)
    order = np.argsort(I, kind="stable"); starts = np.searchsorted(I[order], np.arange(n + 1))
    s = 0.0
    for i in range(n):
        idx = order[starts[i]:starts[i + 1]]
        w, l, t = W[idx], L[idx], T[i]
        th = (raw[w * k + l] - t + base[:, l].T) / (tot[w] - t)
        lpi = np.log((pic - t + prior_a) / (n - 1 + prior_a * C))
        lth = np.log(th); S = lth.sum(0)
        for j in range(len(idx)):
            lp = lpi + S - lth[j]; p = np.exp(lp - lp.max()); p /= p.sum()
            s += np.log((p * th[j]).sum())
    return s / len(I)


def run(name, data, strengths):
    I, W, L, n, m, k, g = data
    votes = np.zeros((n, k)); np.add.at(votes, (I, L), 1)
    ok = g >= 0
    mv = (votes + 1e-9 * np.random.RandomState(0).rand(n, k)).argmax(1)
    T0 = votes / votes.sum(1, keepdims=True)
    share = votes.max(1) / votes.sum(1); hi = (share >= np.median(share)).astype(float)
    T2 = np.concatenate([T0 * hi[:, None] + 1e-3, T0 * (1 - hi)[:, None] + 1e-3], 1); T2 /= T2.sum(1, keepdims=True)
    cells = [f"{(mv[ok] == g[ok]).mean():.3f}"]
    for st in [None] + strengths:
        for T in (T0, T2):
            P, base = em(I, W, L, n, m, k, T, st)
            lab = np.zeros((n, k))
            for c in range(P.shape[1]):
                lab[:, c % k] += P[:, c]
            cells.append(f"{(lab.argmax(1)[ok] == g[ok]).mean():.3f} ({loo(I, W, L, n, m, k, P, base):.4f})")
    print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    strengths = [float(x) for x in sys.argv[1:]] or [10.0]
    head = ["MV", "DS", "DS, 2 subtypes"] + [x for s in strengths for x in (f"shrunk {s:g}", f"shrunk {s:g}, 2 subtypes")]
    print("| set | " + " | ".join(head) + " |")
    print("| --- " * (len(head) + 1) + "|")
    sets = sorted(os.listdir(os.path.join(SHARED, "crowd")))
    for s in sets:
        if os.path.isdir(os.path.join(SHARED, "crowd", s)):
            run(s, load_set(s), strengths)
    run("seed round 1", load_seed(), strengths)
