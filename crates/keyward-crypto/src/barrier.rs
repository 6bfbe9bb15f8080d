//! The barrier: authenticated encryption of everything sensitive that keyward stores.
//!
//! # Construction
//! Each sealed value is AES-256-GCM under a key used for that one value only. The key and the
//! 96-bit nonce are derived with HKDF-SHA256 from a keyring term's 256-bit key and a fresh random
//! 256-bit salt stored beside the ciphertext:
//!
//! ```text
//! ciphertext = 0x01 | term (u32 BE) | salt (32) | AES-256-GCM(k, n, plaintext, aad) (len + 16)
//! (k, n)     = HKDF-SHA256(ikm = term key, salt, info = "keyward barrier v1"), 32 + 12 bytes
//! aad        = 0x01 | term | len-prefixed table, record id, field
//! ```
//!
//! NIST SP 800-38D caps random 96-bit nonces at 2^32 messages per key, because a repeated nonce
//! under one key reveals the XOR of two plaintexts and the authentication key. Here no key ever
//! encrypts two messages, so that cap does not apply; two values share a key only if two random
//! 256-bit salts collide, which takes about 2^128 writes. XChaCha20-Poly1305 would give a similar
//! margin (a 192-bit nonce), but AES-GCM runs on the CPU's AES instructions and is the FIPS choice.
//!
//! The associated data binds each ciphertext to its record, field and term, so a ciphertext moved
//! to another record, another field, or relabelled with another term fails to open.
//!
//! # Keys
//! * A [`Keyring`] holds numbered terms; new values are sealed under the newest, every term opens.
//!   Each environment has its own keyring, and each keyring is sealed under the root key.
//! * The [`RootKey`] is sealed under the [`UnsealKey`], which exists in memory only while the
//!   vault unseals: combined from Shamir shares ([`split`], [`combine`]) or read from a file.
//! * The [`IntegrityKey`], sealed under the root key, tags stored security state (key records,
//!   policies, roles, plans, the audit head) with HMAC-SHA256, so edits made without the unseal
//!   key are detected. A root key sealed in the current format ([`RootFormat::Integrity`])
//!   promises that the vault has one: its absence is then tampering, not an old vault.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::{HmacSecret, RandomUnavailable, random};

const FORMAT: u8 = 1;
const SALT_LEN: usize = 32;
const HEADER_LEN: usize = 1 + 4 + SALT_LEN;
const TAG_LEN: usize = 16;
const INFO: &[u8] = b"keyward barrier v1";

/// What a ciphertext belongs to; it is authenticated with the ciphertext.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The kind of record: `environment`, `secret`, `keyring` …
    pub table: &'a str,
    /// The record's identity within its kind.
    pub id: &'a str,
    /// Which of the record's values.
    pub field: &'a str,
}

/// Why a value could not be opened. Deliberately without detail: a tampered ciphertext, a
/// ciphertext moved to another record and a wrong key look the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BarrierError {
    #[error("integrity check failed: the stored value was altered, moved or sealed by another key")]
    Integrity,
    #[error("sealed under keyring term {0}, which this keyring does not hold")]
    UnknownTerm(u32),
    #[error("the operating system's random number generator is unavailable")]
    Random,
}

impl From<RandomUnavailable> for BarrierError {
    fn from(_: RandomUnavailable) -> Self {
        BarrierError::Random
    }
}

/// 32 bytes of key material, zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
struct KeyBytes([u8; 32]);

impl KeyBytes {
    fn generate() -> Result<Self, RandomUnavailable> {
        Ok(KeyBytes(*random::<32>()?))
    }
}

fn aad(header: &[u8], context: &Context<'_>) -> Vec<u8> {
    let mut aad = Vec::with_capacity(5 + 12 + context.table.len() + context.id.len() + 16);
    aad.extend_from_slice(header.get(..5).unwrap_or(header));
    for part in [context.table, context.id, context.field] {
        aad.extend_from_slice(&(part.len() as u32).to_be_bytes());
        aad.extend_from_slice(part.as_bytes());
    }
    aad
}

