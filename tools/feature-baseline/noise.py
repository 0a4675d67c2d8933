"""Does a noise model in the loss beat soft targets? (#14; run by ./run --noise)

Same features and folds as baseline.py, a linear softmax model (PCA to 150 dimensions,
flipped copies added, L2 0.01, full-batch gradient descent, test-time flip averaging), trained
on the crowd answers of 4 folds and scored on the 5th's gold class. Targets:
- gold: the ceiling of this model;
- vote-soft: vote fractions;
- pooled-post / worker-post: EM posteriors of a pooled (one matrix) / per-worker (shrunk to
  the pooled matrix, 2 pseudo-answers per cell row) confusion model, uniform prior, fitted
  on the training folds' answers only (what `dawid-skene` gives `train`);
- forward-pooled / forward-worker: forward loss correction (Patrini et al. 2017; Raykar et al.
  2010): the model's class probabilities p pass through the estimated confusion matrix and the
  loss is -sum over answers of log (T p)[answer], so the images, not only an item's own
  answers, decide between the classes its answers leave open.
"""
import csv, glob, os, sys, warnings
import numpy as np
from PIL import Image
from sklearn.decomposition import PCA
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

sys.argv = sys.argv[:2]
warnings.filterwarnings("ignore")
exec(open(os.path.join(os.path.dirname(__file__), "baseline.py")).read().split("def kfold")[0])
K, N = len(CLASSES), len(files)
Fflip = np.stack([features(np.ascontiguousarray(im[:, ::-1])) for im in images])
index = {f: i for i, f in enumerate(files)}
workers, rows = {}, []
for r in csv.DictReader(open(batch[0], newline="", encoding="utf-8-sig")):
    key = r["Input.image_url"].split("/results/")[-1]
    if r["AssignmentStatus"] != "Rejected" and key in index:
        rows.append((index[key], workers.setdefault(r["WorkerId"], len(workers)), CLASSES.index(r["Answer.category.label"])))
answers = np.array(rows)
counts = np.zeros((N, K))
np.add.at(counts, (answers[:, 0], answers[:, 2]), 1)


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def em(train_items, per_worker, iters=50, strength=2.0):
    """Posteriors (N x K) and confusion matrices [answer][true] from the training items' answers."""
    a = answers[np.isin(answers[:, 0], train_items)]
    post = counts / counts.sum(1, keepdims=True)
    for _ in range(iters):
        pooled = np.full((K, K), 0.5)
        for j in range(K):
            np.add.at(pooled[:, j], a[:, 2], post[a[:, 0], j])
        pooled /= pooled.sum(0, keepdims=True)
        mats = np.tile(pooled * (strength * K if per_worker else 1e9), (len(workers), 1, 1))
        if per_worker:
            for j in range(K):
                np.add.at(mats[:, :, j], (a[:, 1], a[:, 2]), post[a[:, 0], j])
        mats /= mats.sum(1, keepdims=True)
        logp = np.zeros((N, K))
        np.add.at(logp, a[:, 0], np.log(mats[a[:, 1], a[:, 2]]))
        post = softmax(logp)
    return post, mats, a


def fit(X, grad, l2=0.01, iters=300, lr=0.5):
    W, b = np.zeros((X.shape[1], K)), np.zeros(K)
    for _ in range(iters):
        p = softmax(X @ W + b)
        g = grad(p)
        W -= lr * (X.T @ g / len(X) + l2 * W)
        b -= lr * g.mean(0)
    return W, b


def cross_entropy(q):
    return lambda p: p - q


def forward(mats, a, pos):
    """Gradient wrt the logits of -sum over answers log (T_w p)[answer], for both halves (image, flip)."""
    def grad(p):
        n = len(p) // 2
        dp = np.zeros_like(p)
        for half in (0, n):
            t = mats[a[:, 1], a[:, 2], :]
            rows = half + pos[a[:, 0]]
            np.add.at(dp, rows, -t / (t * p[rows]).sum(1, keepdims=True))
        return p * (dp - (p * dp).sum(1, keepdims=True))
    return grad


results = {}
for tr, te in folds:
    s = StandardScaler().fit(F[tr])
    pca = PCA(150, random_state=0).fit(s.transform(F[tr]))
    proj = lambda A: pca.transform(s.transform(A)) / np.sqrt(150)
    X = np.vstack([proj(F[tr]), proj(Fflip[tr])])
    two = lambda A: np.vstack([A, A])
    pos = np.full(N, -1)
    pos[tr] = np.arange(len(tr))
    pooled_post, pooled_mats, a = em(tr, False)
    worker_post, worker_mats, _ = em(tr, True)
    cases = {
        "gold": cross_entropy(two(np.eye(K)[gold[tr]])),
        "vote-soft": cross_entropy(two(soft[tr])),
        "pooled-post": cross_entropy(two(pooled_post[tr])),
        "worker-post": cross_entropy(two(worker_post[tr])),
        "forward-pooled": forward(pooled_mats, a, pos),
        "forward-worker": forward(worker_mats, a, pos),
    }
    for name, grad in cases.items():
        W, b = fit(X, grad)
        p = softmax(proj(F[te]) @ W + b) + softmax(proj(Fflip[te]) @ W + b)
        results.setdefault(name, []).append(float((p.argmax(1) == gold[te]).mean()))
for name, accs in results.items():
    print(f"linear {name}: {np.mean(accs):.3f} (sd {np.std(accs):.3f}; folds {' '.join(f'{x:.3f}' for x in accs)})")
