#!/usr/bin/env python3
"""Check that an OCI layout holds the filter the way Istio's Wasm puller expects.

One job: walk ``index.json`` → manifest → config and layer blobs of the layout written by
``build_oci.py`` (and of its ``.tar``), and fail unless

* ``oci-layout`` says ``imageLayoutVersion`` 1.0.0 and ``index.json`` lists one manifest;
* every blob's sha256 digest and size match the descriptor that points at it;
* media types follow the *compat* Wasm image variant: an OCI image manifest, an OCI image
  config, exactly one ``application/vnd.oci.image.layer.v1.tar+gzip`` layer and the
  ``module.wasm.image/variant: compat`` annotation;
* the layer is a gzip'd tar whose ``plugin.wasm`` (the entry Istio extracts: first base
  name ``plugin.wasm``) equals the built .wasm byte for byte and starts with ``\\0asm``;
* the config's ``rootfs.diff_ids`` is the sha256 of the uncompressed layer;
* the ``.tar`` holds the same files as the directory.

``--self-test`` builds a tiny image with build_oci.py and checks that it passes and that
a flipped layer byte, a wrong media type and a second layer are each refused.

Usage: check_oci.py OCI_DIR WASM | check_oci.py --self-test
"""

import gzip
import hashlib
import io
import json
import os
import sys
import tarfile

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


class Fail(Exception):
    pass


def need(cond: bool, msg: str) -> None:
    if not cond:
        raise Fail(msg)


def blob(root: str, desc: dict, media_type: str) -> bytes:
    need(desc.get("mediaType") == media_type, f"media type {desc.get('mediaType')!r}, want {media_type!r}")
    digest = desc.get("digest", "")
    need(digest.startswith("sha256:") and len(digest) == 71, f"bad digest {digest!r}")
    path = os.path.join(root, "blobs", "sha256", digest[7:])
    need(os.path.isfile(path), f"blob {digest} missing")
    with open(path, "rb") as f:
        data = f.read()
    need(hashlib.sha256(data).hexdigest() == digest[7:], f"blob {digest}: content has another sha256")
    need(len(data) == desc.get("size"), f"blob {digest}: {len(data)} bytes, descriptor says {desc.get('size')}")
    return data


def check(root: str, wasm: bytes) -> str:
    with open(os.path.join(root, "oci-layout")) as f:
        need(json.load(f).get("imageLayoutVersion") == "1.0.0", "oci-layout: imageLayoutVersion is not 1.0.0")
    with open(os.path.join(root, "index.json")) as f:
        index = json.load(f)
    need(index.get("schemaVersion") == 2, "index.json: schemaVersion is not 2")
    need(len(index.get("manifests", [])) == 1, "index.json: expected exactly one manifest")
    mdesc = index["manifests"][0]
    manifest = json.loads(blob(root, mdesc, MANIFEST))
    need(manifest.get("schemaVersion") == 2, "manifest: schemaVersion is not 2")
    need(manifest.get("mediaType") == MANIFEST, "manifest: mediaType field missing or wrong")
    need(manifest.get("annotations", {}).get("module.wasm.image/variant") == "compat",
         "manifest: annotation module.wasm.image/variant=compat missing")
    layers = manifest.get("layers", [])
    need(len(layers) == 1, f"compat variant needs exactly one layer, found {len(layers)}")
    config = json.loads(blob(root, manifest["config"], CONFIG))
    layer = blob(root, layers[0], LAYER)
    tar_bytes = gzip.decompress(layer)
    need(config.get("rootfs", {}).get("diff_ids") == ["sha256:" + hashlib.sha256(tar_bytes).hexdigest()],
         "config: rootfs.diff_ids is not the sha256 of the uncompressed layer")
    found = None
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        for member in tar:
            if os.path.basename(member.name) == "plugin.wasm":
                found = tar.extractfile(member).read()
                break
    need(found is not None, "layer: no plugin.wasm")
    need(found[:4] == b"\0asm", "layer: plugin.wasm does not start with the wasm magic \\0asm")
    need(found == wasm, "layer: plugin.wasm differs from the built .wasm")
    return mdesc["digest"]


def check_tar(root: str) -> None:
    want = {}
    for d, _, files in os.walk(root):
        for name in files:
            path = os.path.join(d, name)
            with open(path, "rb") as f:
                want[os.path.relpath(path, root)] = f.read()
    got = {}
    with tarfile.open(root.rstrip("/") + ".tar") as tar:
        for member in tar:
            if member.isfile():
                got[os.path.normpath(member.name)] = tar.extractfile(member).read()
    need(got == want, f"{root}.tar does not hold the same files as {root}/")


def self_test() -> int:
    """The checker accepts a good image and refuses broken ones."""
    import shutil
    import tempfile
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.dont_write_bytecode = True
    import build_oci

    wasm = b"\0asm\x01\x00\x00\x00self-test"

    def fresh(tmp):
        blobs, index, _ = build_oci.build(wasm, "t")
        root = os.path.join(tmp, "img")
        build_oci.write_layout(root, blobs, index)
        with open(os.path.join(root, "index.json")) as f:
            mdesc = json.load(f)["manifests"][0]
        with open(os.path.join(root, "blobs", "sha256", mdesc["digest"][7:])) as f:
            return root, json.load(f)

    def rewrite_manifest(root, manifest):
        data = build_oci.canonical_json(manifest)
        digest = build_oci.sha256(data)
        with open(os.path.join(root, "blobs", "sha256", digest), "wb") as f:
            f.write(data)
        index = {"schemaVersion": 2, "manifests": [{"mediaType": MANIFEST, "digest": "sha256:" + digest, "size": len(data)}]}
        with open(os.path.join(root, "index.json"), "w") as f:
            json.dump(index, f)

    def flip_layer(root, manifest):
        path = os.path.join(root, "blobs", "sha256", manifest["layers"][0]["digest"][7:])
        with open(path, "r+b") as f:
            f.seek(20)
            b = f.read(1)
            f.seek(20)
            f.write(bytes([b[0] ^ 1]))

    def wrong_type(root, manifest):
        manifest["layers"][0]["mediaType"] = "application/vnd.oci.image.layer.v1.tar"
        rewrite_manifest(root, manifest)

    def two_layers(root, manifest):
        manifest["layers"].append(manifest["layers"][0])
        rewrite_manifest(root, manifest)

    with tempfile.TemporaryDirectory() as tmp:
        root, _ = fresh(tmp)
        check(root, wasm)
        for breaker in (flip_layer, wrong_type, two_layers):
            shutil.rmtree(root)
            root, manifest = fresh(tmp)
            breaker(root, manifest)
            try:
                check(root, wasm)
            except (Fail, OSError, ValueError, KeyError, tarfile.TarError):
                continue
            print(f"check_oci: FAIL self-test: {breaker.__name__} was accepted", file=sys.stderr)
            return 1
    print("check_oci: ok self-test (a good image passes; a flipped byte, a wrong media type, two layers fail)")
    return 0


def main() -> int:
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
    if len(sys.argv) != 3:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    root, wasm_path = sys.argv[1].rstrip("/"), sys.argv[2]
    with open(wasm_path, "rb") as f:
        wasm = f.read()
    try:
        digest = check(root, wasm)
        check_tar(root)
    except (Fail, OSError, ValueError, KeyError, tarfile.TarError) as e:
        print(f"check_oci: FAIL {root}: {e}", file=sys.stderr)
        return 1
    print(f"check_oci: ok {root} (manifest {digest}, plugin.wasm {len(wasm)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
