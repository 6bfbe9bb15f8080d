//! The outbox, webhook endpoints and deliveries.

use keyward_core::{DeliveryState, OutboxEvent, Timestamp, WebhookDelivery, WebhookEndpoint};
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

use super::{collect_rows, corrupt, mac_at, mac_bytes, map_write_error, to_i64, unavailable};
use keyward_store::{Changes, StoreError};

fn to_json(value: &impl serde::Serialize) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn seq_of(row: &Row<'_>, i: usize) -> Result<u64, StoreError> {
    let seq: i64 = row.get(i).map_err(unavailable)?;
    u64::try_from(seq).map_err(|_| corrupt("outbox position"))
}

fn event_from_row(row: &Row<'_>) -> Result<OutboxEvent, StoreError> {
    let record: String = row.get(1).map_err(unavailable)?;
    let mut event: OutboxEvent =
        serde_json::from_str(&record).map_err(|_| corrupt("outbox event"))?;
    event.seq = seq_of(row, 0)?;
    event.mac = mac_at(row, 2)?;
    Ok(event)
}

fn endpoint_from_row(row: &Row<'_>) -> Result<WebhookEndpoint, StoreError> {
    let record: String = row.get(0).map_err(unavailable)?;
    let mut endpoint: WebhookEndpoint =
        serde_json::from_str(&record).map_err(|_| corrupt("webhook endpoint"))?;
    endpoint.mac = mac_at(row, 1)?;
    Ok(endpoint)
}

fn delivery_from_row(row: &Row<'_>) -> Result<WebhookDelivery, StoreError> {
    let record: String = row.get(0).map_err(unavailable)?;
    serde_json::from_str(&record).map_err(|_| corrupt("webhook delivery"))
}

pub(super) fn apply(tx: &Transaction<'_>, changes: &Changes) -> Result<(), StoreError> {
    for event in &changes.outbox {
        tx.prepare_cached(
            "INSERT INTO outbox (id, ts, record, mac) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (id) DO NOTHING",
        )
        .map_err(unavailable)?
        .execute(params![
            event.id,
            event.ts.unix_ms(),
            to_json(event)?,
            mac_bytes(event.mac)
        ])
        .map_err(map_write_error)?;
    }
    for endpoint in &changes.upsert_webhooks {
        tx.prepare_cached(
            "INSERT INTO webhook_endpoints (id, record, mac) VALUES (?1, ?2, ?3) \
             ON CONFLICT (id) DO UPDATE SET record = excluded.record, mac = excluded.mac",
        )
        .map_err(unavailable)?
        .execute(params![
            endpoint.id,
            to_json(endpoint)?,
            mac_bytes(endpoint.mac)
        ])
        .map_err(map_write_error)?;
    }
    for id in &changes.delete_webhooks {
        tx.execute("DELETE FROM webhook_deliveries WHERE endpoint = ?1", [id])
            .map_err(map_write_error)?;
        let changed = tx
            .execute("DELETE FROM webhook_endpoints WHERE id = ?1", [id])
            .map_err(map_write_error)?;
        if changed == 0 {
            return Err(StoreError::NotFound(format!("webhook {id}")));
        }
    }
    for delivery in &changes.upsert_deliveries {
        tx.prepare_cached(
            "INSERT INTO webhook_deliveries (endpoint, seq, key_id, state, created_at, record) \
             VALUES (?1, ?2, ?6, ?3, ?4, ?5) ON CONFLICT (endpoint, seq) DO UPDATE SET \
             state = excluded.state, record = excluded.record",
        )
        .map_err(unavailable)?
        .execute(params![
            delivery.endpoint,
            to_i64(delivery.seq),
            delivery.state.as_str(),
            delivery.created_at.unix_ms(),
            to_json(delivery)?,
            delivery.key_id.map(|k| k.to_string()),
        ])
        .map_err(map_write_error)?;
    }
    Ok(())
}

