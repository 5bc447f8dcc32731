//! The balance cache against the real Redis: a fill completes a hash only if the hash survived
//! since the fill began, and a write-through creates no hash, so a balance written through and
//! then lost with its hash is never replaced by an older snapshot (the fill's, or a late write's).

#![allow(clippy::unwrap_used)]

use testkit::TestEnv;
use wallet_runtime::cache::{BalanceCache, FillTicket};
use wallet_runtime::wallet::WalletSnapshot;

/// `user`'s main USD wallet at `version`, with the balance `<version>.00`.
fn main_usd(user: &str, version: i64) -> WalletSnapshot {
    WalletSnapshot {
        owner: user.into(),
        field: "main:USD".into(),
        version,
        balance: format!("{version}.00"),
    }
}

/// Fills `user`'s hash with [`main_usd`] at `version`; whether the fill completed.
async fn fill(cache: &BalanceCache, user: &str, ticket: &FillTicket, version: i64) -> bool {
    let snapshot = main_usd(user, version);
    cache.fill(user, ticket, &[snapshot]).await.unwrap()
}

/// Writes [`main_usd`] at `version` through, as a function does after a commit.
async fn write(cache: &BalanceCache, user: &str, version: i64) {
    cache
        .write_through(&[main_usd(user, version)])
        .await
        .unwrap();
}

/// What a reader of `user` is answered from the cache (None: a miss).
async fn answer(cache: &BalanceCache, user: &str) -> Option<Vec<(String, String)>> {
    cache.read(user).await.unwrap()
}

fn main_usd_answer(balance: &str) -> Option<Vec<(String, String)>> {
    Some(vec![("main:USD".into(), balance.into())])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fill_completes_the_hash_and_keeps_a_newer_balance_written_meanwhile() {
    let env = TestEnv::new().await;
    let cache = env.cache().await;

    let ticket = cache.begin_fill("u-1").await.unwrap();
    assert_eq!(
        answer(&cache, "u-1").await,
        None,
        "a begun fill answers nothing"
    );
    assert!(fill(&cache, "u-1", &ticket, 4).await);
    assert_eq!(answer(&cache, "u-1").await, main_usd_answer("4.00"));
    assert_eq!(
        env.cached("u-1", "~fill").await,
        None,
        "the ticket is cleared"
    );

    // Version 5 is written through between the fill's read (version 4) and its write.
    let ticket = cache.begin_fill("u-2").await.unwrap();
    write(&cache, "u-2", 5).await;
    assert!(fill(&cache, "u-2", &ticket, 4).await);
    assert_eq!(answer(&cache, "u-2").await, main_usd_answer("5.00"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fill_whose_hash_was_lost_meanwhile_leaves_it_incomplete() {
    let env = TestEnv::new().await;
    let cache = env.cache().await;
    let client = wallet_runtime::cache::client(&env.config).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();

    // The fill reads version 4; version 5 commits and is written through; then the hash is lost
    // (Redis restarted empty, or the key evicted), taking version 5 with it.
    let ticket = cache.begin_fill("u-1").await.unwrap();
    write(&cache, "u-1", 5).await;
    redis::cmd("DEL")
        .arg(env.config.names.redis_key("bal:u-1"))
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    // An older write still on its way (another replica's, the outbox relay's) creates no hash.
    write(&cache, "u-1", 4).await;
    assert!(!fill(&cache, "u-1", &ticket, 4).await);
    assert_eq!(
        answer(&cache, "u-1").await,
        None,
        "the older snapshot must not be served as complete"
    );
    assert_eq!(env.cached("u-1", "main:USD").await, None, "nothing written");

    // Of two fills begun one after the other, the later one completes.
    let first = cache.begin_fill("u-1").await.unwrap();
    let second = cache.begin_fill("u-1").await.unwrap();
    assert!(!fill(&cache, "u-1", &first, 5).await);
    assert!(fill(&cache, "u-1", &second, 5).await);
    assert_eq!(answer(&cache, "u-1").await, main_usd_answer("5.00"));
}
