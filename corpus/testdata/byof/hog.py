"""A module whose init() holds more memory than its guest has: the capture
reports that the guest ran out of memory (byof_test.go)."""
import yaml

_blocks = []


def init():
    # A cache warmed at init: 64 KiB blocks, 1 GiB in all.
    for i in range(16 * 1024):
        _blocks.append(bytes([i % 251]) * 65536)


def handle(arg):
    return yaml.safe_dump({"blocks": len(_blocks), "input": arg})
