//! The only keyward crate that touches cryptography and the OS random number generator.
//!
//! It generates keys and identifiers, computes the HMAC under which keys are stored, hashes audit
//! entries, compares secrets in constant time, and defines the types that hold secrets: each is
//! zeroized on drop and prints `[redacted]` in `Debug`. It does no I/O beyond reading the OS
//! CSPRNG, and knows nothing of storage or HTTP.

use std::fmt;

pub mod barrier;
pub mod webhook;

use hmac::{Hmac, Mac};
use keyward_core::key::encode_key;
use keyward_core::{EnvironmentName, KeyHash, KeyId, KeyPrefix, Timestamp};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// The OS random number generator failed; nothing secret can be made without it.
#[derive(Debug, Clone, Copy)]
pub struct RandomUnavailable;

impl fmt::Display for RandomUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the operating system's random number generator is unavailable")
    }
}

impl std::error::Error for RandomUnavailable {}

fn random<const N: usize>() -> Result<Zeroizing<[u8; N]>, RandomUnavailable> {
    let mut bytes = Zeroizing::new([0u8; N]);
    getrandom::fill(bytes.as_mut()).map_err(|_| RandomUnavailable)?;
    Ok(bytes)
}

/// A plaintext API key. It exists in memory only between generation and the response that shows
/// it once, or between a request and its verification.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct PlaintextKey(String);

impl PlaintextKey {
    /// Generates a key for `prefix` and `env` from 32 bytes of the OS CSPRNG.
    pub fn generate(prefix: &KeyPrefix, env: &EnvironmentName) -> Result<Self, RandomUnavailable> {
        let secret = random::<32>()?;
        Ok(PlaintextKey(encode_key(prefix, env, &secret)))
    }

    /// Wraps a key presented by a client, so that it is zeroized when dropped.
    pub fn from_presented(text: String) -> Self {
        PlaintextKey(text)
    }

    /// The key's text: to show once or to hash, never to log.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PlaintextKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PlaintextKey([redacted])")
    }
}

/// An environment's HMAC secret: 32 random bytes.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct HmacSecret([u8; 32]);

impl HmacSecret {
    pub fn generate() -> Result<Self, RandomUnavailable> {
        Ok(HmacSecret(*random::<32>()?))
    }

    /// Reads a secret written by [`HmacSecret::to_hex`].
    pub fn from_hex(text: &str) -> Option<Self> {
        let bytes = Zeroizing::new(decode_hex(text)?);
        let array: [u8; 32] = bytes.as_slice().try_into().ok()?;
        Some(HmacSecret(array))
    }

    /// The secret as hex, for the data dir's secrets file only.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex(&self.0))
    }
}

impl fmt::Debug for HmacSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HmacSecret([redacted])")
    }
}

/// Computes key hashes under one environment's secret. The keyed HMAC state is prepared once,
/// so each hash costs two SHA-256 compressions instead of four.
#[derive(Clone)]
pub struct KeyHasher {
    keyed: Hmac<Sha256>,
}

impl KeyHasher {
    pub fn new(secret: &HmacSecret) -> Self {
        // HMAC accepts keys of any length; 32 bytes cannot be rejected.
        let keyed = match <Hmac<Sha256> as Mac>::new_from_slice(&secret.0) {
            Ok(mac) => mac,
            Err(_) => unreachable_hmac(),
        };
        KeyHasher { keyed }
    }

    pub fn hash(&self, key: &str) -> KeyHash {
        let mut mac = self.keyed.clone();
        mac.update(key.as_bytes());
        KeyHash(mac.finalize().into_bytes().into())
    }
}

#[cold]
pub(crate) fn unreachable_hmac() -> ! {
    #[allow(clippy::panic)]
    {
        panic!("HMAC-SHA256 accepts keys of every length")
    }
}

impl Drop for KeyHasher {
    fn drop(&mut self) {
        // The keyed HMAC state is derived from the environment's secret, and RustCrypto's HMAC
        // does not zeroize. Overwrite it in place with a state keyed by zeros; `black_box` keeps
        // the compiler from dropping the store as dead. (Copies a move left behind are beyond
        // reach, as they are for `zeroize` itself.)
        if let Ok(blank) = <Hmac<Sha256> as Mac>::new_from_slice(&[0u8; 32]) {
            self.keyed = blank;
        }
        std::hint::black_box(&self.keyed);
    }
}

impl fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHasher([redacted])")
    }
}

/// Hex SHA-256 of `prev_hash` followed by `canonical`: the audit chain's link.
pub fn audit_hash(prev_hash: &str, canonical: &[u8]) -> String {
    let mut digest = Sha256::new();
    digest.update(prev_hash.as_bytes());
    digest.update(canonical);
    hex(&digest.finalize())
}

