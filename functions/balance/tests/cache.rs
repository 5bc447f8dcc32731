//! The balance cache against the real Redis: a fill completes a hash only if the hash survived
//! since the fill began, and a write-through creates no hash, so a balance written through and
//! then lost with its hash is never replaced by an older snapshot (the fill's, or a late write's).

#![allow(clippy::unwrap_used)]

use testkit::TestEnv;
use wallet_runtime::cache::{BalanceCache, WalletSnapshot};

fn main_usd(user: &str, version: i64, balance: &str) -> WalletSnapshot {
    WalletSnapshot {
        owner: user.into(),
        field: "main:USD".into(),
        version,
        balance: balance.into(),
    }
}

async fn cache(env: &TestEnv) -> BalanceCache {
    let client = wallet_runtime::cache::client(&env.config).unwrap();
    let conn = redis::aio::ConnectionManager::new(client).await.unwrap();
    BalanceCache::new(conn, env.config.names.clone())
}

/// What a reader of `user` would be answered from the cache.
async fn answer(cache: &BalanceCache, user: &str) -> Option<Vec<(String, String)>> {
    cache.read(user).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fill_completes_the_hash_and_keeps_a_newer_balance_written_meanwhile() {
    let env = TestEnv::new().await;
    let cache = cache(&env).await;

    let ticket = cache.begin_fill("u-1").await.unwrap();
    assert_eq!(
        answer(&cache, "u-1").await,
        None,
        "a begun fill answers nothing"
    );
    assert!(
        cache
            .fill("u-1", &ticket, &[main_usd("u-1", 4, "4.00")])
            .await
            .unwrap()
    );
    assert_eq!(
        answer(&cache, "u-1").await,
        Some(vec![("main:USD".into(), "4.00".into())])
    );
    assert_eq!(
        env.cached("u-1", "~fill").await,
        None,
        "the ticket is cleared"
    );

    // Version 5 is written through between the fill's read (version 4) and its write.
    let ticket = cache.begin_fill("u-2").await.unwrap();
    cache
        .write_through(&[main_usd("u-2", 5, "5.00")])
        .await
        .unwrap();
    assert!(
        cache
            .fill("u-2", &ticket, &[main_usd("u-2", 4, "4.00")])
            .await
            .unwrap()
    );
    assert_eq!(
        answer(&cache, "u-2").await,
        Some(vec![("main:USD".into(), "5.00".into())])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fill_whose_hash_was_lost_meanwhile_leaves_it_incomplete() {
    let env = TestEnv::new().await;
    let cache = cache(&env).await;
    let client = wallet_runtime::cache::client(&env.config).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();

    // The fill reads version 4; version 5 commits and is written through; then the hash is lost
    // (Redis restarted empty, or the key evicted), taking version 5 with it.
    let ticket = cache.begin_fill("u-1").await.unwrap();
    cache
        .write_through(&[main_usd("u-1", 5, "5.00")])
        .await
        .unwrap();
    redis::cmd("DEL")
        .arg(env.config.names.redis_key("bal:u-1"))
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    // An older write still on its way (another replica's, the outbox relay's) creates no hash.
    cache
        .write_through(&[main_usd("u-1", 4, "4.00")])
        .await
        .unwrap();
    assert!(
        !cache
            .fill("u-1", &ticket, &[main_usd("u-1", 4, "4.00")])
            .await
            .unwrap()
    );
    assert_eq!(
        answer(&cache, "u-1").await,
        None,
        "the older snapshot must not be served as complete"
    );
    assert_eq!(env.cached("u-1", "main:USD").await, None, "nothing written");

    // Of two fills begun one after the other, the later one completes.
    let first = cache.begin_fill("u-1").await.unwrap();
    let second = cache.begin_fill("u-1").await.unwrap();
    assert!(
        !cache
            .fill("u-1", &first, &[main_usd("u-1", 5, "5.00")])
            .await
            .unwrap()
    );
    assert!(
        cache
            .fill("u-1", &second, &[main_usd("u-1", 5, "5.00")])
            .await
            .unwrap()
    );
    assert_eq!(
        answer(&cache, "u-1").await,
        Some(vec![("main:USD".into(), "5.00".into())])
    );
}
