//! Source-level preparation of a chat template: HF's `{% generation %}` markers, and vLLM-style content-format detection.

use super::ContentFormat;

/// Rewrites HF's `{% generation %}` / `{% endgeneration %}` (assistant-mask markers, which
/// only tag output ranges) into `{% if true %}` / `{% endif %}`, keeping whitespace control.
pub(crate) fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        let (before, tag_on) = rest.split_at(start);
        out.push_str(before);
        let Some(end) = tag_on.find("%}") else {
            out.push_str(tag_on);
            return out;
        };
        let (tag, after) = tag_on.split_at(end + 2);
        let inner = tag.get(2..tag.len().saturating_sub(2)).unwrap_or_default();
        let lead = if inner.starts_with(['-', '+']) {
            inner.get(..1).unwrap_or_default()
        } else {
            ""
        };
        let trail = if inner.ends_with(['-', '+']) && inner.len() > lead.len() {
            inner.get(inner.len() - 1..).unwrap_or_default()
        } else {
            ""
        };
        let word = inner
            .get(lead.len()..inner.len() - trail.len())
            .unwrap_or_default()
            .trim();
        match word {
            "generation" => out.push_str(&format!("{{%{lead} if true {trail}%}}")),
            "endgeneration" => out.push_str(&format!("{{%{lead} endif {trail}%}}")),
            _ => out.push_str(tag),
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// vLLM's "auto" detection, approximated on the source: a `for` loop over a `content`
/// attribute (`for part in message.content` / `message['content']`) means the template wants
/// a list of parts.
pub(crate) fn detect_content_format<'a>(sources: impl Iterator<Item = &'a str>) -> ContentFormat {
    for source in sources {
        let mut rest = source;
        while let Some(start) = rest.find("{%") {
            let tail = rest.get(start + 2..).unwrap_or_default();
            let end = tail.find("%}").unwrap_or(tail.len());
            let stmt = tail
                .get(..end)
                .unwrap_or_default()
                .trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
            if let Some(target) = stmt
                .strip_prefix("for ")
                .and_then(|s| s.split_once(" in ").map(|(_, it)| it))
            {
                let iter = target.trim_start();
                let iter_expr = iter
                    .split(|c: char| c.is_whitespace() || c == '|')
                    .next()
                    .unwrap_or_default();
                if iter_expr.ends_with(".content")
                    || iter_expr.ends_with("['content']")
                    || iter_expr.ends_with("[\"content\"]")
                {
                    return ContentFormat::OpenAi;
                }
            }
            rest = tail.get(end..).unwrap_or_default();
        }
    }
    ContentFormat::String
}
