//! `make chaos`: the zero-loss promise tested the way it can break.
//!
//! Starts PRIVATE NATS, PostgreSQL and Redis servers (own ports and folders, from the installed
//! binaries), a TCP proxy in front of each, `--replicas` processes of every function (`balance`
//! too, asked for the balances of users the events name), `walletctl provider-sim` answering the
//! providers' requests, and `walletctl load` with a mixed load (deposits, transfers, bonus
//! grants, duplicates and malformed commands). While the load runs, faults follow a schedule
//! drawn from a printed seed: replicas killed with SIGKILL or stopped with SIGTERM and
//! restarted, nats-server restarted on its store, PostgreSQL stopped (`-m immediate`) for
//! `--pg-outage`, Redis restarted empty, every connection through a proxy cut and restored.
//! With `--cluster 3` (`make chaos CLUSTER=3`) NATS is the production shape instead: three
//! nodes of the pinned nats-server with fsync on every write and R3 streams, a proxy in front of
//! each node and on every route between two, and the cluster's faults join the schedule: a node
//! killed with SIGKILL and restarted on its store, a stream's or consumer's leader asked to step
//! down, a node cut off from the other two and from the clients for up to 10 s, a rolling
//! restart of the three.
//! With `--shards N` (`make chaos SHARDS=2`) the ledger is N shards, each a private PostgreSQL
//! behind its own proxy, with every sharded function (and `balance`) run per shard; PostgreSQL's
//! stop and a cut connection hit one shard, whose commands wait while the others' flow on.
//! Bonus grants run on every shard within their quotas, and `walletctl campaign rebalance` runs
//! among the replicas (killed and stopped like them), moving quota to where grants wait.
//! Then the load's verification: every command has exactly one terminal outcome and the one its
//! command must have (so nothing transient was dead-lettered), every wallet equals its accepted
//! commands, the campaign granted exactly its envelopes, `walletctl audit` is clean.

mod faults;
mod nats;
mod proxy;
mod reads;
mod replica;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use testkit::{PrivatePostgres, PrivateRedis};
use tokio_util::sync::CancellationToken;
use wallet_load::{self as load, LoadArgs};
use wallet_runtime::Config;
use wallet_runtime::shards::ShardMap;

use crate::faults::Fault;
use crate::nats::Nats;
use crate::proxy::Proxy;
use crate::reads::read_balances;
use crate::replica::Replica;

