//! Webhook signing secrets and signatures, by the Standard Webhooks specification: secrets are
//! `whsec_` followed by the base64 of the key bytes; a signature is `v1,` followed by the base64
//! of HMAC-SHA256 over `{id}.{timestamp}.{body}`, and several are separated by spaces.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::RandomUnavailable;

const PREFIX: &str = "whsec_";

/// A webhook signing secret: shown once when made, sealed at rest, never logged.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SigningSecret(Vec<u8>);

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(…)")
    }
}

impl SigningSecret {
    /// 32 bytes from the OS CSPRNG.
    pub fn generate() -> Result<Self, RandomUnavailable> {
        let mut bytes = vec![0u8; 32];
        getrandom::fill(&mut bytes).map_err(|_| RandomUnavailable)?;
        Ok(SigningSecret(bytes))
    }

    /// Reads `whsec_<base64>` (as stored sealed, or as given back by an operator).
    pub fn from_text(text: &str) -> Option<Self> {
        let encoded = text.strip_prefix(PREFIX)?;
        let bytes = STANDARD.decode(encoded).ok()?;
        (bytes.len() >= 24).then_some(SigningSecret(bytes))
    }

    /// `whsec_<base64>`: to show once, or to seal.
    pub fn to_text(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{PREFIX}{}", STANDARD.encode(&self.0)))
    }

    /// `v1,<base64 signature>` of one message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.0) else {
            // HMAC takes keys of any length; unreachable.
            return String::new();
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// The `webhook-signature` header for `secrets` (newest first; during a rotation both sign).
pub fn signature_header(
    secrets: &[SigningSecret],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .map(|s| s.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_specification_example_signs_as_published() {
        // The example of the Standard Webhooks specification.
        let secret = SigningSecret::from_text("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_round_trip_and_short_or_foreign_ones_are_refused() {
        let secret = SigningSecret::generate().unwrap();
        let text = secret.to_text();
        assert!(text.starts_with("whsec_"));
        let again = SigningSecret::from_text(&text).unwrap();
        assert_eq!(again.sign("a", 1, b"b"), secret.sign("a", 1, b"b"));
        assert!(SigningSecret::from_text("whsec_c2hvcnQ=").is_none());
        assert!(SigningSecret::from_text("sk_live_abc").is_none());
        assert_eq!(format!("{secret:?}"), "SigningSecret(…)");
        let header = signature_header(&[secret, again], "a", 1, b"b");
        assert_eq!(header.split(' ').count(), 2);
    }
}
