#!/usr/bin/env python3
"""Render the kvgate Helm chart for every example values file, with Helm's own engine.

One job: ``helm template``-equivalent output per example, written to OUT_DIR/<example>.yaml,
and the plain manifests kept in step with the chart:

* ``--check-manifests``: fail unless deploy/manifests/aggregated.yaml equals the
  aggregated render (what ``make check-deploy`` runs);
* ``--write-manifests``: rewrite deploy/manifests/aggregated.yaml from the render.

``helm lint`` runs first for each example (warnings and errors fail).

Helm comes from the PyPI wheel ``helm-python-sdk`` (Helm v4's Go SDK behind a C ABI,
hash-pinned in tests/tools/requirements.txt): no helm binary is needed. The release is
named ``kvgate`` in namespace ``kvgate``, as an install would be.

Usage: render.py OUT_DIR [--check-manifests | --write-manifests]
"""

import argparse
import os
import sys

import helm_python as helm
import yaml

DEPLOY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHART = os.path.join(DEPLOY, "helm", "kvgate")
EXAMPLES = os.path.join(CHART, "examples")
MANIFEST = os.path.join(DEPLOY, "manifests", "aggregated.yaml")
RELEASE = NAMESPACE = "kvgate"
HEADER = (
    "# Generated from deploy/helm/kvgate with examples/aggregated.yaml (release kvgate,\n"
    "# namespace kvgate) by deploy/tools/render.py --write-manifests. Do not edit: change the\n"
    "# chart and regenerate; make check-deploy fails when this file and the chart differ.\n"
)


def render(values_file: str) -> str:
    """The chart rendered with one values file, as one multi-document YAML stream."""
    with open(values_file) as f:
        values = yaml.safe_load(f) or {}
    with helm.Chart.load(CHART) as chart:
        files = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for name in sorted(files):
        if not name.startswith("kvgate/templates/") or not name.endswith(".yaml"):
            continue
        body = files[name].strip()
        if body:
            docs.append(f"---\n# Source: {name}\n{body}\n")
    return "".join(docs)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="directory for <example>.yaml")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--check-manifests", action="store_true")
    g.add_argument("--write-manifests", action="store_true")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    for name in sorted(os.listdir(EXAMPLES)):
        with open(os.path.join(EXAMPLES, name)) as f:
            lint = helm.lint(CHART, values=yaml.safe_load(f), namespace=NAMESPACE)
        problems = [m for m in lint.get("messages", []) if m.get("severity", 0) >= 2] + lint.get("errors", [])
        if problems:
            print(f"render: FAIL helm lint with examples/{name}: {problems}", file=sys.stderr)
            return 1
    examples = sorted(n for n in os.listdir(EXAMPLES) if n.endswith(".yaml"))
    if "aggregated.yaml" not in examples:
        print("render: examples/aggregated.yaml is missing", file=sys.stderr)
        return 1
    for name in examples:
        try:
            text = render(os.path.join(EXAMPLES, name))
        except helm.HelmError as e:
            print(f"render: FAIL examples/{name}: {e}", file=sys.stderr)
            return 1
        with open(os.path.join(a.out, name), "w") as f:
            f.write(text)
        print(f"render: ok examples/{name} ({text.count('# Source:')} documents)")
        if name == "aggregated.yaml":
            aggregated = HEADER + text
    if a.write_manifests:
        with open(MANIFEST, "w") as f:
            f.write(aggregated)
        print(f"render: wrote {os.path.relpath(MANIFEST, DEPLOY)}")
    elif a.check_manifests:
        with open(MANIFEST) as f:
            if f.read() != aggregated:
                print("render: FAIL deploy/manifests/aggregated.yaml differs from the chart's aggregated "
                      "render; run deploy/tools/render.py --write-manifests", file=sys.stderr)
                return 1
        print("render: ok deploy/manifests/aggregated.yaml matches the chart")
    return 0


if __name__ == "__main__":
    sys.exit(main())
