//! The permission query language of `verify`: which permissions a request needs.
//!
//! ```text
//! query := or
//! or    := and ("OR" and)*
//! and   := not ("AND" not)*
//! not   := "NOT" not | "(" query ")" | permission
//! ```
//!
//! Keywords are case-insensitive; a permission is as in [`crate::permission`], wildcards allowed
//! (`admin:*` asks whether the key holds `admin:*` itself, or `*`). `NOT p` holds when the key
//! does not hold `p`. A query is at most 1,000 characters, 64 permissions and 32 levels deep, so
//! evaluating one is cheap whatever a caller sends.
//!
//! The printed form ([`fmt::Display`]) parses back to the same query.

use std::fmt;

use crate::Permission;

const MAX_LEN: usize = 1000;
const MAX_TERMS: usize = 64;
const MAX_DEPTH: usize = 32;

/// A parsed query. AND and OR are n-ary and never directly contain themselves, so each query has
/// one printed form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PermissionQuery {
    Has(Permission),
    Not(Box<PermissionQuery>),
    And(Vec<PermissionQuery>),
    Or(Vec<PermissionQuery>),
}

/// Why a query could not be parsed, and where (a character offset from 0).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("permission query, at character {position}: {message}")]
pub struct QueryError {
    pub position: usize,
    pub message: String,
}

/// Why a query does not hold for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unmet {
    /// The key lacks this permission.
    Missing(Permission),
    /// The key holds this permission, which the query excludes with NOT.
    Excluded(Permission),
}

impl fmt::Display for Unmet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unmet::Missing(p) => write!(f, "missing permission {p}"),
            Unmet::Excluded(p) => write!(f, "holds excluded permission {p}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token<'a> {
    And,
    Or,
    Not,
    Open,
    Close,
    Word(&'a str),
}

fn tokenize(text: &str) -> Result<Vec<(usize, Token<'_>)>, QueryError> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    let mut char_pos = 0;
    while let Some((byte, c)) = chars.next() {
        let here = char_pos;
        char_pos += 1;
        match c {
            c if c.is_whitespace() => {}
            '(' => tokens.push((here, Token::Open)),
            ')' => tokens.push((here, Token::Close)),
            c if c.is_ascii_alphanumeric() || matches!(c, '*' | ':' | '_' | '.' | '-') => {
                let mut end = byte + c.len_utf8();
                while let Some(&(next_byte, next)) = chars.peek() {
                    if next.is_ascii_alphanumeric() || matches!(next, '*' | ':' | '_' | '.' | '-') {
                        end = next_byte + next.len_utf8();
                        chars.next();
                        char_pos += 1;
                    } else {
                        break;
                    }
                }
                let word = text.get(byte..end).unwrap_or_default();
                let token = if word.eq_ignore_ascii_case("and") {
                    Token::And
                } else if word.eq_ignore_ascii_case("or") {
                    Token::Or
                } else if word.eq_ignore_ascii_case("not") {
                    Token::Not
                } else {
                    Token::Word(word)
                };
                tokens.push((here, token));
            }
            _ => {
                return Err(QueryError {
                    position: here,
                    message: "unexpected character".into(),
                });
            }
        }
    }
    Ok(tokens)
}

struct Parser<'a> {
    tokens: Vec<(usize, Token<'a>)>,
    next: usize,
    end: usize,
    terms: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<&Token<'a>> {
        self.tokens.get(self.next).map(|(_, t)| t)
    }

    fn position(&self) -> usize {
        self.tokens.get(self.next).map_or(self.end, |(p, _)| *p)
    }

    fn error(&self, message: impl Into<String>) -> QueryError {
        QueryError {
            position: self.position(),
            message: message.into(),
        }
    }

    fn or(&mut self, depth: usize) -> Result<PermissionQuery, QueryError> {
        let mut items = vec![self.and(depth)?];
        while self.peek() == Some(&Token::Or) {
            self.next += 1;
            items.push(self.and(depth)?);
        }
        Ok(PermissionQuery::any(items))
    }

    fn and(&mut self, depth: usize) -> Result<PermissionQuery, QueryError> {
        let mut items = vec![self.not(depth)?];
        while self.peek() == Some(&Token::And) {
            self.next += 1;
            items.push(self.not(depth)?);
        }
        Ok(PermissionQuery::all(items))
    }

    fn not(&mut self, depth: usize) -> Result<PermissionQuery, QueryError> {
        if depth > MAX_DEPTH {
            return Err(self.error(format!("nested deeper than {MAX_DEPTH} levels")));
        }
        match self.peek().cloned() {
            Some(Token::Not) => {
                self.next += 1;
                Ok(PermissionQuery::Not(Box::new(self.not(depth + 1)?)))
            }
            Some(Token::Open) => {
                self.next += 1;
                let inner = self.or(depth + 1)?;
                if self.peek() != Some(&Token::Close) {
                    return Err(self.error("expected ')'"));
                }
                self.next += 1;
                Ok(inner)
            }
            Some(Token::Word(word)) => {
                let permission = Permission::parse(word).map_err(|e| self.error(e.to_string()))?;
                self.terms += 1;
                if self.terms > MAX_TERMS {
                    return Err(self.error(format!("more than {MAX_TERMS} permissions")));
                }
                self.next += 1;
                Ok(PermissionQuery::Has(permission))
            }
            Some(Token::Close) => Err(self.error("unexpected ')'")),
            Some(Token::And | Token::Or) => Err(self.error("expected a permission, '(' or NOT")),
            None => Err(self.error("unexpected end of query")),
        }
    }
}

