"""cnn_serving (vHive cnn_serving / FaaSnap recognition): classify an image
with a small convolutional network in numpy. init() loads the model (weights
from a fixed seed, about 8 MB, standing in for a downloaded checkpoint); each
request runs one forward pass on a 32x32 RGB image."""
import numpy as np

_model = {}


def init():
    rng = np.random.default_rng(1234)
    _model["c1"] = rng.normal(scale=0.1, size=(16, 3, 3, 3)).astype(np.float32)
    _model["c2"] = rng.normal(scale=0.1, size=(32, 16, 3, 3)).astype(np.float32)
    _model["f1"] = rng.normal(scale=0.05, size=(32 * 8 * 8, 1024)).astype(np.float32)
    _model["f2"] = rng.normal(scale=0.05, size=(1024, 10)).astype(np.float32)


def _conv_relu(x, w):
    # x: (C, H, W), w: (K, C, 3, 3); same padding, stride 1, via im2col.
    c, h, wd = x.shape
    k = w.shape[0]
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    cols = np.empty((c * 9, h * wd), dtype=x.dtype)
    idx = 0
    for ci in range(c):
        for dy in range(3):
            for dx in range(3):
                cols[idx] = xp[ci, dy:dy + h, dx:dx + wd].reshape(-1)
                idx += 1
    out = (w.reshape(k, -1) @ cols).reshape(k, h, wd)
    return np.maximum(out, 0)


def _pool(x):
    c, h, w = x.shape
    return x.reshape(c, h // 2, 2, w // 2, 2).max(axis=(2, 4))


def handle(arg):
    rng = np.random.default_rng(int.from_bytes(arg.encode(), "little"))
    img = rng.random((3, 32, 32), dtype=np.float32)
    x = _pool(_conv_relu(img, _model["c1"]))
    x = _pool(_conv_relu(x, _model["c2"]))
    x = np.maximum(x.reshape(-1) @ _model["f1"], 0)
    logits = x @ _model["f2"]
    return int(np.argmax(logits))
