//! The operator CLI's commands, as a library so that tests drive them in-process.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use wallet_runtime::Config;
use wallet_runtime::shards::ShardMap;
use wallet_runtime::streams::Topology;

pub mod asyncapi;
pub mod compose;
pub mod generated;
pub mod k8s;
pub mod nats_users;
pub mod scaffold;

use wallet_load as load;
use wallet_ops::{audit, campaign, client, dlq, setup, status, teardown, transfer};

#[derive(Debug, Parser)]
#[command(
    name = "walletctl",
    version,
    about = "Operate wallet functions: setup, status, audit, dead letters, transfers; simulate providers."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Create the database if missing, run migrations, apply streams.toml (idempotent).
    Setup {
        /// Every stream's replicas, whatever streams.toml says: 3 in production, where a
        /// stream on one server loses what that server's disk loses.
        #[arg(long, env = "STREAM_REPLICAS", value_parser = clap::value_parser!(u8).range(1..=5))]
        replicas: Option<u8>,
    },
    /// Remove a namespaced deployment: its streams, its database, its Redis keys.
    Teardown {
        /// The namespace again (WALLET_NAMESPACE), to confirm.
        #[arg(long)]
        confirm: String,
    },
    /// Per consumer: pending, ack-pending, redelivered; dead letters per function.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check every ledger invariant against PostgreSQL (and the cache against it); exit 1 on a
    /// breach, 2 when it could not check.
    Audit {
        /// Print JSON: {"ok", "checks": [{"name", "breaches"}], "notes"}.
        #[arg(long)]
        json: bool,
    },
    /// Send a mix of commands at a rate, follow each to its outcome, and verify the run:
    /// outcomes, balances, audit. Exit 1 when the verification fails.
    Load(Box<load::LoadArgs>),
    /// The benchmark's parts (`make bench` runs them).
    Bench {
        #[command(subcommand)]
        command: BenchCmd,
    },
    /// Dead letters.
    Dlq {
        #[command(subcommand)]
        command: DlqCmd,
    },
    /// Generate k8s/base/functions/, k8s/nats/authorization.conf and compose.yaml from every
    /// functions/*/function.toml (checked against streams.toml); with --check, only report
    /// whether the committed files are current.
    ///
    /// With --shards FILE (a shard map, docs/sharding.md) it writes instead, to --out, the
    /// function manifests of that sharded deployment: one Deployment and ScaledObject per
    /// function and shard, and the NATS users with every shard's consumer.
    K8s {
        #[arg(long)]
        check: bool,
        /// The repository root.
        #[arg(long, default_value = ".")]
        root: std::path::PathBuf,
        #[arg(long, requires = "out", conflicts_with = "check")]
        shards: Option<std::path::PathBuf>,
        /// Where --shards writes.
        #[arg(long, requires = "shards")]
        out: Option<std::path::PathBuf>,
    },
    /// Generate asyncapi.yaml and schemas/ from every function folder (each function's binary
    /// prints its interface with --interface); with --check, only report whether they are current.
    Interface {
        #[arg(long)]
        check: bool,
        /// The repository root.
        #[arg(long, default_value = ".")]
        root: std::path::PathBuf,
        /// Where the function binaries are (default: beside walletctl).
        #[arg(long)]
        bin_dir: Option<std::path::PathBuf>,
    },
    /// Scaffold a new JetStream function: its folder, its stream and consumer in streams.toml,
    /// its Kubernetes manifests. It builds, passes its test and runs under `make run` as is.
    NewFunction {
        name: String,
        /// The subject it consumes, wildcards allowed (`payout.*.ack`); `wallet.<name>` by default.
        #[arg(long)]
        subject: Option<String>,
        /// The repository root.
        #[arg(long, default_value = ".")]
        root: std::path::PathBuf,
    },
    /// Bonus campaigns (red envelopes).
    Campaign {
        #[command(subcommand)]
        command: CampaignCmd,
    },
    /// Publish one command, as a client does: JSON to SUBJECT (`wallet.deposit`, …) with
    /// `Nats-Msg-Id: ID`, on its user's partition (`wallet.deposit.144`), waiting until
    /// JetStream stored it.
    Publish {
        subject: String,
        payload: String,
        /// The command's id (its `Nats-Msg-Id`).
        #[arg(long)]
        id: String,
    },
    /// Ask `wallet.balance.get` for a user's wallets and print the reply.
    Balance { user_id: String },
    /// Transfers to game providers.
    Transfer {
        #[command(subcommand)]
        command: TransferCmd,
    },
    /// Play the game providers: answer transfer requests and status queries with acks (a dev
    /// and test tool; runs until Ctrl-C).
    ProviderSim(provider_sim::SimOptions),
    /// Shard maps (SHARDS_FILE, docs/sharding.md).
    Shards {
        #[command(subcommand)]
        command: ShardsCmd,
    },
}

