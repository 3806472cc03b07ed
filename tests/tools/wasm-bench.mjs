// Runs a wasm32-wasip1 command in Node's WASI, so in V8 as Envoy runs the filter: kvgate-prompt's
// tokenize_bench example, or a test binary (see tests/tools/wasm-test.sh). The current directory
// (the repository root) is preopened both as `.` and under its absolute path (tests use those);
// the KVGATE_* environment variables are passed on.
// usage: node tests/tools/wasm-bench.mjs FILE.wasm [ARGS...]   (paths relative to the root)
import { readFile } from "node:fs/promises";
import { WASI } from "node:wasi";
import process from "node:process";

const [file, ...args] = process.argv.slice(2);
if (!file) {
  console.error("usage: node tests/tools/wasm-bench.mjs FILE.wasm [ARGS...]");
  process.exit(2);
}
const wasi = new WASI({ version: "preview1", args: [file, ...args],
  env: Object.fromEntries(Object.entries(process.env).filter(([k]) => k.startsWith("KVGATE_"))),
  preopens: { ".": ".", [process.cwd()]: process.cwd() } });
const module = await WebAssembly.compile(await readFile(file));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
process.exitCode = wasi.start(instance);
