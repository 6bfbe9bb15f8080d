//! Audit entries and their canonical form.
//!
//! Each entry's hash is SHA-256 over the previous entry's hash (hex) followed by the entry's
//! canonical JSON: the fields `seq`, `ts`, `actor`, `action`, `target` and `details`, with object
//! keys sorted at every depth and no insignificant white space. The hashing itself lives in the
//! crypto crate; this module only defines the bytes that are hashed.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::Timestamp;

/// The `prev_hash` of the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An entry of the append-only log. `details` never holds a secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub ts: Timestamp,
    /// A key id, `system`, or `anonymous` for a failed authentication.
    pub actor: String,
    /// What happened, e.g. `key.create`, `key.revoke`, `auth.failed`.
    pub action: String,
    /// What it happened to, e.g. a key id.
    pub target: Option<String>,
    pub details: Value,
    /// Hex SHA-256 of the previous entry.
    pub prev_hash: String,
    /// Hex SHA-256 of `prev_hash` followed by [`canonical_bytes`].
    pub hash: String,
}

/// The bytes an entry's hash covers after the previous hash.
pub fn canonical_bytes(
    seq: u64,
    ts: Timestamp,
    actor: &str,
    action: &str,
    target: Option<&str>,
    details: &Value,
) -> Vec<u8> {
    let mut entry = Map::new();
    entry.insert("seq".into(), Value::from(seq));
    entry.insert("ts".into(), Value::from(ts.unix_ms()));
    entry.insert("actor".into(), Value::from(actor));
    entry.insert("action".into(), Value::from(action));
    entry.insert("target".into(), target.map_or(Value::Null, Value::from));
    entry.insert("details".into(), details.clone());
    let mut out = Vec::with_capacity(256);
    write_canonical(&Value::Object(entry), &mut out);
    out
}

/// Writes JSON with object keys sorted at every depth, whatever map type serde_json was built
/// with, so the hash does not depend on a feature flag elsewhere in the dependency tree.
fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(&Value::String(key.clone()), out);
                out.push(b':');
                if let Some(v) = map.get(key) {
                    write_canonical(v, out);
                }
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(value: &Value, out: &mut Vec<u8>) {
    // Serialising a scalar JSON value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form_sorts_keys_at_every_depth() {
        let details = serde_json::json!({"b": 1, "a": {"z": [1, {"y": 2, "x": 3}], "c": null}});
        let bytes = canonical_bytes(
            7,
            Timestamp::from_unix_ms(5),
            "system",
            "x.y",
            None,
            &details,
        );
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            r#"{"action":"x.y","actor":"system","details":{"a":{"c":null,"z":[1,{"x":3,"y":2}]},"b":1},"seq":7,"target":null,"ts":5}"#
        );
    }
}
