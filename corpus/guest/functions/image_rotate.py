"""image_rotate (FunctionBench image_processing): decode a JPEG, rotate it and
encode it again with Pillow (Debian python3-pil). The source images are made
at init, standing in for the object FunctionBench downloads."""
import io
import random

from PIL import Image, ImageFilter

_images = {}


def _make(seed, size):
    rnd = random.Random(seed)
    img = Image.new("RGB", size)
    px = img.load()
    w, h = size
    for y in range(0, h, 4):
        for x in range(0, w, 4):
            c = (rnd.randrange(256), (x * 255) // w, (y * 255) // h)
            for dy in range(4):
                for dx in range(4):
                    px[x + dx, y + dy] = c
    img = img.filter(ImageFilter.GaussianBlur(2))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def init():
    for key, seed in (("a", 1), ("b", 2), ("c", 3)):
        _images[key] = _make(seed, (320, 240))


def handle(arg):
    img = Image.open(io.BytesIO(_images[arg]))
    angle = {"a": 90, "b": 180, "c": 270}.get(arg, 90)
    out = img.rotate(angle, expand=True).transpose(Image.FLIP_LEFT_RIGHT)
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=85)
    return len(buf.getvalue())
