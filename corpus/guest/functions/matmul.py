"""matmul (FunctionBench / FaaSnap): multiply two random square matrices with
numpy (Debian python3-numpy over the reference BLAS)."""
import numpy as np


def init():
    np.dot(np.ones((4, 4)), np.ones((4, 4)))


def handle(arg):
    n = {"a": 160, "b": 176, "c": 192}.get(arg, 160)
    rng = np.random.default_rng(int.from_bytes(arg.encode(), "little"))
    a = rng.random((n, n))
    b = rng.random((n, n))
    c = a @ b
    return float(c.trace())
