//! The outbox, webhook endpoints and deliveries.

use deadpool_postgres::ClientWrapper;
use deadpool_postgres::Transaction;
use keyward_core::{DeliveryState, OutboxEvent, Timestamp, WebhookDelivery, WebhookEndpoint};
use keyward_store::{Changes, StoreError};
use tokio_postgres::Row;

use crate::reads::{all, query};
use crate::rows::{self, get, mac_bytes, to_i64, to_json};
use crate::write::{exec, exec_one};

fn seq_of(row: &Row, i: usize) -> Result<u64, StoreError> {
    u64::try_from(get::<i64>(row, i)?).map_err(|_| rows::corrupt("outbox position"))
}

fn event(row: &Row) -> Result<OutboxEvent, StoreError> {
    let mut event: OutboxEvent = rows::json(get(row, 1)?, "outbox event")?;
    event.seq = seq_of(row, 0)?;
    event.mac = rows::mac_at(row, 2)?;
    Ok(event)
}

fn endpoint(row: &Row) -> Result<WebhookEndpoint, StoreError> {
    let mut endpoint: WebhookEndpoint = rows::json(get(row, 0)?, "webhook endpoint")?;
    endpoint.mac = rows::mac_at(row, 1)?;
    Ok(endpoint)
}

fn delivery(row: &Row) -> Result<WebhookDelivery, StoreError> {
    rows::json(get(row, 0)?, "webhook delivery")
}

pub(crate) async fn apply(tx: &Transaction<'_>, changes: &Changes) -> Result<(), StoreError> {
    for event in &changes.outbox {
        exec(
            tx,
            "INSERT INTO outbox (id, ts, record, mac) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (id) DO NOTHING",
            &[
                &event.id,
                &event.ts.unix_ms(),
                &to_json(event)?,
                &mac_bytes(event.mac),
            ],
        )
        .await?;
    }
    for endpoint in &changes.upsert_webhooks {
        exec(
            tx,
            "INSERT INTO webhook_endpoints (id, record, mac) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET record = excluded.record, mac = excluded.mac",
            &[&endpoint.id, &to_json(endpoint)?, &mac_bytes(endpoint.mac)],
        )
        .await?;
    }
    for id in &changes.delete_webhooks {
        exec(
            tx,
            "DELETE FROM webhook_deliveries WHERE endpoint = $1",
            &[id],
        )
        .await?;
        exec_one(
            tx,
            "DELETE FROM webhook_endpoints WHERE id = $1",
            &[id],
            || format!("webhook {id}"),
        )
        .await?;
    }
    for d in &changes.upsert_deliveries {
        exec(
            tx,
            "INSERT INTO webhook_deliveries (endpoint, seq, key_id, state, created_at, record) \
             VALUES ($1, $2, $6, $3, $4, $5) ON CONFLICT (endpoint, seq) DO UPDATE SET \
             state = excluded.state, record = excluded.record",
            &[
                &d.endpoint,
                &to_i64(d.seq),
                &d.state.as_str(),
                &d.created_at.unix_ms(),
                &to_json(d)?,
                &d.key_id.map(|k| k.to_string()),
            ],
        )
        .await?;
    }
    Ok(())
}

pub(crate) async fn outbox_after(
    client: &ClientWrapper,
    after: u64,
    limit: u32,
) -> Result<Vec<OutboxEvent>, StoreError> {
    let found = query(
        client,
        "SELECT seq, record, mac FROM outbox WHERE seq > $1 ORDER BY seq LIMIT $2",
        &[&to_i64(after), &i64::from(limit)],
    )
    .await?;
    all(found, event)
}

pub(crate) async fn outbox_event(
    client: &ClientWrapper,
    seq: u64,
) -> Result<Option<OutboxEvent>, StoreError> {
    let found = query(
        client,
        "SELECT seq, record, mac FROM outbox WHERE seq = $1",
        &[&to_i64(seq)],
    )
    .await?;
    found.first().map(event).transpose()
}

pub(crate) async fn outbox_head(client: &ClientWrapper) -> Result<u64, StoreError> {
    let found = query(client, "SELECT max(seq) FROM outbox", &[]).await?;
    let seq: Option<i64> = found.first().map(|r| get(r, 0)).transpose()?.flatten();
    Ok(seq.and_then(|s| u64::try_from(s).ok()).unwrap_or(0))
}

pub(crate) async fn outbox_has(
    client: &ClientWrapper,
    ids: &[String],
) -> Result<Vec<String>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let found = query(client, "SELECT id FROM outbox WHERE id = ANY($1)", &[&ids]).await?;
    all(found, |row| get(row, 0))
}

pub(crate) async fn webhooks(client: &ClientWrapper) -> Result<Vec<WebhookEndpoint>, StoreError> {
    let found = query(
        client,
        "SELECT record, mac FROM webhook_endpoints ORDER BY id",
        &[],
    )
    .await?;
    all(found, endpoint)
}

pub(crate) async fn pending_deliveries(
    client: &ClientWrapper,
    endpoint: &str,
    limit: u32,
) -> Result<Vec<WebhookDelivery>, StoreError> {
    let found = query(
        client,
        "SELECT record FROM webhook_deliveries WHERE endpoint = $1 AND state = 'pending' \
         AND seq IN (SELECT min(seq) FROM webhook_deliveries WHERE endpoint = $1 \
         AND state = 'pending' GROUP BY coalesce(key_id, seq::text)) \
         ORDER BY seq LIMIT $2",
        &[&endpoint, &i64::from(limit)],
    )
    .await?;
    all(found, delivery)
}

pub(crate) async fn deliveries(
    client: &ClientWrapper,
    endpoint: &str,
    before: Option<u64>,
    limit: u32,
) -> Result<Vec<WebhookDelivery>, StoreError> {
    let found = query(
        client,
        "SELECT record FROM webhook_deliveries WHERE endpoint = $1 AND seq < $2 \
         ORDER BY seq DESC LIMIT $3",
        &[
            &endpoint,
            &before.map_or(i64::MAX, to_i64),
            &i64::from(limit),
        ],
    )
    .await?;
    all(found, delivery)
}

pub(crate) async fn one_delivery(
    client: &ClientWrapper,
    endpoint: &str,
    seq: u64,
) -> Result<Option<WebhookDelivery>, StoreError> {
    let found = query(
        client,
        "SELECT record FROM webhook_deliveries WHERE endpoint = $1 AND seq = $2",
        &[&endpoint, &to_i64(seq)],
    )
    .await?;
    found.first().map(delivery).transpose()
}

pub(crate) async fn delivery_backlog(
    client: &ClientWrapper,
) -> Result<(u64, Option<Timestamp>), StoreError> {
    let found = query(
        client,
        "SELECT count(*), min(created_at) FROM webhook_deliveries WHERE state = $1",
        &[&DeliveryState::Pending.as_str()],
    )
    .await?;
    let Some(row) = found.first() else {
        return Ok((0, None));
    };
    let count: i64 = get(row, 0)?;
    let oldest: Option<i64> = get(row, 1)?;
    Ok((
        u64::try_from(count).unwrap_or(0),
        oldest.map(Timestamp::from_unix_ms),
    ))
}
