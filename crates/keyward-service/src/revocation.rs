//! Emergency revocation: one call revokes every key a selector matches, in one commit with one
//! audit entry, and every verification that starts after it returns refuses them.

use keyward_core::audit::AuditAction;
use keyward_core::{EnvironmentName, KeyId, KeyRecord, KeyStatus, Timestamp};
use keyward_store::{Changes, KeyQuery};
use serde_json::json;

use crate::audit::PendingEntry;
use crate::audit_log::Writer;

/// The audit log's writer, held across a bulk change.
type Head<'a> = tokio::sync::MutexGuard<'a, Writer>;
use crate::authz::{Operation, Target};
use crate::keys::{Keys, check_text, invalid, limits};
use crate::{Actor, ServiceError};

/// Keys revoked by one call at most; a selector that matches more says so (`more`), and the
/// call is repeated for the rest. (The audit entry names every key it revoked.)
pub const MAX_BULK_REVOKE: usize = 100_000;

/// Ids one call may name.
pub const MAX_BULK_IDS: usize = 1_000;

/// Which keys an emergency revocation takes: those that every given selector matches. At
/// least one must be given; an empty selector never means "every key".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevokeSelector {
    pub ids: Vec<KeyId>,
    pub owner: Option<String>,
    pub environment: Option<EnvironmentName>,
    /// Keys whose `start` begins with this.
    pub start_prefix: Option<String>,
    pub created_before: Option<Timestamp>,
}

impl RevokeSelector {
    fn is_empty(&self) -> bool {
        self.ids.is_empty()
            && self.owner.is_none()
            && self.environment.is_none()
            && self.start_prefix.is_none()
            && self.created_before.is_none()
    }

    fn matches(&self, key: &KeyRecord) -> bool {
        self.owner.as_ref().is_none_or(|o| &key.owner == o)
            && self
                .environment
                .as_ref()
                .is_none_or(|e| &key.environment == e)
            && self
                .start_prefix
                .as_ref()
                .is_none_or(|p| key.start.starts_with(p.as_str()))
            && self.created_before.is_none_or(|t| key.created_at < t)
    }

    fn describe(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        if !self.ids.is_empty() {
            out.insert("ids".into(), json!(self.ids.len()));
        }
        if let Some(owner) = &self.owner {
            out.insert("owner".into(), json!(owner));
        }
        if let Some(environment) = &self.environment {
            out.insert("environment".into(), json!(environment));
        }
        if let Some(prefix) = &self.start_prefix {
            out.insert("start".into(), json!(prefix));
        }
        if let Some(at) = self.created_before {
            out.insert("created_before".into(), json!(at));
        }
        serde_json::Value::Object(out)
    }
}

/// What an emergency revocation did (or, as a dry run, would do).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BulkRevocation {
    /// Keys revoked (for a dry run: that would be).
    pub revoked: u64,
    /// More keys match than one call revokes: call again for the rest.
    pub more: bool,
    /// The calling key matched and was left alone (a key never revokes itself).
    pub skipped_self: bool,
    /// Matching records that failed their integrity check and were left alone (reported).
    pub skipped_tampered: u64,
}

impl Keys {
    /// Revokes every key that `selector` matches and the caller may act on: one commit, one
    /// audit entry naming each key, one `key.revoked` event per key. If any matching key is
    /// beyond the caller (it holds more), nothing is revoked and the refusal is audited. The
    /// caller's own key is never revoked; already revoked keys are not counted.
    pub async fn revoke_matching(
        &self,
        actor: &Actor,
        selector: RevokeSelector,
        reason: String,
        dry_run: bool,
    ) -> Result<BulkRevocation, ServiceError> {
        check_text("reason", &reason, limits::REASON_CHARS)?;
        if let Some(owner) = &selector.owner {
            check_text("owner", owner, limits::OWNER_CHARS)?;
        }
        if selector.is_empty() {
            return Err(invalid(
                "selector",
                "name at least one of ids, owner, environment, start or created_before; an \
                 empty selector never means every key",
            ));
        }
        if selector.ids.len() > MAX_BULK_IDS {
            return Err(invalid(
                "ids",
                format!("at most {MAX_BULK_IDS} ids in one call"),
            ));
        }
        let mut selector = self.scoped(actor, selector).await?;
        // One key named several ways (case, hyphens, braces) is one key.
        selector.ids.sort_unstable();
        selector.ids.dedup();
        self.audit
            .retrying(|| self.revoke_matching_once(actor, &selector, &reason, dry_run))
            .await
    }

    /// A scoped caller's selector, bounded by its scope (it reaches no other environment).
    async fn scoped(
        &self,
        actor: &Actor,
        mut selector: RevokeSelector,
    ) -> Result<RevokeSelector, ServiceError> {
        let Some(scope) = actor.scope() else {
            return Ok(selector);
        };
        match (&selector.environment, scope) {
            (Some(env), _) => {
                self.authz
                    .permit(actor, Operation::KeyRevoke, Target::Environment(env))
                    .await?;
            }
            (None, [only]) => selector.environment = Some(only.clone()),
            (None, _) if !selector.ids.is_empty() => {}
            (None, _) => {
                return Err(invalid(
                    "environment",
                    "this admin key is scoped to several environments; name one",
                ));
            }
        }
        Ok(selector)
    }

