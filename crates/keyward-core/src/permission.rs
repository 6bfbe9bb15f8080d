//! Permissions: `resource:action` strings such as `invoices:read`, with wildcards.
//!
//! * `*` covers every permission (it is the same as `*:*`).
//! * `invoices:*` covers every action on `invoices` (`invoices:read`, `invoices:write`), but not
//!   other resources (`invoicesx:read`), and not a bare `invoices`, which is not a permission.
//! * `*:read` covers the `read` action on every resource (the built-in `read-only` role).
//! * Anything else covers only itself. A specific permission never covers a wildcard:
//!   `invoices:read` does not cover `invoices:*`.
//!
//! Resource and action are 1-64 characters of `[a-z0-9_.-]`, or `*`.
//!
//! A permission may name a scope after a second colon, a glob over paths:
//! `secrets:read:payments/*` covers `secrets:read:payments/stripe` (and deeper paths: `*` matches
//! any run of characters, `/` included). A permission without a scope covers every scope of its
//! resource and action; a scoped one never covers the unscoped form. Scopes are 1-256 characters
//! of `[A-Za-z0-9_./*-]`.

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Permission(String);

/// The permission is not `*` or `resource:action[:scope]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "permission must be '*' or 'resource:action' (each '*' or 1-64 characters of [a-z0-9_.-]), optionally ':scope' (a glob of 1-256 characters of [A-Za-z0-9_./*-])"
)]
pub struct InvalidPermission;

fn is_name(part: &str) -> bool {
    (1..=64).contains(&part.len())
        && part.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        })
}

impl Permission {
    pub fn parse(text: &str) -> Result<Self, InvalidPermission> {
        if text == "*" {
            return Ok(Permission(text.to_owned()));
        }
        let (resource, rest) = text.split_once(':').ok_or(InvalidPermission)?;
        let (action, scope) = match rest.split_once(':') {
            Some((action, scope)) => (action, Some(scope)),
            None => (rest, None),
        };
        let part = |p: &str| p == "*" || is_name(p);
        if part(resource) && part(action) && scope.is_none_or(is_scope) {
            Ok(Permission(text.to_owned()))
        } else {
            Err(InvalidPermission)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether holding `self` grants `wanted`.
    pub fn covers(&self, wanted: &Permission) -> bool {
        self.covers_str(&wanted.0)
    }

    /// [`Permission::covers`] for a permission known to be well-formed, such as a constant.
    pub fn covers_str(&self, wanted: &str) -> bool {
        if self.0 == "*" || self.0 == wanted {
            return true;
        }
        let (resource, action) = self.parts();
        let (wanted_resource, wanted_action) = split(wanted);
        let scope_ok = match (self.scope(), scope_of(wanted)) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(glob), Some(path)) => glob_match(glob, path),
        };
        (resource == "*" || resource == wanted_resource)
            && (action == "*" || action == wanted_action)
            && scope_ok
    }

    /// The scope glob, if the permission has one.
    pub fn scope(&self) -> Option<&str> {
        scope_of(&self.0)
    }

    /// Resource and action; `*` is `("*", "*")`.
    pub fn parts(&self) -> (&str, &str) {
        split(&self.0)
    }
}

fn split(permission: &str) -> (&str, &str) {
    let (resource, rest) = permission.split_once(':').unwrap_or(("*", "*"));
    (
        resource,
        rest.split_once(':').map_or(rest, |(action, _)| action),
    )
}

fn scope_of(permission: &str) -> Option<&str> {
    let (_, rest) = permission.split_once(':')?;
    rest.split_once(':').map(|(_, scope)| scope)
}

fn is_scope(scope: &str) -> bool {
    (1..=256).contains(&scope.len())
        && scope
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'/' | b'*' | b'-'))
}

