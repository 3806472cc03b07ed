#!/usr/bin/env python3
"""Re-create the vendored JSON schemas under deploy/schemas/ from pinned registry packages.

One job: (re)write ``kubernetes/`` and ``crds/`` and ``SHA256SUMS``; PROVENANCE.md says
where each file comes from. Run by hand when bumping a version (needs pip, npm, node and
the package registries); ``make check-deploy`` does not run it, it only checks
``SHA256SUMS``.

* Kubernetes core types: copied verbatim from the PyPI wheel ``kubernetes-validate``
  (hash-pinned below): the ``vX.Y.Z-local-strict`` JSON schemas, i.e. the OpenAPI
  definitions converted by openapi2jsonschema with ``--strict`` (``additionalProperties:
  false`` on every object) — the same conversion kubeconform's ``-strict`` relies on.
* CRDs (Gateway API, Istio): no registry reachable here ships the upstream CRD YAML. The
  npm packages ``@kubernetes-models/*`` (pinned with integrity hashes in
  ``npm/package-lock.json``) ship TypeScript declarations generated from the upstream
  CRDs (Istio) or API types (Gateway API); ``ts-json-schema-generator`` turns the
  declaration of each kind into a JSON schema, then the kubeconform strict rule is
  applied: ``additionalProperties: false`` on every object schema that lists
  ``properties`` (free-form objects such as ``pluginConfig`` stay open). One generator
  gap is repaired (``restore_exclude_branch``).
"""

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
    "_definitions.json",
]
# (package, declaration file, interface, output file)
CRDS = [
    ("@kubernetes-models/istio", "extensions.istio.io/v1alpha1/WasmPlugin.d.ts", "IWasmPlugin",
     "extensions.istio.io/wasmplugin_v1alpha1.json"),
    ("@kubernetes-models/istio", "networking.istio.io/v1alpha3/EnvoyFilter.d.ts", "IEnvoyFilter",
     "networking.istio.io/envoyfilter_v1alpha3.json"),
    ("@kubernetes-models/gateway-api", "gateway.networking.k8s.io/v1/Gateway.d.ts", "IGateway",
     "gateway.networking.k8s.io/gateway_v1.json"),
    ("@kubernetes-models/gateway-api", "gateway.networking.k8s.io/v1/HTTPRoute.d.ts", "IHTTPRoute",
     "gateway.networking.k8s.io/httproute_v1.json"),
]


def run(cmd, **kw):
    print("+", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, **kw)


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


def restore_exclude_branch(node):
    """ts-json-schema-generator drops TypeScript ``Exclude<T, ...>`` members of a union.
    @kubernetes-models writes the CRD's ``oneOf: [{not: {anyOf: [{required: [a]}, ...]}},
    {required: [a]}, ...]`` as ``Exclude<T, ...> | (T & {a}) | ...``, so an object naming
    none of a, b, ... (e.g. an EnvoyFilter match with only a context) would be refused.
    Put that branch back: same properties, none of the required keys."""
    if isinstance(node, dict):
        alts = node.get("anyOf")
        if (isinstance(alts, list) and len(alts) > 1
                and all(isinstance(a, dict) and len(a.get("required", [])) == 1 and "properties" in a for a in alts)
                and all(a["properties"] == alts[0]["properties"] for a in alts)):
            keys = [a["required"][0] for a in alts]
            none = {k: v for k, v in alts[0].items() if k != "required"}
            none["not"] = {"anyOf": [{"required": [k]} for k in keys]}
            alts.insert(0, none)
        for v in node.values():
            restore_exclude_branch(v)
    elif isinstance(node, list):
        for v in node:
            restore_exclude_branch(v)
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


def vendor_crds(tmp):
    work = os.path.join(tmp, "npm")
    shutil.copytree(os.path.join(HERE, "npm"), work)
    run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=work)
    gen = os.path.join(work, "node_modules", ".bin", "ts-json-schema-generator")
    for package, decl, iface, target in CRDS:
        raw = os.path.join(tmp, "schema.json")
        run([gen, "--tsconfig", os.path.join(work, "tsconfig.json"),
             "--path", os.path.join(work, "node_modules", package, decl), "--type", iface,
             "--additional-properties", "--expose", "none", "--jsDoc", "none",
             "-o", raw])
        with open(raw) as f:
            schema = strict(restore_exclude_branch(json.load(f)))
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
                    lines.append(f"{hashlib.sha256(f.read()).hexdigest()}  {os.path.relpath(path, HERE)}")
    with open(os.path.join(HERE, "SHA256SUMS"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    with tempfile.TemporaryDirectory() as tmp:
        vendor_kubernetes(tmp)
        vendor_crds(tmp)
    write_sums()
    return 0


if __name__ == "__main__":
    sys.exit(main())
