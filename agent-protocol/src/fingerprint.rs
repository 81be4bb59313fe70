//! SQL fingerprints: the same statement with different literals, parameter styles, IN-list
//! lengths, comments, spacing or keyword case gets the same id. Literals never survive
//! normalisation, so a fingerprint and its summary are safe to use as labels and to send off
//! the host.
//!
//! Hand-written tokenizer rather than a full SQL parser (e.g. sqlparser): it must accept
//! truncated and vendor-specific SQL without failing, and run per query on the hot path.

/// A normalised statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// FNV-1a 64 of `normalized`: stable across hosts, runs and versions of this crate.
    pub id: u64,
    /// Lower-case keywords and identifiers, literals as `?`, lists collapsed, single spaces.
    pub normalized: String,
    /// `db.query.summary`: operation and up to three target tables, e.g. `SELECT orders customers`.
    pub summary: String,
    /// The operation word (`SELECT`, `INSERT`, …), `db.operation.name`.
    pub operation: String,
}

impl Fingerprint {
    /// The id as 16 hex digits.
    pub fn hex_id(&self) -> String {
        format!("{:016x}", self.id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Quoted(String),
    Placeholder,
    Punct(char),
    Op(String),
}

fn tokenize(sql: &str) -> Vec<Token> {
    let chars: Vec<char> = sql.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let n = chars.len();
    while i < n {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c.is_whitespace() {
            i += 1;
        } else if c == '-' && next == Some('-') {
            while i < n && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            i = past_block_comment(&chars, i);
        } else if c == '\''
            || (matches!(c, 'e' | 'E' | 'b' | 'B' | 'x' | 'X' | 'n' | 'N')
                && next == Some('\'')
                && !prev_is_word(&chars, i))
        {
            let backslash = matches!(c, 'e' | 'E');
            i = past_string(&chars, i + if c == '\'' { 1 } else { 2 }, backslash);
            out.push(Token::Placeholder);
        } else if c == '$' && next.is_some_and(|d| d.is_ascii_digit()) {
            i += 1;
            while i < n && chars[i].is_ascii_digit() {
                i += 1;
            }
            out.push(Token::Placeholder);
        } else if c == '$' {
            match past_dollar_quoted(&chars, i) {
                Some(end) => {
                    i = end;
                    out.push(Token::Placeholder);
                }
                None => {
                    out.push(Token::Punct('$'));
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() || (c == '.' && next.is_some_and(|d| d.is_ascii_digit())) {
            i = past_number(&chars, i);
            out.push(Token::Placeholder);
        } else if c == '"' {
            let start = i;
            i = past_quoted_identifier(&chars, i + 1);
            out.push(Token::Quoted(chars[start..i].iter().collect()));
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < n && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '$') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect::<String>().to_lowercase();
            if matches!(word.as_str(), "true" | "false" | "null") {
                out.push(Token::Placeholder);
            } else {
                out.push(Token::Word(word));
            }
        } else if "(),;[].".contains(c) {
            out.push(Token::Punct(c));
            i += 1;
        } else {
            let start = i;
            while i < n && "+-*/<>=~!@#%^&|`?:".contains(chars[i]) {
                i += 1;
            }
            if i == start {
                i += 1;
            }
            out.push(Token::Op(chars[start..i].iter().collect()));
        }
    }
    out
}

/// Past a `/* … */` comment starting at `i` (they nest in PostgreSQL).
fn past_block_comment(chars: &[char], mut i: usize) -> usize {
    let mut depth = 0;
    while i < chars.len() {
        if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
            depth += 1;
            i += 2;
        } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                break;
            }
        } else {
            i += 1;
        }
    }
    i
}

/// Past a string literal whose body starts at `i`: `''` is a quote inside it, and with
/// `backslash` (E'…') so is `\'`.
fn past_string(chars: &[char], mut i: usize, backslash: bool) -> usize {
    while i < chars.len() {
        if backslash && chars[i] == '\\' {
            i += 2;
        } else if chars[i] == '\'' {
            if chars.get(i + 1) == Some(&'\'') {
                i += 2;
            } else {
                return i + 1;
            }
        } else {
            i += 1;
        }
    }
    i
}

/// Past a dollar-quoted body (`$$…$$` or `$tag$…$tag$`) whose opening `$` is at `i`; None
/// when no tag opens there (a lone `$`).
fn past_dollar_quoted(chars: &[char], i: usize) -> Option<usize> {
    let n = chars.len();
    let mut j = i + 1;
    while j < n && (chars[j].is_alphanumeric() || chars[j] == '_') {
        j += 1;
    }
    if j >= n || chars[j] != '$' {
        return None;
    }
    let tag: String = chars[i..=j].iter().collect();
    let body_start = j + 1;
    let rest: String = chars[body_start..].iter().collect();
    Some(match rest.find(&tag) {
        Some(pos) => body_start + rest[..pos].chars().count() + tag.chars().count(),
        None => n,
    })
}

/// Past a numeric literal starting at `i` (digits, a point, an exponent with its sign).
fn past_number(chars: &[char], mut i: usize) -> usize {
    while i < chars.len()
        && (chars[i].is_ascii_alphanumeric()
            || chars[i] == '.'
            || ((chars[i] == '+' || chars[i] == '-') && matches!(chars[i - 1], 'e' | 'E')))
    {
        i += 1;
    }
    i
}

/// Past a quoted identifier whose body starts at `i` (`""` is a quote inside it).
fn past_quoted_identifier(chars: &[char], mut i: usize) -> usize {
    while i < chars.len() {
        if chars[i] == '"' {
            if chars.get(i + 1) == Some(&'"') {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    i
}

fn prev_is_word(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

/// `( ? , ? , ? )` → `( ? )`, then `( ? ) , ( ? )` → `( ? )`, and `[ ? , ? ]` → `[ ? ]`.
fn collapse_lists(tokens: Vec<Token>) -> Vec<Token> {
    let mut out: Vec<Token> = Vec::with_capacity(tokens.len());
    for t in tokens {
        out.push(t);
        loop {
            let len = out.len();
            // "? , ?" inside a list → "?"
            if len >= 3
                && out[len - 1] == Token::Placeholder
                && out[len - 2] == Token::Punct(',')
                && out[len - 3] == Token::Placeholder
            {
                out.truncate(len - 2);
                continue;
            }
            // "( ? ) , ( ? )" → "( ? )"
            if len >= 7
                && out[len - 7..]
                    == [
                        Token::Punct('('),
                        Token::Placeholder,
                        Token::Punct(')'),
                        Token::Punct(','),
                        Token::Punct('('),
                        Token::Placeholder,
                        Token::Punct(')'),
                    ]
            {
                out.truncate(len - 4);
                continue;
            }
            break;
        }
    }
    // A trailing statement terminator does not make a different statement.
    while out.last() == Some(&Token::Punct(';')) {
        out.pop();
    }
    out
}

fn render(tokens: &[Token]) -> String {
    let mut s = String::new();
    for (k, t) in tokens.iter().enumerate() {
        if k > 0 {
            s.push(' ');
        }
        match t {
            Token::Word(w) => s.push_str(w),
            Token::Quoted(q) => s.push_str(q),
            Token::Placeholder => s.push('?'),
            Token::Punct(c) => s.push(*c),
            Token::Op(o) => s.push_str(o),
        }
    }
    s
}

/// FNV-1a, 64 bit: tiny, stable, and good enough to key a bounded table (collisions only merge
/// two statements' statistics).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

const MAX_SUMMARY_TARGETS: usize = 3;
const MAX_SUMMARY_LEN: usize = 255;
const OPERATIONS: &[&str] = &[
    "select",
    "insert",
    "update",
    "delete",
    "merge",
    "copy",
    "with",
    "begin",
    "commit",
    "rollback",
    "set",
    "show",
    "create",
    "alter",
    "drop",
    "truncate",
    "vacuum",
    "analyze",
    "explain",
    "lock",
    "listen",
    "notify",
    "prepare",
    "execute",
    "deallocate",
    "declare",
    "fetch",
    "close",
    "discard",
    "call",
    "do",
    "grant",
    "revoke",
    "savepoint",
    "release",
    "start",
    "refresh",
    "reindex",
    "cluster",
    "values",
    "table",
];

fn word(t: &Token) -> Option<&str> {
    match t {
        Token::Word(w) => Some(w),
        _ => None,
    }
}

fn operation_of(tokens: &[Token]) -> String {
    let first = tokens.iter().find_map(word).unwrap_or("");
    if first == "with" {
        // The statement a CTE feeds: the first DML keyword at paren depth 0 after WITH.
        let mut depth = 0i32;
        for t in tokens.iter().skip(1) {
            match t {
                Token::Punct('(') => depth += 1,
                Token::Punct(')') => depth -= 1,
                Token::Word(w)
                    if depth == 0
                        && matches!(
                            w.as_str(),
                            "select" | "insert" | "update" | "delete" | "merge"
                        ) =>
                {
                    return w.to_uppercase();
                }
                _ => {}
            }
        }
    }
    if OPERATIONS.contains(&first) {
        first.to_uppercase()
    } else {
        "OTHER".to_string()
    }
}

fn targets_of(tokens: &[Token]) -> Vec<String> {
    let mut targets: Vec<String> = Vec::new();
    let mut k = 0;
    while k < tokens.len() && targets.len() < MAX_SUMMARY_TARGETS {
        let introduces = matches!(
            word(&tokens[k]),
            Some("from" | "join" | "into" | "update" | "table" | "copy" | "truncate")
        );
        k += 1;
        if !introduces {
            continue;
        }
        while matches!(
            tokens.get(k).and_then(word),
            Some("only" | "lateral" | "table")
        ) {
            k += 1;
        }
        let mut name = String::new();
        while let Some(t) = tokens.get(k) {
            match t {
                Token::Word(w) if !is_clause_keyword(w) => name.push_str(w),
                Token::Quoted(q) => name.push_str(q),
                Token::Punct('.') if !name.is_empty() => name.push('.'),
                _ => break,
            }
            k += 1;
            if !matches!(tokens.get(k), Some(Token::Punct('.'))) && !name.ends_with('.') {
                break;
            }
        }
        if !name.is_empty() && !targets.contains(&name) {
            targets.push(name);
        }
    }
    targets
}

fn is_clause_keyword(w: &str) -> bool {
    matches!(
        w,
        "select"
            | "where"
            | "set"
            | "values"
            | "stdin"
            | "stdout"
            | "default"
            | "as"
            | "on"
            | "using"
    )
}

/// Normalises `sql` into its fingerprint. Never fails: any text has one.
pub fn fingerprint(sql: &str) -> Fingerprint {
    let tokens = collapse_lists(tokenize(sql));
    let normalized = render(&tokens);
    let operation = operation_of(&tokens);
    let mut summary = operation.clone();
    for t in targets_of(&tokens) {
        summary.push(' ');
        summary.push_str(&t);
    }
    if summary.len() > MAX_SUMMARY_LEN {
        let mut end = MAX_SUMMARY_LEN;
        while !summary.is_char_boundary(end) {
            end -= 1;
        }
        summary.truncate(end);
    }
    Fingerprint {
        id: fnv1a64(normalized.as_bytes()),
        normalized,
        summary,
        operation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same(a: &str, b: &str) {
        let (fa, fb) = (fingerprint(a), fingerprint(b));
        assert_eq!(fa.normalized, fb.normalized, "\n{a}\n{b}");
        assert_eq!(fa.id, fb.id);
    }

    #[test]
    fn literals_params_case_space_and_comments_do_not_matter() {
        same(
            "SELECT * FROM orders WHERE id = 42",
            "select *\n  from ORDERS where id=$1 -- by id",
        );
        same(
            "SELECT * FROM t WHERE name = 'bob''s'",
            "SELECT * FROM t WHERE name = E'x\\'y'",
        );
        same(
            "SELECT * FROM t WHERE a = 1.5e-3 AND b = true",
            "SELECT /* hint */ * FROM t WHERE a = 7 AND b = NULL",
        );
        same("SELECT $$raw$$, $tag$x$tag$", "SELECT 'a', 'b'");
        same("SELECT 1;", "SELECT 2");
    }

    #[test]
    fn in_lists_and_multi_row_values_collapse() {
        same(
            "SELECT * FROM t WHERE id IN (1, 2, 3, 4)",
            "SELECT * FROM t WHERE id IN ($1)",
        );
        same(
            "INSERT INTO t (a, b) VALUES (1, 2), (3, 4), (5, 6)",
            "INSERT INTO t (a, b) VALUES ($1, $2)",
        );
        same("SELECT ARRAY[1,2,3]", "SELECT ARRAY[$1]");
    }

    #[test]
    fn different_statements_differ() {
        assert_ne!(
            fingerprint("SELECT * FROM orders").id,
            fingerprint("SELECT * FROM customers").id
        );
        assert_ne!(
            fingerprint("SELECT a FROM t").id,
            fingerprint("SELECT b FROM t").id
        );
    }

    #[test]
    fn no_literal_survives() {
        let f = fingerprint(
            "SELECT * FROM users WHERE email = 'alice@example.com' AND ssn = 123456789 AND x = $$secret$$",
        );
        for secret in ["alice", "123456789", "secret"] {
            assert!(!f.normalized.contains(secret), "{}", f.normalized);
        }
    }

    #[test]
    fn summaries_name_operation_and_tables() {
        let s = |q: &str| fingerprint(q).summary;
        assert_eq!(
            s("SELECT o.id FROM orders o JOIN customers c ON c.id = o.cid"),
            "SELECT orders customers"
        );
        assert_eq!(
            s("insert into public.order_items (a) values (1)"),
            "INSERT public.order_items"
        );
        assert_eq!(
            s("UPDATE orders SET paid = true WHERE id = 1"),
            "UPDATE orders"
        );
        assert_eq!(
            s("DELETE FROM sessions WHERE expires < now()"),
            "DELETE sessions"
        );
        assert_eq!(s("WITH x AS (SELECT 1) SELECT * FROM x"), "SELECT x");
        assert_eq!(
            s("SELECT COUNT(*) FILTER (WHERE status = 'open') FROM tickets"),
            "SELECT tickets"
        );
        assert_eq!(s("COPY orders FROM STDIN"), "COPY orders");
        assert_eq!(s("BEGIN"), "BEGIN");
        assert_eq!(s("SELECT pg_sleep(0.2)"), "SELECT");
        assert_eq!(fingerprint("frobnicate the thing").operation, "OTHER");
    }

    #[test]
    fn garbage_and_truncation_are_fine() {
        for q in [
            "",
            "'",
            "$$",
            "$a$ never closed",
            "/* open",
            "\"unterminated",
            "SELECT ((((",
            "\u{0}\u{1}",
            "E'\\",
        ] {
            let f = fingerprint(q);
            assert!(f.summary.len() <= MAX_SUMMARY_LEN);
        }
    }
}
