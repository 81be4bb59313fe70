//! Route grouping: `/api/orders/123` → `/api/orders/{id}`, so one route is one label however
//! many ids it serves. Explicit patterns (from config) win over the automatic rules.
//!
//! Automatic rules per path segment: all digits → `{id}`; a UUID → `{uuid}`; a hex string of
//! 8+ characters with a digit → `{hex}`; a 20+ character token mixing letters and digits →
//! `{token}`. The query string and fragment are dropped, `//` folded, a trailing `/` removed.

const MAX_SEGMENTS: usize = 12;
const MAX_ROUTE_LEN: usize = 256;
/// Paths with more segments than this are split into a vector instead.
const SEGMENTS_ON_STACK: usize = 32;

/// A configured route pattern such as `/api/orders/{id}/items` or `/static/{path...}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePattern {
    raw: String,
    segments: Vec<PatternSegment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PatternSegment {
    Literal(String),
    /// `{name}`: exactly one segment.
    Param,
    /// `{name...}` or `*`: the rest of the path (must be last).
    Rest,
}

impl RoutePattern {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if !raw.starts_with('/') {
            return Err(format!("route pattern {raw:?} must start with '/'"));
        }
        let parts: Vec<&str> = raw.split('/').filter(|s| !s.is_empty()).collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (k, part) in parts.iter().enumerate() {
            let seg = if part.starts_with('{') && part.ends_with('}') {
                if part.ends_with("...}") {
                    PatternSegment::Rest
                } else {
                    PatternSegment::Param
                }
            } else if *part == "*" {
                PatternSegment::Rest
            } else if part.contains(['{', '}']) {
                return Err(format!(
                    "route pattern {raw:?}: braces must enclose a whole segment"
                ));
            } else {
                PatternSegment::Literal((*part).to_string())
            };
            if seg == PatternSegment::Rest && k + 1 != parts.len() {
                return Err(format!(
                    "route pattern {raw:?}: a rest segment must be last"
                ));
            }
            segments.push(seg);
        }
        Ok(Self {
            raw: raw.to_string(),
            segments,
        })
    }

    fn matches(&self, segments: &[&str]) -> bool {
        let mut k = 0;
        for seg in &self.segments {
            match seg {
                PatternSegment::Rest => return true,
                PatternSegment::Param => {
                    if k >= segments.len() {
                        return false;
                    }
                }
                PatternSegment::Literal(lit) => {
                    if segments.get(k) != Some(&lit.as_str()) {
                        return false;
                    }
                }
            }
            k += 1;
        }
        k == segments.len()
    }
}

/// A UUID in its 8-4-4-4-12 hex form.
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                *c == b'-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

fn group_segment(seg: &str) -> Option<&'static str> {
    // One pass over the bytes (this runs for every segment of every request).
    let (mut digits, mut hex_letters, mut other_letters, mut rest) =
        (0usize, 0usize, 0usize, 0usize);
    for b in seg.bytes() {
        match b {
            b'0'..=b'9' => digits += 1,
            b'a'..=b'f' | b'A'..=b'F' => hex_letters += 1,
            b'g'..=b'z' | b'G'..=b'Z' => other_letters += 1,
            b'-' | b'_' | b'.' | b'~' | b'%' => {}
            _ => rest += 1,
        }
    }
    if digits == 0 {
        // Every rule below needs a digit, except a UUID that happens to have none.
        return (seg.len() == 36 && is_uuid(seg)).then_some("{uuid}");
    }
    if digits == seg.len() {
        return Some("{id}");
    }
    if is_uuid(seg) {
        return Some("{uuid}");
    }
    if seg.len() >= 8 && digits + hex_letters == seg.len() {
        return Some("{hex}");
    }
    // Letters and digits mixed, nothing but URL token characters besides.
    (seg.len() >= 20 && hex_letters + other_letters > 0 && rest == 0).then_some("{token}")
}

/// Groups request targets into routes.
#[derive(Debug, Clone, Default)]
pub struct RouteGrouper {
    patterns: Vec<RoutePattern>,
}

impl RouteGrouper {
    pub fn new(patterns: Vec<RoutePattern>) -> Self {
        Self { patterns }
    }

