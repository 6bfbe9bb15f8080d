//! Environment policies: rules every key of an environment must keep.

use serde::{Deserialize, Serialize};

use crate::Permission;
use crate::permission::grants;

/// The rules of one environment. The default policy imposes nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnvironmentPolicy {
    /// Keys live at most this long.
    pub max_ttl_s: Option<u64>,
    /// Every key needs an expiry.
    pub require_expiry: bool,
    /// Every key needs an IP allowlist of its own.
    pub require_ip_allowlist: bool,
    /// If set, keys may only hold permissions within these (each covered by one of them).
    pub permission_ceiling: Option<Vec<Permission>>,
    /// Permissions no key of the environment may hold or use, e.g. `admin:*` in `live`.
    pub forbidden_permissions: Vec<Permission>,
    /// New keys need approval (the approval workflow reads this flag).
    pub require_approval: bool,
    /// Network blocks every key of the environment must come from (empty: anywhere).
    pub allowed_cidrs: Vec<String>,
    /// Network blocks no key of the environment may come from.
    pub denied_cidrs: Vec<String>,
    /// How often the environment's keys are rotated, unless a role or the key says otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation: Option<crate::RotationPolicy>,
}

/// A rule a key would break, named so a client can tell which.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("environment policy '{rule}': {message}")]
pub struct PolicyViolation {
    /// The policy field: `max_ttl_s`, `require_expiry`, `permission_ceiling`, …
    pub rule: &'static str,
    pub message: String,
}

fn violation(rule: &'static str, message: String) -> PolicyViolation {
    PolicyViolation { rule, message }
}

/// Whether two permissions share any concrete permission: one covers the other.
fn overlaps(a: &Permission, b: &Permission) -> bool {
    a.covers(b) || b.covers(a)
}

impl EnvironmentPolicy {
    /// Checks a key's settings: its lifetime in seconds (None: no expiry), the permissions it
    /// would hold (directly or through roles), and whether it has an allowlist.
    pub fn check_key(
        &self,
        lifetime_s: Option<u64>,
        permissions: &[Permission],
        has_allowlist: bool,
    ) -> Result<(), PolicyViolation> {
        if self.require_expiry && lifetime_s.is_none() {
            return Err(violation(
                "require_expiry",
                "keys of this environment need an expiry".into(),
            ));
        }
        if let Some(max) = self.max_ttl_s {
            match lifetime_s {
                None => {
                    return Err(violation(
                        "max_ttl_s",
                        format!("keys of this environment expire within {max} s"),
                    ));
                }
                Some(life) if life > max => {
                    return Err(violation(
                        "max_ttl_s",
                        format!("keys of this environment expire within {max} s"),
                    ));
                }
                _ => {}
            }
        }
        if self.require_ip_allowlist && !has_allowlist {
            return Err(violation(
                "require_ip_allowlist",
                "keys of this environment need an IP allowlist".into(),
            ));
        }
        for p in permissions {
            if let Some(f) = self.forbidden_permissions.iter().find(|f| overlaps(p, f)) {
                return Err(violation(
                    "forbidden_permissions",
                    format!("{p} overlaps the forbidden {f}"),
                ));
            }
            if let Some(ceiling) = &self.permission_ceiling
                && !grants(ceiling, p.as_str())
            {
                return Err(violation(
                    "permission_ceiling",
                    format!("{p} is above the environment's ceiling"),
                ));
            }
        }
        Ok(())
    }

    /// Whether a key of this environment may use `wanted` at all, whatever it holds.
    pub fn allows_use(&self, wanted: &str) -> bool {
        !self
            .forbidden_permissions
            .iter()
            .any(|f| f.covers_str(wanted))
            && self
                .permission_ceiling
                .as_ref()
                .is_none_or(|c| grants(c, wanted))
    }

    /// Why the policy takes `held` away, if it does.
    pub fn removes(&self, held: &Permission) -> Option<String> {
        if let Some(f) = self
            .forbidden_permissions
            .iter()
            .find(|f| overlaps(held, f))
        {
            return Some(format!("overlaps the forbidden {f}"));
        }
        match &self.permission_ceiling {
            Some(ceiling) if !grants(ceiling, held.as_str()) => {
                Some("above the environment's ceiling".into())
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perms(list: &[&str]) -> Vec<Permission> {
        list.iter().map(|p| Permission::parse(p).unwrap()).collect()
    }

    #[test]
    fn each_rule_is_named() {
        let policy = EnvironmentPolicy {
            max_ttl_s: Some(3600),
            require_ip_allowlist: true,
            permission_ceiling: Some(perms(&["invoices:*", "orders:read"])),
            forbidden_permissions: perms(&["invoices:delete"]),
            ..EnvironmentPolicy::default()
        };
        let ok = perms(&["invoices:read", "orders:read"]);
        assert_eq!(policy.check_key(Some(60), &ok, true), Ok(()));
        let rule = |r: Result<(), PolicyViolation>| r.unwrap_err().rule;
        assert_eq!(rule(policy.check_key(None, &ok, true)), "max_ttl_s");
        assert_eq!(rule(policy.check_key(Some(7200), &ok, true)), "max_ttl_s");
        assert_eq!(
            rule(policy.check_key(Some(60), &ok, false)),
            "require_ip_allowlist"
        );
        assert_eq!(
            rule(policy.check_key(Some(60), &perms(&["orders:write"]), true)),
            "permission_ceiling"
        );
        assert_eq!(
            rule(policy.check_key(Some(60), &perms(&["invoices:*"]), true)),
            "forbidden_permissions"
        );
        assert_eq!(
            rule(policy.check_key(Some(60), &perms(&["*"]), true)),
            "forbidden_permissions"
        );
        let expiry = EnvironmentPolicy {
            require_expiry: true,
            ..EnvironmentPolicy::default()
        };
        assert_eq!(rule(expiry.check_key(None, &[], false)), "require_expiry");
    }

    #[test]
    fn use_is_limited_even_for_wildcard_holders() {
        let policy = EnvironmentPolicy {
            forbidden_permissions: perms(&["admin:*"]),
            ..EnvironmentPolicy::default()
        };
        assert!(policy.allows_use("invoices:read"));
        assert!(!policy.allows_use("admin:read"));
        assert!(policy.removes(&Permission::parse("*").unwrap()).is_some());
        assert!(
            policy
                .removes(&Permission::parse("invoices:read").unwrap())
                .is_none()
        );
    }
}