#[derive(Debug, Parser)]
#[command(about = "Inject faults while a mixed load runs, then check every command.")]
struct Args {
    /// How long the load (and the faults) run.
    #[arg(long, env = "DURATION", default_value = "2m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Seed of the fault schedule and the load; random when not given (it is printed).
    #[arg(long, env = "CHAOS_SEED")]
    seed: Option<u64>,
    /// Commands per second.
    #[arg(long, env = "RATE", default_value_t = 150)]
    rate: u64,
    /// NATS servers: 1, or a cluster of 3 with R3 streams and the cluster's faults.
    #[arg(long, env = "CLUSTER", default_value_t = 1)]
    cluster: usize,
    /// PostgreSQL shards: 1 (no shard map), or N private servers and a map of N shards.
    #[arg(long, env = "SHARDS", default_value_t = 1)]
    shards: usize,
    /// Processes of each JetStream function (on each shard).
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Time between two faults.
    #[arg(long, default_value = "8s", value_parser = humantime::parse_duration)]
    every: Duration,
    /// How long PostgreSQL stays down.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pg_outage: Duration,
    /// On a failed verification, keep every server and process running (their addresses are
    /// printed) until Ctrl-C, to look at what went wrong.
    #[arg(long)]
    hold: bool,
    /// Where the processes' logs go.
    #[arg(long, default_value = ".chaos")]
    logs: PathBuf,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // Dropping the run stops everything it started: replicas, the simulator, the servers.
    let interrupted = async {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            }
            _ => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        r = run(args) => r,
        () = interrupted => Err(anyhow::anyhow!("interrupted; private servers and processes stopped")),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("chaos: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let seed = args.seed.unwrap_or_else(rand::random);
    println!(
        "chaos: seed {seed} (replay: make chaos CHAOS_SEED={seed} DURATION={})",
        humantime::format_duration(args.duration)
    );
    let mut rng = StdRng::seed_from_u64(seed);
    std::fs::create_dir_all(&args.logs)?;

    anyhow::ensure!(
        (1..=8).contains(&args.shards),
        "--shards is 1 to 8, not {}",
        args.shards
    );
    let nats = Nats::start(args.cluster).await?;
    let redis = PrivateRedis::start();
    let local = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut pgs = Vec::new();
    let mut pg_proxies = Vec::new();
    for _ in 0..args.shards {
        let pg = PrivatePostgres::start(&[], None);
        pg_proxies.push(Proxy::start(local(pg.port)).await?);
        pgs.push(pg);
    }
    let redis_proxy = Proxy::start(local(redis.port())).await?;
    let pg_url =
        |role: &str, k: usize| format!("postgres://{role}@127.0.0.1:{}/wallet", pg_proxies[k].port);
    // With several shards, the map (`a`, `b`, …), through the proxies.
    let map = ShardMap::even(
        &(0..args.shards)
            .map(|k| pg_url("postgres", k))
            .collect::<Vec<_>>(),
    );
    let mut env: Vec<(String, String)> = vec![
        ("NATS_URL".into(), nats.url()),
        ("DATABASE_URL".into(), pg_url("postgres", 0)),
        (
            "REDIS_URL".into(),
            format!("redis://127.0.0.1:{}", redis_proxy.port),
        ),
        ("WALLET_NAMESPACE".into(), "chaos".into()),
        ("RUST_LOG".into(), "warn".into()),
        ("SHUTDOWN_GRACE".into(), "10s".into()),
    ];
    if args.shards > 1 {
        let file = std::path::absolute(args.logs.join("shards.toml"))?;
        std::fs::write(&file, map.to_toml())?;
        env.push(("SHARDS_FILE".into(), file.display().to_string()));
    }
    let config =
        Config::from_lookup(|k| env.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone()))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    // Small streams (testkit's, 64 MiB each): JetStream reserves every stream's max_bytes against
    // the disk it finds free whenever it starts, and a restarted server that cannot reserve a
    // stream does not recreate it. The production sizes (9.5 GiB in all) made a restart on a
    // machine short of disk lose WALLET_EVENTS, and the run stalled.
    let mut topology = testkit::topology();
    for s in &mut topology.streams {
        s.replicas = nats.replicas();
    }
    wallet_ops::setup::setup(&config, &topology).await?;

    // A JetStream function runs where a deployment has its consumer (on several shards, only the
    // sharded ones); `balance` on every shard.
    let deployed = topology.consumers_in(Some(&map));
    let mut replicas = Vec::new();
    for name in wallet_ops::catalog::names() {
        let jetstream = topology.consumer(&name).is_some();
        for (k, shard) in map.shards().iter().enumerate() {
            let runs_here = || {
                deployed
                    .iter()
                    .any(|(c, s)| c.function == name && *s == Some(shard))
            };
            if jetstream && !runs_here() {
                continue;
            }
            let shard = &shard.name;
            for i in 0..args.replicas {
                let mut e = env.clone();
                e.push((
                    "HTTP_ADDR".into(),
                    format!("127.0.0.1:{}", testkit::free_port()),
                ));
                e.push((
                    "DATABASE_URL".into(),
                    pg_url(&wallet_ops::setup::role(&name), k),
                ));
                let mut log = format!("{name}-{i}.log");
                if args.shards > 1 {
                    e.push(("SHARD".into(), shard.clone()));
                    log = format!("{name}-{shard}-{i}.log");
                }
                replicas.push(Replica::spawn(&name, Vec::new(), e, args.logs.join(log))?);
            }
        }
    }
    // With shards, the campaign's quotas move between them (docs/sharding.md, step 5): the
    // rebalancer is one of the processes faults hit, so a move it leaves in transit is finished
    // by the next one.
    if args.shards > 1 {
        let every = ["campaign", "rebalance", "--every", "500ms"];
        replicas.push(Replica::spawn(
            "walletctl",
            every.iter().map(|a| (*a).to_owned()).collect(),
            env.clone(),
            args.logs.join("rebalance.log"),
        )?);
    }
    // The providers' side, in a process of its own like a real provider's adapter; the load
    // expects its answers (drawn from the same seed). It is not among the replicas faults hit.
    let providers = Replica::spawn(
        "walletctl",
        vec!["provider-sim".into(), "--seed".into(), seed.to_string()],
        env.clone(),
        args.logs.join("provider-sim.log"),
    )?;