    /// The route of a request target (`/orders/12?x=1` → `/orders/{id}`).
    pub fn route(&self, target: &str) -> String {
        let mut route = String::new();
        self.route_into(target, &mut route);
        route
    }

    /// As [`Self::route`], written into `route` (cleared first): a caller reusing one string
    /// and looking the result up allocates nothing for a route it has seen.
    pub fn route_into(&self, target: &str, route: &mut String) {
        route.clear();
        // Absolute-form targets (proxies): keep the path only. Origin-form targets (all but
        // proxies') start with '/' and need no search.
        let target = if target.starts_with('/') {
            target
        } else {
            match target.find("://") {
                Some(p) => target[p + 3..]
                    .find('/')
                    .map_or("/", |q| &target[p + 3 + q..]),
                None => target,
            }
        };
        let path = match memchr::memchr2(b'?', b'#', target.as_bytes()) {
            Some(end) => &target[..end],
            None => target,
        };
        // Segments on the stack: this runs once per request.
        let mut stack = [""; SEGMENTS_ON_STACK];
        let mut n = 0;
        let mut total = 0;
        for seg in path.split('/').filter(|s| !s.is_empty()) {
            if let Some(slot) = stack.get_mut(n) {
                *slot = seg;
                n += 1;
            }
            total += 1;
        }
        let spilled: Vec<&str>;
        let segments: &[&str] = if total > n {
            spilled = path.split('/').filter(|s| !s.is_empty()).collect();
            &spilled
        } else {
            &stack[..n]
        };
        if let Some(p) = self.patterns.iter().find(|p| p.matches(segments)) {
            route.push_str(&p.raw);
            return;
        }
        if segments.is_empty() {
            route.push('/');
            return;
        }
        for seg in segments.iter().take(MAX_SEGMENTS) {
            route.push('/');
            route.push_str(group_segment(seg).unwrap_or(seg));
        }
        if segments.len() > MAX_SEGMENTS {
            route.push_str("/{rest}");
        }
        if route.len() > MAX_ROUTE_LEN {
            let mut end = MAX_ROUTE_LEN;
            while !route.is_char_boundary(end) {
                end -= 1;
            }
            route.truncate(end);
            route.push('…');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automatic_grouping() {
        let g = RouteGrouper::default();
        for (target, route) in [
            ("/api/orders/123", "/api/orders/{id}"),
            ("/api/orders/123/items?page=2", "/api/orders/{id}/items"),
            ("/u/550e8400-e29b-41d4-a716-446655440000", "/u/{uuid}"),
            ("/blob/deadbeef01", "/blob/{hex}"),
            ("/reset/aB3dE5fG7hJ9kL1mN3pQ5r", "/reset/{token}"),
            ("/api/checkout", "/api/checkout"),
            ("/api/checkout/", "/api/checkout"),
            ("//a//b", "/a/b"),
            ("/", "/"),
            ("", "/"),
            ("http://shop.example/orders/9", "/orders/{id}"),
            ("/cafe", "/cafe"),
            ("/decade", "/decade"),
        ] {
            assert_eq!(g.route(target), route, "{target}");
        }
    }

    #[test]
    fn explicit_patterns_win() {
        let g = RouteGrouper::new(vec![
            RoutePattern::parse("/api/users/{name}").expect("valid"),
            RoutePattern::parse("/static/{path...}").expect("valid"),
        ]);
        assert_eq!(g.route("/api/users/alice"), "/api/users/{name}");
        assert_eq!(g.route("/static/css/site.css"), "/static/{path...}");
        assert_eq!(
            g.route("/api/users/alice/orders"),
            "/api/users/alice/orders"
        );
        assert!(RoutePattern::parse("api").is_err());
        assert!(RoutePattern::parse("/a/{x...}/b").is_err());
        assert!(RoutePattern::parse("/a/b{x}").is_err());
    }

    #[test]
    fn unbounded_paths_are_bounded() {
        let g = RouteGrouper::default();
        let deep = "/a".repeat(100);
        assert!(g.route(&deep).ends_with("/{rest}"));
        let long = format!("/{}", "x".repeat(1000));
        assert!(g.route(&long).chars().count() <= MAX_ROUTE_LEN + 1);
    }
}
