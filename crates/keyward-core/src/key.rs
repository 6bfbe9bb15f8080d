//! The API key format: `<prefix>_<env>_<secret><checksum>`.
//!
//! * `prefix`: the service's prefix, `[a-z0-9]{1,8}` (`kw` by default).
//! * `env`: the environment's short name, `[a-z0-9]{1,8}` (`live`, `test`, …).
//! * `secret`: 32 random bytes as one big-endian base62 number (alphabet `0-9A-Za-z`),
//!   left-padded with `0` to 43 characters.
//! * `checksum`: CRC32 (IEEE) of the ASCII bytes before it, in base62 left-padded to 6 characters.
//!
//! The checksum lets keyward reject typos and garbage without a store lookup, and lets secret
//! scanners find keyward keys with almost no false positives using [`SCANNER_REGEX`] and then
//! [`ParsedKey::parse`]. Parsing never allocates and never panics, whatever the input.

use std::fmt;

/// Number of base62 characters that encode the 32-byte secret.
pub const SECRET_CHARS: usize = 43;
/// Number of base62 characters that encode the CRC32 checksum.
pub const CHECKSUM_CHARS: usize = 6;
/// Secret and checksum together: the part after the second `_`.
pub const BODY_CHARS: usize = SECRET_CHARS + CHECKSUM_CHARS;
/// The longest possible key: an 8-character prefix and environment.
pub const MAX_KEY_LEN: usize = 8 + 1 + 8 + 1 + BODY_CHARS;
/// How many characters of the secret the displayable `start` keeps.
pub const START_SECRET_CHARS: usize = 4;

/// A regular expression that finds candidate keyward keys in text; confirm with the checksum.
pub const SCANNER_REGEX: &str = r"\b[a-z0-9]{1,8}_[a-z0-9]{1,8}_[0-9A-Za-z]{49}\b";

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Why a string is not a well-formed key. Carries no part of the input, so it is safe to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MalformedKey {
    #[error("the key has the wrong length")]
    Length,
    #[error("the key does not have the form <prefix>_<env>_<secret>")]
    Shape,
    #[error("the key's prefix or environment is not 1-8 characters of [a-z0-9]")]
    Segment,
    #[error("the key's secret contains a character outside base62")]
    Alphabet,
    #[error("the key's secret is out of range")]
    Range,
    #[error("the key's checksum does not match")]
    Checksum,
}

/// A key that passed every structural check. It borrows the presented text and never prints it:
/// `Debug` shows only the displayable start.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ParsedKey<'a> {
    text: &'a str,
    prefix_len: usize,
    env_len: usize,
}

impl<'a> ParsedKey<'a> {
    /// Checks length, shape, alphabet, the secret's range and the checksum.
    pub fn parse(text: &'a str) -> Result<Self, MalformedKey> {
        let bytes = text.as_bytes();
        if bytes.len() < 1 + 1 + 1 + 1 + BODY_CHARS || bytes.len() > MAX_KEY_LEN {
            return Err(MalformedKey::Length);
        }
        let prefix_len = bytes
            .iter()
            .position(|&b| b == b'_')
            .ok_or(MalformedKey::Shape)?;
        let after_prefix = bytes.get(prefix_len + 1..).ok_or(MalformedKey::Shape)?;
        let env_len = after_prefix
            .iter()
            .position(|&b| b == b'_')
            .ok_or(MalformedKey::Shape)?;
        let body = after_prefix.get(env_len + 1..).ok_or(MalformedKey::Shape)?;
        if body.len() != BODY_CHARS {
            return Err(MalformedKey::Length);
        }
        let prefix = bytes.get(..prefix_len).ok_or(MalformedKey::Shape)?;
        let env = after_prefix.get(..env_len).ok_or(MalformedKey::Shape)?;
        if !is_segment(prefix) || !is_segment(env) {
            return Err(MalformedKey::Segment);
        }
        let (secret, checksum) = body.split_at(SECRET_CHARS);
        check_secret_range(secret)?;
        let expected = decode_base62_u64(checksum).ok_or(MalformedKey::Alphabet)?;
        let signed = bytes
            .get(..bytes.len() - CHECKSUM_CHARS)
            .ok_or(MalformedKey::Shape)?;
        if u64::from(crc32fast::hash(signed)) != expected {
            return Err(MalformedKey::Checksum);
        }
        Ok(ParsedKey {
            text,
            prefix_len,
            env_len,
        })
    }

    /// The whole key as presented. Only for hashing: never log or store it.
    pub fn expose(&self) -> &'a str {
        self.text
    }

    pub fn prefix(&self) -> &'a str {
        self.text.get(..self.prefix_len).unwrap_or_default()
    }

    pub fn environment(&self) -> &'a str {
        let start = self.prefix_len + 1;
        self.text
            .get(start..start + self.env_len)
            .unwrap_or_default()
    }

    /// The displayable start: prefix, environment and the first four characters of the secret.
    pub fn start(&self) -> &'a str {
        let end = self.prefix_len + 1 + self.env_len + 1 + START_SECRET_CHARS;
        self.text.get(..end).unwrap_or_default()
    }
}

impl fmt::Debug for ParsedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ParsedKey({}…)", self.start())
    }
}

