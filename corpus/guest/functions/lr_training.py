"""lr_training (FunctionBench / vHive): train a logistic-regression classifier
by batch gradient descent with numpy on a synthetic labelled data set (the
original trains scikit-learn's LogisticRegression on review features)."""
import numpy as np


def _dataset(seed, n, d):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=d)
    x = rng.normal(size=(n, d))
    y = (x @ w + rng.normal(scale=0.5, size=n) > 0).astype(np.float64)
    return x, y


_data = {}


def init():
    for key, seed in (("a", 1), ("b", 2), ("c", 3)):
        _data[key] = _dataset(seed, 2000, 32)


def handle(arg):
    x, y = _data[arg]
    w = np.zeros(x.shape[1])
    b = 0.0
    for _ in range(40):
        p = 1.0 / (1.0 + np.exp(-(x @ w + b)))
        g = p - y
        w -= 0.1 * (x.T @ g) / len(y)
        b -= 0.1 * g.mean()
    acc = float(((x @ w + b > 0) == (y > 0.5)).mean())
    return round(acc, 4)
