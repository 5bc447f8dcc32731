//! Secrets never reach the logs: a function started with a NATS token, a PostgreSQL password
//! and a Redis password, logging at `debug`, works, and neither its output nor that of one
//! refused by Redis (wrong password) holds any of them. NATS (with a password and an nkey),
//! PostgreSQL and Redis over TLS, verified against a CA of the test's own, and refused without
//! it or without credentials.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use std::collections::HashMap;
use std::path::PathBuf;

use testkit::{PrivateNats, PrivateRedis, TestCerts, TestEnv, commands};

const NATS_TOKEN: &str = "n4ts-t0ken-s3cret";
const PG_PASSWORD: &str = "pg-pa55-s3cret";
const REDIS_PASSWORD: &str = "r3dis-pa55-s3cret";

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_is_logged_at_debug_whether_connections_work_or_are_refused() {
    let redis = PrivateRedis::with_password(REDIS_PASSWORD);
    // The shared NATS and PostgreSQL require no credentials and ignore these (trust
    // authentication); the private Redis checks its password.
    let env = TestEnv::with_env(&[("REDIS_URL", &redis.url()), ("NATS_TOKEN", NATS_TOKEN)]).await;
    let dir = std::env::temp_dir().join(format!("secrets-{}", env.ns));
    std::fs::create_dir_all(&dir).unwrap();
    let database_url = env.database_url_as(&format!("wallet_deposit:{PG_PASSWORD}"));
    let with = |redis_url: String| {
        vec![
            ("RUST_LOG".to_owned(), "debug".to_owned()),
            ("NATS_TOKEN".to_owned(), NATS_TOKEN.to_owned()),
            ("DATABASE_URL".to_owned(), database_url.clone()),
            ("REDIS_URL".to_owned(), redis_url),
        ]
    };

    env.cache_holds("u-secret").await;
    let good = with(redis.url());
    let working = env.spawn_logged("deposit", &borrow(&good), &dir.join("working.log"));
    deposit_completes(&env, &working, "u-secret", "5.00").await;
    assert_eq!(
        env.cached("u-secret", "main:USD").await.as_deref(),
        Some("1|5.00")
    );

    let wrong_url = redis.url().replace(REDIS_PASSWORD, "not-the-password");
    let bad = with(wrong_url);
    let refused = env.spawn_logged("deposit", &borrow(&bad), &dir.join("refused.log"));
    let refused_log = dir.join("refused.log");
    testkit::eventually(Duration::from_secs(20), "the refusal in the log", || {
        let log = std::fs::read_to_string(&refused_log).unwrap_or_default();
        // The refusal itself: the starting line already names `redis_url`.
        async move { log.contains("redis unavailable").then_some(()) }
    })
    .await;
    drop((working, refused));

    for name in ["working.log", "refused.log"] {
        let log = std::fs::read_to_string(dir.join(name)).unwrap();
        assert!(
            log.lines().count() > 3,
            "{name} logged almost nothing:\n{log}"
        );
        for secret in [NATS_TOKEN, PG_PASSWORD, REDIS_PASSWORD] {
            assert!(!log.contains(secret), "{name} shows a secret:\n{log}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_over_tls_with_sslmode_require_and_the_servers_ca() {
    let (pg, ca) = testkit::PrivatePostgres::tls_only();
    let url = format!("{}?sslmode=require", pg.url("wallet_tls"));
    let ca = ca.display().to_string();
    // Setup (database, migrations, roles), a function as its role, and walletctl: all over TLS.
    let env = TestEnv::with_env(&[("DATABASE_URL", &url), ("PG_TLS_CA", &ca)]).await;
    let deposit = env.spawn("deposit", &[]);
    deposit_completes(&env, &deposit, "u-tls", "7.00").await;
    assert!(env.audit().await.ok());

    // The server takes no plain connection, and a client that cannot verify it does not connect.
    let plain = tokio_postgres::connect(&pg.url("wallet_tls"), tokio_postgres::NoTls).await;
    assert!(plain.is_err(), "a plain-text connection was accepted");
    let unverified =
        wallet_runtime::Config::from_lookup(|k| (k == "DATABASE_URL").then(|| url.clone()))
            .unwrap();
    let e = wallet_runtime::db::client(&unverified).await.unwrap_err();
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_over_tls_with_the_servers_ca() {
    let redis = PrivateRedis::tls_only();
    let ca = redis.ca().unwrap().display().to_string();
    let env = TestEnv::with_env(&[("REDIS_URL", &redis.url()), ("REDIS_TLS_CA", &ca)]).await;
    env.cache_holds("u-rtls").await;
    let deposit = env.spawn("deposit", &[]);
    deposit_completes(&env, &deposit, "u-rtls", "3.00").await;
    // The function wrote the balance through to the cache over TLS, where the test reads it.
    assert_eq!(
        env.cached("u-rtls", "main:USD").await.as_deref(),
        Some("1|3.00")
    );

    // The server takes no plain connection, and a client that cannot verify it does not connect.
    let plain = redis::Client::open(format!("redis://127.0.0.1:{}", redis.port())).unwrap();
    let pinged = async {
        let mut c = plain.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut c).await
    };
    let refused = tokio::time::timeout(Duration::from_secs(10), pinged).await;
    assert!(
        !matches!(refused, Ok(Ok(_))),
        "a plain-text connection was answered"
    );
    let url = redis.url();
    let unverified =
        wallet_runtime::Config::from_lookup(|k| (k == "REDIS_URL").then(|| url.clone())).unwrap();
    let client = wallet_runtime::cache::client(&unverified).unwrap();
    let e = client.get_multiplexed_async_connection().await.unwrap_err();
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_over_tls_with_a_password_and_an_nkey() {
    const PASSWORD: &str = "n4ts-pa55";
    let function = nkeys::KeyPair::new_user();
    let mut ca = PathBuf::new();
    let nats = PrivateNats::with_config(|dir| {
        let certs = TestCerts::issue(dir);
        ca = certs.ca.clone();
        format!(
            r#"
            tls {{ cert_file: "{}", key_file: "{}", timeout: 5 }}
            authorization {{ users = [
                {{ user: "walletctl", password: "{PASSWORD}" }},
                {{ nkey: "{}" }}
            ] }}
            "#,
            certs.cert.display(),
            certs.key.display(),
            function.public_key()
        )
    });
    let (url, ca) = (
        format!("tls://127.0.0.1:{}", nats.port),
        ca.display().to_string(),
    );
    let with = |vars: &[(&str, &str)]| -> Vec<(String, String)> {
        [("NATS_URL", url.as_str()), ("NATS_TLS_CA", ca.as_str())]
            .iter()
            .chain(vars)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    // The test and walletctl use the password; the function its nkey.
    let env = TestEnv::with_env(&borrow(&with(&[
        ("NATS_USER", "walletctl"),
        ("NATS_PASSWORD", PASSWORD),
    ])))
    .await;
    let seed = function.seed().unwrap();
    let deposit = env.spawn(
        "deposit",
        &[
            ("NATS_USER", ""),
            ("NATS_PASSWORD", ""),
            ("NATS_NKEY", &seed),
        ],
    );
    deposit_completes(&env, &deposit, "u-ntls", "4.00").await;
    assert!(env.audit().await.ok());

    // Refused: no credentials, a wrong password, and a client that cannot verify the server.
    let refusal = |vars: Vec<(String, String)>| {
        let vars: HashMap<String, String> = vars.into_iter().collect();
        async move {
            let config = wallet_runtime::Config::from_lookup(|k| vars.get(k).cloned()).unwrap();
            format!("{:#}", wallet_ops::nats(&config).await.unwrap_err()).to_lowercase()
        }
    };
    let anonymous = refusal(with(&[])).await;
    assert!(anonymous.contains("authoriz"), "{anonymous}");
    let wrong = refusal(with(&[
        ("NATS_USER", "walletctl"),
        ("NATS_PASSWORD", "guess"),
    ]))
    .await;
    assert!(wrong.contains("authoriz"), "{wrong}");
    let mut no_ca = with(&[("NATS_USER", "walletctl"), ("NATS_PASSWORD", PASSWORD)]);
    no_ca.retain(|(k, _)| k != "NATS_TLS_CA");
    let unverified = refusal(no_ca).await;
    assert!(unverified.contains("certificate"), "{unverified}");
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_with_a_token() {
    const TOKEN: &str = "t0ken-s3cret";
    let nats = PrivateNats::with_config(|_| format!("authorization {{ token: \"{TOKEN}\" }}"));
    let url = nats.url();
    let env = TestEnv::with_env(&[("NATS_URL", &url), ("NATS_TOKEN", TOKEN)]).await;
    let deposit = env.spawn("deposit", &[]);
    deposit_completes(&env, &deposit, "u-token", "2.00").await;
    let anonymous =
        wallet_runtime::Config::from_lookup(|k| (k == "NATS_URL").then(|| url.clone())).unwrap();
    let e = format!("{:#}", wallet_ops::nats(&anonymous).await.unwrap_err()).to_lowercase();
    assert!(e.contains("authoriz"), "{e}");
}

/// Once `function` is ready, a deposit of `amount` USD to `user` completes through it.
async fn deposit_completes(env: &TestEnv, function: &testkit::Proc, user: &str, amount: &str) {
    env.ready(function).await;
    let mut events = env.events().await;
    let id = format!("d-{user}");
    env.run_commands(
        &mut events,
        "deposit",
        vec![commands::deposit(&id, user, amount, "USD")],
    )
    .await;
}

fn borrow(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}
