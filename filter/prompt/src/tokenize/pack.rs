//! The packed form of a BPE `tokenizer.json`: its vocabulary and merges as binary tables next
//! to a small JSON frame, so a VM loads the model without a JSON tree of every entry.
//!
//! Loading a 150k-entry `tokenizer.json` builds a JSON tree of the whole file next to the
//! model's tables; in Wasm linear memory never shrinks, so that peak (75 MiB for Qwen3,
//! whose model then holds 11 MiB) would stay with the VM for its life. The sidecar and the
//! static configuration ship this form instead; [`load`] reads the tables in place and builds
//! the same pipeline the JSON reader builds (same components, the added vocabulary replayed
//! against the full vocabulary in id order, as the reader does). The tests compare its ids
//! with Hugging Face's on every fixture.
//!
//! Layout, little-endian: [`MAGIC`]; `u32` frame length and the frame — the canonical
//! `tokenizer.json` with `model.vocab` cut to the entries the frame itself needs (added
//! tokens, the unknown and byte-fallback tokens, single characters) and `model.merges`
//! empty —; `u32` vocabulary size, then per entry `u32` id, `u32` length and the token text;
//! `u32` merge count, then per merge (in rank order) the `u32` ids of its two tokens.

use serde_json::Value;
use tokenizers::models::bpe::{BpeConfig, PipelineBPE, Vocab};
use tokenizers::pipeline::{
    NormalizerChain, PipelineModel, PipelineNormalizer, PipelinePostProcessor, PipelineTokenizer,
};
use tokenizers::vocab::bucket_added_vocabulary::{AddedToken, AddedVocabulary};

use super::TokenizeError;

/// Ids are below this (the largest vocabularies have about 256k entries).
const MAX_ID: usize = 1 << 24;

/// The first bytes of a packed tokenizer.
pub const MAGIC: &[u8; 8] = b"KVGTOKP1";

fn bad(what: impl std::fmt::Display) -> TokenizeError {
    TokenizeError::Load(format!("packed tokenizer: {what}"))
}

/// Whether `bytes` is a packed tokenizer (else a `tokenizer.json`).
pub fn is_packed(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// Packs a `tokenizer.json` (any version). Only BPE models are packed: for another model
/// the error says so, and the caller ships the JSON.
pub fn pack(tokenizer_json: &[u8]) -> Result<Vec<u8>, TokenizeError> {
    let mut doc: Value = serde_json::from_slice(tokenizer_json).map_err(bad)?;
    tokenizers::canonicalize_value(&mut doc).map_err(bad)?;
    let model = doc.get_mut("model").ok_or_else(|| bad("no model"))?;
    if model.get("type").and_then(Value::as_str) != Some("BPE") {
        return Err(bad("only BPE models are packed"));
    }
    let vocab = match model.get_mut("vocab").map(Value::take) {
        Some(Value::Object(v)) => v,
        _ => return Err(bad("the vocabulary is not an object")),
    };
    let merges = match model.get_mut("merges").map(Value::take) {
        Some(Value::Array(m)) => m,
        _ => return Err(bad("the merges are not a list")),
    };
    let unk = model
        .get("unk_token")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let added: Vec<String> = doc
        .get("added_tokens")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|t| t.get("content").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();

    let mut entries: Vec<(u32, &str)> = Vec::with_capacity(vocab.len());
    let mut kept = serde_json::Map::new();
    for (token, id) in &vocab {
        let id = id
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| bad(format!("token {token:?} has no u32 id")))?;
        entries.push((id, token));
        // The frame must itself load: it keeps what the reader checks against the vocabulary.
        let needed = token.chars().nth(1).is_none()
            || unk.as_deref() == Some(token.as_str())
            || added.iter().any(|a| a == token)
            || (token.starts_with("<0x") && token.len() == 6);
        if needed {
            kept.insert(token.clone(), Value::from(id));
        }
    }
    entries.sort_unstable();
    if entries
        .windows(2)
        .any(|w| matches!(w, [a, b] if a.0 == b.0))
    {
        return Err(bad("two tokens share an id"));
    }
    let id_of = |t: &Value| -> Result<u32, TokenizeError> {
        let t = t
            .as_str()
            .ok_or_else(|| bad("a merge names a non-string"))?;
        vocab
            .get(t)
            .and_then(Value::as_u64)
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| bad(format!("a merge names {t:?}, not in the vocabulary")))
    };
    let mut merge_ids: Vec<(u32, u32)> = Vec::with_capacity(merges.len());
    for m in &merges {
        match m.as_array().map(Vec::as_slice) {
            Some([a, b]) => merge_ids.push((id_of(a)?, id_of(b)?)),
            _ => return Err(bad("a merge is not a pair")),
        }
    }

    let model = doc
        .get_mut("model")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| bad("no model"))?;
    model.insert("vocab".into(), Value::Object(kept));
    model.insert("merges".into(), Value::Array(Vec::new()));
    let frame = serde_json::to_vec(&doc).map_err(bad)?;

    let mut out = Vec::with_capacity(frame.len() + entries.len() * 16 + merge_ids.len() * 8 + 32);
    out.extend_from_slice(MAGIC);
    put_len(&mut out, frame.len())?;
    out.extend_from_slice(&frame);
    put_len(&mut out, entries.len())?;
    for (id, token) in &entries {
        out.extend_from_slice(&id.to_le_bytes());
        put_len(&mut out, token.len())?;
        out.extend_from_slice(token.as_bytes());
    }
    put_len(&mut out, merge_ids.len())?;
    for (a, b) in &merge_ids {
        out.extend_from_slice(&a.to_le_bytes());
        out.extend_from_slice(&b.to_le_bytes());
    }
    // A pack that would not load (a component this build cannot rebuild) is not shipped.
    load(&out)?;
    Ok(out)
}