fn cipher(key: &KeyBytes, salt: &[u8]) -> (Aes256Gcm, Zeroizing<[u8; 12]>) {
    let hkdf = Hkdf::<Sha256>::new(Some(salt), &key.0);
    let mut okm = Zeroizing::new([0u8; 44]);
    // 44 bytes is far below HKDF-SHA256's limit of 255 * 32.
    let _ = hkdf.expand(INFO, okm.as_mut());
    let mut k = Zeroizing::new([0u8; 32]);
    let mut n = Zeroizing::new([0u8; 12]);
    k.copy_from_slice(okm.get(..32).unwrap_or(&[0; 32]));
    n.copy_from_slice(okm.get(32..).unwrap_or(&[0; 12]));
    (Aes256Gcm::new(k.as_ref().into()), n)
}

fn seal_with(
    key: &KeyBytes,
    term: u32,
    context: &Context<'_>,
    plaintext: &[u8],
) -> Result<Vec<u8>, BarrierError> {
    let salt = random::<SALT_LEN>()?;
    let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
    out.push(FORMAT);
    out.extend_from_slice(&term.to_be_bytes());
    out.extend_from_slice(salt.as_ref());
    let (cipher, nonce) = cipher(key, salt.as_ref());
    let aad = aad(&out, context);
    let sealed = cipher
        .encrypt(
            Nonce::from_slice(nonce.as_ref()),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .map_err(|_| BarrierError::Integrity)?;
    out.extend_from_slice(&sealed);
    Ok(out)
}

fn open_with(
    key: &KeyBytes,
    context: &Context<'_>,
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, BarrierError> {
    if ciphertext.len() < HEADER_LEN + TAG_LEN || ciphertext.first() != Some(&FORMAT) {
        return Err(BarrierError::Integrity);
    }
    let (header, body) = ciphertext.split_at(HEADER_LEN);
    let salt = header.get(5..).ok_or(BarrierError::Integrity)?;
    let (cipher, nonce) = cipher(key, salt);
    let aad = aad(header, context);
    cipher
        .decrypt(
            Nonce::from_slice(nonce.as_ref()),
            Payload {
                msg: body,
                aad: &aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| BarrierError::Integrity)
}

/// The keyring term a ciphertext was sealed under, read from its header.
pub fn term_of(ciphertext: &[u8]) -> Option<u32> {
    if ciphertext.first() != Some(&FORMAT) {
        return None;
    }
    let bytes: [u8; 4] = ciphertext.get(1..5)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

#[derive(Clone)]
struct Term {
    number: u32,
    created_ms: i64,
    key: KeyBytes,
}

/// Numbered data keys. The newest seals; every term opens what it sealed.
#[derive(Clone)]
pub struct Keyring {
    terms: Vec<Term>,
}

/// A term as shown to operators: never the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermInfo {
    pub term: u32,
    pub created_ms: i64,
}

impl Keyring {
    /// A keyring with one fresh term, number 1.
    pub fn generate(now_ms: i64) -> Result<Self, RandomUnavailable> {
        Ok(Keyring {
            terms: vec![Term {
                number: 1,
                created_ms: now_ms,
                key: KeyBytes::generate()?,
            }],
        })
    }

    /// Adds a fresh term for new writes and returns its number.
    pub fn rotate(&mut self, now_ms: i64) -> Result<u32, RandomUnavailable> {
        let number = self.newest().saturating_add(1);
        self.terms.push(Term {
            number,
            created_ms: now_ms,
            key: KeyBytes::generate()?,
        });
        Ok(number)
    }

    /// Adds terms, fresh, until the newest is `term`: keyrings of one vault rotate together.
    pub fn rotate_to(&mut self, term: u32, now_ms: i64) -> Result<(), RandomUnavailable> {
        while self.newest() < term {
            self.rotate(now_ms)?;
        }
        Ok(())
    }

    pub fn newest(&self) -> u32 {
        self.terms.last().map_or(0, |t| t.number)
    }

    pub fn terms(&self) -> Vec<TermInfo> {
        self.terms
            .iter()
            .map(|t| TermInfo {
                term: t.number,
                created_ms: t.created_ms,
            })
            .collect()
    }

    fn newest_term(&self) -> Result<&Term, BarrierError> {
        self.terms.last().ok_or(BarrierError::UnknownTerm(0))
    }

    /// Seals `plaintext` for `context` under the newest term.
    pub fn seal(&self, context: &Context<'_>, plaintext: &[u8]) -> Result<Vec<u8>, BarrierError> {
        let term = self.newest_term()?;
        seal_with(&term.key, term.number, context, plaintext)
    }

    /// Opens a value sealed by [`Keyring::seal`] for the same `context`.
    pub fn open(
        &self,
        context: &Context<'_>,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BarrierError> {
        let number = term_of(ciphertext).ok_or(BarrierError::Integrity)?;
        let term = self
            .terms
            .iter()
            .find(|t| t.number == number)
            .ok_or(BarrierError::UnknownTerm(number))?;
        open_with(&term.key, context, ciphertext)
    }

    pub fn seal_hmac_secret(
        &self,
        context: &Context<'_>,
        secret: &HmacSecret,
    ) -> Result<Vec<u8>, BarrierError> {
        self.seal(context, &secret.0)
    }

    pub fn open_hmac_secret(
        &self,
        context: &Context<'_>,
        ciphertext: &[u8],
    ) -> Result<HmacSecret, BarrierError> {
        let bytes = self.open(context, ciphertext)?;
        let array: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| BarrierError::Integrity)?;
        Ok(HmacSecret(array))
    }

    fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(4 + self.terms.len() * 44));
        out.extend_from_slice(&(self.terms.len() as u32).to_be_bytes());
        for term in &self.terms {
            out.extend_from_slice(&term.number.to_be_bytes());
            out.extend_from_slice(&term.created_ms.to_be_bytes());
            out.extend_from_slice(&term.key.0);
        }
        out
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let count = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        let body = bytes.get(4..)?;
        if body.len() != count.checked_mul(44)? {
            return None;
        }
        let mut terms = Vec::with_capacity(count);
        for chunk in body.chunks_exact(44) {
            let number = u32::from_be_bytes(chunk.get(..4)?.try_into().ok()?);
            let created_ms = i64::from_be_bytes(chunk.get(4..12)?.try_into().ok()?);
            let key = KeyBytes(chunk.get(12..44)?.try_into().ok()?);
            if terms.last().is_some_and(|t: &Term| t.number >= number) {
                return None;
            }
            terms.push(Term {
                number,
                created_ms,
                key,
            });
        }
        (!terms.is_empty()).then_some(Keyring { terms })
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("terms", &self.terms().len())
            .field("newest", &self.newest())
            .finish_non_exhaustive()
    }
}

