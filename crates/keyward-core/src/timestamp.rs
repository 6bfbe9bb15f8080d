//! Points in time as whole milliseconds since the Unix epoch, written as RFC 3339 in JSON.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Milliseconds since 1970-01-01T00:00:00Z (UTC). Millisecond precision is what SQL backends
/// store losslessly and what every expiry and grace period in keyward needs.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

/// The latest instant keyward accepts: 9999-12-31T23:59:59.999Z.
const MAX_MS: i64 = 253_402_300_799_999;

impl Timestamp {
    pub const UNIX_EPOCH: Timestamp = Timestamp(0);

    /// A timestamp from milliseconds since the epoch, clamped to the years 1970..=9999 so every
    /// value can be printed as RFC 3339.
    pub fn from_unix_ms(ms: i64) -> Self {
        Timestamp(ms.clamp(0, MAX_MS))
    }

    pub fn unix_ms(self) -> i64 {
        self.0
    }

    /// This instant plus `seconds`, saturating at the largest representable time.
    pub fn plus_seconds(self, seconds: u64) -> Self {
        let ms = i64::try_from(seconds)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000);
        Timestamp::from_unix_ms(self.0.saturating_add(ms))
    }

    /// Parses an RFC 3339 date-time such as `2026-11-28T10:00:00Z`.
    pub fn parse_rfc3339(text: &str) -> Result<Self, InvalidTimestamp> {
        let at = OffsetDateTime::parse(text, &Rfc3339).map_err(|_| InvalidTimestamp)?;
        let ms = at.unix_timestamp_nanos() / 1_000_000;
        let ms = i64::try_from(ms).map_err(|_| InvalidTimestamp)?;
        if !(0..=MAX_MS).contains(&ms) {
            return Err(InvalidTimestamp);
        }
        Ok(Timestamp(ms))
    }

    pub fn to_rfc3339(self) -> String {
        let nanos = i128::from(self.0) * 1_000_000;
        OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .ok()
            .and_then(|at| at.format(&Rfc3339).ok())
            // Unreachable: the constructor keeps the value within the printable range.
            .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
    }
}

/// The text is not an RFC 3339 date-time between 1970 and 9999.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not an RFC 3339 date-time between 1970 and 9999 (e.g. 2026-11-28T10:00:00Z)")]
pub struct InvalidTimestamp;

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Timestamp::parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_rfc3339() {
        let t = Timestamp::parse_rfc3339("2026-11-28T10:00:00.250Z").unwrap();
        assert_eq!(t.unix_ms(), 1_795_860_000_250);
        assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()).unwrap(), t);
    }

    #[test]
    fn rejects_garbage_and_out_of_range() {
        for bad in [
            "",
            "yesterday",
            "2026-13-01T00:00:00Z",
            "1969-12-31T23:59:59Z",
        ] {
            assert_eq!(
                Timestamp::parse_rfc3339(bad),
                Err(InvalidTimestamp),
                "{bad}"
            );
        }
    }

    #[test]
    fn arithmetic_saturates() {
        let far = Timestamp::from_unix_ms(i64::MAX);
        assert_eq!(far.plus_seconds(u64::MAX).unix_ms(), MAX_MS);
        assert!(far.to_rfc3339().starts_with("9999-12-31T23:59:59"));
    }
}