/// Whether `text` matches `glob`, where `*` matches any run of characters (`/` included).
/// Linear in practice: on a mismatch it resumes after the last `*`, never further back.
pub fn glob_match(glob: &str, text: &str) -> bool {
    let (glob, text) = (glob.as_bytes(), text.as_bytes());
    let (mut g, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match glob.get(g) {
            Some(b'*') => {
                star = Some((g, t));
                g += 1;
            }
            Some(&c) if Some(&c) == text.get(t) => {
                g += 1;
                t += 1;
            }
            _ => match star {
                Some((sg, st)) => {
                    g = sg + 1;
                    t = st + 1;
                    star = Some((sg, st + 1));
                }
                None => return false,
            },
        }
    }
    glob.get(g..)
        .is_some_and(|rest| rest.iter().all(|&c| c == b'*'))
}

/// Whether any of `held` grants `wanted`.
pub fn grants(held: &[Permission], wanted: &str) -> bool {
    held.iter().any(|p| p.covers_str(wanted))
}

impl fmt::Debug for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Permission {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Permission {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Permission::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A key's permissions compiled for checks that cost the same whatever their number: one or two
/// hash lookups per wanted permission instead of a scan. Equivalent to [`grants`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PermissionSet {
    /// Holds `*` (or `*:*`).
    all: bool,
    exact: HashSet<Box<str>, BuildFnv>,
    /// Resources held with every action (`invoices:*`).
    every_action: HashSet<Box<str>, BuildFnv>,
    /// Actions held on every resource (`*:read`).
    every_resource: HashSet<Box<str>, BuildFnv>,
    /// Permissions with a scope glob, checked one by one.
    scoped: Vec<Permission>,
}

impl PermissionSet {
    pub fn new(held: &[Permission]) -> Self {
        let mut set = PermissionSet::default();
        for p in held {
            if p.scope().is_some() {
                set.scoped.push(p.clone());
                continue;
            }
            match p.parts() {
                ("*", "*") => set.all = true,
                (resource, "*") => {
                    set.every_action.insert(resource.into());
                }
                ("*", action) => {
                    set.every_resource.insert(action.into());
                }
                _ => {
                    set.exact.insert(p.as_str().into());
                }
            }
        }
        set
    }

    /// Whether the set grants `wanted` (a well-formed permission, wildcards allowed).
    pub fn grants(&self, wanted: &str) -> bool {
        if self.all || self.exact.contains(wanted) {
            return true;
        }
        let (resource, action) = split(wanted);
        if (!self.every_resource.is_empty() && self.every_resource.contains(action))
            || (!self.every_action.is_empty() && self.every_action.contains(resource))
        {
            return true;
        }
        if scope_of(wanted).is_some() {
            // An unscoped `resource:action` covers every scope of it.
            let unscoped_len = resource.len() + 1 + action.len();
            if wanted
                .get(..unscoped_len)
                .is_some_and(|unscoped| self.exact.contains(unscoped))
            {
                return true;
            }
        }
        self.scoped.iter().any(|p| p.covers_str(wanted))
    }
}

/// FNV-1a: a fast hash for the short, administrator-chosen strings of a permission set, where
/// flooding a table with collisions gains an attacker nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut hash = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for &b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = hash;
    }
}

pub type BuildFnv = std::hash::BuildHasherDefault<Fnv>;

