//! `walletctl load`'s arguments and how they parse.

use std::time::Duration;

use crate::mix::Mix;

#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Shares of each kind of command.
    #[arg(long, default_value = "deposit=100", value_parser = Mix::parse)]
    pub mix: Mix,
    /// Commands per second, or `max` (as fast as JetStream stores them, with up to 2,000
    /// publish acks in flight).
    #[arg(long, default_value = "max", value_parser = parse_rate)]
    pub rate: Rate,
    /// Send for this long (e.g. `5m`); instead of --count.
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "count")]
    pub duration: Option<Duration>,
    /// Send this many commands (default 50,000 when --duration is not given).
    #[arg(long)]
    pub count: Option<u64>,
    /// Users the deposits and transfers spread over (each grant has a user of its own).
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub users: u64,
    /// Share of commands sent a second time under another Nats-Msg-Id.
    #[arg(long, default_value_t = 0.0, value_parser = ratio)]
    pub duplicates: f64,
    /// Share of broken commands: half not JSON (dead-lettered), half with an invalid field
    /// (rejected).
    #[arg(long, default_value_t = 0.0, value_parser = ratio)]
    pub malformed: f64,
    /// Envelopes of the run's bonus campaign (1.00 USD each, one per user); default: a tenth of
    /// the grants the run sends.
    #[arg(long)]
    pub envelopes: Option<u64>,
    /// Do not play the game providers (another process answers their requests); transfers may
    /// then end either way.
    #[arg(long)]
    pub no_providers: bool,
    /// Do not play the game providers, and expect the answers of a `walletctl provider-sim
    /// --seed <this run's seed>` with its default options playing them in another process.
    #[arg(long, conflicts_with = "no_providers")]
    pub providers_elsewhere: bool,
    /// The simulated providers' delay before each ack.
    #[arg(long, default_value = "5ms", value_parser = humantime::parse_duration)]
    pub provider_latency: Duration,
    /// Seed of every choice (kinds, users, amounts, the providers' answers).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// After the last command is sent, wait at most this long for the outcomes.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Also report the peak memory (VmHWM) of these processes, as NAME=PID.
    #[arg(long = "watch", value_parser = parse_watch)]
    pub watch: Vec<(String, u32)>,
    /// Also report the CPU time of every process of this program (`nats-server`, `postgres`).
    #[arg(long = "cpu")]
    pub cpu: Vec<String>,
    /// Leave `walletctl audit` out of the verification: it reads the whole database, which takes
    /// minutes once it holds months of history (`make bench`'s history profile audits after its
    /// last run only).
    #[arg(long)]
    pub no_audit: bool,
    /// A label for the summary (`make bench` names its profiles).
    #[arg(long)]
    pub profile: Option<String>,
}

impl LoadArgs {
    /// The arguments of `walletctl load <line>`, parsed as that command parses them.
    pub fn from_line(line: &str) -> Result<Self, clap::Error> {
        #[derive(clap::Parser)]
        struct Load {
            #[command(flatten)]
            args: LoadArgs,
        }
        let words = std::iter::once("load").chain(line.split_whitespace());
        Ok(<Load as clap::Parser>::try_parse_from(words)?.args)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    Max,
    PerSecond(f64),
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rate::Max => f.write_str("max"),
            Rate::PerSecond(r) => write!(f, "{r}"),
        }
    }
}

fn parse_rate(s: &str) -> Result<Rate, String> {
    if s == "max" {
        return Ok(Rate::Max);
    }
    s.parse::<f64>()
        .ok()
        .filter(|r| r.is_finite() && *r > 0.0)
        .map(Rate::PerSecond)
        .ok_or_else(|| format!("`{s}` is neither `max` nor a positive number of commands/s"))
}

fn ratio(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|r| (0.0..=1.0).contains(r))
        .ok_or_else(|| format!("`{s}` is not a share from 0 to 1"))
}

fn parse_watch(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected NAME=PID"))?;
    let pid = pid
        .parse()
        .map_err(|_| format!("`{s}`: the PID must be a number"))?;
    Ok((name.to_owned(), pid))
}
