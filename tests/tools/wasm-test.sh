#!/usr/bin/env bash
# Builds kvgate-prompt's tokenizer_exact test for wasm32-wasip1 and runs it in wasmtime
# (tests/tools/wasi-run.py): the wasm code path of the tokenizer (no x86 SIMD) that Envoy runs,
# so ids must equal Hugging Face's there too. Needs `make setup` (model files, the venv with
# PyPI wasmtime). Run from the repository root; KVGATE_PYTHON picks the venv's python.
set -euo pipefail
python=${KVGATE_PYTHON:-target/tools/venv/bin/python}
wasm=$(cargo test --target wasm32-wasip1 -p kvgate-prompt --test tokenizer_exact --no-run \
  --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m["target"]["name"] == "tokenizer_exact":
        print(m["executable"])')
[ -n "$wasm" ] || { echo "wasm-test: could not build the tokenizer_exact test for wasm32-wasip1" >&2; exit 1; }
# --nocapture: a failing test aborts the whole wasm binary (panic = abort), so print as it goes.
"$python" tests/tools/wasi-run.py "$(realpath --relative-to=. "$wasm")" --test-threads=1 --nocapture
