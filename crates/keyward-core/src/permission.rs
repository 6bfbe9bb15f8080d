//! Permissions: `resource:action` strings such as `invoices:read`, with wildcards.
//!
//! * `*` covers every permission.
//! * `invoices:*` covers every action on `invoices` (`invoices:read`, `invoices:write`), but not
//!   other resources, and not `invoices` without an action.
//! * Anything else covers only itself.
//!
//! Resource and action are 1-64 characters of `[a-z0-9_.-]` (or `*` as the whole action).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Permission(String);

/// The permission is not `*` or `resource:action`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("permission must be '*' or 'resource:action' with 1-64 characters of [a-z0-9_.-] each")]
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
        if is_name(resource) && (action == "*" || is_name(action)) {
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
        match (self.0.split_once(':'), wanted.split_once(':')) {
            (Some((resource, "*")), Some((wanted_resource, _))) => resource == wanted_resource,
            _ => false,
        }
    }
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

/// Permissions of the admin API. The root key holds `*`.
pub mod admin {
    pub const KEYS_CREATE: &str = "keys:create";
    pub const KEYS_READ: &str = "keys:read";
    pub const KEYS_UPDATE: &str = "keys:update";
    pub const KEYS_REVOKE: &str = "keys:revoke";
    pub const KEYS_ROLL: &str = "keys:roll";
    pub const KEYS_VERIFY: &str = "keys:verify";
    pub const AUDIT_READ: &str = "audit:read";
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
        ];
        for (held, wanted, expected) in cases {
            assert_eq!(
                p(held).covers(&p(wanted)),
                expected,
                "{held} covers {wanted}"
            );
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
            "*:read",
            "x y:z",
        ] {
            assert_eq!(Permission::parse(bad), Err(InvalidPermission), "{bad}");
        }
    }
}
