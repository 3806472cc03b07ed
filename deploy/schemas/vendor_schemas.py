#!/usr/bin/env python3
"""Re-create the vendored schemas under deploy/schemas/ from their pinned upstreams.

One job: (re)write ``kubernetes/``, ``crds/`` and ``SHA256SUMS``; PROVENANCE.md says where
each file comes from. Run by hand when bumping a version, then commit the result
(``make check-deploy`` does not run it, it only checks ``SHA256SUMS``):

    python3 deploy/schemas/vendor_schemas.py --crds-from DIR

* Kubernetes core types: copied verbatim from the PyPI wheel ``kubernetes-validate``
  (hash-pinned below): the ``vX.Y.Z-local-strict`` JSON schemas, i.e. the OpenAPI
  definitions converted by openapi2jsonschema with ``--strict`` (``additionalProperties:
  false`` on every object), the same conversion kubeconform's ``-strict`` relies on.
* Gateway API, Gateway API Inference Extension and Istio CRDs: the upstream
  CustomResourceDefinition YAML, byte for byte, with each repository's LICENSE. ``DIR``
  holds one folder per repository (``gateway-api/``, ``inference-extension/``,
  ``istio/``) with the files named in ``UPSTREAM`` at the pinned commits (any checkout of
  those commits, or the project's shared data copy); every file's sha256 is checked
  first. Istio publishes all its CRDs in one multi-document file: the documents kvgate
  renders (EnvoyFilter, WasmPlugin) are cut out of it at the ``---`` separators, each
  byte for byte. ``deploy/tools/crd_schema.py`` turns them into validators.
* Prometheus Operator ``ServiceMonitor``: no registry reachable here ships that CRD, so
  its schema is derived from the TypeScript declaration that npm
  ``@kubernetes-models/prometheus-operator`` generates from the upstream Go types
  (pinned with integrity hashes in ``npm/package-lock.json``): ``ts-json-schema-generator``
  turns it into a JSON schema, then kubeconform's strict rule is applied
  (``additionalProperties: false`` on every object schema that lists ``properties``).
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
K8S_WHEEL = ("kubernetes-validate", "1.37.0")
K8S_WHEEL_SHA256 = "85136d018a27b50ec7fc049d902bfa5193f5976807e6c0f408e3ab6fe078cad9"
K8S_VERSION = "v1.33.0"
K8S_KINDS = [
    "deployment-apps-v1.json",
    "service-v1.json",
    "configmap-v1.json",
    "secret-v1.json",
    "serviceaccount-v1.json",
    "role-rbac-v1.json",
    "rolebinding-rbac-v1.json",
    "pod-v1.json",
    "_definitions.json",
]
# Upstream CRD files: (folder in DIR and under crds/, file, sha256). Commits and
# repository paths are in PROVENANCE.md.
UPSTREAM = [
    ("inference-extension", "inference.networking.k8s.io_inferencepools.yaml",
     "db48c012c3f8a476be1f09f9c9eb7f4a45391d423cf540214f1f0049ca10f4a9"),
    ("inference-extension", "LICENSE", "b40930bbcf80744c86c46a12bc9da056641d722716c378f5659b9e555ef833e1"),
    ("gateway-api", "gateway.networking.k8s.io_gateways.yaml",
     "161791d534b1ef582573cad99f9163eb8761715e6e934dd93374a5999ad17356"),
    ("gateway-api", "gateway.networking.k8s.io_httproutes.yaml",
     "5b746e5dd696239cdf7d1a6dc6293d103fb78056598aa3f2e14f7512dc8c362b"),
    ("gateway-api", "LICENSE", "20b6dde626f521dbb384f75e6d96c3d16789df3bf878b58bc2810614fb4db07c"),
    ("istio", "customresourcedefinitions.gen.yaml",
     "c98c49e3435f7ca04938cc710f929bbfe952472b177c3a7384b31e383c6b6c7a"),
    ("istio", "LICENSE", "9fa6e54dafda853bb3cdc01486b677a55102f0d488282a85ba6e426d9125f8c5"),
]
# Documents cut out of Istio's multi-document file (by metadata.name).
ISTIO_DOCS = ["envoyfilters.networking.istio.io", "wasmplugins.extensions.istio.io"]
# (package, declaration file, interface, output file) of the derived schemas.
DERIVED = [
    ("@kubernetes-models/prometheus-operator", "monitoring.coreos.com/v1/ServiceMonitor.d.ts", "IServiceMonitor",
     "prometheus-operator/servicemonitor_v1.derived.json"),
]


def run(cmd, **kw):
    print("+", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, **kw)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def strict(node):
    """kubeconform's -strict rule: close every object schema that lists its properties."""
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for v in node.values():
            strict(v)
    elif isinstance(node, list):
        for v in node:
            strict(v)
    return node


