"""Expected outputs for template/tests.rs, rendered by Jinja2 configured the way transformers' apply_chat_template
configures it (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols, json.dumps tojson,
raise_exception, strftime_now fixed at 2024-07-26 12:34:56). Written for kvgate.

Regenerate: python3 jinja2_cases.py jinja2_cases.json   (Jinja2 3.1.6 was used)
"""
import json, datetime
import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.ext import loopcontrols
def raise_exception(m): raise jinja2.exceptions.TemplateError(m)
def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
env.filters["tojson"] = tojson
env.globals["raise_exception"] = raise_exception
env.globals["strftime_now"] = lambda f: datetime.datetime(2024,7,26,12,34,56).strftime(f)
data = {"b": [1, 2.5, None, True, "é\n\"x\"</s>"], "a": {"z": 1e16, "y": 0.00001, "x": []}, "c": {}}
cases = [
  ("ws1", "{% if true %}\n  x\n{% endif %}\n", {}),
  ("ws2", "a\n    {% for i in [1,2] %}\n{{ i }}\n    {% endfor %}\nb\n\n", {}),
  ("ws3", "{%- for m in messages -%}\n<{{ m.role }}>{{ m.content }}\n{% endfor -%}\nEND", {"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"yo"}]}),
  ("ws4", "x  {# c #}  y\n{% set a = 1 %}\n   z{{ a }}\n", {}),
  ("json1", "{{ d | tojson }}", {"d": data}),
  ("json2", "{{ d | tojson(indent=2) }}", {"d": data}),
  ("json3", "{{ d | tojson(separators=(',', ':'), sort_keys=true) }}", {"d": data}),
  ("json4", "{{ d | tojson(ensure_ascii=true) }}", {"d": data}),
  ("json5", "{{ d | tojson(indent='\t') }}", {"d": {"k": [1, {"z": []}]}}),
  ("json6", "{{ 'a<b>&\\'' | tojson }}|{{ 3 | tojson }}|{{ 2.0 | tojson }}|{{ none | tojson }}", {}),
  ("str1", "{{ none }}|{{ true }}|{{ [1, 'a', none, 2.5] }}|{{ {'a': 1.0, 'b': \"it's\"} }}|{{ 1e16 }}|{{ 10 / 4 }}", {}),
  ("str2", "{{ x }}|{{ x is defined }}|{{ y | default('u') }}|{{ m.nope }}|{{ m['nope'] is defined }}", {"m": {}}),
  ("py1", "{{ ' a b '.strip() }}|{{ 'a,b,,c'.split(',') }}|{{ 'xxhixx'.lstrip('x') }}|{{ 'Hi'.startswith('H') }}|{{ 'a b'.split() }}|{{ 'abc'.upper() }}|{{ 'a\\nb'.splitlines() }}", {}),
  ("loop1", "{% for i in range(5) %}{% if i == 1 %}{% continue %}{% endif %}{% if i == 3 %}{% break %}{% endif %}{{ i }}{{ ',' if not loop.last }}{% endfor %}", {}),
  ("ns1", "{% set ns = namespace(n=0) %}{% for i in [1,2,3] %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}", {}),
  ("slice1", "{{ [1,2,3][::-1] }}{{ 'abc'[1:] }}{{ [1,2,3][-1] }}", {}),
  ("date1", "{{ strftime_now('%d %b %Y') }}|{{ strftime_now('%Y-%m-%d %H:%M') }}", {}),
  ("items1", "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}", {"d": {"z": 1, "a": 2, "m": 3}}),
  ("dict1", "{% set d = {'z': 1, 'a': 2} %}{{ d | tojson }}{% for k in d %}{{ k }}{% endfor %}", {}),
  ("get1", "{{ d.get('a') }}|{{ d.get('q', 'dflt') }}|{{ d['a'] }}|{{ d.a }}", {"d": {"a": 5}}),
  ("concat", "{{ 'a' ~ 1 ~ none ~ true }}", {}),
  ("tests", "{{ x is string }}{{ x is mapping }}{{ [] is sequence }}{{ none is none }}{{ false is false }}{{ 1 is number }}{{ y is undefined }}", {"x": "s"}),
  ("filters", "{{ [3,1,2] | sort | join(',') }}|{{ 'abc' | length }}|{{ ' x ' | trim }}|{{ [1,2] | first }}|{{ 'a b' | replace('a', 'c') }}|{{ msgs | selectattr('role', 'equalto', 'user') | list | length }}|{{ msgs | map(attribute='role') | join(',') }}", {"msgs":[{"role":"user"},{"role":"assistant"},{"role":"user"}]}),
]
out = {}
for name, src, ctx in cases:
    try:
        out[name] = {"src": src, "ctx": ctx, "out": env.from_string(src).render(**ctx)}
    except Exception as e:
        out[name] = {"src": src, "ctx": ctx, "err": type(e).__name__ + ": " + str(e)}
import sys; json.dump(out, open(sys.argv[1] if len(sys.argv) > 1 else "cases.json","w"), ensure_ascii=False, indent=1)
for k,v in out.items(): print(k, repr(v.get("out", v.get("err"))))
