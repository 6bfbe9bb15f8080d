//! Initialising an empty store: environments, role templates and the root key.

use keyward_core::audit::AuditAction;
use keyward_core::model::{ADMIN_ENVIRONMENT, DEFAULT_ENVIRONMENTS};
use keyward_core::{
    Clock, EnvironmentName, EnvironmentPolicy, KeyAccess, KeyRecord, KeyStatus, ParsedKey,
    Permission, RoleName, RoleRecord, ServiceName, Timestamp,
};
use keyward_crypto::{KeyIds, PlaintextKey};
use keyward_store::{Changes, EnvironmentRecord, Store};
use serde_json::json;

use crate::audit::{PendingEntry, chain};
use crate::vault::{NewVault, new_vault};
use crate::{Keyring, ServiceError};

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("the store is already initialised")]
    AlreadyInitialised,
    #[error("the keyring has no secret for environment {0}")]
    MissingSecret(String),
    #[error(transparent)]
    Store(#[from] keyward_store::StoreError),
    #[error(transparent)]
    Random(#[from] keyward_crypto::RandomUnavailable),
    #[error(transparent)]
    Vault(#[from] ServiceError),
}

/// What `keyward init` shows once: the root admin key and the vault's unseal material.
#[derive(Debug)]
pub struct Initialized {
    pub root_key: PlaintextKey,
    pub vault: NewVault,
}

/// The environments `keyward init` creates, the admin one included.
pub fn initial_environments() -> Vec<EnvironmentName> {
    DEFAULT_ENVIRONMENTS
        .iter()
        .chain(std::iter::once(&ADMIN_ENVIRONMENT))
        .filter_map(|name| EnvironmentName::parse(name).ok())
        .collect()
}

/// The role templates every data dir starts with; editable like any other role.
///
/// * `read-only`: `*:read`, the read action on every resource.
/// * `full-access`: `*`, every permission (environment policies still apply).
pub fn builtin_roles(now: Timestamp) -> Vec<RoleRecord> {
    [
        ("read-only", "the read action on every resource", "*:read"),
        (
            "full-access",
            "every permission the environment's policy allows",
            "*",
        ),
    ]
    .into_iter()
    .filter_map(|(name, description, permission)| {
        Some(RoleRecord {
            name: RoleName::parse(name).ok()?,
            description: Some(description.to_owned()),
            permissions: vec![Permission::parse(permission).ok()?],
            builtin: true,
            rotation: None,
            created_at: now,
            updated_at: now,
            mac: None,
        })
    })
    .collect()
}

/// Creates the vault (unseal key split into `shares` with `threshold`), the `live`, `test` and
/// `admin` environments with their keyrings and sealed HMAC secrets, and the root key, which
/// holds every permission, in one audited write. Returns the root key and the unseal material:
/// the only time they exist in plaintext.
pub async fn initialize(
    store: &dyn Store,
    clock: &dyn Clock,
    shares: u8,
    threshold: u8,
) -> Result<Initialized, InitError> {
    if !store.environments().await?.is_empty() || store.vault().await?.is_some() {
        return Err(InitError::AlreadyInitialised);
    }
    let now = clock.now();
    let vault = new_vault(shares, threshold, now)?;
    let environments = initial_environments();
    let mut keyrings = Vec::new();
    let mut sealed_secrets = Vec::new();
    let mut secrets = Vec::new();
    for env in &environments {
        let made = vault.open.new_environment(env, now.unix_ms())?;
        keyrings.push(made.stored);
        sealed_secrets.push((env.clone(), made.sealed_secret));
        vault.open.install(env.clone(), made.keyring);
        secrets.push((env.clone(), made.secret));
    }
    let keyring = Keyring::new(secrets);
    let admin_env = environments
        .iter()
        .find(|e| e.as_str() == ADMIN_ENVIRONMENT)
        .cloned()
        .ok_or_else(|| InitError::MissingSecret(ADMIN_ENVIRONMENT.into()))?;
    let hasher = keyring
        .hasher(ADMIN_ENVIRONMENT)
        .ok_or_else(|| InitError::MissingSecret(ADMIN_ENVIRONMENT.into()))?;
    for env in &environments {
        if keyring.hasher(env.as_str()).is_none() {
            return Err(InitError::MissingSecret(env.to_string()));
        }
    }
    let root = PlaintextKey::generate(&ServiceName::Keyward.prefix(), &admin_env)?;
    let start = ParsedKey::parse(root.expose())
        .map(|p| p.start().to_owned())
        .unwrap_or_default();
    let all = Permission::parse("*").map_err(|_| InitError::MissingSecret("*".into()))?;
    let record = KeyRecord {
        id: KeyIds::default().next(now)?,
        service: ServiceName::Keyward,
        environment: admin_env,
        hash: hasher.hash(root.expose()),
        start: start.clone(),
        name: "root".into(),
        owner: "root".into(),
        purpose: Some("created by keyward init; holds every permission".into()),
        permissions: vec![all],
        meta: serde_json::Map::new(),
        created_at: now,
        updated_at: now,
        expires_at: None,
        status: KeyStatus::Active,
        revoked_at: None,
        revocation_reason: None,
        rolled_from: None,
        rolled_to: None,
        last_used_at: None,
        uses: 0,
        access: KeyAccess::default(),
        lifecycle: keyward_core::KeyLifecycle::default(),
        mac: None,
    };
    let mut pending = vec![PendingEntry {
        actor: "system".into(),
        action: AuditAction::SystemInit,
        target: None,
        details: json!({ "shares": shares, "threshold": threshold }),
    }];
    pending.extend(environments.iter().map(|env| PendingEntry {
        actor: "system".into(),
        action: AuditAction::EnvironmentCreate,
        target: Some(env.to_string()),
        details: json!({}),
    }));
    pending.push(PendingEntry {
        actor: "system".into(),
        action: AuditAction::KeyCreate,
        target: Some(record.id.to_string()),
        details: json!({
            "service": "keyward",
            "environment": ADMIN_ENVIRONMENT,
            "name": "root",
            "start": start,
            "permissions": ["*"],
        }),
    });
    let roles = builtin_roles(now);
    pending.extend(roles.iter().map(|role| PendingEntry {
        actor: "system".into(),
        action: AuditAction::RoleCreate,
        target: Some(role.name.to_string()),
        details: json!({ "permissions": role.permissions.iter().map(Permission::as_str).collect::<Vec<_>>() }),
    }));
    let audit = chain(0, keyward_core::audit::GENESIS_HASH, now, pending);
    let head = audit.last().map(|e| keyward_store::AuditHead {
        seq: e.seq,
        hash: e.hash.clone(),
    });
    keyrings.push(vault.integrity.clone());
    let mut changes = Changes {
        environments: environments
            .into_iter()
            .map(|name| EnvironmentRecord {
                name,
                created_at: now,
                policy: EnvironmentPolicy::default(),
                mac: None,
            })
            .collect(),
        insert_keys: vec![record],
        upsert_roles: roles,
        vault: Some(vault.record.clone()),
        keyrings,
        environment_secrets: sealed_secrets,
        audit,
        ..Changes::default()
    };
    crate::integrity::seal_changes(vault.open.integrity(), &mut changes, head.as_ref(), 0);
    store.apply(changes).await?;
    Ok(Initialized {
        root_key: root,
        vault,
    })
}

/// Moves a data dir from before the vault under a new vault: its environments' HMAC secrets,
/// kept until now in a file beside the store, are sealed into the store. One audited write.
pub async fn adopt_secrets(
    store: &dyn Store,
    clock: &dyn Clock,
    secrets: Vec<(EnvironmentName, keyward_crypto::HmacSecret)>,
    shares: u8,
    threshold: u8,
) -> Result<NewVault, InitError> {
    if store.vault().await?.is_some() {
        return Err(InitError::AlreadyInitialised);
    }
    let now = clock.now();
    let vault = new_vault(shares, threshold, now)?;
    let stored: Vec<EnvironmentName> = store
        .environments()
        .await?
        .into_iter()
        .map(|e| e.name)
        .collect();
    let mut keyrings = Vec::new();
    let mut sealed_secrets = Vec::new();
    for env in &stored {
        let (_, secret) = secrets
            .iter()
            .find(|(name, _)| name == env)
            .ok_or_else(|| InitError::MissingSecret(env.to_string()))?;
        let made = vault.open.new_environment(env, now.unix_ms())?;
        keyrings.push(made.stored);
        vault.open.install(env.clone(), made.keyring);
        sealed_secrets.push((env.clone(), vault.open.seal_hmac_secret(env, secret)?));
    }
    let head = store.audit_head().await?;
    let (seq, hash) = head.map_or((0, keyward_core::audit::GENESIS_HASH.to_owned()), |h| {
        (h.seq, h.hash)
    });
    let audit = chain(
        seq,
        &hash,
        now,
        vec![PendingEntry {
            actor: "system".into(),
            action: AuditAction::VaultInit,
            target: None,
            details: json!({
                "shares": shares,
                "threshold": threshold,
                "adopted_environments": stored.iter().map(EnvironmentName::as_str).collect::<Vec<_>>(),
            }),
        }],
    );
    let new_head = audit.last().map(|e| keyward_store::AuditHead {
        seq: e.seq,
        hash: e.hash.clone(),
    });
    keyrings.push(vault.integrity.clone());
    // The new vault has an integrity key: every record already stored is tagged with it now.
    let mut changes = crate::integrity::everything(store).await?;
    changes.vault = Some(vault.record.clone());
    changes.keyrings = keyrings;
    changes.environment_secrets = sealed_secrets;
    changes.audit = audit;
    let revoked = crate::integrity::revocations(&changes);
    crate::integrity::seal_changes(
        vault.open.integrity(),
        &mut changes,
        new_head.as_ref(),
        revoked,
    );
    store.apply(changes).await?;
    Ok(vault)
}