/// Compares two secrets (or digests of them) in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Makes key identifiers: UUIDv7 with a 12-bit counter after the millisecond timestamp
/// (RFC 9562, method 1), so identifiers made by one generator sort in the order they were made,
/// even within one millisecond or when the clock stands still or steps back.
#[derive(Debug, Default)]
pub struct KeyIds {
    last: std::sync::Mutex<(u64, u16)>,
}

impl KeyIds {
    pub fn next(&self, now: Timestamp) -> Result<KeyId, RandomUnavailable> {
        let bytes = random::<10>()?;
        let now_ms = u64::try_from(now.unix_ms()).unwrap_or(0);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let (last_ms, last_counter) = *last;
        let (ms, counter) = if now_ms > last_ms {
            (now_ms, 0)
        } else if last_counter < 0x0FFF {
            (last_ms, last_counter + 1)
        } else {
            (last_ms + 1, 0)
        };
        *last = (ms, counter);
        let [high, low] = counter.to_be_bytes();
        // Identifier randomness is not secret; it leaves the zeroizing buffer on purpose.
        let [_, _, r2, r3, r4, r5, r6, r7, r8, r9] = *bytes;
        let bytes = [high, low, r2, r3, r4, r5, r6, r7, r8, r9];
        Ok(KeyId(
            uuid::Builder::from_unix_timestamp_millis(ms, &bytes).into_uuid(),
        ))
    }
}

/// A random identifier for a request, as 32 hex characters.
pub fn new_request_id() -> Result<String, RandomUnavailable> {
    Ok(hex(random::<16>()?.as_ref()))
}

/// Lowercase hex of SHA-256 over `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Bytes from lowercase or uppercase hex; `None` for anything else.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A random byte, for jitter (never for secrets: they have their own types).
pub fn random_byte() -> u8 {
    random::<1>().map_or(128, |b| b.first().copied().unwrap_or(128))
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        for nibble in [b >> 4, b & 0x0f] {
            out.push(char::from(
                DIGITS.get(usize::from(nibble)).copied().unwrap_or(b'0'),
            ));
        }
    }
    out
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.as_bytes()
        .chunks(2)
        .map(|pair| {
            let s = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(s, 16).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use keyward_core::ParsedKey;

    use super::*;

    #[test]
    fn generated_keys_parse_and_differ() {
        let prefix = KeyPrefix::parse("kw").unwrap();
        let env = EnvironmentName::parse("live").unwrap();
        let a = PlaintextKey::generate(&prefix, &env).unwrap();
        let b = PlaintextKey::generate(&prefix, &env).unwrap();
        assert_ne!(a.expose(), b.expose());
        let parsed = ParsedKey::parse(a.expose()).unwrap();
        assert_eq!(parsed.environment(), "live");
    }

    #[test]
    fn secrets_never_print() {
        let prefix = KeyPrefix::parse("kw").unwrap();
        let env = EnvironmentName::parse("live").unwrap();
        let key = PlaintextKey::generate(&prefix, &env).unwrap();
        let secret = HmacSecret::generate().unwrap();
        let printed = format!("{key:?} {secret:?} {:?}", KeyHasher::new(&secret));
        assert!(!printed.contains(&key.expose()[8..]));
        assert!(!printed.contains(secret.to_hex().as_str()));
        assert!(printed.contains("[redacted]"));
    }

    #[test]
    fn hmac_depends_on_secret_and_key() {
        let s1 = KeyHasher::new(&HmacSecret::generate().unwrap());
        let s2 = KeyHasher::new(&HmacSecret::generate().unwrap());
        assert_eq!(s1.hash("a"), s1.hash("a"));
        assert_ne!(s1.hash("a"), s1.hash("b"));
        assert_ne!(s1.hash("a"), s2.hash("a"));
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        // RFC 4231 uses the 4-byte key "Jefe"; HMAC pads keys with zeros, so the 32-byte
        // zero-padded key gives the same result.
        let hasher = KeyHasher::new(&HmacSecret(key));
        assert_eq!(
            hex(&hasher.hash("what do ya want for nothing?").0),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn hex_round_trip() {
        let secret = HmacSecret::generate().unwrap();
        let again = HmacSecret::from_hex(&secret.to_hex()).unwrap();
        assert_eq!(secret.0, again.0);
        assert!(HmacSecret::from_hex("zz").is_none());
        assert!(HmacSecret::from_hex("abc").is_none());
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn key_ids_sort_in_creation_order() {
        let ids = KeyIds::default();
        let mut made = Vec::new();
        for ms in [1_000, 2_000, 2_000, 2_000, 1_500, 3_000] {
            made.push(ids.next(Timestamp::from_unix_ms(ms)).unwrap());
        }
        for _ in 0..5000 {
            made.push(ids.next(Timestamp::from_unix_ms(3_000)).unwrap());
        }
        assert!(made.windows(2).all(|w| w[0] < w[1]));
        assert!(made.iter().all(|id| id.0.get_version_num() == 7));
    }
}
