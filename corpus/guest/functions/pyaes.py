"""pyaes (FunctionBench): pure-Python AES-CTR encryption and decryption of a
text message with the Debian python3-pyaes package."""
import random

import pyaes as _aes

_key = None


def init():
    global _key
    _key = bytes(random.Random(42).getrandbits(8) for _ in range(32))


def handle(arg):
    rnd = random.Random("pyaes-" + arg)
    length = {"a": 1536, "b": 1792, "c": 2048}.get(arg, 1536)
    message = "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(length))
    ct = _aes.AESModeOfOperationCTR(_key).encrypt(message)
    pt = _aes.AESModeOfOperationCTR(_key).decrypt(ct)
    assert pt.decode() == message
    return ct[:16].hex()