fn put_len(out: &mut Vec<u8>, n: usize) -> Result<(), TokenizeError> {
    let n = u32::try_from(n).map_err(|_| bad("a table above 4 GiB"))?;
    out.extend_from_slice(&n.to_le_bytes());
    Ok(())
}

/// Reads the packed tables in place.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TokenizeError> {
        let end = self.at.checked_add(n).ok_or_else(|| bad("truncated"))?;
        let out = self
            .bytes
            .get(self.at..end)
            .ok_or_else(|| bad("truncated"))?;
        self.at = end;
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, TokenizeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes(b.try_into().map_err(bad)?))
    }

    fn len(&mut self) -> Result<usize, TokenizeError> {
        Ok(self.u32()? as usize)
    }

    fn str(&mut self) -> Result<&'a str, TokenizeError> {
        let n = self.len()?;
        std::str::from_utf8(self.take(n)?).map_err(bad)
    }
}

/// Builds the pipeline of a packed tokenizer.
pub fn load(bytes: &[u8]) -> Result<PipelineTokenizer, TokenizeError> {
    unpack(bytes)?.build()
}

/// A packed tokenizer read into owned tables, its model not built yet: whoever holds the
/// packed bytes can free them before [`Unpacked::build`], the peak of a load (building the
/// model's tables takes about twice what the model then holds).
pub struct Unpacked {
    frame: PipelineTokenizer,
    doc: Value,
    vocab: Vocab,
    merges: Vec<(String, String)>,
}

impl std::fmt::Debug for Unpacked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unpacked")
            .field("vocab", &self.vocab.len())
            .field("merges", &self.merges.len())
            .finish_non_exhaustive()
    }
}

/// Reads a packed tokenizer's frame and tables (see [`Unpacked`]).
pub fn unpack(bytes: &[u8]) -> Result<Unpacked, TokenizeError> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(MAGIC.len())? != MAGIC {
        return Err(bad("not a packed tokenizer"));
    }
    let frame_text = r.str()?;
    // The frame loads to every component but the model and the added vocabulary, which are
    // rebuilt below against the full vocabulary.
    let frame = tokenizers::from_json(frame_text).map_err(bad)?;
    let doc: Value = serde_json::from_str(frame_text).map_err(bad)?;

    let n = r.len()?;
    let mut vocab = Vocab::default();
    vocab.reserve(n);
    // Token text by id, for the merges: (offset, length) into `bytes`.
    let mut spans: Vec<(u32, u32)> = Vec::new();
    for _ in 0..n {
        let id = r.u32()?;
        let token = r.str()?;
        let start = (r.at - token.len()) as u32;
        let slot = id as usize;
        if slot >= MAX_ID {
            return Err(bad(format!("id {id} above {MAX_ID}")));
        }
        if spans.len() <= slot {
            spans.resize(slot + 1, (0, u32::MAX));
        }
        if let Some(s) = spans.get_mut(slot) {
            *s = (start, token.len() as u32);
        }
        vocab.insert(token.to_owned(), id);
    }
    let text_of = |id: u32| -> Result<String, TokenizeError> {
        match spans.get(id as usize) {
            Some(&(start, len)) if len != u32::MAX => {
                let s = bytes
                    .get(start as usize..start as usize + len as usize)
                    .ok_or_else(|| bad("a token outside the pack"))?;
                Ok(std::str::from_utf8(s).map_err(bad)?.to_owned())
            }
            _ => Err(bad(format!("a merge names id {id}, not in the vocabulary"))),
        }
    };
    let m = r.len()?;
    let mut merges = Vec::with_capacity(m);
    for _ in 0..m {
        let (a, b) = (r.u32()?, r.u32()?);
        merges.push((text_of(a)?, text_of(b)?));
    }
    Ok(Unpacked {
        frame,
        doc,
        vocab,
        merges,
    })
}

