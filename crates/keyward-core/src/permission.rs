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

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Permission(String);

/// The permission is not `*` or `resource:action`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "permission must be '*' or 'resource:action', each part '*' or 1-64 characters of [a-z0-9_.-]"
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
        let (resource, action) = text.split_once(':').ok_or(InvalidPermission)?;
        let part = |p: &str| p == "*" || is_name(p);
        if part(resource) && part(action) {
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
        (resource == "*" || resource == wanted_resource)
            && (action == "*" || action == wanted_action)
    }

    /// Resource and action; `*` is `("*", "*")`.
    pub fn parts(&self) -> (&str, &str) {
        split(&self.0)
    }
}

fn split(permission: &str) -> (&str, &str) {
    permission.split_once(':').unwrap_or(("*", "*"))
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
}

impl PermissionSet {
    pub fn new(held: &[Permission]) -> Self {
        let mut set = PermissionSet::default();
        for p in held {
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
        (!self.every_resource.is_empty() && self.every_resource.contains(action))
            || (!self.every_action.is_empty() && self.every_action.contains(resource))
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
            held in proptest::collection::vec("(\\*|[ab])(:(\\*|[xy]))?", 0..6),
            wanted in "(\\*|[abc]):(\\*|[xyz])",
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
            "a:b:c",
            "Invoices:read",
            "**:read",
            "a:*b",
            "x y:z",
        ] {
            assert_eq!(Permission::parse(bad), Err(InvalidPermission), "{bad}");
        }
    }
}
