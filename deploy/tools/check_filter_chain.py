#!/usr/bin/env python3
"""Check that the rendered Istio resources give the filter chain of envoy-config/envoy.yaml.
(In endpoint-picker mode: that the InferencePool names the kvgate-sync picker's gRPC port.)

One job: compare the kvgate pieces of each rendered example with envoy-config/envoy.yaml
(the source of truth) and collect the plugin configurations for the filter's own parser:

* every plugin configuration (EnvoyFilter ECDS config, WasmPlugin pluginConfig, the
  sidecar's config.json) uses only keys of filter/core/src/config/keys.rs, and the ones of
  one render are identical; each is written to OUT_DIR/<example>.<source>.json for
  ``kvgate-sync check-config``;
* the wasm filter: root_id, vm_id, runtime, allow_on_headers_stop_iteration and
  failure_policy as in envoy.yaml, inserted right before envoy.filters.http.router;
* the sidecar cluster: named as the plugin config's sidecar_cluster (default from
  keys.rs), STATIC, on 127.0.0.1 like envoy.yaml's kvgate_sidecar;
* the endpoint header: the header envoy.yaml's override_host reads is the one copied to
  envoy.lb metadata for Istio's InferencePool cluster;
* stream_idle_timeout and the route timeout equal envoy.yaml's; the listener buffer
  exceeds max_body_bytes;
* the ext_proc removal is scoped: exactly one HTTP_FILTER REMOVE, of the filter named as
  Istio names its InferencePool ext_proc, on the gateway listener's port only.

Usage: check_filter_chain.py OUT_DIR RENDERED.yaml...
"""

import json
import os
import re
import sys

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENVOY_YAML = os.path.join(REPO, "envoy-config", "envoy.yaml")
KEYS_RS = os.path.join(REPO, "filter", "core", "src", "config", "keys.rs")
WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
ROUTER = "envoy.filters.http.router"
# The HTTP filter Istio adds for InferencePools (pilot/pkg/xds/filters/filters.go
# InferencePoolExtProc: Name wellknown.HTTPExternalProcessing).
ISTIO_POOL_EXT_PROC = "envoy.filters.http.ext_proc"


def key_table():
    """JSON key -> default, from the key! rows of keys.rs."""
    with open(KEYS_RS) as f:
        rows = re.findall(r'key!\("([a-z_0-9]+)",\s*\[[^\]]*\],\s*\w+,\s*"([^"]*)"', f.read())
    if len(rows) < 10:
        raise SystemExit("check_filter_chain: could not read the key table from keys.rs")
    return dict(rows)


