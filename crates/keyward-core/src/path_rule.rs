//! Path rules: which requests a key may make, as a method and a path pattern.
//!
//! `GET /v1/users/*/profile`, `POST /v1/invoices/**`, `* /v1/health`:
//! * the method is an HTTP method in capitals, or `*` for any;
//! * `*` matches exactly one path segment, `**` any number of segments (zero included);
//! * other segments match literally, case-sensitively.
//!
//! Request paths are matched as given, without the query string. A path with an empty, `.` or
//! `..` segment matches no rule, so a client cannot slip past a rule with a path the API behind
//! keyward would normalise differently; nor does one whose segment only decodes to such a
//! segment (`%2e%2e`, `.%2E`) or hides a separator (`%2F`, `%5C`), or has a broken escape.

use std::fmt;

const MAX_SEGMENTS: usize = 32;
const MAX_LEN: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    One,
    Any,
}

#[derive(Clone, PartialEq, Eq)]
pub struct PathRule {
    /// `None` is any method.
    method: Option<String>,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("path rule: {0}")]
pub struct InvalidPathRule(&'static str);

fn is_pchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()+,;=:@%".contains(c)
}

impl PathRule {
    /// Parses `METHOD /path/pattern`.
    pub fn parse(text: &str) -> Result<Self, InvalidPathRule> {
        if text.len() > MAX_LEN {
            return Err(InvalidPathRule("longer than 512 characters"));
        }
        let (method, path) = text.split_once(' ').ok_or(InvalidPathRule(
            "expected 'METHOD /path', e.g. 'GET /v1/users/*'",
        ))?;
        let method = match method {
            "*" => None,
            m if (1..=16).contains(&m.len()) && m.bytes().all(|b| b.is_ascii_uppercase()) => {
                Some(m.to_owned())
            }
            _ => {
                return Err(InvalidPathRule(
                    "the method must be '*' or capital letters, e.g. GET",
                ));
            }
        };
        let rest = path
            .strip_prefix('/')
            .ok_or(InvalidPathRule("the path must start with '/'"))?;
        let mut segments = Vec::new();
        if !rest.is_empty() {
            for part in rest.split('/') {
                segments.push(match part {
                    "*" => Segment::One,
                    "**" => Segment::Any,
                    "" | "." | ".." => {
                        return Err(InvalidPathRule(
                            "empty, '.' and '..' segments are not allowed",
                        ));
                    }
                    literal if literal.chars().all(is_pchar) => {
                        Segment::Literal(literal.to_owned())
                    }
                    _ => {
                        return Err(InvalidPathRule(
                            "a segment has a character that is not allowed in a path",
                        ));
                    }
                });
            }
        }
        if segments.len() > MAX_SEGMENTS {
            return Err(InvalidPathRule("more than 32 segments"));
        }
        Ok(PathRule { method, segments })
    }

    /// Whether a request with `method` and `path` is allowed by this rule.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        if self.method.as_deref().is_some_and(|m| m != method) {
            return false;
        }
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let parts: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        if parts.len() > 4 * MAX_SEGMENTS || parts.iter().any(|p| is_ambiguous(p)) {
            return false;
        }
        match_segments(&self.segments, &parts)
    }
}

/// Whether a request path segment could mean something else to the API behind keyward: empty,
/// `.` or `..` once percent-decoded, a separator hidden in an escape, or a broken escape.
fn is_ambiguous(segment: &str) -> bool {
    if !segment.contains('%') {
        return matches!(segment, "" | "." | "..");
    }
    let bytes = segment.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = |at: usize| bytes.get(at).and_then(|c| (*c as char).to_digit(16));
            let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) else {
                return true;
            };
            let byte = u8::try_from(hi * 16 + lo).unwrap_or(0);
            if matches!(byte, b'/' | b'\\' | 0) {
                return true;
            }
            decoded.push(byte);
            i += 3;
        } else {
            decoded.push(b);
            i += 1;
        }
    }
    matches!(decoded.as_slice(), b"" | b"." | b"..")
}

/// Matches by dynamic programming over (pattern position, path position): linear in their
/// product whatever the number of `**`, where backtracking would be exponential.
fn match_segments(pattern: &[Segment], parts: &[&str]) -> bool {
    // reachable[j]: the pattern so far can consume exactly the first j parts.
    let mut reachable = vec![false; parts.len() + 1];
    if let Some(first) = reachable.first_mut() {
        *first = true;
    }
    for segment in pattern {
        let mut next = vec![false; parts.len() + 1];
        match segment {
            Segment::Any => {
                let mut seen = false;
                for (slot, &was) in next.iter_mut().zip(&reachable) {
                    seen |= was;
                    *slot = seen;
                }
            }
            Segment::One | Segment::Literal(_) => {
                for ((slot, &was), part) in next.iter_mut().skip(1).zip(&reachable).zip(parts) {
                    *slot = was
                        && match segment {
                            Segment::Literal(literal) => literal == part,
                            _ => true,
                        };
                }
            }
        }
        reachable = next;
    }
    reachable.last().copied().unwrap_or(false)
}

