"""json_serdes (FunctionBench json_dumps_loads): parse and re-serialise a JSON
document. The document stands in for the object FunctionBench downloads; each
input seeds a different document of similar size."""
import json
import random

_docs = {}


def _document(seed, n):
    rnd = random.Random(seed)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    return [
        {
            "id": i,
            "name": " ".join(rnd.choice(words) for _ in range(3)),
            "score": rnd.random() * 100,
            "tags": [rnd.choice(words) for _ in range(rnd.randint(1, 5))],
            "active": rnd.random() < 0.5,
            "nested": {"x": rnd.randint(0, 1 << 30), "y": [rnd.random() for _ in range(3)]},
        }
        for i in range(n)
    ]


def init():
    # The serialised input arrives as text, as if fetched from object storage.
    for key, seed in (("a", 1), ("b", 2), ("c", 3)):
        _docs[key] = json.dumps(_document(seed, 800))


def handle(arg):
    text = _docs[arg]
    obj = json.loads(text)
    out = json.dumps(obj, indent=1, sort_keys=True)
    return len(out)