/// The key that seals every keyring. It never changes for the life of a vault (rekeying changes
/// the unseal key that seals it; rotation adds keyring terms).
#[derive(Clone)]
pub struct RootKey(KeyBytes);

impl RootKey {
    pub fn generate() -> Result<Self, RandomUnavailable> {
        Ok(RootKey(KeyBytes::generate()?))
    }

    /// Seals `keyring` as the keyring of `scope`.
    pub fn seal_keyring(&self, scope: &str, keyring: &Keyring) -> Result<Vec<u8>, BarrierError> {
        seal_with(&self.0, 0, &keyring_context(scope), &keyring.to_bytes())
    }

    pub fn open_keyring(&self, scope: &str, ciphertext: &[u8]) -> Result<Keyring, BarrierError> {
        let bytes = open_with(&self.0, &keyring_context(scope), ciphertext)?;
        Keyring::from_bytes(&bytes).ok_or(BarrierError::Integrity)
    }

    pub fn seal_integrity_key(&self, key: &IntegrityKey) -> Result<Vec<u8>, BarrierError> {
        seal_with(&self.0, 0, &INTEGRITY_CONTEXT, &key.bytes.0)
    }

    pub fn open_integrity_key(&self, ciphertext: &[u8]) -> Result<IntegrityKey, BarrierError> {
        let bytes = open_with(&self.0, &INTEGRITY_CONTEXT, ciphertext)?;
        let array: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| BarrierError::Integrity)?;
        Ok(IntegrityKey::from_bytes(KeyBytes(array)))
    }
}

