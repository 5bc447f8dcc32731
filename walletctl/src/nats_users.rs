//! NATS users with least privilege: what each process may publish and subscribe to.
//!
//! Without them any client that reaches NATS can publish `wallet.deposit` (mint money) or a
//! forged `provider.<p>.ack`. Each user here gets only what its code does:
//! - a command function: pull from and acknowledge its own consumer, read that consumer's info,
//!   publish what its `function.toml` says it publishes (its events, its provider requests) and
//!   its own dead letters; replies to its JetStream publishes come to its inbox;
//! - a request-reply function: receive requests on its subject and answer them;
//! - a provider adapter `provider-<p>`: publish only `provider.<p>.ack` (and `.ack.<partition>`), and read the requests of
//!   its own durable consumer `provider-<p>` (created by the operator, filtered on `provider.<p>.>`);
//! - `platform`, the clients: publish commands and balance requests, read events;
//! - `walletctl`, the operator: everything (setup, replays, audits).
//!
//! [`conf`] renders the `authorization` block of a nats-server configuration; `walletctl k8s`
//! writes it for the default namespace to `k8s/nats/authorization.conf` with each password a
//! `$NATS_PASSWORD_<USER>` variable, which nats-server reads from its environment.

use std::fmt::Write as _;

use wallet_runtime::names::Names;
use wallet_runtime::shards::ShardMap;
use wallet_runtime::streams::Topology;

use wallet_ops::catalog::{FunctionSpec, Kind};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    /// May answer requests it received (request-reply), whatever their reply subject.
    pub allow_responses: bool,
}

/// The JetStream API of one durable pull consumer: its next messages, its info, its acks.
fn pull(stream: &str, consumer: &str) -> Vec<String> {
    vec![
        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"),
        format!("$JS.API.CONSUMER.INFO.{stream}.{consumer}"),
        format!("$JS.ACK.{stream}.{consumer}.>"),
    ]
}

/// Every user of a deployment under `names`.
/// With a shard map, a command function may pull from its consumer on each shard.
pub fn users(
    specs: &[FunctionSpec],
    topology: &Topology,
    shards: Option<&ShardMap>,
    providers: &[String],
    names: &Names,
) -> Vec<User> {
    let inbox = || vec!["_INBOX.>".to_owned()];
    let consumers = topology.consumers_in(shards);
    let mut out = Vec::new();
    for s in specs {
        let user = match (&s.kind, topology.consumer(&s.name)) {
            (Kind::Jetstream, Some(_)) => {
                let mut publish: Vec<String> = consumers
                    .iter()
                    .filter(|(c, _)| c.function == s.name)
                    .flat_map(|(c, shard)| {
                        let shard = shard.map(|s| s.name.as_str());
                        pull(
                            &names.name(&c.stream_on(shard)),
                            &names.name(&c.durable(shard)),
                        )
                    })
                    .collect();
                publish.push(names.subject(&format!("dlq.{}", s.name)));
                publish.extend(s.publishes.iter().map(|p| names.subject(p)));
                User {
                    name: s.name.clone(),
                    publish,
                    subscribe: inbox(),
                    allow_responses: false,
                }
            }
            _ => User {
                name: s.name.clone(),
                publish: s.publishes.iter().map(|p| names.subject(p)).collect(),
                // A request on its user's partition too (`wallet.balance.get.144`).
                subscribe: vec![
                    names.subject(&s.subject),
                    names.subject(&format!("{}.*", s.subject)),
                ],
                allow_responses: true,
            },
        };
        out.push(user);
    }
    let requests = names.name("PROVIDER_REQUESTS");
    for p in providers {
        let mut publish = pull(&requests, &names.name(&format!("provider-{p}")));
        publish.push(names.subject(&format!("provider.{p}.ack")));
        // On the partition its request named (docs/sharding.md).
        publish.push(names.subject(&format!("provider.{p}.ack.*")));
        out.push(User {
            name: format!("provider-{p}"),
            publish,
            subscribe: inbox(),
            allow_responses: false,
        });
    }
    let events = names.name("WALLET_EVENTS");
    let mut publish: Vec<String> = client_commands(specs, topology)
        .iter()
        .map(|c| names.subject(c))
        .collect();
    publish.push(names.subject("wallet.balance.get"));
    publish.push(names.subject("wallet.balance.get.*"));
    publish.extend([
        format!("$JS.API.STREAM.INFO.{events}"),
        format!("$JS.API.CONSUMER.*.{events}"),
        format!("$JS.API.CONSUMER.*.{events}.>"),
        format!("$JS.ACK.{events}.>"),
    ]);
    out.push(User {
        name: "platform".into(),
        publish,
        subscribe: inbox(),
        allow_responses: false,
    });
    out.push(User {
        name: "walletctl".into(),
        publish: vec![">".into()],
        subscribe: vec![">".into()],
        allow_responses: false,
    });
    out
}