    let stop_reads = CancellationToken::new();
    let reads = tokio::spawn(read_balances(config.clone(), stop_reads.clone()));
    let load_args = load_args(&args, seed)?;
    let started = Instant::now();
    let load = {
        let (config, topology) = (config.clone(), topology.clone());
        tokio::spawn(async move { load::run(&config, &topology, &load_args).await })
    };

    // Faults from a few seconds in (the load funds its users and opens its campaign first) until
    // the load stops sending.
    let mut faults: BTreeMap<Fault, u32> = BTreeMap::new();
    let cluster = args.cluster > 1;
    let control = wallet_ops::nats(&config).await?;
    let mut first_round = Fault::kinds(cluster);
    first_round.shuffle(&mut rng);
    let mut last_fault = started;
    // Faults that did not take (a node not cut off) or a cluster that did not recover from one
    // (a node not current again): either fails the run.
    let mut not_applied = 0;
    tokio::time::sleep(Duration::from_secs(10)).await;
    while started.elapsed() + args.every < args.duration && !load.is_finished() {
        // Every kind once, in an order of the seed's, then as the weights draw them.
        let fault = match first_round.pop() {
            Some(f) => f,
            None => Fault::draw(&mut rng, cluster),
        };
        let at = started.elapsed();
        let detail = match fault {
            Fault::Kill9 | Fault::Sigterm => {
                let r = rng.random_range(0..replicas.len());
                let replica = &mut replicas[r];
                let signal = if fault == Fault::Kill9 {
                    nix::sys::signal::Signal::SIGKILL
                } else {
                    nix::sys::signal::Signal::SIGTERM
                };
                blocking(|| replica.signal(signal));
                tokio::time::sleep(Duration::from_millis(rng.random_range(500..3000))).await;
                replica.restart()?;
                replica.name.to_owned()
            }
            Fault::NatsRestart | Fault::NodeKill => {
                let node = rng.random_range(0..args.cluster);
                blocking(|| nats.stop(node));
                tokio::time::sleep(Duration::from_millis(rng.random_range(200..2000))).await;
                blocking(|| nats.start_again(node));
                if cluster {
                    format!("n{node}")
                } else {
                    String::new()
                }
            }
            Fault::LeaderStepdown => {
                let c = &topology.consumers[rng.random_range(0..topology.consumers.len())];
                let stream = config.names.name(&c.stream);
                let api = if rng.random_bool(0.5) {
                    format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}")
                } else {
                    let consumer = config.names.name(&c.function);
                    format!("$JS.API.CONSUMER.LEADER.STEPDOWN.{stream}.{consumer}")
                };
                format!("{api}: {}", stepdown(&control, &api).await)
            }
            Fault::NodeIsolated => {
                let node = rng.random_range(0..args.cluster);
                let secs = rng.random_range(2.0..10.0);
                let isolated = nats.cut_off(node).await;
                tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                nats.rejoin(node);
                if isolated {
                    format!("n{node} for {secs:.1} s")
                } else {
                    not_applied += 1;
                    format!("n{node}: NOT cut off, it kept a route past the proxies")
                }
            }
            Fault::RollingRestart => {
                let (took, all_current) = nats.rolling_restart().await;
                if !all_current {
                    not_applied += 1;
                }
                took
            }
            Fault::PostgresStop => {
                // (One shard draws nothing: a seed replays the schedule it did before shards.)
                let k = if args.shards > 1 {
                    rng.random_range(0..args.shards)
                } else {
                    0
                };
                blocking(|| pgs[k].stop());
                tokio::time::sleep(args.pg_outage).await;
                blocking(|| pgs[k].start_again());
                match args.shards {
                    1 => format!("{} s", args.pg_outage.as_secs()),
                    _ => format!(
                        "shard {}, {} s",
                        map.shards()[k].name,
                        args.pg_outage.as_secs()
                    ),
                }
            }
            Fault::RedisRestart => {
                blocking(|| {
                    redis.stop();
                    redis.restart();
                });
                String::new()
            }
            Fault::ConnectionsCut => {
                let (name, proxies) = match rng.random_range(0..3) {
                    0 => ("NATS".to_owned(), nats.client_proxies()),
                    1 if args.shards > 1 => {
                        let k = rng.random_range(0..args.shards);
                        (
                            format!("PostgreSQL of shard {}", map.shards()[k].name),
                            vec![&pg_proxies[k]],
                        )
                    }
                    1 => ("PostgreSQL".to_owned(), vec![&pg_proxies[0]]),
                    _ => ("Redis".to_owned(), vec![&redis_proxy]),
                };
                proxies.iter().for_each(|p| p.cut());
                tokio::time::sleep(Duration::from_millis(rng.random_range(500..5000))).await;
                proxies.iter().for_each(|p| p.restore());
                name
            }
        };
        println!(
            "chaos: {:>5.1} s  {} {detail}",
            at.as_secs_f64(),
            fault.name()
        );
        *faults.entry(fault).or_default() += 1;
        last_fault = Instant::now();
        tokio::time::sleep(args.every).await;
    }

    let report = load.await??;
    let drained = last_fault.elapsed();
    stop_reads.cancel();
    let (answered, failed) = reads.await??;
    println!("\n{report}");
    let v = &report.verification;
    println!("| chaos | |\n|---|---:|");
    println!("| seed | {seed} |");
    println!(
        "| duration | {} |",
        humantime::format_duration(args.duration)
    );
    println!("| replicas per function | {} |", args.replicas);
    println!(
        "| NATS | {} |",
        if cluster {
            "3 nodes, R3 streams, fsync on every write"
        } else {
            "one server"
        }
    );
    if args.shards > 1 {
        println!(
            "| PostgreSQL | {} shards, each its own server |",
            args.shards
        );
    }
    println!("| rate | {} commands/s |", args.rate);
    println!("| commands sent | {} |", report.commands);
    for (fault, n) in &faults {
        println!("| fault: {} | {n} |", fault.name());
    }
    for (kind, k) in &report.kinds {
        let outcomes: Vec<String> = k.outcomes.iter().map(|(o, n)| format!("{o} {n}")).collect();
        println!("| outcomes: {kind} | {} |", outcomes.join(", "));
    }
    println!("| balance reads: answered, failed | {answered}, {failed} |");
    println!("| lost | {} |", v.lost);
    println!("| duplicated | {} |", v.duplicated);
    println!(
        "| drained after the last fault | {:.1} s |",
        drained.as_secs_f64()
    );
    if not_applied > 0 {
        println!("| faults not taken or not recovered from | **{not_applied}** |");
    }
    let passed = v.passed && not_applied == 0;
    println!("| verified | {} |", if passed { "yes" } else { "**NO**" });
    if !passed && args.hold {
        println!(
            "\nchaos: holding for inspection (Ctrl-C ends it): NATS_URL={} DATABASE_URL={} {}WALLET_NAMESPACE=chaos; logs in {}{}",
            nats.url(),
            pg_url("postgres", 0),
            env.iter()
                .find(|(k, _)| k == "SHARDS_FILE")
                .map(|(k, v)| format!("{k}={v} "))
                .unwrap_or_default(),
            args.logs.display(),
            nats.store()
                .map(|d| format!(", NATS stores and logs in {d}"))
                .unwrap_or_default()
        );
        std::future::pending::<()>().await;
    }
    drop((replicas, providers));
    wallet_ops::teardown::teardown(&config, &topology)
        .await
        .ok();
    Ok(passed)
}

