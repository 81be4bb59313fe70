//! How findings, the live view and the API name a statement to a person: its normalised text
//! (literals already stripped by the fingerprint, bounded here) and its fingerprint id.
//!
//! `db.query.summary` (`SELECT invoices`) is a metric label, lossy by design: many statements
//! share one. Shown alone it makes `SELECT count(*) FROM invoices WHERE …` and
//! `SELECT id FROM invoices WHERE …` read the same. The id makes two names differ even when
//! their texts are cut at the same prefix.

/// Longest statement text shown, in characters (an ellipsis marks a cut).
pub const QUERY_TEXT_CHARS: usize = 160;

/// `text` with runs of whitespace collapsed to one space, cut to at most `max` characters
/// (the last being `…` when anything was cut). Never splits a character.
pub fn bounded(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max * 4));
    let mut chars = 0usize;
    let mut words = text.split_whitespace().peekable();
    while let Some(word) = words.next() {
        for c in word.chars().chain(words.peek().map(|_| ' ')) {
            if chars + 1 > max {
                // Replace the last kept character with the ellipsis: the result stays ≤ max.
                if max > 0 {
                    out.pop();
                    out.push('…');
                }
                return out;
            }
            out.push(c);
            chars += 1;
        }
    }
    out
}

/// "`select pg_sleep(?)` (query 5c1f0a3e9b2d4c71)": the bounded normalised text and the id.
/// Without text (a fingerprint no longer in the aggregates) the id alone.
pub fn query_name(id: &str, normalized: &str) -> String {
    let text = bounded(normalized, QUERY_TEXT_CHARS);
    if text.is_empty() {
        format!("query {id}")
    } else {
        format!("`{text}` (query {id})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept_whole_and_whitespace_collapsed() {
        assert_eq!(bounded("select  pg_sleep(?)\n", 160), "select pg_sleep(?)");
        assert_eq!(bounded("", 160), "");
        assert_eq!(bounded("abc", 3), "abc");
    }

    #[test]
    fn long_text_is_cut_with_an_ellipsis_within_the_bound() {
        let long = format!("select {} from invoices", "a, ".repeat(200));
        let b = bounded(&long, QUERY_TEXT_CHARS);
        assert_eq!(b.chars().count(), QUERY_TEXT_CHARS);
        assert!(b.ends_with('…') && b.starts_with("select a, a,"), "{b}");
        assert_eq!(bounded("abcd", 3), "ab…");
        assert_eq!(bounded("abcd", 0), "");
        // Multi-byte characters are never split.
        let wide = "é".repeat(300);
        let b = bounded(&wide, 10);
        assert_eq!(b.chars().count(), 10);
        assert!(b.ends_with('…'));
    }

    #[test]
    fn statements_with_one_summary_never_read_the_same() {
        let prefix = format!(
            "select count(*) from invoices where {}",
            "x = ? and ".repeat(30)
        );
        let a = query_name("00000000000000a1", &format!("{prefix} y = ?"));
        let b = query_name("00000000000000a2", &format!("{prefix} z = ?"));
        assert_ne!(a, b, "cut at the same prefix, the ids still differ");
        assert!(a.contains("(query 00000000000000a1)"), "{a}");
        assert_eq!(
            query_name("00000000000000a3", "select pg_sleep(?)"),
            "`select pg_sleep(?)` (query 00000000000000a3)"
        );
        assert_eq!(query_name("ab", ""), "query ab");
    }
}