/// What platform clients publish: every command function's subject that names no party (a
/// provider's or a payment provider's acks, `provider.*.ack`, are theirs to publish), bare and,
/// on a partitioned stream, followed by a partition.
fn client_commands(specs: &[FunctionSpec], topology: &Topology) -> Vec<String> {
    specs
        .iter()
        .filter(|s| matches!(s.kind, Kind::Jetstream) && !s.subject.contains('*'))
        .filter_map(|s| topology.consumer(&s.name))
        .flat_map(|c| topology.read_by(c))
        .collect()
}

/// The environment variable that holds `user`'s password where nats-server and the user's
/// process run: `NATS_PASSWORD_PROVIDER_ACK` for `provider-ack`.
pub fn password_var(user: &str) -> String {
    wallet_ops::catalog::secret_key("NATS_PASSWORD", user)
}

/// The `authorization { users = [...] }` block of a nats-server configuration; `password` gives
/// each user's password as the configuration writes it (a quoted string, or `$VAR`).
pub fn conf(users: &[User], password: impl Fn(&User) -> String) -> String {
    let list = |items: &[String]| {
        items
            .iter()
            .map(|i| format!("{i:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // An empty allow list is no restriction at all to nats-server: nothing is `deny: [">"]`
    // (answers to requests still go out under `allow_responses`).
    let rule = |items: &[String]| {
        if items.is_empty() {
            r#"{ deny: [">"] }"#.to_owned()
        } else {
            format!("{{ allow: [{}] }}", list(items))
        }
    };
    let mut out = String::from("authorization {\n  users = [\n");
    for u in users {
        let _ = write!(
            out,
            "    {{\n      user: {:?}\n      password: {}\n      permissions: {{\n        publish: {}\n        subscribe: {}\n",
            u.name,
            password(u),
            rule(&u.publish),
            rule(&u.subscribe),
        );
        if u.allow_responses {
            out.push_str("        allow_responses: true\n");
        }
        out.push_str("      }\n    }\n");
    }
    out.push_str("  ]\n}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_function_may_publish_only_its_own_subjects() {
        let specs = wallet_ops::catalog::built_in();
        let topology = Topology::load(None).expect("streams");
        let names = Names::new("t").expect("ns");
        let users = users(&specs, &topology, None, &["alpha".into()], &names);
        let user = |n: &str| users.iter().find(|u| u.name == n).expect(n);
        let deposit = user("deposit");
        assert!(
            deposit
                .publish
                .contains(&"t.wallet.events.deposit.>".to_owned())
        );
        assert!(deposit.publish.contains(&"t.dlq.deposit".to_owned()));
        assert!(!deposit.publish.iter().any(|p| p.contains("wallet.deposit")));
        let alpha = user("provider-alpha");
        assert!(alpha.publish.contains(&"t.provider.alpha.ack".to_owned()));
        assert!(alpha.publish.contains(&"t.provider.alpha.ack.*".to_owned()));
        // Never another provider's acks.
        assert!(
            !alpha
                .publish
                .iter()
                .any(|p| p.contains("beta") || p.contains("provider.*"))
        );
        assert!(user("balance").allow_responses);
        let platform = user("platform");
        for command in [
            "wallet.deposit",
            "wallet.transfer-out",
            "bonus.grant",
            "wallet.withdraw",
            "wallet.transfer-in",
        ] {
            assert!(
                platform.publish.contains(&format!("t.{command}")),
                "{command}"
            );
            assert!(
                platform.publish.contains(&format!("t.{command}.*")),
                "{command}"
            );
        }
        assert!(!platform.publish.iter().any(|p| p.contains("ack")));
        let text = conf(&users, |u| format!("${}", password_var(&u.name)));
        assert!(
            text.contains("password: $NATS_PASSWORD_PROVIDER_ACK"),
            "{text}"
        );
    }
}