def vendor_kubernetes(tmp):
    req = os.path.join(tmp, "req.txt")
    with open(req, "w") as f:
        f.write(f"{K8S_WHEEL[0]}=={K8S_WHEEL[1]} --hash=sha256:{K8S_WHEEL_SHA256}\n")
    run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
         "--require-hashes", "-r", req, "-d", tmp])
    wheel = [n for n in os.listdir(tmp) if n.endswith(".whl")][0]
    out = os.path.join(HERE, "kubernetes", f"{K8S_VERSION}-local-strict")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    prefix = f"kubernetes_validate/kubernetes-json-schema/{K8S_VERSION}-local-strict/"
    with zipfile.ZipFile(os.path.join(tmp, wheel)) as z:
        for name in K8S_KINDS:
            with open(os.path.join(out, name), "wb") as f:
                f.write(z.read(prefix + name))


def istio_documents(text: str):
    """The documents of Istio's CRD file, each exactly as its bytes appear there (the
    separator lines excluded), by CRD name."""
    out = {}
    for doc in text.split("\n---\n"):
        for line in doc.splitlines():
            if line.startswith("  name: "):
                out[line.split(": ", 1)[1].strip()] = doc
                break
    return out


def vendor_upstream(src):
    out = os.path.join(HERE, "crds")
    for folder in {f for f, _, _ in UPSTREAM}:
        shutil.rmtree(os.path.join(out, folder), ignore_errors=True)
        os.makedirs(os.path.join(out, folder))
    for folder, name, digest in UPSTREAM:
        with open(os.path.join(src, folder, name), "rb") as f:
            data = f.read()
        if sha256(data) != digest:
            raise SystemExit(f"{folder}/{name}: sha256 {sha256(data)} is not the pinned {digest}")
        if name == "customresourcedefinitions.gen.yaml":
            docs = istio_documents(data.decode())
            for crd in ISTIO_DOCS:
                with open(os.path.join(out, folder, crd + ".yaml"), "wb") as f:
                    f.write(docs[crd].encode() + b"\n")
        else:
            shutil.copyfile(os.path.join(src, folder, name), os.path.join(out, folder, name))


def vendor_derived(tmp):
    work = os.path.join(tmp, "npm")
    shutil.copytree(os.path.join(HERE, "npm"), work)
    run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=work)
    gen = os.path.join(work, "node_modules", ".bin", "ts-json-schema-generator")
    for package, decl, iface, target in DERIVED:
        raw = os.path.join(tmp, "schema.json")
        run([gen, "--tsconfig", os.path.join(work, "tsconfig.json"),
             "--path", os.path.join(work, "node_modules", package, decl), "--type", iface,
             "--additional-properties", "--expose", "none", "--jsDoc", "none",
             "-o", raw])
        with open(raw) as f:
            schema = strict(json.load(f))
        schema["$comment"] = f"Derived from npm {package} ({decl}, {iface}); see PROVENANCE.md."
        path = os.path.join(HERE, "crds", target)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(schema, f, indent=1, sort_keys=True)
            f.write("\n")


def write_sums():
    lines = []
    for sub in ("kubernetes", "crds"):
        for d, _, files in sorted(os.walk(os.path.join(HERE, sub))):
            for name in sorted(files):
                path = os.path.join(d, name)
                with open(path, "rb") as f:
                    lines.append(f"{sha256(f.read())}  {os.path.relpath(path, HERE)}")
    with open(os.path.join(HERE, "SHA256SUMS"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--crds-from", required=True, metavar="DIR",
                   help="folder with gateway-api/, inference-extension/, istio/ upstream files")
    p.add_argument("--skip-registry", action="store_true",
                   help="only re-copy the upstream CRDs (no pip or npm download)")
    a = p.parse_args()
    shutil.rmtree(os.path.join(HERE, "crds"), ignore_errors=True)
    vendor_upstream(a.crds_from)
    with tempfile.TemporaryDirectory() as tmp:
        if not a.skip_registry:
            vendor_kubernetes(tmp)
        vendor_derived(tmp)
    write_sums()
    return 0


if __name__ == "__main__":
    sys.exit(main())
