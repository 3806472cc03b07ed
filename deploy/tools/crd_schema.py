"""A CustomResourceDefinition's openAPIV3Schema → a strict JSON-schema validator that
rejects what a Kubernetes API server would refuse or silently drop.

One job: model the API server's handling of a custom resource closely enough that a
misspelt field, a wrong type, an out-of-range value or a duplicate list key is an error
here, as with ``kubectl apply`` (which asks for ``fieldValidation=Strict`` since
Kubernetes 1.27). The rules followed, from the Kubernetes documentation "Extend the
Kubernetes API with CustomResourceDefinitions" (sections "Specifying a structural
schema", "Field pruning", "Controlling pruning", "IntOrString", "RawExtension",
"Defaulting", "Defaulting and Nullable", "Validation rules") and the API concepts page
("Field validation"):

* **Pruning = unknown field.** The server prunes every field its structural schema does
  not specify; with strict field validation that is an error. So every object node that is
  reached through ``properties`` / ``items`` / ``additionalProperties`` (the structural
  part, not inside ``allOf``/``anyOf``/``oneOf``/``not``) is closed unless it has
  ``x-kubernetes-preserve-unknown-fields: true`` or a map schema
  (``additionalProperties``). A ``type: object`` without properties is therefore an
  empty object, as the server would prune it to.
* **metadata.** ``apiVersion``, ``kind`` and ``metadata`` of the root (and of
  ``x-kubernetes-embedded-resource`` objects) are always kept; ``metadata`` is validated as
  the strict ``ObjectMeta`` of the vendored Kubernetes definitions, whatever the CRD says.
* **IntOrString**: ``x-kubernetes-int-or-string`` accepts an integer or a string.
* **nullable**: ``nullable: true`` admits null. A null elsewhere is dropped by the server
  before defaulting; here it is an error (a rendered null is always a template mistake).
* **Defaults** (``default``) are applied before validation, as the server does, so rules
  that read defaulted fields see them.
* **List types**: ``x-kubernetes-list-type: set`` items must be unique, ``map`` items
  unique by ``x-kubernetes-list-map-keys`` (the server answers "Duplicate value").
* **Value validations** (``enum``, ``pattern``, lengths, bounds, item and property counts,
  ``required``, the logical junctors) are JSON-schema keywords with the same meaning;
  ``Draft4Validator`` gives ``exclusiveMinimum``/``exclusiveMaximum`` the boolean form
  OpenAPI v3.0 uses.

Not modelled (reported as such by the caller): CEL rules (``x-kubernetes-validations``)
and ``format`` checks other than the integer ranges of ``int32``/``int64``.
"""

import copy

import jsonschema

SCHEMA_KEYS = ("properties", "additionalProperties", "items")
JUNCTORS = ("allOf", "anyOf", "oneOf", "not")
K8S_EXTENSIONS = (
    "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string", "x-kubernetes-embedded-resource",
    "x-kubernetes-list-type", "x-kubernetes-list-map-keys", "x-kubernetes-map-type", "x-kubernetes-validations",
)
INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
OBJECT_META = "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


def closed(node):
    """Whether the server prunes unknown fields of objects this structural node describes."""
    return (node.get("type") == "object" and not node.get("x-kubernetes-preserve-unknown-fields")
            and "additionalProperties" not in node)


def convert(node, structural=True, root=False):
    """OpenAPI v3 structural schema node → JSON-schema node (Draft 4 keywords)."""
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in ("description", "default", "example", "externalDocs") or key in K8S_EXTENSIONS:
            continue
        if key == "properties":
            out[key] = {k: convert(v, structural) for k, v in value.items()}
        elif key in ("additionalProperties", "items"):
            out[key] = convert(value, structural) if isinstance(value, dict) else value
        elif key in JUNCTORS:
            out[key] = convert(value, False) if key == "not" else [convert(v, False) for v in value]
        elif key in ("format", "minimum", "maximum") and node.get("format") in INT_RANGES:
            continue
        elif key == "nullable":
            continue
        else:
            out[key] = copy.deepcopy(value)
    if node.get("format") in INT_RANGES:
        lo, hi = INT_RANGES[node["format"]]
        out["minimum"], out["maximum"] = max(node.get("minimum", lo), lo), min(node.get("maximum", hi), hi)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if node.get("x-kubernetes-list-type") in ("set", "map"):
        out["x-list"] = {"type": node["x-kubernetes-list-type"], "keys": node.get("x-kubernetes-list-map-keys", [])}
    if structural and (root or node.get("x-kubernetes-embedded-resource")):
        props = out.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props["metadata"] = {"$ref": OBJECT_META}
    if structural and closed(node):
        out["additionalProperties"] = False
    return out


def _list_type(validator, spec, instance, schema):
    if not isinstance(instance, list):
        return
    seen = []
    for i, item in enumerate(instance):
        key = item if spec["type"] == "set" else tuple(
            (k, (item or {}).get(k)) for k in spec["keys"]) if isinstance(item, dict) else item
        if key in seen:
            yield jsonschema.ValidationError(f"Duplicate value at index {i}: {key!r} "
                                             f"(x-kubernetes-list-type: {spec['type']})")
        seen.append(key)


StrictValidator = jsonschema.validators.extend(jsonschema.Draft4Validator, {"x-list": _list_type})


def apply_defaults(node, value):
    """Fills in ``default`` of absent properties, recursively (the server's defaulting)."""
    if not isinstance(node, dict):
        return
    if isinstance(value, dict):
        for k, sub in (node.get("properties") or {}).items():
            if k not in value and "default" in sub:
                value[k] = copy.deepcopy(sub["default"])
            if k in value:
                apply_defaults(sub, value[k])
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            for k, v in value.items():
                if k not in (node.get("properties") or {}):
                    apply_defaults(extra, v)
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for v in value:
            apply_defaults(node["items"], v)


def closed_objects(node, value, path=()):
    """Paths of every object in ``value`` whose schema node is closed (unknown fields are
    errors there): where a misspelt key must be caught. ``metadata`` counts as closed."""
    if not isinstance(node, dict):
        return
    if isinstance(value, dict):
        if closed(node) or path[-1:] == ("metadata",):
            yield path
        props = node.get("properties") or {}
        for k, v in value.items():
            if k in props:
                yield from closed_objects(props[k], v, path + (k,))
            elif isinstance(node.get("additionalProperties"), dict):
                yield from closed_objects(node["additionalProperties"], v, path + (k,))
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for i, v in enumerate(value):
            yield from closed_objects(node["items"], v, path + (i,))


def cel_rules(node):
    """Number of CEL rules (``x-kubernetes-validations``) in a schema: not evaluated here."""
    if isinstance(node, dict):
        return len(node.get("x-kubernetes-validations", [])) + sum(cel_rules(v) for v in node.values())
    if isinstance(node, list):
        return sum(cel_rules(v) for v in node)
    return 0