def envoy_reference():
    """The kvgate parts of envoy.yaml, placeholders filled with dummies."""
    with open(ENVOY_YAML) as f:
        text = f.read()
    dummies = {"PLUGIN_CONFIG": '"{}"', "VM_CONFIG": '""', "WASM": '"/kvgate_filter.wasm"',
               "WORKER_ENDPOINTS": "        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 1}}}"}
    text = re.sub(r"\{\{([A-Z_]+)\}\}", lambda m: dummies.get(m.group(1), "1"), text)
    cfg = yaml.safe_load(text)
    listener = cfg["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    filters = hcm["http_filters"]
    names = [f["name"] for f in filters]
    wasm = next(f for f in filters if f["typed_config"]["@type"] == WASM_TYPE)
    if names.index(wasm["name"]) != names.index(ROUTER) - 1:
        raise SystemExit("check_filter_chain: envoy.yaml no longer has the wasm filter right before the router")
    clusters = {c["name"]: c for c in cfg["static_resources"]["clusters"]}
    workers = clusters["workers"]["load_balancing_policy"]["policies"][0]["typed_extension_config"]["typed_config"]
    route = hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    return {"wasm": wasm["typed_config"]["config"], "clusters": clusters,
            "header": workers["override_host_sources"][0]["header"],
            "stream_idle_timeout": hcm["stream_idle_timeout"], "route_timeout": route["timeout"]}


def collect(docs):
    """Plugin configs by source, the EnvoyFilter patches and the HTTPRoute of one render."""
    configs, patches, route = {}, [], None
    for d in docs:
        kind = d.get("kind")
        if kind == "EnvoyFilter":
            patches = d["spec"]["configPatches"]
        elif kind == "WasmPlugin":
            configs["wasmplugin"] = d["spec"].get("pluginConfig") or {}
        elif kind == "HTTPRoute":
            route = d
        elif kind == "ConfigMap" and "config.json" in (d.get("data") or {}):
            configs["sidecar"] = json.loads(d["data"]["config.json"])
    for p in patches:
        if p["applyTo"] == "EXTENSION_CONFIG":
            configs["envoyfilter"] = json.loads(p["patch"]["value"]["typed_config"]["config"]["configuration"]["value"])
    return configs, patches, route


def check_picker(name, docs, picker, configs, route, ref, keys, out, bad):
    """Endpoint-picker mode: kvgate-sync --epp behind the InferencePool's endpointPickerRef."""
    if {"envoyfilter", "wasmplugin"} & configs.keys() or "sidecar" not in configs:
        bad("endpoint-picker mode: expected the sidecar config and no EnvoyFilter or WasmPlugin")
        return
    cfg = configs["sidecar"]
    for k in sorted(set(cfg) - set(keys)):
        bad(f"sidecar plugin config: key {k!r} is not in keys.rs")
    with open(os.path.join(out, f"{os.path.splitext(name)[0]}.sidecar.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    container = picker["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    if f"--epp=0.0.0.0:{ports.get('grpc-ext-proc')}" not in container.get("args", []):
        bad("the picker container's --epp does not listen on its grpc-ext-proc port")
    services = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "Service"}
    pools = [d for d in docs if d.get("kind") == "InferencePool"]
    if len(pools) != 1:
        bad("expected one InferencePool")
        return
    ref_ = pools[0]["spec"]["endpointPickerRef"]
    svc = services.get(ref_.get("name"))
    if not svc:
        bad(f"endpointPickerRef names Service {ref_.get('name')!r}, not rendered")
        return
    grpc = [p for p in svc["spec"]["ports"] if p.get("targetPort") == "grpc-ext-proc"]
    if not grpc or grpc[0]["port"] != ref_.get("port", {}).get("number"):
        bad("endpointPickerRef port is not the picker Service's ext_proc port")
    if ref_.get("failureMode") not in ("FailOpen", "FailClose"):
        bad(f"endpointPickerRef failureMode {ref_.get('failureMode')!r}")
    labels = picker["spec"]["template"]["metadata"]["labels"]
    if any(labels.get(k) != v for k, v in svc["spec"]["selector"].items()):
        bad("the picker Service does not select the picker pods")
    timeouts = [r.get("timeouts", {}).get("request") for r in route["spec"]["rules"]] if route else []
    if timeouts != [ref["route_timeout"]]:
        bad(f"HTTPRoute request timeout {timeouts}, envoy.yaml route timeout {ref['route_timeout']}")


def check(name, docs, ref, keys, out, problems):
    configs, patches, route = collect(docs)
    def bad(msg):
        problems.append(f"{name}: {msg}")
    picker = [d for d in docs if d.get("kind") == "Deployment"
              and (d["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == "endpoint-picker"]
    if picker:
        check_picker(name, docs, picker[0], configs, route, ref, keys, out, bad)
        return
    if "sidecar" not in configs or not ({"envoyfilter", "wasmplugin"} & configs.keys()):
        bad("expected the sidecar config and an EnvoyFilter or WasmPlugin plugin config")
        return
    for source, cfg in sorted(configs.items()):
        for k in sorted(set(cfg) - set(keys)):
            bad(f"{source} plugin config: key {k!r} is not in keys.rs")
        path = os.path.join(out, f"{os.path.splitext(name)[0]}.{source}.json")
        with open(path, "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
            f.write("\n")
    if len({json.dumps(c, sort_keys=True) for c in configs.values()}) != 1:
        bad("the plugin configurations of one render differ")
    cfg = configs["sidecar"]
    by = lambda kind, op: [p for p in patches if p["applyTo"] == kind and p["patch"]["operation"] == op]
    # The wasm filter and its position.
    ext = by("EXTENSION_CONFIG", "ADD")
    if "envoyfilter" in configs:
        wasm = ext[0]["patch"]["value"]["typed_config"]["config"]
        for field in ("root_id", "allow_on_headers_stop_iteration", "failure_policy"):
            if wasm.get(field) != ref["wasm"].get(field):
                bad(f"wasm {field}: {wasm.get(field)!r}, envoy.yaml has {ref['wasm'].get(field)!r}")
        for field in ("vm_id", "runtime", "environment_variables"):
            if wasm["vm_config"].get(field) != ref["wasm"]["vm_config"].get(field):
                bad(f"wasm vm_config.{field} differs from envoy.yaml")
        inserted = [p for p in by("HTTP_FILTER", "INSERT_BEFORE")
                    if p["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"] == ROUTER]
        if not inserted or inserted[0]["patch"]["value"].get("name") != ext[0]["patch"]["value"]["name"]:
            bad("the wasm filter is not the first filter inserted before the router")
    # The sidecar API token reaches the VM from the gateway's environment.
    for d in docs:
        if d.get("kind") == "WasmPlugin":
            env = (d["spec"].get("vmConfig") or {}).get("env") or []
            if {"name": "KVGATE_SIDECAR_TOKEN", "valueFrom": "HOST"} not in env:
                bad("WasmPlugin vmConfig.env does not pass KVGATE_SIDECAR_TOKEN from the host")
    # The sidecar cluster.
    cluster_name = cfg.get("sidecar_cluster", keys["sidecar_cluster"])
    added = {p["patch"]["value"]["name"]: p["patch"]["value"] for p in by("CLUSTER", "ADD")}
    ours, theirs = added.get(cluster_name), ref["clusters"].get(cluster_name)
    if not ours or not theirs:
        bad(f"cluster {cluster_name!r} (sidecar_cluster) missing here or in envoy.yaml")
    else:
        addr = lambda c: c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["address"]
        if ours["type"] != theirs["type"] or addr(ours) != addr(theirs):
            bad("sidecar cluster type/address differ from envoy.yaml")
    # The endpoint header, copied to envoy.lb metadata for the InferencePool cluster.
    copied = [r["header"] for p in by("HTTP_FILTER", "INSERT_BEFORE")
              for r in p["patch"]["value"].get("typed_config", {}).get("request_rules", [])]
    if copied != [ref["header"]]:
        bad(f"header copied to envoy.lb: {copied}, envoy.yaml's override_host reads {ref['header']!r}")
    # Timeouts and buffer.
    hcm = [p["patch"]["value"]["typed_config"] for p in by("NETWORK_FILTER", "MERGE")]
    if not hcm or hcm[0].get("stream_idle_timeout") != ref["stream_idle_timeout"]:
        bad("stream_idle_timeout differs from envoy.yaml")
    timeouts = [r.get("timeouts", {}).get("request") for r in route["spec"]["rules"]] if route else []
    if timeouts != [ref["route_timeout"]]:
        bad(f"HTTPRoute request timeout {timeouts}, envoy.yaml route timeout {ref['route_timeout']}")
    # The ext_proc removal: by name, on our listener port, nothing else removed.
    ports = [p["match"]["listener"].get("portNumber") for p in by("LISTENER", "MERGE")]
    removes = [p for p in patches if p["patch"]["operation"] == "REMOVE"]
    scoped = [p for p in removes if p["applyTo"] == "HTTP_FILTER"
              and p["match"]["listener"].get("portNumber") in ports and ports[0] is not None
              and p["match"]["listener"]["filterChain"]["filter"].get("subFilter", {}).get("name") == ISTIO_POOL_EXT_PROC]
    if len(removes) != 1 or len(scoped) != 1:
        bad(f"expected one REMOVE of HTTP filter {ISTIO_POOL_EXT_PROC!r} on the gateway port {ports}, got "
            f"{[(p['applyTo'], p['match']) for p in removes]}")
    buffers = [p["patch"]["value"]["per_connection_buffer_limit_bytes"] for p in by("LISTENER", "MERGE")]
    if not buffers or buffers[0] <= int(cfg.get("max_body_bytes", keys["max_body_bytes"])):
        bad("listener per_connection_buffer_limit_bytes must exceed max_body_bytes")


def main(argv) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    out, files = argv[0], argv[1:]
    os.makedirs(out, exist_ok=True)
    keys, ref, problems = key_table(), envoy_reference(), []
    for path in files:
        with open(path) as f:
            check(os.path.basename(path), [d for d in yaml.safe_load_all(f) if d], ref, keys, out, problems)
    for p in problems:
        print(f"check_filter_chain: FAIL {p}", file=sys.stderr)
    if problems:
        return 1
    print(f"check_filter_chain: ok {len(files)} renders match envoy-config/envoy.yaml; plugin configs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
