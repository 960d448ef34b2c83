"""compression (FunctionBench / FaaSnap): build a zip archive of a generated
text file in memory with zlib (deflate), then read it back and verify it."""
import io
import random
import zipfile
import zlib

_words = None


def init():
    global _words
    rnd = random.Random(7)
    _words = ["".join(rnd.choice("etaoinshrdlucmfwyp") for _ in range(rnd.randint(2, 9))) for _ in range(2000)]


def handle(arg):
    rnd = random.Random("compression-" + arg)
    n = {"a": 40000, "b": 44000, "c": 48000}.get(arg, 40000)
    text = " ".join(rnd.choice(_words) for _ in range(n)).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("data.txt", text)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        assert z.read("data.txt") == text
    return (len(text), len(buf.getvalue()), zlib.crc32(text))