impl PermissionQuery {
    pub fn parse(text: &str) -> Result<Self, QueryError> {
        if text.chars().count() > MAX_LEN {
            return Err(QueryError {
                position: MAX_LEN,
                message: format!("longer than {MAX_LEN} characters"),
            });
        }
        let tokens = tokenize(text)?;
        let mut parser = Parser {
            tokens,
            next: 0,
            end: text.chars().count(),
            terms: 0,
        };
        let query = parser.or(0)?;
        if parser.next < parser.tokens.len() {
            return Err(parser.error("unexpected text after the query"));
        }
        Ok(query)
    }

    /// AND of `items`, flattened.
    pub fn all(items: Vec<PermissionQuery>) -> Self {
        Self::flatten(items, true)
    }

    /// OR of `items`, flattened.
    pub fn any(items: Vec<PermissionQuery>) -> Self {
        Self::flatten(items, false)
    }

    fn flatten(items: Vec<PermissionQuery>, and: bool) -> Self {
        let mut flat = Vec::with_capacity(items.len());
        for item in items {
            match item {
                PermissionQuery::And(inner) if and => flat.extend(inner),
                PermissionQuery::Or(inner) if !and => flat.extend(inner),
                other => flat.push(other),
            }
        }
        if flat.len() == 1
            && let Some(only) = flat.pop()
        {
            return only;
        }
        if and {
            PermissionQuery::And(flat)
        } else {
            PermissionQuery::Or(flat)
        }
    }

    /// Checks the query against what a key holds. On failure, names a permission that would
    /// have to change: for OR, the first alternative's.
    pub fn evaluate(&self, holds: &impl Fn(&str) -> bool) -> Result<(), Unmet> {
        match self {
            PermissionQuery::Has(p) => {
                if holds(p.as_str()) {
                    Ok(())
                } else {
                    Err(Unmet::Missing(p.clone()))
                }
            }
            PermissionQuery::Not(inner) => match inner.evaluate(holds) {
                Ok(()) => Err(inner.first_held(holds)),
                Err(_) => Ok(()),
            },
            PermissionQuery::And(items) => items.iter().try_for_each(|q| q.evaluate(holds)),
            PermissionQuery::Or(items) => {
                let mut first = None;
                for q in items {
                    match q.evaluate(holds) {
                        Ok(()) => return Ok(()),
                        Err(unmet) => {
                            first.get_or_insert(unmet);
                        }
                    }
                }
                Err(first.unwrap_or_else(|| {
                    Unmet::Missing(Permission::parse("*").unwrap_or_else(|_| unreachable_star()))
                }))
            }
        }
    }

    /// For a NOT that failed: a permission the key holds that made the inner query true.
    fn first_held(&self, holds: &impl Fn(&str) -> bool) -> Unmet {
        let mut found = None;
        self.visit(&mut |p| {
            if found.is_none() && holds(p.as_str()) {
                found = Some(p.clone());
            }
        });
        match found {
            Some(p) => Unmet::Excluded(p),
            None => {
                // The inner query held through a nested NOT of a missing permission.
                let mut first = None;
                self.visit(&mut |p| {
                    first.get_or_insert_with(|| p.clone());
                });
                Unmet::Missing(first.unwrap_or_else(|| {
                    Permission::parse("*").unwrap_or_else(|_| unreachable_star())
                }))
            }
        }
    }

    fn visit(&self, f: &mut impl FnMut(&Permission)) {
        match self {
            PermissionQuery::Has(p) => f(p),
            PermissionQuery::Not(inner) => inner.visit(f),
            PermissionQuery::And(items) | PermissionQuery::Or(items) => {
                items.iter().for_each(|q| q.visit(f));
            }
        }
    }
}

#[cold]
fn unreachable_star() -> Permission {
    #[allow(clippy::panic)]
    {
        panic!("'*' is a valid permission")
    }
}

impl fmt::Display for PermissionQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let write_items = |f: &mut fmt::Formatter<'_>, items: &[PermissionQuery], op: &str| {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    write!(f, " {op} ")?;
                }
                // An AND inside an OR needs no parentheses; an OR inside an AND does.
                let wrap = matches!((op, item), ("AND", PermissionQuery::Or(_)));
                if wrap {
                    write!(f, "({item})")?
                } else {
                    write!(f, "{item}")?
                }
            }
            Ok(())
        };
        match self {
            PermissionQuery::Has(p) => write!(f, "{p}"),
            PermissionQuery::Not(inner) => match **inner {
                PermissionQuery::Has(_) | PermissionQuery::Not(_) => write!(f, "NOT {inner}"),
                _ => write!(f, "NOT ({inner})"),
            },
            PermissionQuery::And(items) => write_items(f, items, "AND"),
            PermissionQuery::Or(items) => write_items(f, items, "OR"),
        }
    }
}

#[cfg(test)]
mod tests;
