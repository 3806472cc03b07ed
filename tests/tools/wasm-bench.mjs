// Runs a wasm32-wasip1 command (e.g. kvgate-prompt's tokenize_bench example) in Node's WASI, so
// in V8 as Envoy runs the filter, with the current directory (the repository root) preopened.
// usage: node tests/tools/wasm-bench.mjs FILE.wasm [ARGS...]   (paths relative to the root)
import { readFile } from "node:fs/promises";
import { WASI } from "node:wasi";
import process from "node:process";

const [file, ...args] = process.argv.slice(2);
if (!file) {
  console.error("usage: node tests/tools/wasm-bench.mjs FILE.wasm [ARGS...]");
  process.exit(2);
}
const wasi = new WASI({ version: "preview1", args: [file, ...args], env: {}, preopens: { ".": "." } });
const module = await WebAssembly.compile(await readFile(file));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
process.exitCode = wasi.start(instance);
