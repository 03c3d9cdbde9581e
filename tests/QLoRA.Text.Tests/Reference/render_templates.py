"""Renders chat templates with Python's jinja2 exactly as transformers does (the test reference).

Reads a JSON list of cases from stdin: {"template", "messages", "add_generation_prompt", "variables", "now"}; writes a
JSON list of {"text"} or {"error", "message"} to stdout. The environment mirrors transformers' _compile_jinja_template:
ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True) with loopcontrols, raise_exception, strftime_now,
a tojson filter with ensure_ascii=False, and a {% generation %} tag that renders its body.
"""
import datetime
import json
import sys

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


class Generation(Extension):
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return nodes.CallBlock(self.call_method("_render", []), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def main():
    cases = json.load(sys.stdin)
    out = []
    for case in cases:
        now = datetime.datetime(*case.get("now", [2026, 12, 1, 17, 5, 0]))

        def raise_exception(message):
            raise jinja2.exceptions.TemplateError(message)

        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

        def strftime_now(fmt):
            return now.strftime(fmt)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = strftime_now
        try:
            template = env.from_string(case["template"])
            variables = dict(case.get("variables", {}))
            variables["messages"] = case["messages"]
            variables["add_generation_prompt"] = case.get("add_generation_prompt", False)
            out.append({"text": template.render(**variables)})
        except Exception as e:  # the type and message are compared loosely by the test
            out.append({"error": type(e).__name__, "message": str(e)})
    json.dump(out, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
