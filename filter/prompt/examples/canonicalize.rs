//! Writes the canonical (`"version": "2.0"`) form of a `tokenizer.json`, which
//! `PromptTokenizer::from_bytes` loads without converting: `canonicalize IN OUT`; with
//! `--packed`, the packed form the sidecar serves instead (`canonicalize --packed IN OUT`).

use std::error::Error;

fn main() -> Result<(), Box<dyn Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let packed = args.first().is_some_and(|a| a == "--packed");
    if packed {
        args.remove(0);
    }
    let (Some(input), Some(output)) = (args.first(), args.get(1)) else {
        return Err("usage: canonicalize [--packed] IN_TOKENIZER_JSON OUT".into());
    };
    let json = std::fs::read(input)?;
    let out = if packed {
        kvgate_prompt::pack_tokenizer(&json)?
    } else {
        kvgate_prompt::canonical_json(&json)?.into_bytes()
    };
    std::fs::write(output, &out)?;
    println!("{input} → {output}: {} bytes", out.len());
    Ok(())
}
