#!/usr/bin/env python3
"""Render the kvgate Helm chart for every example values file, with Helm's own engine.

One job: ``helm template``-equivalent output per example, written to
OUT_DIR/<example>.yaml (and its NOTES.txt to OUT_DIR/<example>.NOTES.txt), and the plain
manifest of ``make manifests``:

* the examples ship the placeholder ``filter.sha256`` the chart refuses; each is rendered
  once as shipped, which must fail naming ``filter.sha256`` (so an unedited copy cannot
  be installed), then with the digest of the image ``make oci`` built (``--digests``:
  its ``kvgate-filter.digests.json``; the manifest digest for oci:// URLs, the .wasm
  sha256 for https://);
* ``--manifest VALUES OUT``: renders VALUES (your copy of an example) the same way into
  one file for ``kubectl apply -f OUT`` (``make manifests``).

``helm lint`` runs first for each example (warnings and errors fail).

Helm comes from the PyPI wheel ``helm-python-sdk`` (Helm v4's Go SDK behind a C ABI,
hash-pinned in tests/tools/requirements.txt): no helm binary is needed. The release is
named ``kvgate`` in namespace ``kvgate``, as an install would be.

Usage: render.py OUT_DIR --digests DIGESTS.json [--manifest VALUES.yaml OUT.yaml]
"""

import argparse
import copy
import json
import os
import sys

import helm_python as helm
import yaml

DEPLOY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHART = os.path.join(DEPLOY, "helm", "kvgate")
EXAMPLES = os.path.join(CHART, "examples")
RELEASE = NAMESPACE = "kvgate"
PLACEHOLDER = "SET-ME-make-oci-prints-the-digest"


def digest_for(values, digests):
    """The sha256 the chart needs for values' filter.url: manifest digest or .wasm sha256."""
    url = (values.get("filter") or {}).get("url", "oci://")
    if url.startswith("oci://"):
        return digests["manifest_digest"].removeprefix("sha256:")
    return digests["wasm_sha256"].removeprefix("sha256:")


def render_files(values):
    with helm.Chart.load(CHART) as chart:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def as_stream(files):
    """The rendered templates as one multi-document YAML stream."""
    docs = []
    for name in sorted(files):
        if not name.startswith("kvgate/templates/") or not name.endswith(".yaml"):
            continue
        body = files[name].strip()
        if body:
            docs.append(f"---\n# Source: {name}\n{body}\n")
    return "".join(docs)


def with_digest(values, digests):
    v = copy.deepcopy(values)
    v.setdefault("filter", {})["sha256"] = digest_for(values, digests)
    return v


def load(path):
    with open(path) as f:
        return yaml.safe_load(f) or {}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="directory for <example>.yaml")
    p.add_argument("--digests", required=True, help="kvgate-filter.digests.json written by make oci")
    p.add_argument("--manifest", nargs=2, metavar=("VALUES", "OUT"), help="render VALUES into OUT only")
    a = p.parse_args()
    with open(a.digests) as f:
        digests = json.load(f)
    if a.manifest:
        values, out = a.manifest
        text = as_stream(render_files(with_digest(load(values), digests)))
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            f.write(f"# kvgate chart rendered with {values} (release {RELEASE}, namespace {NAMESPACE}),\n"
                    f"# filter.sha256 = the digest of the image make oci built. kubectl apply -f this file.\n" + text)
        print(f"render: wrote {out} ({text.count('# Source:')} documents)")
        return 0
    os.makedirs(a.out, exist_ok=True)
    examples = sorted(n for n in os.listdir(EXAMPLES) if n.endswith(".yaml"))
    for name in examples:
        values = with_digest(load(os.path.join(EXAMPLES, name)), digests)
        lint = helm.lint(CHART, values=values, namespace=NAMESPACE)
        problems = [m for m in lint.get("messages", []) if m.get("severity", 0) >= 2] + lint.get("errors", [])
        if problems:
            print(f"render: FAIL helm lint with examples/{name}: {problems}", file=sys.stderr)
            return 1
    for name in examples:
        shipped = load(os.path.join(EXAMPLES, name))
        if (shipped.get("filter") or {}).get("sha256") != PLACEHOLDER:
            print(f"render: FAIL examples/{name}: filter.sha256 must be the placeholder {PLACEHOLDER!r}", file=sys.stderr)
            return 1
        # Endpoint-picker mode installs no filter, so nothing checks its digest.
        picker = bool((shipped.get("epp") or {}).get("enabled"))
        try:
            render_files(shipped)
            if not picker:
                print(f"render: FAIL examples/{name} rendered with the placeholder digest", file=sys.stderr)
                return 1
        except helm.HelmError as e:
            if picker or "filter.sha256" not in str(e):
                print(f"render: FAIL examples/{name} as shipped: {e}", file=sys.stderr)
                return 1
        try:
            files = render_files(with_digest(shipped, digests))
        except helm.HelmError as e:
            print(f"render: FAIL examples/{name}: {e}", file=sys.stderr)
            return 1
        text = as_stream(files)
        stem = os.path.splitext(name)[0]
        with open(os.path.join(a.out, name), "w") as f:
            f.write(text)
        with open(os.path.join(a.out, stem + ".NOTES.txt"), "w") as f:
            f.write(files.get("kvgate/templates/NOTES.txt", ""))
        why = "no filter, no digest needed" if picker else "refused as shipped, placeholder digest"
        print(f"render: ok examples/{name} ({text.count('# Source:')} documents; {why})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