pub(super) fn outbox_after(
    conn: &Connection,
    after: u64,
    limit: u32,
) -> Result<Vec<OutboxEvent>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT seq, record, mac FROM outbox WHERE seq > ?1 ORDER BY seq LIMIT ?2")
        .map_err(unavailable)?;
    let rows = stmt
        .query(params![to_i64(after), i64::from(limit)])
        .map_err(unavailable)?;
    collect_rows(rows, event_from_row)
}

pub(super) fn outbox_event(conn: &Connection, seq: u64) -> Result<Option<OutboxEvent>, StoreError> {
    conn.prepare_cached("SELECT seq, record, mac FROM outbox WHERE seq = ?1")
        .map_err(unavailable)?
        .query_row([to_i64(seq)], |row| Ok(event_from_row(row)))
        .optional()
        .map_err(unavailable)?
        .transpose()
}

pub(super) fn outbox_head(conn: &Connection) -> Result<u64, StoreError> {
    let seq: Option<i64> = conn
        .query_row("SELECT max(seq) FROM outbox", [], |row| row.get(0))
        .map_err(unavailable)?;
    Ok(seq.and_then(|s| u64::try_from(s).ok()).unwrap_or(0))
}

pub(super) fn outbox_has(conn: &Connection, ids: &[String]) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT 1 FROM outbox WHERE id = ?1")
        .map_err(unavailable)?;
    let mut found = Vec::new();
    for id in ids {
        if stmt.exists([id]).map_err(unavailable)? {
            found.push(id.clone());
        }
    }
    Ok(found)
}

pub(super) fn webhooks(conn: &Connection) -> Result<Vec<WebhookEndpoint>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT record, mac FROM webhook_endpoints ORDER BY id")
        .map_err(unavailable)?;
    let rows = stmt.query([]).map_err(unavailable)?;
    collect_rows(rows, endpoint_from_row)
}

pub(super) fn pending_deliveries(
    conn: &Connection,
    endpoint: &str,
    limit: u32,
) -> Result<Vec<WebhookDelivery>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT record FROM webhook_deliveries WHERE endpoint = ?1 AND state = 'pending' \
             AND seq IN (SELECT min(seq) FROM webhook_deliveries WHERE endpoint = ?1 \
             AND state = 'pending' GROUP BY coalesce(key_id, CAST(seq AS TEXT))) \
             ORDER BY seq LIMIT ?2",
        )
        .map_err(unavailable)?;
    let rows = stmt
        .query(params![endpoint, i64::from(limit)])
        .map_err(unavailable)?;
    collect_rows(rows, delivery_from_row)
}

pub(super) fn deliveries(
    conn: &Connection,
    endpoint: &str,
    before: Option<u64>,
    limit: u32,
) -> Result<Vec<WebhookDelivery>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT record FROM webhook_deliveries WHERE endpoint = ?1 AND seq < ?2 \
             ORDER BY seq DESC LIMIT ?3",
        )
        .map_err(unavailable)?;
    let before = before.map_or(i64::MAX, to_i64);
    let rows = stmt
        .query(params![endpoint, before, i64::from(limit)])
        .map_err(unavailable)?;
    collect_rows(rows, delivery_from_row)
}

pub(super) fn delivery(
    conn: &Connection,
    endpoint: &str,
    seq: u64,
) -> Result<Option<WebhookDelivery>, StoreError> {
    conn.prepare_cached("SELECT record FROM webhook_deliveries WHERE endpoint = ?1 AND seq = ?2")
        .map_err(unavailable)?
        .query_row(params![endpoint, to_i64(seq)], |row| {
            Ok(delivery_from_row(row))
        })
        .optional()
        .map_err(unavailable)?
        .transpose()
}

pub(super) fn delivery_backlog(conn: &Connection) -> Result<(u64, Option<Timestamp>), StoreError> {
    let (count, oldest): (i64, Option<i64>) = conn
        .query_row(
            "SELECT count(*), min(created_at) FROM webhook_deliveries WHERE state = ?1",
            [DeliveryState::Pending.as_str()],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .map_err(unavailable)?;
    Ok((
        u64::try_from(count).unwrap_or(0),
        oldest.map(Timestamp::from_unix_ms),
    ))
}