    /// The keys `selector` matches that are neither revoked, nor the caller's own, nor failing
    /// their integrity check (at most [`MAX_BULK_REVOKE`]). Every match is judged, those past
    /// the cap too: if the caller may not do `op` to every one of them, the refusal is audited
    /// and nothing is returned (a bulk change is whole or not at all). Read without the
    /// writer lock, so counting and refusing never hold up other writes; see [`Keys::locked`].
    async fn select(
        &self,
        actor: &Actor,
        selector: &RevokeSelector,
        op: Operation,
    ) -> Result<(Vec<KeyRecord>, BulkRevocation), ServiceError> {
        let mut outcome = BulkRevocation::default();
        let mut chosen = Vec::new();
        let mut beyond: Option<(KeyId, crate::Refusal)> = None;
        let mut beyond_count = 0_u64;
        let mut keep = |key: KeyRecord, outcome: &mut BulkRevocation| {
            if key.status == KeyStatus::Revoked || !selector.matches(&key) {
                return;
            }
            if key.id == actor.key_id() {
                outcome.skipped_self = true;
                return;
            }
            let Some(key) = self.integrity.intact_key(key) else {
                outcome.skipped_tampered += 1;
                return;
            };
            if let Err(refusal) = self.authz.authorize(actor, op, Target::Key(&key)) {
                beyond_count += 1;
                beyond.get_or_insert((key.id, refusal));
            } else if chosen.len() < MAX_BULK_REVOKE {
                chosen.push(key);
            } else {
                outcome.more = true;
            }
        };
        if selector.ids.is_empty() {
            let mut after = None;
            loop {
                let page = self
                    .store
                    .list_keys(KeyQuery {
                        environment: selector.environment.clone(),
                        owner: selector.owner.clone(),
                        start_prefix: selector.start_prefix.clone(),
                        created_before: selector.created_before,
                        after,
                        limit: 1000,
                        ..KeyQuery::default()
                    })
                    .await?;
                let Some(last) = page.last() else { break };
                after = Some(last.id);
                for key in page {
                    keep(key, &mut outcome);
                }
            }
        } else {
            for id in &selector.ids {
                // Unknown, or beyond a scoped caller's reach: the same answer.
                let found = self.store.key(*id).await?;
                let Some(key) = found.filter(|k| actor.may_manage(&k.environment)) else {
                    return Err(ServiceError::NotFound { what: "key" });
                };
                keep(key, &mut outcome);
            }
        }
        if outcome.skipped_tampered > 0 {
            tracing::warn!(
                count = outcome.skipped_tampered,
                "records that failed their integrity check were left out of a bulk change"
            );
        }
        if let Some((first, refusal)) = beyond {
            let target = format!("{beyond_count} matching keys, e.g. {first}");
            return Err(self.authz.refuse(actor, op, Some(target), refusal).await);
        }
        Ok((chosen, outcome))
    }

    /// The writer lock, with a selection still true under it: the one made without the lock
    /// if no audited change (every change to a key is one) was committed since it began,
    /// otherwise one made again under the lock.
    async fn locked(
        &self,
        actor: &Actor,
        selector: &RevokeSelector,
        op: Operation,
        before: Option<keyward_store::AuditHead>,
        selection: (Vec<KeyRecord>, BulkRevocation),
    ) -> Result<(Head<'_>, Vec<KeyRecord>, BulkRevocation), ServiceError> {
        let head = self.audit.lock().await;
        if self.store.audit_head().await? == before {
            return Ok((head, selection.0, selection.1));
        }
        match self.select(actor, selector, op).await {
            Ok((chosen, outcome)) => Ok((head, chosen, outcome)),
            Err(e) => {
                drop(head);
                Err(e)
            }
        }
    }