#[derive(Debug, Subcommand)]
pub enum ShardsCmd {
    /// Print a shard map of one shard per database URL, named `a`, `b`, … in order, the 256
    /// partitions split evenly between them (the last takes the remainder): a first
    /// SHARDS_FILE, to edit or use as is.
    Even {
        /// Each shard's owner's DATABASE_URL.
        #[arg(required = true, num_args = 1..=26)]
        database_urls: Vec<String>,
    },
    /// Move partitions of one shard to a new shard, on a live system: MAP is SHARDS_FILE's map
    /// with one shard added, holding partitions of one existing shard. The moved partitions'
    /// commands wait (refused at their publishers) while their rows are copied; nothing else
    /// stops. Then point SHARDS_FILE at MAP and start the new shard's functions
    /// (docs/sharding.md, "Splitting a shard"). Safe to run again after a failure.
    Split {
        map: std::path::PathBuf,
        /// How long to wait for the old shard to finish what it holds of the moved partitions.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        drain_timeout: std::time::Duration,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// The machine's ceiling: publish deposit-sized messages at full speed while one pull
    /// consumer (batches of 1,000) consumes and acks them, no work at all.
    Raw {
        #[arg(long, default_value_t = 300_000)]
        count: usize,
        /// Measure this many times and keep the fastest run (the ceiling).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=20))]
        runs: u16,
        /// The stream's replicas, as `walletctl setup` gives the platform's (3 on a cluster).
        #[arg(long, env = "STREAM_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
        replicas: u8,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Whether the run a `walletctl load --json` summary describes held its rate: every command
    /// sent at it, p99 under 250 ms, lag flat, verified. Exit 0 if it did, 1 if not.
    Holds { file: std::path::PathBuf },
    /// Render bench/RESULTS.md from the JSON summaries in DIR (`raw.json`, `<profile>.json`).
    Report {
        dir: std::path::PathBuf,
        /// The commit measured.
        #[arg(long, default_value = "unknown")]
        commit: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum CampaignCmd {
    /// Create a campaign in PostgreSQL and load it into Redis; the same parameters again change
    /// nothing, other ones are refused.
    Create(campaign::CreateArgs),
    /// A campaign: parameters, granted so far, what Redis holds.
    Show {
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Move quota to the shards whose grants wait for it (docs/sharding.md, step 5): one round,
    /// or one every --every until SIGTERM. One runs per deployment of several shards.
    Rebalance {
        /// Run a round this often (`1s`), until SIGTERM or SIGINT.
        #[arg(long, value_parser = humantime::parse_duration)]
        every: Option<std::time::Duration>,
    },
    /// Every campaign.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TransferCmd {
    /// A transfer, its state and its history (postings, status queries, stuck event).
    Show {
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum DlqCmd {
    /// List dead letters.
    List {
        #[arg(long)]
        function: Option<String>,
        /// Print JSON: every letter with its headers and payload.
        #[arg(long)]
        json: bool,
    },
    /// Publish dead letters again to their original subject, under a new Nats-Msg-Id, and remove them.
    Replay {
        #[arg(long)]
        function: String,
        /// Only the dead letter whose original Nats-Msg-Id (the command id) is this.
        #[arg(long)]
        id: Option<String>,
    },
}

pub async fn run(cli: Cli, config: Config) -> anyhow::Result<ExitCode> {
    let mut topology = Topology::load(config.streams_file.as_deref())?;
    match cli.command {
        Cmd::Setup { replicas } => {
            if let Some(r) = replicas {
                topology
                    .streams
                    .iter_mut()
                    .for_each(|s| s.replicas = r.into());
            }
            for line in setup::setup(&config, &topology).await? {
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Teardown { confirm } => {
            anyhow::ensure!(
                confirm == config.names.namespace(),
                "--confirm `{confirm}` is not the namespace `{}`",
                config.names.namespace()
            );
            for line in teardown::teardown(&config, &topology).await? {
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status { json } => {
            show(&status::status(&config, &topology).await?, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Audit { json } => {
            let report = audit::audit(&config).await?;
            show(&report, json)?;
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_FOUND)
            })
        }
        Cmd::Load(args) => {
            let report = load::run(&config, &topology, &args).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
            Ok(if report.verification.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_FOUND)
            })
        }
        Cmd::Bench {
            command:
                BenchCmd::Raw {
                    count,
                    runs,
                    replicas,
                    json,
                },
        } => {
            let raw = load::raw::run(&config, count, usize::from(runs), replicas.into()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&raw)?);
            } else {
                println!(
                    "raw: {} messages of {} bytes published in {:.2} s, consumed and acked in {:.2} s: {:.0}/s",
                    raw.messages, raw.payload_bytes, raw.publish_seconds, raw.seconds, raw.rate
                );
                if let Some(runs) = raw.runs() {
                    println!("{runs}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench {
            command: BenchCmd::Holds { file },
        } => {
            let (held, line) = load::bench::holds(&file)?;
            println!("{} {line}", if held { "holds:" } else { "does not hold:" });
            Ok(if held {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_FOUND)
            })
        }
        Cmd::Bench {
            command: BenchCmd::Report { dir, commit },
        } => {
            print!("{}", load::bench::results(&config, &dir, &commit).await?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Dlq {
            command: DlqCmd::List { function, json },
        } => {
            let letters = dlq::list(&config, function.as_deref()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
            } else {
                print!("{}", dlq::render(&letters));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Dlq {
            command: DlqCmd::Replay { function, id },
        } => {
            let done = dlq::replay(&config, &topology, &function, id.as_deref()).await?;
            println!("replayed {} dead letter(s) of {function}", done.replayed);
            if done.refused > 0 {
                println!(
                    "left {} dead letter(s) whose subject {function} does not read",
                    done.refused
                );
                return Ok(ExitCode::from(EXIT_FOUND));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::K8s {
            check,
            root,
            shards: Some(file),
            out: Some(out),
        } => {
            let map = wallet_runtime::shards::ShardMap::load(&file)?;
            for path in k8s::generate_sharded(&root, &topology, &map, &out)? {
                println!("wrote: {}", out.join(path).display());
            }
            let _ = check;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::K8s { check, root, .. } => {
            let differ = k8s::generate(&root, &topology, check)?;
            Ok(report_generated("k8s/", "make k8s", &differ, check))
        }
        Cmd::Interface {
            check,
            root,
            bin_dir,
        } => {
            let bin_dir = match bin_dir {
                Some(d) => d,
                None => std::env::current_exe()?
                    .parent()
                    .map(std::path::Path::to_path_buf)
                    .unwrap_or_default(),
            };
            let differ = asyncapi::generate(&root, &bin_dir, check)?;
            Ok(report_generated(
                "asyncapi.yaml and schemas/",
                "make interface",
                &differ,
                check,
            ))
        }
        Cmd::NewFunction {
            name,
            subject,
            root,
        } => {
            for line in scaffold::new_function(&root, &name, subject.as_deref())? {
                println!("wrote {line}");
            }
            let subject = subject.unwrap_or_else(|| format!("wallet.{name}"));
            println!(
                "next: `make interface` documents it; `make test` runs its test; `make run` starts it; publish to {subject}"
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Campaign { command } => {
            match command {
                CampaignCmd::Create(args) => {
                    println!("{}", campaign::create(&config, &args).await?)
                }
                CampaignCmd::Show { id, json } => show(&campaign::show(&config, &id).await?, json)?,
                CampaignCmd::List { json } => show(&campaign::list(&config).await?, json)?,
                CampaignCmd::Rebalance { every } => {
                    wallet_ops::rebalance::run(&config, every, until_signalled(), &mut |m| {
                        println!("{m}")
                    })
                    .await?
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Publish {
            subject,
            payload,
            id,
        } => {
            println!(
                "{}",
                client::publish(&config, &topology, &subject, &id, &payload).await?
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Shards {
            command: ShardsCmd::Even { database_urls },
        } => {
            print!("{}", ShardMap::even(&database_urls).to_toml());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Shards {
            command: ShardsCmd::Split { map, drain_timeout },
        } => {
            let current = config
                .shard_map()?
                .context("SHARDS_FILE is unset: a split divides a shard of a shard map")?;
            let target = ShardMap::load(&map)?;
            wallet_ops::split::split(
                &config,
                &topology,
                &current,
                &target,
                drain_timeout,
                &mut |line| println!("{line}"),
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Balance { user_id } => {
            println!("{}", client::balance(&config, &user_id).await?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Transfer {
            command: TransferCmd::Show { id, json },
        } => {
            show(&transfer::show(&config, &id).await?, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::ProviderSim(opts) => {
            let filter = wallet_runtime::telemetry::filter()?;
            wallet_runtime::telemetry::init_logs(filter, config.json_logs);
            let shutdown = until_signalled();
            tracing::info!(?opts, "provider-sim: answering provider requests");
            let stats = provider_sim::run(&config, opts, shutdown).await?;
            println!("provider-sim: {stats}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Cancelled on SIGTERM or SIGINT: a long-running command's way to stop.
fn until_signalled() -> tokio_util::sync::CancellationToken {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        if let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        }
        on_signal.cancel();
    });
    shutdown
}

/// Exit codes, the same for every command, so that a script can tell "found a problem" from
/// "could not look": 0 done (and, for a check, clean); 1 a check found a problem (an audit breach,
/// a load that failed its verification, dead letters a replay left, stale generated files);
/// 2 it could not run or check (a server unreachable, a bad argument: clap's usage errors are 2
/// too); 64 a bad configuration.
pub const EXIT_FOUND: u8 = 1;
pub const EXIT_COULD_NOT: u8 = 2;

/// Prints a command's result: its table or text, or with `json` its JSON.
fn show(view: &(impl serde::Serialize + std::fmt::Display), json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(view)?);
    } else {
        print!("{view}");
    }
    Ok(())
}

/// Prints what a generator wrote or found stale; with `check`, stale files are exit 1.
fn report_generated(what: &str, fix: &str, differ: &[std::path::PathBuf], check: bool) -> ExitCode {
    for p in differ {
        println!(
            "{} {}",
            if check { "stale:" } else { "wrote:" },
            p.display()
        );
    }
    if differ.is_empty() {
        println!("{what}: up to date");
    } else if check {
        eprintln!("walletctl: {what} out of date with the function folders: run `{fix}`");
        return ExitCode::from(EXIT_FOUND);
    }
    ExitCode::SUCCESS
}
