"""chameleon (FunctionBench): render an HTML table with the Chameleon page
template engine (Debian python3-chameleon). The template is compiled at init,
as a long-lived function would."""
from chameleon import PageTemplate

_template = None

BIGTABLE = """\
<table xmlns:tal="http://xml.zope.org/namespaces/tal">
<tr tal:repeat="row rows">
<td tal:repeat="c row.values()">
<span tal:define="d python: c + 1" tal:attributes="class python: 'column-' + str(d)" tal:content="d" />
</td>
</tr>
</table>"""


def init():
    global _template
    _template = PageTemplate(BIGTABLE)
    _template(rows=[{"a": 1}])  # compile now, not on the first request


def handle(arg):
    rows, cols = {"a": (60, 10), "b": (70, 10), "c": (80, 10)}.get(arg, (60, 10))
    data = [dict(("c%d" % j, i * cols + j) for j in range(cols)) for i in range(rows)]
    html = _template(rows=data)
    return len(html)