/// Writes a key from its parts; `secret` is the 32 random bytes.
///
/// The caller owns the returned string and is responsible for treating it as a secret.
pub fn encode_key(prefix: &KeyPrefix, env: &EnvironmentName, secret: &[u8; 32]) -> String {
    let mut out = String::with_capacity(prefix.0.len() + env.0.len() + 2 + BODY_CHARS);
    out.push_str(&prefix.0);
    out.push('_');
    out.push_str(&env.0);
    out.push('_');
    out.push_str(&encode_base62_256(secret));
    let crc = crc32fast::hash(out.as_bytes());
    push_base62_padded(&mut out, u64::from(crc), CHECKSUM_CHARS);
    out
}

fn is_segment(segment: &[u8]) -> bool {
    (1..=8).contains(&segment.len())
        && segment
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn base62_digit(byte: u8) -> Option<u64> {
    match byte {
        b'0'..=b'9' => Some(u64::from(byte - b'0')),
        b'A'..=b'Z' => Some(u64::from(byte - b'A') + 10),
        b'a'..=b'z' => Some(u64::from(byte - b'a') + 36),
        _ => None,
    }
}

fn decode_base62_u64(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |acc, &b| {
        acc.checked_mul(62)?.checked_add(base62_digit(b)?)
    })
}

/// 2^256 written with 43 base62 digits (as digit values), most significant first. 62^43 is a
/// little above 2^256, so not every 43-digit string is a 32-byte secret: one is exactly when its
/// digits, compared as a number, are below these.
#[allow(
    clippy::indexing_slicing,
    reason = "evaluated at compile time: an index out of bounds fails the build"
)]
const SECRET_LIMIT: [u8; SECRET_CHARS] = {
    // 2^256 as 33 big-endian bytes, divided by 62 once per digit.
    let mut number = [0u8; 33];
    number[0] = 1;
    let mut digits = [0u8; SECRET_CHARS];
    let mut slot = SECRET_CHARS;
    while slot > 0 {
        slot -= 1;
        let mut remainder = 0u32;
        let mut i = 0;
        while i < number.len() {
            let acc = (remainder << 8) | number[i] as u32;
            number[i] = (acc / 62) as u8;
            remainder = acc % 62;
            i += 1;
        }
        digits[slot] = remainder as u8;
    }
    // Nothing left over: 2^256 has at most 43 base62 digits.
    let mut i = 0;
    while i < number.len() {
        assert!(number[i] == 0);
        i += 1;
    }
    digits
};

/// Verifies that the 43 base62 digits encode a number below 2^256, i.e. 32 bytes: every byte in
/// the alphabet (that error first), then the digits compared with [`SECRET_LIMIT`].
fn check_secret_range(digits: &[u8]) -> Result<(), MalformedKey> {
    if digits.len() != SECRET_CHARS {
        return Err(MalformedKey::Range);
    }
    // Whether the digits so far are equal to the limit's, below, or above it.
    let mut order = std::cmp::Ordering::Equal;
    for (&b, &limit) in digits.iter().zip(SECRET_LIMIT.iter()) {
        let digit = base62_digit(b).ok_or(MalformedKey::Alphabet)?;
        if order == std::cmp::Ordering::Equal {
            order = (digit as u8).cmp(&limit);
        }
    }
    if order == std::cmp::Ordering::Less {
        Ok(())
    } else {
        Err(MalformedKey::Range)
    }
}

fn encode_base62_256(bytes: &[u8; 32]) -> String {
    let mut number = *bytes;
    let mut digits = [b'0'; SECRET_CHARS];
    for slot in digits.iter_mut().rev() {
        let mut remainder = 0u32;
        for byte in number.iter_mut() {
            let acc = (remainder << 8) | u32::from(*byte);
            *byte = (acc / 62) as u8; // acc < 62 * 256, so the quotient fits in a byte
            remainder = acc % 62;
        }
        *slot = ALPHABET.get(remainder as usize).copied().unwrap_or(b'0');
    }
    digits.iter().map(|&b| char::from(b)).collect()
}

fn push_base62_padded(out: &mut String, mut value: u64, width: usize) {
    let mut digits = vec![b'0'; width];
    for slot in digits.iter_mut().rev() {
        *slot = ALPHABET.get((value % 62) as usize).copied().unwrap_or(b'0');
        value /= 62;
    }
    out.extend(digits.iter().map(|&b| char::from(b)));
}

macro_rules! segment_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Accepts 1-8 characters of `[a-z0-9]`.
            pub fn parse(text: &str) -> Result<Self, InvalidSegment> {
                if is_segment(text.as_bytes()) {
                    Ok($name(text.to_owned()))
                } else {
                    Err(InvalidSegment { what: $what })
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                $name::parse(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

segment_type!(
    /// An environment's short name, which is also its segment in every key (`live`, `test`).
    EnvironmentName,
    "environment"
);
segment_type!(
    /// A service's key prefix (`kw`).
    KeyPrefix,
    "prefix"
);

/// A name that is not 1-8 characters of `[a-z0-9]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{what} must be 1-8 characters of [a-z0-9]")]
pub struct InvalidSegment {
    what: &'static str,
}

#[cfg(test)]
mod tests;
