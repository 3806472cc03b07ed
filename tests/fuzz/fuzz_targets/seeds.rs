//! `seeds OUT_DIR`: writes the seed corpus of every fuzz target (`kvgate_fuzz::seeds`).
//! Built by `cargo fuzz build` with the targets, so compiled with coverage instrumentation:
//! libFuzzer's runtime provides the coverage callbacks (its `main` is not used).

extern crate libfuzzer_sys;

fn main() -> kvgate_fuzz::seeds::Result<()> {
    let Some(dir) = std::env::args_os().nth(1) else {
        return Err("usage: seeds OUT_DIR".into());
    };
    let dir = std::path::PathBuf::from(dir);
    let (count, bytes) = kvgate_fuzz::seeds::write_all(&dir)?;
    println!("seeds: {count} files, {bytes} bytes in {}", dir.display());
    Ok(())
}