impl fmt::Display for PathRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.method.as_deref().unwrap_or("*"))?;
        f.write_str(" ")?;
        if self.segments.is_empty() {
            return f.write_str("/");
        }
        for segment in &self.segments {
            f.write_str("/")?;
            match segment {
                Segment::Literal(l) => f.write_str(l)?,
                Segment::One => f.write_str("*")?,
                Segment::Any => f.write_str("**")?,
            }
        }
        Ok(())
    }
}

impl fmt::Debug for PathRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PathRule({self})")
    }
}

impl serde::Serialize for PathRule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for PathRule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        PathRule::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn matrix() {
        let cases = [
            (
                "GET /v1/users/*/profile",
                "GET",
                "/v1/users/42/profile",
                true,
            ),
            (
                "GET /v1/users/*/profile",
                "GET",
                "/v1/users/42/profile?x=1",
                true,
            ),
            (
                "GET /v1/users/*/profile",
                "POST",
                "/v1/users/42/profile",
                false,
            ),
            (
                "GET /v1/users/*/profile",
                "GET",
                "/v1/users/42/43/profile",
                false,
            ),
            ("GET /v1/users/*/profile", "GET", "/v1/users/profile", false),
            (
                "GET /v1/users/*/profile",
                "GET",
                "/v1/users/42/profile/",
                false,
            ),
            ("POST /v1/invoices/**", "POST", "/v1/invoices", true),
            (
                "POST /v1/invoices/**",
                "POST",
                "/v1/invoices/1/lines/2",
                true,
            ),
            ("POST /v1/invoices/**", "POST", "/v1/invoicesx", false),
            (
                "POST /v1/invoices/**",
                "POST",
                "/v1/invoices/../admin",
                false,
            ),
            ("* /v1/health", "DELETE", "/v1/health", true),
            ("* /v1/**/export", "GET", "/v1/a/b/export", true),
            ("* /v1/**/export", "GET", "/v1/export", true),
            ("* /v1/**/export", "GET", "/v1/a/export/x", false),
            ("GET /", "GET", "/", true),
            ("GET /", "GET", "/a", false),
            ("GET /v1/a", "GET", "/v1//a", false),
            ("GET /v1/a", "GET", "v1/a", false),
            ("GET /v1/a", "get", "/v1/a", false),
        ];
        for (rule, method, path, expected) in cases {
            assert_eq!(
                PathRule::parse(rule).unwrap().matches(method, path),
                expected,
                "{rule} ~ {method} {path}"
            );
        }
    }

    #[test]
    fn encoded_dot_segments_and_separators_never_match() {
        let rule = PathRule::parse("GET /v1/public/**").unwrap();
        assert!(rule.matches("GET", "/v1/public/a%20b"));
        for path in [
            "/v1/public/%2e%2e/admin",
            "/v1/public/%2E%2E/admin",
            "/v1/public/.%2e/admin",
            "/v1/public/%2e./admin",
            "/v1/public/%2e/admin",
            "/v1/public/..%2Fadmin",
            "/v1/public/a%2fb",
            "/v1/public/a%5Cb",
            "/v1/public/a%00b",
            "/v1/public/bad%zz",
            "/v1/public/bad%2",
        ] {
            assert!(!rule.matches("GET", path), "{path}");
        }
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "GET",
            "GET v1",
            "get /v1",
            "GET /v1//a",
            "GET /v1/../a",
            "GET /a b",
            "GET /ä",
            "GETTTTTTTTTTTTTTTT /a",
        ] {
            assert!(PathRule::parse(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn round_trips(rule in "(\\*|GET|POST) (/(\\*|\\*\\*|[a-z0-9]{1,3})){0,6}") {
            let rule = if rule.ends_with(' ') { format!("{rule}/") } else { rule };
            let parsed = PathRule::parse(&rule).unwrap();
            prop_assert_eq!(PathRule::parse(&parsed.to_string()).unwrap(), parsed);
        }

        #[test]
        fn never_panics(rule in ".{0,60}", path in ".{0,60}") {
            if let Ok(r) = PathRule::parse(&rule) {
                let _ = r.matches("GET", &path);
            }
        }

        #[test]
        fn many_wildcards_stay_cheap(n in 1usize..16) {
            let rule = PathRule::parse(&format!("GET /{}x", "**/".repeat(n))).unwrap();
            let path = format!("/{}", vec!["a"; 100].join("/"));
            prop_assert!(!rule.matches("GET", &path));
        }
    }
}
