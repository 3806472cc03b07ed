#!/usr/bin/env python3
"""Runs a wasm32-wasip1 command (e.g. a `cargo test --target wasm32-wasip1 --no-run` binary) in
wasmtime (PyPI `wasmtime`), with the current directory (the repository root) preopened as `.`
and under its absolute path, and the KVGATE_* environment variables passed on. Exits with the
command's exit code; a trap (a Rust panic aborts in wasm) exits 134.
usage: python tests/tools/wasi-run.py FILE.wasm [ARGS...]
"""
import os
import sys

from wasmtime import Engine, ExitTrap, Linker, Module, Store, Trap, WasiConfig, WasmtimeError


def main():
    wasm, *args = sys.argv[1:]
    engine = Engine()
    store = Store(engine)
    wasi = WasiConfig()
    wasi.argv = [wasm] + args
    wasi.inherit_stdout()
    wasi.inherit_stderr()
    wasi.env = [(k, v) for k, v in os.environ.items() if k.startswith("KVGATE_")]
    wasi.preopen_dir(".", ".")
    wasi.preopen_dir(os.getcwd(), os.getcwd())
    store.set_wasi(wasi)
    linker = Linker(engine)
    linker.define_wasi()
    instance = linker.instantiate(store, Module.from_file(engine, wasm))
    try:
        instance.exports(store)["_start"](store)
    except ExitTrap as e:
        sys.exit(e.code)
    except (Trap, WasmtimeError) as e:
        print(f"wasi-run: trap: {str(e).splitlines()[-1]}", file=sys.stderr)
        sys.exit(134)


if __name__ == "__main__":
    main()
