//! `walletctl new-function NAME` (`make new-function NAME=…`): a working function folder.
//!
//! Writes `functions/<name>/` (Cargo.toml, function.toml, a three-line `main.rs`, a handler with
//! one example rule, an integration test), appends the function's stream and consumer to
//! `streams.toml`, and generates its Kubernetes manifests. The new function credits a user's
//! `main` wallet from a platform account of its own and rejects amounts above 1,000
//! (`over_limit`): edit its payload and rules from there.

use std::path::Path;

use anyhow::{Context as _, bail, ensure};
use wallet_runtime::streams::Topology;

/// What a new function is called, everywhere.
#[derive(Debug, Clone)]
pub struct Names {
    /// `withdraw-bonus`: folder, binary, consumer, `dlq.<name>`.
    pub name: String,
    /// `withdraw_bonus`: the crate, the entity of its events, the id field's prefix.
    pub snake: String,
    /// `WithdrawBonus`: its type.
    pub camel: String,
    /// `WITHDRAW_BONUS`: its stream.
    pub stream: String,
    /// `wallet.withdraw-bonus`: its subject.
    pub subject: String,
}

impl Names {
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let ok = (2..=32).contains(&name.len())
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && !name.ends_with('-')
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        ensure!(
            ok,
            "function name `{name}` must be 2 to 32 characters from a-z 0-9 -, starting with a letter"
        );
        let snake = name.replace('-', "_");
        let camel = name
            .split('-')
            .map(|w| {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            })
            .collect();
        Ok(Self {
            name: name.to_owned(),
            stream: snake.to_ascii_uppercase(),
            subject: format!("wallet.{name}"),
            snake,
            camel,
        })
    }

    fn fill(&self, template: &str) -> String {
        template
            .replace("{{name}}", &self.name)
            .replace("{{snake}}", &self.snake)
            .replace("{{Camel}}", &self.camel)
            .replace("{{STREAM}}", &self.stream)
            .replace("{{subject}}", &self.subject)
    }
}

const CARGO: &str = r#"[package]
name = "{{name}}"
version = "0.1.0"
description = "The {{name}} function."
edition.workspace = true
rust-version.workspace = true
license.workspace = true
publish.workspace = true

[dependencies]
wallet-runtime.workspace = true
rust_decimal.workspace = true

[dev-dependencies]
testkit.workspace = true
tokio.workspace = true
serde_json.workspace = true

[lints]
workspace = true
"#;

const FUNCTION_TOML: &str = r#"# The one description of the `{{name}}` function. `walletctl k8s` generates its Kubernetes manifests
# from this file, and a test fails the build when this file, streams.toml and k8s/ disagree.

name = "{{name}}"
kind = "jetstream"
subject = "{{subject}}"
stream = "{{STREAM}}"
# What it publishes besides its consumer's acks and its dead letters (NATS permissions).
publishes = ["wallet.events.{{snake}}.>"]

[scaling]
min_replicas = 0
max_replicas = 10
lag_threshold = 5000
activation_lag_threshold = 1
cooldown_seconds = 120

[resources]
cpu_request = "250m"
memory_request = "64Mi"
cpu_limit = "2"
memory_limit = "256Mi"

[env]
"#;

const MAIN: &str = r#"//! `{{name}}`: consumes `{{subject}}` (stream `{{STREAM}}`, consumer `{{name}}`).

fn main() -> std::process::ExitCode {
    wallet_runtime::run({{snake}}::{{Camel}})
}
"#;

const LIB: &str = r#"//! `{{name}}`: `{ {{snake}}_id, user_id, amount, currency }` credits the user's `main` wallet from
//! the platform's `{{name}}` account, up to 1,000 per command.
//!
//! Scaffolded by `walletctl new-function`: change the payload, the rules and the postings here;
//! the runtime does the rest (dedup, the transaction, the outbox, acknowledgements, dead letters).

use rust_decimal::Decimal;
use wallet_runtime::function::Transaction;
use wallet_runtime::wallet::WalletKey;
use wallet_runtime::function::currency_and_amount;
use wallet_runtime::money::Currency;
use wallet_runtime::{Command, Context, Event, Function, Invalid, Outcome, Payload, StepError, ids};

#[derive(Debug, Clone, Copy, Default)]
pub struct {{Camel}};

#[derive(Debug)]
pub struct {{Camel}}Command {
    pub user_id: String,
    pub currency: Currency,
    pub amount: Decimal,
}

const ENTITY: &str = "{{snake}}";

/// The example rule: no command moves more than this.
pub const LIMIT: Decimal = Decimal::from_parts(1000, 0, 0, false, 0);