/// Permissions of the admin API. The root key holds `*`.
pub mod admin {
    pub const KEYS_CREATE: &str = "keys:create";
    pub const KEYS_READ: &str = "keys:read";
    pub const KEYS_UPDATE: &str = "keys:update";
    pub const KEYS_REVOKE: &str = "keys:revoke";
    pub const KEYS_ROLL: &str = "keys:roll";
    pub const KEYS_VERIFY: &str = "keys:verify";
    pub const AUDIT_READ: &str = "audit:read";
    pub const ROLES_MANAGE: &str = "roles:manage";
    pub const ROLES_READ: &str = "roles:read";
    pub const ENVIRONMENTS_MANAGE: &str = "environments:manage";
    pub const ENVIRONMENTS_READ: &str = "environments:read";
    pub const PLANS_MANAGE: &str = "plans:manage";
    pub const PLANS_READ: &str = "plans:read";
    pub const EVENTS_READ: &str = "events:read";
    /// Seal the vault (unsealing needs shares, not a key).
    pub const SYS_SEAL: &str = "sys:seal";
    /// Add a keyring term and re-seal old values under it.
    pub const SYS_ROTATE: &str = "sys:rotate";
    /// Replace the unseal shares (with a quorum of the current ones).
    pub const SYS_REKEY: &str = "sys:rekey";
    /// Read the vault's keyring terms and rewrap progress.
    pub const SYS_READ: &str = "sys:read";
    /// Secrets, each followed by `:<path>`: `secrets:read:payments/stripe`.
    pub const SECRETS_READ: &str = "secrets:read";
    pub const SECRETS_WRITE: &str = "secrets:write";
    pub const SECRETS_LIST: &str = "secrets:list";
    pub const SECRETS_DELETE: &str = "secrets:delete";
    pub const SECRETS_DESTROY: &str = "secrets:destroy";
    pub const LEASES_CREATE: &str = "leases:create";
    pub const LEASES_READ: &str = "leases:read";
    pub const LEASES_RENEW: &str = "leases:renew";
    pub const LEASES_REVOKE: &str = "leases:revoke";
    pub const WEBHOOKS_READ: &str = "webhooks:read";
    pub const WEBHOOKS_MANAGE: &str = "webhooks:manage";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Permission {
        Permission::parse(s).unwrap()
    }

    #[test]
    fn wildcard_matrix() {
        let cases = [
            ("*", "invoices:read", true),
            ("invoices:*", "invoices:read", true),
            ("invoices:*", "invoices:write", true),
            ("invoices:*", "orders:read", false),
            ("invoices:*", "invoicesx:read", false),
            ("invoices:read", "invoices:read", true),
            ("invoices:read", "invoices:write", false),
            ("invoices:read", "invoices:*", false),
            ("invoices:read", "*", false),
            ("*:read", "invoices:read", true),
            ("*:read", "orders:read", true),
            ("*:read", "orders:write", false),
            ("*:read", "orders:*", false),
            ("*:*", "orders:write", true),
            ("*", "*:read", true),
            ("invoices:*", "invoices:*", true),
            ("invoices:*", "*:read", false),
            (
                "secrets:read:payments/*",
                "secrets:read:payments/stripe",
                true,
            ),
            ("secrets:read:payments/*", "secrets:read:payments/a/b", true),
            ("secrets:read:payments/*", "secrets:read:paymentsx", false),
            (
                "secrets:read:payments/*",
                "secrets:write:payments/stripe",
                false,
            ),
            ("secrets:read:payments/*", "secrets:read", false),
            ("secrets:read", "secrets:read:anything/at/all", true),
            ("secrets:*", "secrets:write:a", true),
            ("*:read", "secrets:read:a", true),
            ("secrets:*:db/*", "secrets:destroy:db/main", true),
            ("secrets:read:*/prod", "secrets:read:a/b/prod", true),
            ("secrets:read:*/prod", "secrets:read:a/prod/x", false),
        ];
        for (held, wanted, expected) in cases {
            assert_eq!(
                p(held).covers(&p(wanted)),
                expected,
                "{held} covers {wanted}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn compiled_set_agrees_with_the_definition(
            held in proptest::collection::vec("(\\*|[ab])(:(\\*|[xy])(:[pq*/]{1,4})?)?", 0..6),
            wanted in "(\\*|[abc]):(\\*|[xyz])(:[pq/]{1,4})?",
        ) {
            let held: Vec<Permission> = held.iter().filter_map(|p| Permission::parse(p).ok()).collect();
            let set = PermissionSet::new(&held);
            proptest::prop_assert_eq!(set.grants(&wanted), grants(&held, &wanted), "{:?} vs {}", held, wanted);
        }
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "invoices",
            ":read",
            "invoices:",
            "a:b:",
            "a:b:c d",
            "a:b:c:d",
            "Invoices:read",
            "**:read",
            "a:*b",
            "x y:z",
        ] {
            assert_eq!(Permission::parse(bad), Err(InvalidPermission), "{bad}");
        }
    }
}