    async fn revoke_matching_once(
        &self,
        actor: &Actor,
        selector: &RevokeSelector,
        reason: &str,
        dry_run: bool,
    ) -> Result<BulkRevocation, ServiceError> {
        let before = self.store.audit_head().await?;
        let (chosen, outcome) = self.select(actor, selector, Operation::KeyRevoke).await?;
        if dry_run || chosen.is_empty() {
            return Ok(BulkRevocation {
                revoked: chosen.len() as u64,
                ..outcome
            });
        }
        let (mut head, mut chosen, mut outcome) = self
            .locked(
                actor,
                selector,
                Operation::KeyRevoke,
                before,
                (chosen, outcome),
            )
            .await?;
        outcome.revoked = chosen.len() as u64;
        if dry_run || chosen.is_empty() {
            return Ok(outcome);
        }
        let now = self.clock.now();
        let by = actor.audit_name();
        let mut outbox = Vec::with_capacity(chosen.len());
        let mut ids = Vec::with_capacity(chosen.len());
        for key in &mut chosen {
            key.status = KeyStatus::Revoked;
            key.revoked_at = Some(now);
            key.revocation_reason = Some(reason.to_owned());
            key.updated_at = now;
            ids.push(key.id.to_string());
            outbox.push(crate::webhooks::key_event(
                keyward_core::EventType::KeyRevoked,
                &key.summary(),
                now,
                crate::webhooks::new_event_id()?,
                json!({ "reason": reason, "by": by, "bulk": true }),
            ));
        }
        let entry = PendingEntry {
            actor: by,
            action: AuditAction::KeyRevokeBulk,
            target: None,
            details: json!({
                "reason": reason,
                "selector": selector.describe(),
                "count": ids.len(),
                "more": outcome.more,
                "ids": ids,
            }),
        };
        self.audit
            .commit(
                &mut head,
                Changes {
                    update_keys: chosen,
                    outbox,
                    ..Changes::default()
                },
                vec![entry],
            )
            .await?;
        tracing::warn!(
            count = outcome.revoked,
            actor = %actor.key_id(),
            "keys revoked in bulk"
        );
        Ok(outcome)
    }
}

/// What an owner transfer did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OwnerTransfer {
    /// Keys that now belong to the new owner.
    pub moved: u64,
    /// More keys remain with the old owner than one call moves: call again for the rest.
    pub more: bool,
    /// The calling key belonged to the old owner and was left alone.
    pub skipped_self: bool,
    /// Records that failed their integrity check, left alone (and reported).
    pub skipped_tampered: u64,
}

impl Keys {
    /// Gives every key of `from` that is not revoked to `to` (offboarding): one commit, one
    /// audit entry naming each key, a `key.owner_transferred` event per key. The same rules
    /// as an emergency revocation hold: the caller must be able to update every one of the
    /// keys or none moves, a scoped caller reaches only its environments, its own key stays.
    pub async fn transfer_owner(
        &self,
        actor: &Actor,
        from: String,
        to: String,
        reason: String,
    ) -> Result<OwnerTransfer, ServiceError> {
        check_text("owner", &from, limits::OWNER_CHARS)?;
        check_text("to", &to, limits::OWNER_CHARS)?;
        check_text("reason", &reason, limits::REASON_CHARS)?;
        if from == to {
            return Err(invalid("to", "is already the keys' owner"));
        }
        let selector = self
            .scoped(
                actor,
                RevokeSelector {
                    owner: Some(from.clone()),
                    ..RevokeSelector::default()
                },
            )
            .await?;
        self.audit
            .retrying(|| self.transfer_owner_once(actor, &selector, &to, &reason))
            .await
    }

    async fn transfer_owner_once(
        &self,
        actor: &Actor,
        selector: &RevokeSelector,
        to: &str,
        reason: &str,
    ) -> Result<OwnerTransfer, ServiceError> {
        let before = self.store.audit_head().await?;
        let selection = self.select(actor, selector, Operation::KeyUpdate).await?;
        let nothing = |(chosen, found): &(Vec<KeyRecord>, BulkRevocation)| {
            chosen.is_empty() && !found.skipped_self && found.skipped_tampered == 0
        };
        if nothing(&selection) {
            return Err(ServiceError::NotFound { what: "owner" });
        }
        let (mut head, mut chosen, found) = self
            .locked(actor, selector, Operation::KeyUpdate, before, selection)
            .await?;
        let outcome = OwnerTransfer {
            moved: chosen.len() as u64,
            more: found.more,
            skipped_self: found.skipped_self,
            skipped_tampered: found.skipped_tampered,
        };
        if chosen.is_empty() {
            return Ok(outcome);
        }
        let from = selector.owner.clone().unwrap_or_default();
        let now = self.clock.now();
        let by = actor.audit_name();
        let mut outbox = Vec::with_capacity(chosen.len());
        let mut ids = Vec::with_capacity(chosen.len());
        for key in &mut chosen {
            key.owner = to.to_owned();
            key.updated_at = now;
            ids.push(key.id.to_string());
            outbox.push(crate::webhooks::key_event(
                keyward_core::EventType::KeyOwnerTransferred,
                &key.summary(),
                now,
                crate::webhooks::new_event_id()?,
                json!({ "from": from, "to": to, "reason": reason, "by": by }),
            ));
        }
        let entry = PendingEntry {
            actor: by,
            action: AuditAction::KeyOwnerTransfer,
            target: Some(from.clone()),
            details: json!({
                "from": from,
                "to": to,
                "reason": reason,
                "count": ids.len(),
                "more": outcome.more,
                "ids": ids,
            }),
        };
        self.audit
            .commit(
                &mut head,
                Changes {
                    update_keys: chosen,
                    outbox,
                    ..Changes::default()
                },
                vec![entry],
            )
            .await?;
        tracing::info!(count = outcome.moved, actor = %actor.key_id(), "keys moved to a new owner");
        Ok(outcome)
    }
}