/// Tags stored security state: HMAC-SHA256 over a domain label and the record's canonical
/// bytes. The keyed state is made once; it is overwritten when the key is dropped (at seal).
pub struct IntegrityKey {
    bytes: KeyBytes,
    keyed: hmac::Hmac<Sha256>,
}

impl IntegrityKey {
    pub fn generate() -> Result<Self, RandomUnavailable> {
        Ok(IntegrityKey::from_bytes(KeyBytes::generate()?))
    }

    fn from_bytes(bytes: KeyBytes) -> Self {
        use hmac::Mac;
        // HMAC accepts keys of any length; 32 bytes cannot be rejected.
        let keyed = match <hmac::Hmac<Sha256> as Mac>::new_from_slice(&bytes.0) {
            Ok(mac) => mac,
            Err(_) => crate::unreachable_hmac(),
        };
        IntegrityKey { bytes, keyed }
    }

    /// The tag of `bytes` in `domain` (`key`, `role`, `audit-checkpoint`, …): a tag made for one
    /// kind of record never passes for another.
    pub fn tag(&self, domain: &str, bytes: &[u8]) -> [u8; 32] {
        use hmac::Mac;
        let mut mac = self.keyed.clone();
        mac.update(&(domain.len() as u32).to_be_bytes());
        mac.update(domain.as_bytes());
        mac.update(bytes);
        mac.finalize().into_bytes().into()
    }

    /// Whether `tag` is the tag of `bytes` in `domain`, compared in constant time.
    pub fn verify(&self, domain: &str, bytes: &[u8], tag: &[u8; 32]) -> bool {
        crate::constant_time_eq(&self.tag(domain, bytes), tag)
    }
}

impl Drop for IntegrityKey {
    fn drop(&mut self) {
        // The hmac crate keeps the keyed pads in plain memory: overwrite them with a state
        // keyed by nothing secret.
        use hmac::Mac;
        if let Ok(blank) = <hmac::Hmac<Sha256> as Mac>::new_from_slice(&[0u8; 32]) {
            self.keyed = blank;
        }
        std::hint::black_box(&self.keyed);
    }
}

impl fmt::Debug for IntegrityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IntegrityKey([redacted])")
    }
}

fn keyring_context(scope: &str) -> Context<'_> {
    Context {
        table: "keyring",
        id: scope,
        field: "terms",
    }
}

impl fmt::Debug for RootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RootKey([redacted])")
    }
}

/// The root key as sealed before integrity keys: opened, never written.
const LEGACY_ROOT_CONTEXT: Context<'static> = Context {
    table: "vault",
    id: "root",
    field: "key",
};

/// The root key of a vault with an integrity key.
const ROOT_CONTEXT: Context<'static> = Context {
    table: "vault",
    id: "root",
    field: "key+integrity",
};

const INTEGRITY_CONTEXT: Context<'static> = Context {
    table: "vault",
    id: "integrity",
    field: "key",
};

/// How a stored root key was sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootFormat {
    /// Before integrity keys: the vault has none yet and may adopt one.
    Legacy,
    /// The vault has an integrity key.
    Integrity,
}

/// The key that seals the root key: what Shamir shares reconstruct.
#[derive(Clone, PartialEq, Eq)]
pub struct UnsealKey(KeyBytes);

impl UnsealKey {
    pub fn generate() -> Result<Self, RandomUnavailable> {
        Ok(UnsealKey(KeyBytes::generate()?))
    }

    /// Seals the root key of a vault that has an integrity key.
    pub fn seal_root(&self, root: &RootKey) -> Result<Vec<u8>, BarrierError> {
        seal_with(&self.0, 0, &ROOT_CONTEXT, &root.0.0)
    }

    /// Seals the root key as vaults from before integrity keys did, to test their upgrade.
    #[cfg(feature = "legacy-format")]
    pub fn seal_root_legacy(&self, root: &RootKey) -> Result<Vec<u8>, BarrierError> {
        seal_with(&self.0, 0, &LEGACY_ROOT_CONTEXT, &root.0.0)
    }

