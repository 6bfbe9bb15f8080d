#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use keyward_core::{EnvironmentName, KeyId, RateLimit, Timestamp};
use keyward_service::escalation::{Escalated, EscalationTable};
use keyward_service::leases::{LeaseTable, Release};
use keyward_service::limiter::fingerprint;
use keyward_testkit::services::Redis;

use super::*;

fn limit(name: &str, limit: u64, period_s: u64) -> RateLimit {
    RateLimit {
        name: name.into(),
        limit,
        period_s,
        burst: None,
        rule: None,
    }
}

fn key() -> KeyId {
    KeyId(uuid::Uuid::now_v7())
}

fn request<'a>(key: KeyId, limits: &'a [RateLimit], applies: &'a [bool]) -> LimitRequest<'a> {
    LimitRequest {
        key,
        limits,
        applies,
        cost: 1,
        now: 0,
        fingerprint: fingerprint(limits),
    }
}

async fn limiter(redis: &Redis, when_unreachable: Unreachable) -> RedisLimiter {
    RedisLimiter::connect(
        &redis.url(),
        Options {
            when_unreachable,
            timeout: Duration::from_millis(200),
        },
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_refusal_by_one_limit_consumes_nothing_from_the_others() {
    let redis = Redis::start().unwrap();
    let limiter = limiter(&redis, Unreachable::FailClosed).await;
    let limits = [limit("second", 10, 1), limit("hour", 3, 3600)];
    let all = [true, true];
    let id = key();
    for i in 0..3 {
        let out = limiter.check(request(id, &limits, &all)).await;
        assert!(out.iter().all(|o| o.admitted), "request {i}: {out:?}");
        assert_eq!(out[1].remaining, 2 - i);
    }
    let refused = limiter.check(request(id, &limits, &all)).await;
    assert!(refused[0].admitted && !refused[1].admitted, "{refused:?}");
    assert!(refused[1].retry_after_ns > 0);
    // The per-second limit was not charged for the refused request: 7 of 10 left.
    assert_eq!(refused[0].remaining, 7, "{refused:?}");
    // A limit that does not apply is neither judged nor charged.
    let only_first = [true, false];
    let out = limiter.check(request(id, &limits, &only_first)).await;
    assert_eq!(out.len(), 1);
    assert!(out[0].admitted);
    assert_eq!(out[0].remaining, 6);
}

#[tokio::test]
async fn three_nodes_share_one_exact_limit() {
    let redis = Redis::start().unwrap();
    let nodes = [
        Arc::new(limiter(&redis, Unreachable::FailClosed).await),
        Arc::new(limiter(&redis, Unreachable::FailClosed).await),
        Arc::new(limiter(&redis, Unreachable::FailClosed).await),
    ];
    // A burst of 50 of 50/minute, asked for 300 times across the nodes at once.
    let limits = Arc::new([limit("minute", 50, 60)]);
    let id = key();
    let admitted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..300 {
        let (node, limits, admitted) = (
            Arc::clone(&nodes[i % 3]),
            Arc::clone(&limits),
            Arc::clone(&admitted),
        );
        tasks.push(tokio::spawn(async move {
            let out = node.check(request(id, &limits[..], &[true])).await;
            if out[0].admitted {
                admitted.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(admitted.load(Ordering::Relaxed), 50);
}

#[tokio::test]
async fn while_redis_is_down_the_policy_answers_and_redis_is_used_again_once_back() {
    let mut redis = Redis::start().unwrap();
    let closed = limiter(&redis, Unreachable::FailClosed).await;
    let open = limiter(&redis, Unreachable::FailOpen).await;
    let local = limiter(&redis, Unreachable::Local).await;
    let limits = [limit("second", 2, 1)];
    let id = key();
    redis.kill();
    let started = Instant::now();
    let out = closed.check(request(id, &limits, &[true])).await;
    assert!(!out[0].admitted);
    assert!(out[0].retry_after_ns > 0);
    assert!(open.check(request(id, &limits, &[true])).await[0].admitted);
    // Local: this node's own limit of 2 a second.
    let local_admitted = {
        let mut n = 0;
        for _ in 0..5 {
            if local.check(request(id, &limits, &[true])).await[0].admitted {
                n += 1;
            }
        }
        n
    };
    assert_eq!(local_admitted, 2);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "an outage answers at once, not after a timeout per request: {:?}",
        started.elapsed()
    );
    assert!(!closed.up.load(Ordering::Acquire));

    redis.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = closed.check(request(id, &limits, &[true])).await;
        if out[0].admitted {
            break;
        }
        assert!(Instant::now() < deadline, "never used Redis again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(closed.up.load(Ordering::Acquire));
}

#[tokio::test]
async fn a_wrong_url_or_an_unreachable_server_is_one_clear_error() {
    let error = RedisLimiter::connect("http://nope", Options::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("not a valid redis://"), "{error}");
    let mut redis = Redis::start().unwrap();
    let port = redis.port();
    redis.kill();
    let error = RedisLimiter::connect(
        &format!("redis://:hunter2@127.0.0.1:{port}/"),
        Options::default(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(error.contains(&format!("127.0.0.1:{port}")), "{error}");
    assert!(!error.contains("hunter2"), "{error}");
}

#[tokio::test]
async fn concurrency_leases_hold_across_nodes_and_lapse_by_themselves() {
    let redis = Redis::start().unwrap();
    let (a, b) = (
        limiter(&redis, Unreachable::FailClosed).await,
        limiter(&redis, Unreachable::FailClosed).await,
    );
    let live = EnvironmentName::parse("live").unwrap();
    let id = key();
    let now = Timestamp::from_unix_ms(0);
    let first = LeaseTable::acquire(&a, id, &live, 2, 1, now, "l1".into())
        .await
        .unwrap();
    LeaseTable::acquire(&b, id, &live, 2, 1, now, "l2".into())
        .await
        .unwrap();
    // The limit is the key's across both nodes.
    let refused = LeaseTable::acquire(&a, id, &live, 2, 1, now, "l3".into()).await;
    assert_eq!(refused, Err(first.expires_at));
    // Another node ends a lease; one that cannot reach the key's environment cannot.
    let elsewhere = |env: &EnvironmentName| env.as_str() == "test";
    assert_eq!(
        LeaseTable::release(&b, "l1", now, &elsewhere).await,
        Release::OutOfReach(live.clone())
    );
    assert_eq!(
        LeaseTable::release(&b, "l1", now, &|_| true).await,
        Release::Released
    );
    assert_eq!(
        LeaseTable::release(&a, "l1", now, &|_| true).await,
        Release::Unknown
    );
    LeaseTable::acquire(&a, id, &live, 2, 1, now, "l3".into())
        .await
        .unwrap();
    assert!(
        LeaseTable::acquire(&b, id, &live, 2, 1, now, "l4".into())
            .await
            .is_err()
    );
    // A crashed caller's leases lapse by themselves (after the 1 s timeout).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    LeaseTable::acquire(&b, id, &live, 2, 1, now, "l5".into())
        .await
        .unwrap();
    assert_eq!(
        LeaseTable::release(&a, "l2", now, &|_| true).await,
        Release::Unknown
    );
}

#[tokio::test]
async fn leases_while_redis_is_down_follow_the_policy() {
    let mut redis = Redis::start().unwrap();
    let local = limiter(&redis, Unreachable::Local).await;
    let closed = limiter(&redis, Unreachable::FailClosed).await;
    let open = limiter(&redis, Unreachable::FailOpen).await;
    redis.kill();
    let live = EnvironmentName::parse("live").unwrap();
    let id = key();
    let now = Timestamp::from_unix_ms(1_000_000);
    let taken = LeaseTable::acquire(&local, id, &live, 1, 30, now, "a".into()).await;
    assert!(taken.is_ok());
    assert!(
        LeaseTable::acquire(&local, id, &live, 1, 30, now, "b".into())
            .await
            .is_err()
    );
    assert_eq!(
        LeaseTable::release(&local, "a", now, &|_| true).await,
        Release::Released
    );
    assert!(
        LeaseTable::acquire(&closed, id, &live, 1, 30, now, "c".into())
            .await
            .is_err()
    );
    assert!(
        LeaseTable::acquire(&open, id, &live, 1, 30, now, "d".into())
            .await
            .is_ok()
    );
    assert!(
        LeaseTable::acquire(&open, id, &live, 1, 30, now, "e".into())
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn violations_on_every_node_count_together_toward_one_block() {
    let redis = Redis::start().unwrap();
    let (a, b) = (
        limiter(&redis, Unreachable::FailClosed).await,
        limiter(&redis, Unreachable::FailClosed).await,
    );
    let rule = keyward_core::BlockRule {
        violations: 3,
        within_s: 60,
        block_s: 30,
        disable_after_blocks: Some(2),
    };
    let id = key();
    let now = Timestamp::from_unix_ms(0);
    assert_eq!(EscalationTable::blocked_until(&b, id, now).await, None);
    assert_eq!(
        EscalationTable::violation(&a, id, &rule, now).await,
        Escalated::Nothing
    );
    assert_eq!(
        EscalationTable::violation(&b, id, &rule, now).await,
        Escalated::Nothing
    );
    let Escalated::Blocked(until) = EscalationTable::violation(&a, id, &rule, now).await else {
        panic!("the third violation, on either node, blocks");
    };
    // Blocked on the other node too, for the block's length.
    let seen = EscalationTable::blocked_until(&b, id, now).await.unwrap();
    assert_eq!(seen, until);
    let from_now = until.unix_ms()
        - i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap();
    assert!((29_000..=30_000).contains(&from_now), "{from_now} ms");
    for _ in 0..2 {
        assert_eq!(
            EscalationTable::violation(&b, id, &rule, now).await,
            Escalated::Nothing
        );
    }
    assert!(matches!(
        EscalationTable::violation(&a, id, &rule, now).await,
        Escalated::Disable(_)
    ));
    // Another key is untouched.
    assert_eq!(EscalationTable::blocked_until(&a, key(), now).await, None);
}

#[tokio::test]
async fn the_script_decides_as_the_in_process_limiter_does() {
    // GCRA with a burst (a minute) and a sliding window (a day), judged together: within one
    // window and one GCRA interval, both limiters must admit, refuse and count alike.
    let redis = Redis::start().unwrap();
    let limiter = limiter(&redis, Unreachable::FailClosed).await;
    let local = LocalLimiter::new();
    let mut minute = limit("minute", 6, 60);
    minute.burst = Some(4);
    let limits = [minute, limit("day", 9, 86_400), limit("slow", 100, 60)];
    let all = [true, true, true];
    let (id, local_id) = (key(), key());
    let now = keyward_core::Clock::now(&keyward_core::SystemClock).unix_ms() * 1_000_000;
    let mut admitted = 0;
    for i in 0..12 {
        let cost = if i == 5 { 3 } else { 1 };
        let remote = limiter
            .check(LimitRequest {
                cost,
                ..request(id, &limits, &all)
            })
            .await;
        let here = local.check_now(LimitRequest {
            cost,
            now,
            ..request(local_id, &limits, &all)
        });
        let view = |out: &[LimitOutcome]| -> Vec<(bool, u64)> {
            out.iter().map(|o| (o.admitted, o.remaining)).collect()
        };
        assert_eq!(view(&remote), view(&here), "request {i} (cost {cost})");
        admitted += u64::from(remote.iter().all(|o| o.admitted));
    }
    // The burst of 4 on the minute limit bounds what was admitted; the rest were refused.
    assert_eq!(admitted, 4);
}
