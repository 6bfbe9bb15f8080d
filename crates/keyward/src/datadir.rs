//! The data directory: the SQLite store, a lock file and, only for the embedded development
//! default, the unseal key.
//!
//! ```text
//! <data dir>/keyward.db     the store (SQLite, WAL): every secret in it is sealed by the vault
//! <data dir>/unseal.key     the unseal key, mode 0600: written only by `serve` on a fresh dir
//! <data dir>/lock           held by the serving process, so two servers never share a dir
//! ```
//!
//! Initialisation is atomic: the store is made as `keyward.db.init`, initialised, closed and
//! only then renamed to `keyward.db`. A dir whose init failed or was killed holds at most that
//! staging file, which the next init or serve discards; a `keyward.db` always holds a vault.
//!
//! Data dirs from before the vault kept the environments' HMAC secrets in `secrets.json`; the
//! first start moves them into the store, sealed, and removes the file.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use keyward_core::EnvironmentName;
use keyward_crypto::HmacSecret;
use keyward_crypto::barrier::UnsealKey;
use serde::Deserialize;

pub const DB_FILE: &str = "keyward.db";
const STAGING_DB_FILE: &str = "keyward.db.init";
pub const SECRETS_FILE: &str = "secrets.json";
pub const UNSEAL_KEY_FILE: &str = "unseal.key";
const LOCK_FILE: &str = "lock";

#[derive(Debug)]
pub struct DataDir {
    root: PathBuf,
}

#[derive(Deserialize)]
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

    /// Where a store being initialised lives until it is complete.
    pub fn staging_db_path(&self) -> PathBuf {
        self.root.join(STAGING_DB_FILE)
    }

    /// Removes what an unfinished initialisation left behind.
    pub fn discard_staging(&self) -> anyhow::Result<()> {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let path = self.root.join(format!("{STAGING_DB_FILE}{suffix}"));
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot remove {}", path.display()));
                }
            }
        }
        Ok(())
    }

    /// Makes the initialised staging store the data dir's store (rename, then fsync the dir).
    /// The staging store must be closed.
    pub fn commit_staging(&self) -> anyhow::Result<()> {
        for suffix in ["-wal", "-shm"] {
            let path = self.root.join(format!("{STAGING_DB_FILE}{suffix}"));
            if path.exists() {
                bail!("{} is still open", self.staging_db_path().display());
            }
        }
        fs::rename(self.staging_db_path(), self.db_path())
            .context("cannot move the initialised store into place")?;
        File::open(&self.root)?.sync_all()?;
        Ok(())
    }

    fn secrets_path(&self) -> PathBuf {
        self.root.join(SECRETS_FILE)
    }

    /// Where a pre-vault data dir kept its HMAC secrets.
    pub fn legacy_secrets_exist(&self) -> bool {
        self.secrets_path().exists()
    }

    pub fn unseal_key_path(&self) -> PathBuf {
        self.root.join(UNSEAL_KEY_FILE)
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

    /// Writes the unseal key durably, created with mode 0600 (never readable by others, not
    /// even for a moment), refusing to overwrite one: write, fsync, link into place, fsync the
    /// dir.
    pub fn write_unseal_key(&self, key: &UnsealKey) -> anyhow::Result<()> {
        let tmp = self.root.join(format!("{UNSEAL_KEY_FILE}.tmp"));
        let _ = fs::remove_file(&tmp);
        {
            let mut options = OpenOptions::new();
            options.create_new(true).write(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut out = options
                .open(&tmp)
                .context("cannot create the unseal key file")?;
            out.write_all(key.to_text().as_bytes())?;
            out.write_all(b"\n")?;
            out.sync_all()?;
        }
        // A hard link fails if the file exists: an unseal key is never replaced by accident.
        fs::hard_link(&tmp, self.unseal_key_path()).with_context(|| {
            format!(
                "cannot create {} (does it exist already?)",
                self.unseal_key_path().display()
            )
        })?;
        fs::remove_file(&tmp)?;
        File::open(&self.root)?.sync_all()?;
        Ok(())
    }

    /// Removes the pre-vault secrets file once its secrets are sealed in the store.
    pub fn remove_legacy_secrets(&self) -> anyhow::Result<()> {
        fs::remove_file(self.secrets_path()).context("cannot remove the old secrets file")?;
        File::open(&self.root)?.sync_all()?;
        Ok(())
    }

    pub fn read_legacy_secrets(&self) -> anyhow::Result<Vec<(EnvironmentName, HmacSecret)>> {
        let path = self.secrets_path();
        let text = zeroize::Zeroizing::new(
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?,
        );
        let file: SecretsFile = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a keyward secrets file", path.display()))?;
        if file.version != 1 {
            bail!("{}: unknown version {}", path.display(), file.version);
        }
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
}

/// Refuses a key file that others could read or that belongs to another user: anyone who can
/// read it can open every secret.
#[cfg(unix)]
pub fn check_key_file(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.mode() & 0o077 != 0 {
        bail!(
            "{} is readable by group or others (mode {:o}); chmod 600 it",
            path.display(),
            meta.mode() & 0o777
        );
    }
    // /proc/self belongs to this process's effective user.
    if let Ok(me) = fs::metadata("/proc/self")
        && me.uid() != meta.uid()
    {
        bail!(
            "{} belongs to another user (uid {}); keyward runs as uid {}",
            path.display(),
            meta.uid(),
            me.uid()
        );
    }
    Ok(())
}

#[cfg(not(unix))]
pub fn check_key_file(_path: &Path) -> anyhow::Result<()> {
    Ok(())
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