    /// Opens the stored root key; [`BarrierError::Integrity`] means this is not the vault's
    /// unseal key (or the stored value was altered).
    pub fn open_root(&self, ciphertext: &[u8]) -> Result<RootKey, BarrierError> {
        self.open_root_with_format(ciphertext).map(|(root, _)| root)
    }

    /// [`UnsealKey::open_root`], saying how the root key was sealed.
    pub fn open_root_with_format(
        &self,
        ciphertext: &[u8],
    ) -> Result<(RootKey, RootFormat), BarrierError> {
        let (bytes, format) = match open_with(&self.0, &ROOT_CONTEXT, ciphertext) {
            Ok(bytes) => (bytes, RootFormat::Integrity),
            Err(BarrierError::Integrity) => (
                open_with(&self.0, &LEGACY_ROOT_CONTEXT, ciphertext)?,
                RootFormat::Legacy,
            ),
            Err(e) => return Err(e),
        };
        let array: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| BarrierError::Integrity)?;
        Ok((RootKey(KeyBytes(array)), format))
    }

    /// The key as text, for an unseal key file or environment variable: `kwunseal1-` and hex.
    pub fn to_text(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("kwunseal1-{}", crate::hex(&self.0.0)))
    }

    pub fn from_text(text: &str) -> Option<Self> {
        let hex = text.trim().strip_prefix("kwunseal1-")?;
        let bytes = Zeroizing::new(crate::decode_hex(hex)?);
        Some(UnsealKey(KeyBytes(bytes.as_slice().try_into().ok()?)))
    }
}

impl fmt::Debug for UnsealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UnsealKey([redacted])")
    }
}

/// Identifies one vault's shares, so a share of another vault is refused on sight. Not secret.
pub type VaultTag = [u8; 4];

pub fn new_vault_tag() -> Result<VaultTag, RandomUnavailable> {
    Ok(*random::<4>()?)
}

/// One Shamir share of an unseal key, parsed from its text form
/// `kws1-<vault tag, 8 hex>-<index, 2 hex><share, 64 hex>-<check, 8 hex>`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Share {
    tag: VaultTag,
    /// The x coordinate (1..=255) then the 32 y bytes.
    bytes: Vec<u8>,
}

/// Why a share's text was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ShareError {
    #[error("not a keyward unseal share (expected kws1-…); check for a typo")]
    Malformed,
    #[error("this share belongs to another keyward vault")]
    OtherVault,
}

impl Share {
    pub fn parse(text: &str, expected_tag: &VaultTag) -> Result<Self, ShareError> {
        let text = Zeroizing::new(text.trim().to_owned());
        let mut parts = text.split('-');
        let (Some("kws1"), Some(tag), Some(body), Some(check), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(ShareError::Malformed);
        };
        let tag: VaultTag = crate::decode_hex(tag)
            .and_then(|t| t.try_into().ok())
            .ok_or(ShareError::Malformed)?;
        let bytes = Zeroizing::new(crate::decode_hex(body).ok_or(ShareError::Malformed)?);
        if bytes.len() != 33 || bytes.first() == Some(&0) {
            return Err(ShareError::Malformed);
        }
        let expected_check = share_check(&tag, &bytes);
        if !crate::constant_time_eq(check.as_bytes(), expected_check.as_bytes()) {
            return Err(ShareError::Malformed);
        }
        if &tag != expected_tag {
            return Err(ShareError::OtherVault);
        }
        Ok(Share {
            tag,
            bytes: bytes.to_vec(),
        })
    }

    /// The share's index (1..=255): two shares with one index are the same share.
    pub fn index(&self) -> u8 {
        self.bytes.first().copied().unwrap_or(0)
    }

    pub fn to_text(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "kws1-{}-{}-{}",
            crate::hex(&self.tag),
            crate::hex(&self.bytes),
            share_check(&self.tag, &self.bytes)
        ))
    }
}

impl fmt::Debug for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Share(index {}, [redacted])", self.index())
    }
}

/// A typo check over the share's text, not a secret: the first 4 bytes of SHA-256.
fn share_check(tag: &VaultTag, bytes: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"keyward share v1");
    hasher.update(tag);
    hasher.update(bytes);
    crate::hex(hasher.finalize().get(..4).unwrap_or_default())
}

