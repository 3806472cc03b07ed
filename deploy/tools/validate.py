#!/usr/bin/env python3
"""Validate rendered manifests against the vendored upstream schemas, strictly.

One job: every YAML document of every file given must validate against the schema of its
kind under deploy/schemas/ (see PROVENANCE.md), with unknown fields rejected:

* core kinds (Deployment, Service, Pod, RBAC, ...): the strict JSON schemas of the
  Kubernetes OpenAPI definitions (``additionalProperties: false`` on every object, as
  kubeconform ``-strict``);
* custom resources (InferencePool, Gateway, HTTPRoute, EnvoyFilter, WasmPlugin): the
  upstream CustomResourceDefinition's ``openAPIV3Schema`` for the document's version,
  with the API server's structural-schema semantics (``crd_schema.py``: pruned fields are
  errors, ``x-kubernetes-preserve-unknown-fields`` subtrees stay open, defaults applied,
  list-map keys unique, ``metadata`` as strict ObjectMeta);
* ServiceMonitor (Prometheus Operator): a schema derived from its generated TypeScript
  declaration, closed the same way (no registry ships the CRD; PROVENANCE.md).

Also:

* the vendored files must match deploy/schemas/SHA256SUMS;
* the Deployment patch that Istio applies to the gateway (the ``deployment`` key of the
  ConfigMap named by Gateway.spec.infrastructure.parametersRef) is validated against the
  Deployment schema too, ignoring only ``required`` (a patch is partial);
* negative tests, or this script fails: (1) for every closed object of every custom
  resource rendered, a copy with one key of that object misspelt must be rejected with an
  unknown-field error at that object, and for core kinds the same at the top level and in
  ``spec``; (2) every document of ``testdata/misspelt-resources.yaml`` (hand-written typos
  in an InferencePool, HTTPRoute, Gateway, EnvoyFilter, WasmPlugin, ServiceMonitor; the
  annotation ``kvgate.io/expect-unknown-field`` names the misspelt field) must be
  rejected for exactly that field, and ``testdata/open-fields.yaml`` (unknown keys only
  where the CRD preserves them) must be accepted.

CEL rules (``x-kubernetes-validations``) are not evaluated; their count is printed.

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

import crd_schema

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMAS = os.path.join(os.path.dirname(HERE), "schemas")
K8S = os.path.join(SCHEMAS, "kubernetes", "v1.33.0-local-strict")
CRDS = os.path.join(SCHEMAS, "crds")
CORE = {
    ("apps/v1", "Deployment"): "deployment-apps-v1.json",
    ("v1", "Service"): "service-v1.json",
    ("v1", "ConfigMap"): "configmap-v1.json",
    ("v1", "Secret"): "secret-v1.json",
    ("v1", "ServiceAccount"): "serviceaccount-v1.json",
    ("v1", "Pod"): "pod-v1.json",
    ("rbac.authorization.k8s.io/v1", "Role"): "role-rbac-v1.json",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "rolebinding-rbac-v1.json",
}
CRD_FILES = [
    "inference-extension/inference.networking.k8s.io_inferencepools.yaml",
    "gateway-api/gateway.networking.k8s.io_gateways.yaml",
    "gateway-api/gateway.networking.k8s.io_httproutes.yaml",
    "istio/envoyfilters.networking.istio.io.yaml",
    "istio/wasmplugins.extensions.istio.io.yaml",
]
DERIVED = {("monitoring.coreos.com/v1", "ServiceMonitor"): "prometheus-operator/servicemonitor_v1.derived.json"}
MISSPELT = os.path.join(HERE, "testdata", "misspelt-resources.yaml")
OPEN_FIELDS = os.path.join(HERE, "testdata", "open-fields.yaml")
EXPECT = "kvgate.io/expect-unknown-field"


def check_sums() -> None:
    with open(os.path.join(SCHEMAS, "SHA256SUMS")) as f:
        for line in f:
            digest, name = line.split()
            with open(os.path.join(SCHEMAS, name), "rb") as g:
                if hashlib.sha256(g.read()).hexdigest() != digest:
                    raise SystemExit(f"validate: FAIL schemas/{name} does not match SHA256SUMS")


class Kind:
    """How to validate one (apiVersion, kind)."""

    def __init__(self, validator, crd_node=None, cel=0):
        self.validator = validator
        self.crd_node = crd_node  # the CRD's openAPIV3Schema, for defaults and closed objects
        self.cel = cel

    def errors(self, doc):
        if self.crd_node is not None:
            doc = copy.deepcopy(doc)
            crd_schema.apply_defaults(self.crd_node, doc)
        return list(self.validator.iter_errors(doc))


class Schemas:
    """Every kind the chart renders, keyed by (apiVersion, kind)."""

    def __init__(self):
        with open(os.path.join(K8S, "_definitions.json")) as f:
            defs = json.load(f)
        self.registry = Resource.from_contents(defs) @ Registry()
        self.kinds = {}
        for key, name in CORE.items():
            self.kinds[key] = Kind(self._json_validator(os.path.join(K8S, name)))
        for key, name in DERIVED.items():
            self.kinds[key] = Kind(self._json_validator(os.path.join(CRDS, name)))
        for name in CRD_FILES:
            with open(os.path.join(CRDS, name)) as f:
                crd = yaml.safe_load(f)
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if not version.get("served"):
                    continue
                node = version["schema"]["openAPIV3Schema"]
                schema = crd_schema.convert(node, root=True)
                v = crd_schema.StrictValidator(schema, registry=self.registry)
                self.kinds[(f"{group}/{version['name']}", kind)] = Kind(v, node, crd_schema.cel_rules(node))

    def _json_validator(self, path):
        with open(path) as f:
            schema = json.load(f)
        return jsonschema.validators.validator_for(schema)(schema, registry=self.registry)


def unknown_at(errors, path, key=None):
    """Whether an unknown-field error names ``key`` (any key if None) in the object at ``path``."""
    for e in errors:
        if e.validator == "additionalProperties" and tuple(e.absolute_path) == tuple(path):
            if key is None or repr(key) in e.message:
                return True
    return False


def misspell(obj):
    """(old key, new key) for a typo of one key of ``obj`` that is not already a key."""
    for key in sorted(obj):
        for bad in (key[:-1], key + "x", key + "_"):
            if bad and bad not in obj:
                return key, bad
    return None


def get_path(doc, path):
    for p in path:
        doc = doc[p]
    return doc


def misspelt_copies(doc, kind):
    """Copies of ``doc`` with one key misspelt: in every closed object (custom resources),
    or at the top level and in ``spec`` (core kinds)."""
    if kind.crd_node is not None:
        paths = list(crd_schema.closed_objects(kind.crd_node, doc))
    else:
        paths = [()] + ([("spec",)] if isinstance(doc.get("spec"), dict) and doc["spec"] else [])
    for path in paths:
        bad = copy.deepcopy(doc)
        obj = get_path(bad, path)
        typo = misspell(obj) if obj else None
        if typo is None:
            continue
        old, new = typo
        obj[new] = obj.pop(old)
        yield path, new, bad


def where(path, doc):
    return f"{os.path.basename(path)}: {doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


def fmt(e):
    return f"{'/'.join(map(str, e.absolute_path))}: {e.message}"


def validate_file(schemas, path, failures, stats):
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    for doc in docs:
        key = (doc.get("apiVersion"), doc.get("kind"))
        at = where(path, doc)
        kind = schemas.kinds.get(key)
        if kind is None:
            failures.append(f"{at}: no schema for {key[0]} {key[1]}")
            continue
        failures.extend(f"{at}: {fmt(e)}" for e in kind.errors(doc))
        stats["documents"] += 1
        stats["cel"][key] = kind.cel
        for obj_path, new, bad in misspelt_copies(doc, kind):
            stats["negatives"] += 1
            if not unknown_at(kind.errors(bad), obj_path, new):
                failures.append(f"{at}: negative test: misspelt field {'/'.join(map(str, obj_path + (new,)))} was accepted")
        patch = (doc.get("data") or {}).get("deployment") if key == ("v1", "ConfigMap") else None
        if patch:
            validate_patch(schemas, at, patch, failures)
            stats["documents"] += 1


def validate_patch(schemas, at, patch, failures):
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", **yaml.safe_load(patch)}
    dv = schemas.kinds[("apps/v1", "Deployment")]
    failures.extend(f"{at} (deployment patch): {fmt(e)}" for e in dv.errors(deployment) if e.validator != "required")
    bad = copy.deepcopy(deployment)
    bad["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyx"] = "Always"
    if not unknown_at(dv.errors(bad), ("spec", "template", "spec", "containers", 0)):
        failures.append(f"{at} (deployment patch): negative test: misspelt container field accepted")


def fixtures(schemas, failures):
    """The hand-written negatives and the open-field positives."""
    with open(MISSPELT) as f:
        bad_docs = [d for d in yaml.safe_load_all(f) if d]
    kinds = set()
    for doc in bad_docs:
        at = where(MISSPELT, doc)
        expect = doc["metadata"]["annotations"][EXPECT].split("/")
        obj_path = tuple(int(p) if p.isdigit() else p for p in expect[:-1])
        errors = schemas.kinds[(doc["apiVersion"], doc["kind"])].errors(doc)
        if not unknown_at(errors, obj_path, expect[-1]):
            failures.append(f"{at}: the misspelt field {'/'.join(expect)} was accepted ({[fmt(e) for e in errors]})")
        kinds.add(doc["kind"])
    with open(OPEN_FIELDS) as f:
        for doc in yaml.safe_load_all(f):
            if doc:
                errors = schemas.kinds[(doc["apiVersion"], doc["kind"])].errors(doc)
                failures.extend(f"{where(OPEN_FIELDS, doc)}: a preserved field was refused: {fmt(e)}" for e in errors)
    return len(bad_docs), sorted(kinds)


def main(files) -> int:
    check_sums()
    schemas = Schemas()
    failures = []
    stats = {"documents": 0, "negatives": 0, "cel": {}}
    for path in files:
        validate_file(schemas, path, failures, stats)
    n_fixtures, fixture_kinds = fixtures(schemas, failures)
    for f in failures:
        print(f"validate: FAIL {f}", file=sys.stderr)
    if failures:
        return 1
    cel = ", ".join(f"{k[1]} {n}" for k, n in sorted(stats["cel"].items(), key=lambda kv: kv[0][1]) if n)
    print(f"validate: ok {stats['documents']} documents against strict upstream schemas; "
          f"{stats['negatives']} misspelt copies rejected; {n_fixtures} hand-written misspellings "
          f"({', '.join(fixture_kinds)}) rejected; preserved fields accepted")
    print(f"validate: CEL rules present but not evaluated: {cel or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