impl Unpacked {
    /// Builds the pipeline, as the JSON reader builds it.
    pub fn build(self) -> Result<PipelineTokenizer, TokenizeError> {
        let Unpacked {
            frame,
            doc,
            vocab,
            merges,
        } = self;
        let cfg = doc.get("model").ok_or_else(|| bad("no model"))?;
        let normalizers: Vec<PipelineNormalizer> = frame
            .get_normalizers()
            .iter()
            .map(clone_normalizer)
            .collect();
        let added = added_vocabulary(&doc, &normalizers, &vocab)?;
        let model = PipelineBPE::from_config(bpe_config(cfg, vocab, merges)?).map_err(bad)?;
        Ok(PipelineTokenizer::from_parts(
            added,
            normalizers,
            frame.get_pre_tokenizer().clone(),
            PipelineModel::BPE(model),
            PipelinePostProcessor {
                single: frame.get_post_processor().single.clone(),
                pair: frame.get_post_processor().pair.clone(),
            },
            frame.get_decoder().cloned(),
            frame.get_role_to_token().clone(),
            frame.get_padding().cloned(),
            frame.get_truncation().cloned(),
        ))
    }
}

/// The model's options as the canonical file states them (each left at its default unless
/// named), with the full tables.
fn bpe_config(
    cfg: &Value,
    vocab: Vocab,
    merges: Vec<(String, String)>,
) -> Result<BpeConfig, TokenizeError> {
    let string = |k: &str| cfg.get(k).and_then(Value::as_str).map(str::to_owned);
    let flag = |k: &str| cfg.get(k).and_then(Value::as_bool).unwrap_or_default();
    Ok(BpeConfig {
        vocab,
        merges,
        byte_level: cfg
            .get("byte_level")
            .and_then(Value::as_bool)
            .ok_or_else(|| bad("the model does not say whether it is byte-level"))?,
        dropout: cfg.get("dropout").and_then(Value::as_f64).map(|v| v as f32),
        unk_token: string("unk_token"),
        continuing_subword_prefix: string("continuing_subword_prefix"),
        end_of_word_suffix: string("end_of_word_suffix"),
        fuse_unk: flag("fuse_unk"),
        byte_fallback: flag("byte_fallback"),
        ignore_merges: flag("ignore_merges"),
        ..BpeConfig::default()
    })
}

/// The added tokens replayed in ascending id order (stable) against the full vocabulary,
/// matched through the declared normalizers (a trailing `Metaspace` is the pre-tokenizer's
/// half, not the user's normalizer), as the JSON reader does.
fn added_vocabulary(
    doc: &Value,
    normalizers: &[PipelineNormalizer],
    vocab: &Vocab,
) -> Result<AddedVocabulary, TokenizeError> {
    let list = doc
        .get("added_tokens")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut tokens: Vec<(u32, usize, AddedToken)> = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let id = t
            .get("id")
            .and_then(Value::as_u64)
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| bad("an added token has no id"))?;
        let content = t
            .get("content")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("an added token has no content"))?;
        let flag = |k: &str| {
            t.get(k)
                .and_then(Value::as_bool)
                .ok_or_else(|| bad(format!("added token {content:?} has no {k}")))
        };
        tokens.push((
            id,
            i,
            AddedToken {
                content: content.to_owned(),
                single_word: flag("single_word")?,
                lstrip: flag("lstrip")?,
                rstrip: flag("rstrip")?,
                normalized: flag("normalized")?,
                special: flag("special")?,
            },
        ));
    }
    tokens.sort_by_key(|(id, i, _)| (*id, *i));
    let declared = match normalizers.split_last() {
        Some((PipelineNormalizer::Metaspace(_), rest)) => rest,
        _ => normalizers,
    };
    let mut added = AddedVocabulary::new();
    added
        .add_tokens(
            tokens.into_iter().map(|(_, _, t)| t),
            vocab.len(),
            |t| vocab.get(t).copied(),
            Some(&NormalizerChain(declared)),
        )
        .map_err(bad)?;
    Ok(added)
}

/// A copy of one normalizer step (the enum itself is not `Clone`; each step is).
fn clone_normalizer(n: &PipelineNormalizer) -> PipelineNormalizer {
    use PipelineNormalizer as N;
    match n {
        N::Metaspace(x) => N::Metaspace(x.clone()),
        N::Replace(x) => N::Replace(x.clone()),
        N::Prepend(x) => N::Prepend(x.clone()),
        N::Strip(x) => N::Strip(*x),
        N::Lowercase(x) => N::Lowercase(*x),
        N::ByteLevel(x) => N::ByteLevel(x.clone()),
        N::Bert(x) => N::Bert(*x),
        N::StripAccents(x) => N::StripAccents(x.clone()),
        N::NFC(x) => N::NFC(*x),
        N::NFD(x) => N::NFD(*x),
        N::NFKC(x) => N::NFKC(*x),
        N::NFKD(x) => N::NFKD(*x),
        N::Nmt(x) => N::Nmt(*x),
        N::Precompiled(x) => N::Precompiled(x.clone()),
    }
}
