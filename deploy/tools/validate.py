#!/usr/bin/env python3
"""Validate rendered manifests against the vendored upstream schemas, strictly.

One job: every YAML document of every file given must validate against the schema of its
kind under deploy/schemas/ (see PROVENANCE.md), with unknown fields rejected
(``additionalProperties: false`` on every object that lists its properties, as
kubeconform ``-strict``). Also:

* the vendored files must match deploy/schemas/SHA256SUMS;
* the Deployment patch that Istio applies to the gateway (the ``deployment`` key of the
  ConfigMap named by Gateway.spec.infrastructure.parametersRef) is validated against the
  Deployment schema too, ignoring only ``required`` (a patch is partial);
* negative test: for each validated document a copy with a misspelt field (an existing key
  with an ``x`` appended, at the top level and inside ``spec``) must be rejected with an
  unknown-field error, or this script fails.

Kinds with no schema obtainable from a package registry (InferencePool) are listed in
UNVALIDATED and reported; any other kind without a schema is an error.

Uses the PyPI packages jsonschema and PyYAML (hash-pinned in tests/tools/requirements.txt).
Usage: validate.py FILE.yaml...
"""

import copy
import hashlib
import json
import os
import sys

import jsonschema
import yaml
from referencing import Registry, Resource

SCHEMAS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "schemas")
K8S = os.path.join(SCHEMAS, "kubernetes", "v1.33.0-local-strict")
CRDS = os.path.join(SCHEMAS, "crds")
BY_KIND = {
    ("apps/v1", "Deployment"): os.path.join(K8S, "deployment-apps-v1.json"),
    ("v1", "Service"): os.path.join(K8S, "service-v1.json"),
    ("v1", "ConfigMap"): os.path.join(K8S, "configmap-v1.json"),
    ("v1", "Secret"): os.path.join(K8S, "secret-v1.json"),
    ("v1", "ServiceAccount"): os.path.join(K8S, "serviceaccount-v1.json"),
    ("rbac.authorization.k8s.io/v1", "Role"): os.path.join(K8S, "role-rbac-v1.json"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): os.path.join(K8S, "rolebinding-rbac-v1.json"),
    ("gateway.networking.k8s.io/v1", "Gateway"): os.path.join(CRDS, "gateway.networking.k8s.io", "gateway_v1.json"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): os.path.join(CRDS, "gateway.networking.k8s.io", "httproute_v1.json"),
    ("networking.istio.io/v1alpha3", "EnvoyFilter"): os.path.join(CRDS, "networking.istio.io", "envoyfilter_v1alpha3.json"),
    ("extensions.istio.io/v1alpha1", "WasmPlugin"): os.path.join(CRDS, "extensions.istio.io", "wasmplugin_v1alpha1.json"),
}
UNVALIDATED = {("inference.networking.k8s.io/v1", "InferencePool"): "no package registry ships its CRD schema"}


def check_sums() -> None:
    with open(os.path.join(SCHEMAS, "SHA256SUMS")) as f:
        for line in f:
            digest, name = line.split()
            with open(os.path.join(SCHEMAS, name), "rb") as g:
                if hashlib.sha256(g.read()).hexdigest() != digest:
                    raise SystemExit(f"validate: FAIL schemas/{name} does not match SHA256SUMS")


class Validators:
    """One jsonschema validator per kind; Kubernetes schemas share _definitions.json."""

    def __init__(self):
        with open(os.path.join(K8S, "_definitions.json")) as f:
            defs = json.load(f)
        self.registry = Resource.from_contents(defs) @ Registry()
        self.cache = {}

    def get(self, path):
        if path not in self.cache:
            with open(path) as f:
                schema = json.load(f)
            cls = jsonschema.validators.validator_for(schema)
            self.cache[path] = cls(schema, registry=self.registry)
        return self.cache[path]


def unknown_field_errors(errors):
    return [e for e in errors if e.validator == "additionalProperties"]


def misspelt_copies(doc):
    """Copies of doc with one misspelt field added: at the top level and inside spec."""
    out = []
    top = copy.deepcopy(doc)
    top["kindx"] = doc.get("kind")
    out.append(("kindx", top))
    spec = doc.get("spec")
    if isinstance(spec, dict) and spec:
        key = sorted(spec)[0]
        bad = copy.deepcopy(doc)
        bad["spec"][key + "x"] = spec[key]
        out.append((f"spec.{key}x", bad))
    return out


def main(files) -> int:
    check_sums()
    v = Validators()
    failures, validated, skipped = [], 0, []
    for path in files:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for doc in docs:
            key = (doc.get("apiVersion"), doc.get("kind"))
            where = f"{os.path.basename(path)}: {key[1]}/{doc.get('metadata', {}).get('name')}"
            if key in UNVALIDATED:
                skipped.append(f"{where} ({UNVALIDATED[key]})")
                continue
            if key not in BY_KIND:
                failures.append(f"{where}: no schema for {key[0]} {key[1]}")
                continue
            validator = v.get(BY_KIND[key])
            errors = list(validator.iter_errors(doc))
            for e in errors:
                failures.append(f"{where}: {'/'.join(map(str, e.absolute_path))}: {e.message}")
            validated += 1
            for field, bad in misspelt_copies(doc):
                if not unknown_field_errors(validator.iter_errors(bad)):
                    failures.append(f"{where}: negative test: misspelt field {field} was accepted")
            patch = (doc.get("data") or {}).get("deployment") if key == ("v1", "ConfigMap") else None
            if patch:
                deployment = {"apiVersion": "apps/v1", "kind": "Deployment", **yaml.safe_load(patch)}
                dv = v.get(BY_KIND[("apps/v1", "Deployment")])
                for e in dv.iter_errors(deployment):
                    if e.validator != "required":
                        failures.append(f"{where} (deployment patch): {'/'.join(map(str, e.absolute_path))}: {e.message}")
                bad = copy.deepcopy(deployment)
                bad["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyx"] = "Always"
                if not unknown_field_errors(dv.iter_errors(bad)):
                    failures.append(f"{where} (deployment patch): negative test: misspelt container field accepted")
                validated += 1
    for s in skipped:
        print(f"validate: not validated {s}")
    for f in failures:
        print(f"validate: FAIL {f}", file=sys.stderr)
    if failures:
        return 1
    print(f"validate: ok {validated} documents against strict upstream schemas; misspelt copies rejected")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
