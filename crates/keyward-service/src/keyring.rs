//! The environments' HMAC secrets, ready to hash keys.

use keyward_core::EnvironmentName;
use keyward_crypto::{HmacSecret, KeyHasher};

/// One [`KeyHasher`] per environment. Each environment has its own secret, so a key can only
/// ever match rows of its own environment, even if rows were mixed.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    // A short list scanned linearly: faster than hashing for the handful of environments a
    // deployment has.
    hashers: Vec<(EnvironmentName, KeyHasher)>,
}

impl Keyring {
    pub fn new(secrets: impl IntoIterator<Item = (EnvironmentName, HmacSecret)>) -> Self {
        Keyring {
            hashers: secrets
                .into_iter()
                .map(|(env, secret)| (env, KeyHasher::new(&secret)))
                .collect(),
        }
    }

    /// Adds (or replaces) an environment's secret.
    pub fn add(&mut self, environment: EnvironmentName, secret: &HmacSecret) {
        self.hashers.retain(|(env, _)| *env != environment);
        self.hashers.push((environment, KeyHasher::new(secret)));
    }

    pub fn hasher(&self, environment: &str) -> Option<&KeyHasher> {
        self.hashers
            .iter()
            .find(|(env, _)| env.as_str() == environment)
            .map(|(_, hasher)| hasher)
    }

    pub fn environments(&self) -> impl Iterator<Item = &EnvironmentName> {
        self.hashers.iter().map(|(env, _)| env)
    }
}