/// Asks for a leader to step down; says how that went (a step-down refused or unanswered while
/// another fault is on is part of the run, not its failure).
async fn stepdown(control: &async_nats::Client, api: &str) -> String {
    let asked = tokio::time::timeout(
        Duration::from_secs(5),
        control.request(api.to_owned(), bytes::Bytes::new()),
    )
    .await;
    match asked {
        Err(_) => "no answer in 5 s".into(),
        Ok(Err(e)) => format!("not asked: {e}"),
        Ok(Ok(reply)) => match serde_json::from_slice::<serde_json::Value>(&reply.payload) {
            Ok(v) if v["success"] == true => "done".into(),
            Ok(v) => format!("refused: {}", v["error"]["description"]),
            Err(e) => format!("unreadable answer: {e}"),
        },
    }
}

/// The servers' helpers wait synchronously; the load runs on the other workers meanwhile.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn load_args(args: &Args, seed: u64) -> anyhow::Result<LoadArgs> {
    let mix = "deposit=45,transfer=20,bonus=15,withdraw=10,transfer_in=10";
    let line = format!(
        "--mix {mix} --rate {} --duration {}s \
         --users 2000 --duplicates 0.03 --malformed 0.02 --seed {seed} --drain-timeout 10m \
         --providers-elsewhere",
        args.rate,
        args.duration.as_secs()
    );
    Ok(LoadArgs::from_line(&line)?)
}
