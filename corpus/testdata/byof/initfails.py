"""A module whose init() raises: the capture reports the traceback from the
guest console (byof_test.go)."""
import yaml

CONFIG = "threshold: [1, 2"  # not YAML: the flow sequence is never closed

cfg = None


def init():
    global cfg
    cfg = yaml.safe_load(CONFIG)


def handle(arg):
    return cfg["threshold"]