impl Function for {{Camel}} {
    const NAME: &'static str = "{{name}}";
    const ENTITY: &'static str = ENTITY;
    const ID_FIELD: &'static str = "{{snake}}_id";
    const FIELDS: &'static [&'static str] = &["{{snake}}_id", "user_id", "amount", "currency"];
    type Command = {{Camel}}Command;

    fn validate(
        &self,
        ctx: &Context,
        _subject: &str,
        id: &str,
        p: &Payload,
    ) -> Result<{{Camel}}Command, Invalid> {
        let mut rejection = Event::rejected(ENTITY, id, "invalid_user_id");
        let Some(user_id) = ids::from_value(p.get("user_id")) else {
            return Err(rejection.into());
        };
        rejection.user_id = Some(user_id.to_owned());
        let (currency, amount) = currency_and_amount(ctx, p, rejection.clone())?;
        rejection.currency = Some(currency.code().to_owned());
        if amount > LIMIT {
            rejection.reason = Some("over_limit");
            rejection.amount = Some(currency.format(amount));
            return Err(rejection.into());
        }
        Ok({{Camel}}Command {
            user_id: user_id.to_owned(),
            currency,
            amount,
        })
    }

    async fn apply<'a>(
        &'a self,
        ctx: &'a Context,
        tx: &'a Transaction<'a>,
        commands: &'a [&'a Command<{{Camel}}Command>],
    ) -> Result<Vec<Outcome>, StepError> {
        let wallets = |c: &{{Camel}}Command| {
            (
                WalletKey::main(&c.user_id, c.currency),
                WalletKey::platform("{{name}}", c.currency),
            )
        };
        let keys = commands.iter().flat_map(|c| {
            let (main, platform) = wallets(&c.body);
            [main, platform]
        });
        let mut book = ctx.ledger.open(tx, keys).await?;
        let mut outcomes = Vec::with_capacity(commands.len());
        for command in commands {
            let c = &command.body;
            let (main, platform) = wallets(c);
            book.post(
                &format!("{}:{}", Self::NAME, command.key),
                &[(&main, c.amount), (&platform, -c.amount)],
            )?
            .map_err(|_| StepError::permanent("a credit cannot overdraw"))?;
            let snapshot = book
                .snapshot(&main)
                .ok_or_else(|| StepError::permanent("main wallet not opened"))?;
            let event = Event {
                user_id: Some(c.user_id.clone()),
                currency: Some(c.currency.code().to_owned()),
                amount: Some(c.currency.format(c.amount)),
                balance: Some(snapshot.balance.clone()),
                ..Event::new(ENTITY, &command.id, "completed")
            };
            outcomes.push(Outcome::Done(vec![event.into_outbox(vec![snapshot])]));
        }
        book.write(tx).await?;
        Ok(outcomes)
    }
}
"#;

const TEST: &str = r#"//! `{{name}}` against the real NATS, PostgreSQL and Redis.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::json;
use testkit::TestEnv;

fn command(id: &str, amount: &str) -> (String, String, Vec<u8>) {
    let body = json!({"{{snake}}_id": id, "user_id": "u-1", "amount": amount, "currency": "USD"});
    ("{{subject}}".into(), id.into(), serde_json::to_vec(&body).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn credits_main_and_rejects_over_the_limit() {
    let env = TestEnv::new().await;
    let _f = env.spawn("{{name}}", &[]);
    let mut events = env.events().await;
    env.run_commands(
        &mut events,
        "{{snake}}",
        vec![command("x-1", "10"), command("x-2", "1000.01")],
    )
    .await;
    let done = events.by_id("{{snake}}:x-1:completed", Duration::from_secs(30)).await;
    assert_eq!(done.body["balance"], "10.00");
    let over = events.by_id("{{snake}}:x-2:rejected", Duration::from_secs(30)).await;
    assert_eq!(over.body["reason"], "over_limit");
    assert_eq!(
        env.stored_balance("u-1", "main", "USD").await,
        rust_decimal::Decimal::from(10)
    );
    let audit = env.audit().await;
    assert!(audit.ok(), "{audit}");
}
"#;

const STREAMS: &str = r#"
# --- {{name}} (added by `walletctl new-function`) ---------------------------------------------

[[stream]]
name = "{{STREAM}}"
subjects = ["{{subject}}"]
retention = "workqueue"
discard = "new"
duplicate_window = "30s"
max_bytes = 268_435_456
max_msg_size = 1_048_576

[[consumer]]
function = "{{name}}"
stream = "{{STREAM}}"
filter_subject = "{{subject}}"
ack_wait = "30s"
dead_letter_after = 20
max_ack_pending = 20_000
"#;

/// Scaffolds the function `name` in the repository at `root`; returns what it wrote.
pub fn new_function(root: &Path, name: &str) -> anyhow::Result<Vec<String>> {
    let n = Names::new(name)?;
    let dir = root.join("functions").join(&n.name);
    if dir.exists() {
        bail!("{} exists already", dir.display());
    }
    let streams_file = root.join("streams.toml");
    let streams = std::fs::read_to_string(&streams_file)
        .with_context(|| format!("reading {}", streams_file.display()))?;
    let before = Topology::parse(&streams)?;
    if before
        .streams
        .iter()
        .any(|s| s.name == n.stream || s.subjects.contains(&n.subject))
    {
        bail!(
            "streams.toml already has a stream {} or the subject {}",
            n.stream,
            n.subject
        );
    }
    let updated = format!("{}{}", streams, n.fill(STREAMS));
    let topology = Topology::parse(&updated)?;

    let files = [
        ("Cargo.toml", CARGO),
        ("function.toml", FUNCTION_TOML),
        ("src/main.rs", MAIN),
        ("src/lib.rs", LIB),
        (&format!("tests/{}.rs", n.snake) as &str, TEST),
    ];
    let mut wrote = Vec::new();
    for (path, template) in files {
        let full = dir.join(path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&full, n.fill(template))?;
        wrote.push(format!("functions/{}/{path}", n.name));
    }
    // Formatting depends on the name's length: let rustfmt lay the new code out.
    match std::process::Command::new("cargo")
        .args(["fmt", "-p", &n.name])
        .current_dir(root)
        .status()
    {
        Ok(s) if s.success() => {}
        _ => wrote.push("(cargo fmt did not run: format the new files before committing)".into()),
    }
    std::fs::write(&streams_file, updated)?;
    wrote.push(format!(
        "streams.toml (stream {}, consumer {})",
        n.stream, n.name
    ));
    for path in crate::k8s::generate(root, &topology, false)? {
        wrote.push(path.display().to_string());
    }
    Ok(wrote)
}
