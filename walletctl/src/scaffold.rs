//! `walletctl new-function NAME` (`make new-function NAME=…`): a working function folder.
//!
//! Writes `functions/<name>/` from `walletctl/template/` (Cargo.toml, function.toml, a `main.rs` of one call, a handler with
//! one example rule, an integration test), appends the function's stream and consumer to
//! `streams.toml` (on `wallet.<name>` and its user's partitions, `wallet.<name>.<partition>`, or
//! on the subject given with `--subject`, wildcards allowed, as `payout.*.ack`), adds its PostgreSQL role to `libs/ops/src/roles.sql`, and generates its
//! Kubernetes manifests. The new function credits a user's
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
    /// `wallet.withdraw-bonus` or the one given: the subjects its stream takes.
    pub subject: String,
    /// One subject its test publishes to: `subject` with its wildcards filled in.
    pub sample: String,
    /// Whether its stream is partitioned: not for a subject with wildcards, a party's
    /// (`payout.*.ack`), whose messages name no user and so no partition.
    pub partitioned: bool,
}

impl Names {
    /// `subject`: what the function consumes, `wallet.<name>` when not given.
    pub fn new(name: &str, subject: Option<&str>) -> anyhow::Result<Self> {
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
        let subject = subject.map_or_else(|| format!("wallet.{name}"), str::to_owned);
        let tokens: Vec<&str> = subject.split('.').collect();
        let last = tokens.len() - 1;
        ensure!(
            tokens.iter().enumerate().all(|(i, t)| {
                !t.is_empty()
                    && (*t == "*"
                        || (*t == ">" && i == last)
                        || t.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            }),
            "subject `{subject}` must be dot-separated tokens of a-z A-Z 0-9 - _, or the \
             wildcards * (a whole token) and > (the last token)"
        );
        let sample = tokens
            .iter()
            .map(|t| {
                if matches!(*t, "*" | ">") {
                    "example"
                } else {
                    t
                }
            })
            .collect::<Vec<_>>()
            .join(".");
        Ok(Self {
            name: name.to_owned(),
            stream: snake.to_ascii_uppercase(),
            partitioned: !subject.contains(['*', '>']),
            subject,
            sample,
            snake,
            camel,
        })
    }

    /// `template` with the template's names replaced by these; its subject by `subject`.
    fn fill(&self, template: &str, subject: &str) -> String {
        template
            .replace("wallet.scaffold-example", subject)
            .replace("ScaffoldExample", &self.camel)
            .replace("SCAFFOLD_EXAMPLE", &self.stream)
            .replace("scaffold_example", &self.snake)
            .replace("scaffold-example", &self.name)
            .replace(
                "partitioned = true",
                &format!("partitioned = {}", self.partitioned),
            )
    }
}

/// The template: `walletctl/template/`, a real function crate (`scaffold-example`) that the
/// workspace builds and tests like any other, so that a change to the runtime that would break
/// a scaffolded function breaks the build first. Its stream and consumer, in its own
/// `tests/streams.toml`, exist only in its tests; a new function's are appended to the repository's.
const TEMPLATE: [(&str, &str); 5] = [
    ("Cargo.toml", include_str!("../template/Cargo.toml")),
    ("function.toml", include_str!("../template/function.toml")),
    ("src/main.rs", include_str!("../template/src/main.rs")),
    ("src/lib.rs", include_str!("../template/src/lib.rs")),
    (
        "tests/scaffold_example.rs",
        include_str!("../template/tests/scaffold_example.rs"),
    ),
];
const STREAMS: &str = include_str!("../template/tests/streams.toml");

/// The line of `roles.sql`'s function list above which a new function's row goes.
const ROLES_MARK: &str = "            -- walletctl new-function: new functions above this line";

/// `roles` with `name`'s row added to its list of functions: the wallets the template's function
/// touches (it credits `main` from its platform account).
fn with_role(roles: &str, name: &str) -> anyhow::Result<String> {
    let at = roles
        .find(ROLES_MARK)
        .context("roles.sql has lost its `walletctl new-function` line")?;
    let (before, after) = roles.split_at(at);
    let before = before.trim_end();
    ensure!(
        !before.contains(&format!("('{name}',")),
        "roles.sql already has a role for {name}"
    );
    Ok(format!(
        "{before},\n            ('{name}', ARRAY['main', 'platform'], ARRAY['main'])\n{after}"
    ))
}

/// Scaffolds the function `name`, consuming `subject` (`wallet.<name>` when `None`), in the
/// repository at `root`; returns what it wrote.
pub fn new_function(root: &Path, name: &str, subject: Option<&str>) -> anyhow::Result<Vec<String>> {
    let n = Names::new(name, subject)?;
    let dir = root.join("functions").join(&n.name);
    if dir.exists() {
        bail!("{} exists already", dir.display());
    }
    let streams_file = root.join("streams.toml");
    let streams = std::fs::read_to_string(&streams_file)
        .with_context(|| format!("reading {}", streams_file.display()))?;
    let block = n.fill(STREAMS, &n.subject);
    let updated = format!("{}\n\n{}", streams.trim_end(), block);
    // Refuses a stream or subject that another stream has already.
    let topology = Topology::parse(&updated)?;
    let roles_file = root.join("libs/ops/src/roles.sql");
    let roles = std::fs::read_to_string(&roles_file)
        .with_context(|| format!("reading {}", roles_file.display()))?;
    let roles = with_role(&roles, &n.name)?;

    let mut wrote = Vec::new();
    for (path, template) in TEMPLATE {
        // The test publishes a command; the rest name the subjects the function takes.
        let subject = if path.starts_with("tests/") {
            &n.sample
        } else {
            &n.subject
        };
        let path = n.fill(path, subject);
        let full = dir.join(&path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&full, n.fill(template, subject))?;
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
    std::fs::write(&roles_file, roles)?;
    wrote.push(format!(
        "libs/ops/src/roles.sql (role wallet_{}: the runtime's privileges, creates main and its platform account, moves main)",
        n.snake
    ));
    for path in crate::k8s::generate(root, &topology, false)? {
        wrote.push(path.display().to_string());
    }
    Ok(wrote)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_subject_is_checked_and_its_wildcards_filled_for_the_test() {
        let n = Names::new("cash-back", Some("cash.*.back.>")).unwrap();
        assert_eq!(
            (n.subject.as_str(), n.sample.as_str()),
            ("cash.*.back.>", "cash.example.back.example")
        );
        assert_eq!(
            Names::new("cash-back", None).unwrap().sample,
            "wallet.cash-back"
        );
        for bad in ["", "a..b", "a.>.b", "a b", "a.b*", ".a"] {
            assert!(Names::new("cash-back", Some(bad)).is_err(), "{bad}");
        }
    }
}