/// Splitting or combining failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ShamirError {
    #[error("shares must be 1 to 16 and the threshold 1 to shares; a threshold of 1 needs 1 share")]
    Parameters,
    #[error("the shares do not combine")]
    Combine,
    #[error("the operating system's random number generator is unavailable")]
    Random,
}

/// Splits `key` into `shares` Shamir shares over GF(256), any `threshold` of which rebuild it.
/// With one share the share is the key itself.
pub fn split(
    key: &UnsealKey,
    shares: u8,
    threshold: u8,
    tag: &VaultTag,
) -> Result<Vec<Share>, ShamirError> {
    if !(1..=16).contains(&shares)
        || !(1..=shares).contains(&threshold)
        || (threshold == 1 && shares != 1)
    {
        return Err(ShamirError::Parameters);
    }
    if shares == 1 {
        let mut bytes = vec![1u8];
        bytes.extend_from_slice(&key.0.0);
        return Ok(vec![Share { tag: *tag, bytes }]);
    }
    let rng = SeededRng::new().map_err(|_| ShamirError::Random)?;
    let parts =
        vsss_rs::Gf256::split_bytes(usize::from(threshold), usize::from(shares), key.0.0, rng)
            .map_err(|_| ShamirError::Parameters)?;
    Ok(parts
        .into_iter()
        .map(|bytes| Share { tag: *tag, bytes })
        .collect())
}

/// Rebuilds the key from `threshold` distinct shares. Any set of distinct shares combines to
/// *some* key: only opening the root key tells whether it is the right one.
pub fn combine(shares: &[Share]) -> Result<UnsealKey, ShamirError> {
    let key: Zeroizing<Vec<u8>> = match shares {
        [] => return Err(ShamirError::Combine),
        [one] => Zeroizing::new(one.bytes.get(1..).unwrap_or_default().to_vec()),
        many => {
            let parts: Vec<Zeroizing<Vec<u8>>> = many
                .iter()
                .map(|s| Zeroizing::new(s.bytes.clone()))
                .collect();
            let plain: Vec<Vec<u8>> = parts.iter().map(|p| p.to_vec()).collect();
            let result = vsss_rs::Gf256::combine_bytes(&plain);
            for mut p in plain {
                p.zeroize();
            }
            Zeroizing::new(result.map_err(|_| ShamirError::Combine)?)
        }
    };
    let array: [u8; 32] = key
        .as_slice()
        .try_into()
        .map_err(|_| ShamirError::Combine)?;
    Ok(UnsealKey(KeyBytes(array)))
}

/// A CSPRNG for Shamir coefficients: SHA-256 in counter mode over a 256-bit seed from the OS.
/// (vsss-rs wants an infallible `rand_core` 0.10 generator; the OS one can fail, so the seed is
/// read up front where a failure can be reported.)
struct SeededRng {
    seed: Zeroizing<[u8; 32]>,
    counter: u64,
    block: Zeroizing<[u8; 32]>,
    used: usize,
}

impl SeededRng {
    fn new() -> Result<Self, RandomUnavailable> {
        Ok(SeededRng {
            seed: random::<32>()?,
            counter: 0,
            block: Zeroizing::new([0; 32]),
            used: 32,
        })
    }

    fn next_byte(&mut self) -> u8 {
        if self.used == 32 {
            let mut hasher = Sha256::new();
            hasher.update(self.seed.as_ref());
            hasher.update(self.counter.to_be_bytes());
            self.block.copy_from_slice(&hasher.finalize());
            self.counter += 1;
            self.used = 0;
        }
        let byte = self.block.get(self.used).copied().unwrap_or(0);
        self.used += 1;
        byte
    }
}

impl rand_core::TryRng for SeededRng {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut bytes = [0u8; 4];
        self.try_fill_bytes(&mut bytes)?;
        Ok(u32::from_le_bytes(bytes))
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut bytes = [0u8; 8];
        self.try_fill_bytes(&mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for byte in dst {
            *byte = self.next_byte();
        }
        Ok(())
    }
}

impl rand_core::TryCryptoRng for SeededRng {}

#[cfg(test)]
mod tests;
