"""logstats: the worked example of docs/corpus.md ("Bring your own function").

Summarises web-server access logs by rules read from a YAML document
(Debian python3-yaml): init() parses the rules and compiles their regular
expressions once, as a long-lived function would; handle(arg) generates the
log of one "day" (a deterministic function of the input), classifies every
line and returns the summary as YAML.
"""
import random
import re

import yaml

RULES = """
rules:
  - name: api
    match: '^GET /api/(?P<what>[a-z]+)/\\d+ '
  - name: static
    match: '^GET /static/.+\\.(?:css|js|png) '
  - name: login
    match: '^POST /login '
slow_ms: 250
"""

_rules = None
_slow = 0
_line = re.compile(r'^(?P<req>\S+ \S+) (?P<status>\d{3}) (?P<ms>\d+)ms$')


def init():
    global _rules, _slow
    doc = yaml.safe_load(RULES)
    _rules = [(r["name"], re.compile(r["match"])) for r in doc["rules"]]
    _slow = doc["slow_ms"]


def _log(arg, n):
    rnd = random.Random(arg)
    paths = ["/api/users/%d", "/api/orders/%d", "/static/app.js", "/static/logo.png", "/login", "/about"]
    for _ in range(n):
        p = rnd.choice(paths)
        if "%d" in p:
            p = p % rnd.randrange(1, 10000)
        verb = "POST" if p == "/login" else "GET"
        yield "%s %s %d %dms" % (verb, p, rnd.choice((200, 200, 200, 304, 404, 500)), rnd.randrange(1, 400))


def handle(arg):
    counts, slow, errors = {}, 0, 0
    for line in _log(arg, 1500):
        m = _line.match(line)
        req = m.group("req") + " "
        kind = next((name for name, rx in _rules if rx.match(req)), "other")
        counts[kind] = counts.get(kind, 0) + 1
        slow += int(m.group("ms")) >= _slow
        errors += m.group("status").startswith("5")
    return yaml.safe_dump({"day": arg, "requests": counts, "slow": slow, "errors": errors}, sort_keys=True)
