//! The options of Python's `json.dumps` that HF's `tojson` filter exposes (shared by the
//! dumper and the tools cache, which keys its dumps by them).

/// `json.dumps` settings, as HF's `tojson` filter exposes them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct DumpOptions {
    pub ensure_ascii: bool,
    /// `None`: everything on one line; `Some(unit)`: newline plus `unit` per level.
    pub indent: Option<String>,
    pub item_sep: String,
    pub key_sep: String,
    pub sort_keys: bool,
}

impl Default for DumpOptions {
    fn default() -> Self {
        DumpOptions {
            ensure_ascii: false,
            indent: None,
            item_sep: ", ".into(),
            key_sep: ": ".into(),
            sort_keys: false,
        }
    }
}
