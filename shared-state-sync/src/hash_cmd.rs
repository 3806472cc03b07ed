//! `hash`: the Dynamo-compatible block hashes (`tokens_hash`) and chained sequence
//! hashes of a token list, as JSON with the hashes as plain numbers.

use crate::cli::HashArgs;
use kvgate_core::hash::BlockHasher;

/// The JSON line `hash` prints: `{"block_hashes": [...], "sequence_hashes": [...]}`.
pub fn hash_json(args: &HashArgs) -> Result<String, String> {
    if args.block_size == 0 {
        return Err("invalid value for `--block-size`: must be positive".into());
    }
    let h = BlockHasher::new(args.block_size).hash(
        &args.tokens,
        args.lora.as_deref(),
        args.salt.as_deref(),
        usize::MAX,
    );
    let v = serde_json::json!({
        "block_hashes": h.local,
        "sequence_hashes": h.sequence,
    });
    Ok(v.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn contract_vector() {
        let args = HashArgs {
            block_size: 4,
            tokens: (0..8).collect(),
            lora: None,
            salt: None,
        };
        assert_eq!(
            hash_json(&args).unwrap(),
            r#"{"block_hashes":[9143094415614847814,12124091508212882195],"sequence_hashes":[9143094415614847814,9510318385840434533]}"#
        );
    }
}
