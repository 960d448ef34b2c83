"""A module that forgot init(): refused before any guest boots (byof_test.go)."""
import yaml


def handle(arg):
    return yaml.safe_dump({"input": arg})
