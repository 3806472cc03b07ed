//! Writes the canonical (`"version": "2.0"`) form of a `tokenizer.json`, which
//! `PromptTokenizer::from_bytes` loads without converting: `canonicalize IN OUT`.

use std::error::Error;

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(input), Some(output)) = (args.get(1), args.get(2)) else {
        return Err("usage: canonicalize IN_TOKENIZER_JSON OUT_JSON".into());
    };
    let canonical = kvgate_prompt::canonical_json(&std::fs::read(input)?)?;
    std::fs::write(output, &canonical)?;
    println!("{input} → {output}: {} bytes", canonical.len());
    Ok(())
}
