#!/usr/bin/env python3
"""Package kvgate_filter.wasm as a Wasm OCI image, without Docker.

One job: write an OCI image layout directory (``oci-layout``, ``index.json``,
``blobs/sha256/…``) and a ``.tar`` of it, holding the filter in the *compat* variant of
the Wasm image spec (solo-io/wasm ``spec/spec-compat.md``), the variant Istio's puller
tries first (``pkg/wasm/imagefetcher.go``: ``extractOCIStandardImage``):

* exactly one layer, media type ``application/vnd.oci.image.layer.v1.tar+gzip``, a tar
  holding ``plugin.wasm`` (Istio takes the first entry whose base name is ``plugin.wasm``);
* an OCI image config (``application/vnd.oci.image.config.v1+json``);
* the manifest annotation ``module.wasm.image/variant: compat``.

The output is byte-for-byte reproducible (fixed tar and gzip metadata), so the manifest
digest — the value Istio compares a ``sha256`` field with for an ``oci://`` URL — depends
on the .wasm alone. It is printed, with the .wasm's own sha256 (the value for an
``https://`` URL), and written to ``digests.json``.

Usage: build_oci.py WASM OUT_DIR [--tag TAG]
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import sys

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
VARIANT_ANNOTATION = "module.wasm.image/variant"
WASM_MAGIC = b"\0asm"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def layer_tar(wasm: bytes) -> bytes:
    """An uncompressed tar with one entry, plugin.wasm, with fixed metadata."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("plugin.wasm")
        info.size = len(wasm)
        info.mode = 0o444
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(wasm))
    return buf.getvalue()


def gzip_fixed(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0, filename="") as gz:
        gz.write(data)
    return buf.getvalue()


def build(wasm: bytes, tag: str) -> tuple[dict[str, bytes], bytes, dict]:
    """Returns the blobs by digest, the index.json bytes and a summary."""
    tar = layer_tar(wasm)
    layer = gzip_fixed(tar)
    config = canonical_json(
        {
            "architecture": "wasm",
            "os": "wasip1",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + sha256(tar)]},
        }
    )
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": "sha256:" + sha256(config), "size": len(config)},
            "layers": [{"mediaType": LAYER_MEDIA_TYPE, "digest": "sha256:" + sha256(layer), "size": len(layer)}],
            "annotations": {VARIANT_ANNOTATION: "compat"},
        }
    )
    index = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": INDEX_MEDIA_TYPE,
            "manifests": [
                {
                    "mediaType": MANIFEST_MEDIA_TYPE,
                    "digest": "sha256:" + sha256(manifest),
                    "size": len(manifest),
                    "annotations": {"org.opencontainers.image.ref.name": tag},
                }
            ],
        }
    )
    blobs = {sha256(b): b for b in (layer, config, manifest)}
    summary = {
        "manifest_digest": "sha256:" + sha256(manifest),
        "wasm_sha256": sha256(wasm),
        "wasm_bytes": len(wasm),
        "tag": tag,
    }
    return blobs, index, summary


def write_layout(out: str, blobs: dict[str, bytes], index: bytes) -> None:
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(os.path.join(out, "blobs", "sha256"))
    with open(os.path.join(out, "oci-layout"), "wb") as f:
        f.write(canonical_json({"imageLayoutVersion": "1.0.0"}))
    with open(os.path.join(out, "index.json"), "wb") as f:
        f.write(index)
    for digest, data in blobs.items():
        with open(os.path.join(out, "blobs", "sha256", digest), "wb") as f:
            f.write(data)


def write_tar(out: str, tar_path: str) -> None:
    """A tar of the layout directory (what `crane push`, `skopeo oci-archive:` read)."""
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for root, dirs, files in os.walk(out):
            dirs.sort()
            for name in sorted(files):
                path = os.path.join(root, name)
                info = tar.gettarinfo(path, os.path.relpath(path, out))
                info.mtime = 0
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mode = 0o644
                with open(path, "rb") as f:
                    tar.addfile(info, f)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("wasm", help="kvgate_filter.wasm")
    p.add_argument("out", help="output directory (the OCI layout); OUT.tar is written beside it")
    p.add_argument("--tag", default="latest", help="ref name recorded in index.json [latest]")
    a = p.parse_args()
    with open(a.wasm, "rb") as f:
        wasm = f.read()
    if wasm[:4] != WASM_MAGIC:
        print(f"build_oci: {a.wasm} is not a wasm module (no \\0asm magic)", file=sys.stderr)
        return 1
    blobs, index, summary = build(wasm, a.tag)
    out = a.out.rstrip("/")
    write_layout(out, blobs, index)
    write_tar(out, out + ".tar")
    with open(out + ".digests.json", "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
        f.write("\n")
    print(f"OCI layout   {out}/ and {out}.tar")
    print(f"manifest     {summary['manifest_digest']}   (WasmPlugin/EnvoyFilter sha256 for oci:// URLs)")
    print(f"plugin.wasm  sha256:{summary['wasm_sha256']}   (sha256 for https:// URLs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
