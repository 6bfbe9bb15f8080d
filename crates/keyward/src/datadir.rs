//! The data directory: the SQLite store, the environments' HMAC secrets and a lock file.
//!
//! ```text
//! <data dir>/keyward.db     the store (SQLite, WAL)
//! <data dir>/secrets.json   HMAC secrets per environment, mode 0600; never in the store file
//! <data dir>/lock           held by the serving process, so two servers never share a dir
//! ```

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use keyward_core::EnvironmentName;
use keyward_crypto::HmacSecret;
use keyward_service::Keyring;
use serde::{Deserialize, Serialize};

pub const DB_FILE: &str = "keyward.db";
pub const SECRETS_FILE: &str = "secrets.json";
const LOCK_FILE: &str = "lock";

#[derive(Debug)]
pub struct DataDir {
    root: PathBuf,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretsFile {
    version: u32,
    /// Environment name → hex HMAC secret.
    environments: BTreeMap<String, String>,
}

impl DataDir {
    pub fn new(root: &Path) -> Self {
        DataDir {
            root: root.to_owned(),
        }
    }

    pub fn db_path(&self) -> PathBuf {
        self.root.join(DB_FILE)
    }

    fn secrets_path(&self) -> PathBuf {
        self.root.join(SECRETS_FILE)
    }

    pub fn is_initialised(&self) -> bool {
        self.secrets_path().exists()
    }

    /// Refuses a directory that holds a store but lost its secrets: a new secret would make
    /// every stored key unverifiable.
    pub fn check_consistent(&self) -> anyhow::Result<()> {
        if !self.is_initialised() && self.db_path().exists() {
            bail!(
                "{} exists but {} is missing: without it no stored key can be verified; restore it from backup",
                self.db_path().display(),
                self.secrets_path().display()
            );
        }
        Ok(())
    }

    /// Creates the directory (mode 0700) if needed.
    pub fn create(&self) -> anyhow::Result<()> {
        fs::create_dir_all(&self.root)
            .with_context(|| format!("cannot create data dir {}", self.root.display()))?;
        restrict(&self.root, 0o700)?;
        Ok(())
    }

    /// Holds the data dir for this process until the returned file is dropped.
    pub fn lock(&self) -> anyhow::Result<File> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join(LOCK_FILE))
            .context("cannot open the data dir's lock file")?;
        if file.try_lock().is_err() {
            bail!("another keyward process is using {}", self.root.display());
        }
        Ok(file)
    }

    /// Generates a secret for each environment and writes them durably (write, fsync, rename).
    pub fn write_new_secrets(&self, environments: &[EnvironmentName]) -> anyhow::Result<Keyring> {
        let mut secrets = Vec::new();
        for env in environments {
            secrets.push((env.clone(), HmacSecret::generate()?));
        }
        self.write_secrets(&secrets)?;
        Ok(Keyring::new(secrets))
    }

    /// Replaces the secrets file with `secrets`, durably: a temp file is written and synced, then
    /// renamed over the old one, and the directory synced.
    fn write_secrets(&self, secrets: &[(EnvironmentName, HmacSecret)]) -> anyhow::Result<()> {
        let mut file = SecretsFile {
            version: 1,
            environments: BTreeMap::new(),
        };
        for (env, secret) in secrets {
            file.environments
                .insert(env.to_string(), secret.to_hex().to_string());
        }
        let text = zeroize::Zeroizing::new(serde_json::to_string_pretty(&file)?);
        for value in file.environments.values_mut() {
            zeroize::Zeroize::zeroize(value);
        }
        let tmp = self.root.join(format!("{SECRETS_FILE}.tmp"));
        {
            let mut out = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&tmp)
                .context("cannot write the secrets file")?;
            restrict(&tmp, 0o600)?;
            out.write_all(text.as_bytes())?;
            out.sync_all()?;
        }
        fs::rename(&tmp, self.secrets_path())?;
        File::open(&self.root)?.sync_all()?;
        Ok(())
    }

    fn read_secrets(&self) -> anyhow::Result<Vec<(EnvironmentName, HmacSecret)>> {
        let path = self.secrets_path();
        let text = zeroize::Zeroizing::new(
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?,
        );
        let file: SecretsFile = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a keyward secrets file", path.display()))?;
        let mut secrets = Vec::new();
        for (name, hex) in &file.environments {
            let env = EnvironmentName::parse(name)
                .with_context(|| format!("{}: bad environment name", path.display()))?;
            let secret = HmacSecret::from_hex(hex)
                .with_context(|| format!("{}: bad secret for {name}", path.display()))?;
            secrets.push((env, secret));
        }
        Ok(secrets)
    }

    pub fn read_keyring(&self) -> anyhow::Result<Keyring> {
        Ok(Keyring::new(self.read_secrets()?))
    }
}

/// Adds new environments' secrets to the data dir's secrets file.
#[derive(Debug)]
pub struct SecretsWriter {
    dir: DataDir,
    lock: std::sync::Mutex<()>,
}

impl SecretsWriter {
    pub fn new(root: &Path) -> Self {
        SecretsWriter {
            dir: DataDir::new(root),
            lock: std::sync::Mutex::new(()),
        }
    }
}

impl keyward_service::EnvironmentSecrets for SecretsWriter {
    fn add(&self, environment: &EnvironmentName, secret: &HmacSecret) -> Result<(), String> {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut secrets = self.dir.read_secrets().map_err(|e| e.to_string())?;
        secrets.retain(|(env, _)| env != environment);
        secrets.push((environment.clone(), secret.clone()));
        self.dir.write_secrets(&secrets).map_err(|e| e.to_string())
    }
}

#[cfg(unix)]
fn restrict(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot restrict permissions of {}", path.display()))
}

#[cfg(not(unix))]
fn restrict(_path: &Path, _mode: u32) -> anyhow::Result<()> {
    Ok(())
}
