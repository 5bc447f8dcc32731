//! The shard map: which PostgreSQL holds which partitions (docs/sharding.md).
//!
//! A deployment with one PostgreSQL has no map: `SHARDS_FILE` is unset, every function reads its
//! stream whole and commits to `DATABASE_URL`, as before sharding. With a map (`shards.toml`),
//! every partition belongs to exactly one shard, a shard is one database, and a function process
//! serves one shard (`SHARD=<name>`): its consumer reads only that shard's partitions (its own
//! stream, `DEPOSITS-a`), so a batch still commits in one transaction on one database.
//!
//! What this module guarantees is the map's shape, checked when it is read: names are unique
//! subject-safe tokens, and each of the [`PARTITIONS`] partitions is held by exactly one shard.
//! A map that leaves a partition out would leave its users' commands waiting forever; one that
//! gives a partition twice would decide them on two databases. `walletctl setup` writes the
//! map into every shard's database, and refuses to move a partition there: moving one is a
//! split (docs/sharding.md), not an edit of this file.
//!
//! ```toml
//! [[shard]]
//! name = "a"
//! database_url = "postgres://postgres@db-a:5432/wallet"
//! partitions = "0-127"
//!
//! [[shard]]
//! name = "b"
//! database_url = "postgres://postgres@db-b:5432/wallet"
//! partitions = "128-255"
//! ```

use std::path::Path;

use serde::Deserialize;

use crate::config::redact;
use crate::partition::{PARTITIONS, Partition};

/// The advisory lock (`pg_advisory_xact_lock`) that orders a shard map's change against the
/// batches deciding commands: a batch on a shard holds it shared while it reads where its
/// partitions are; a split holds it exclusively while it gives partitions away
/// (`walletctl shards split`). An advisory lock needs no privilege on the map.
pub const MAP_LOCK: i64 = 0x5741_4c4c_4d41_5053; // "WALLMAPS"

#[derive(Debug, thiserror::Error)]
pub enum ShardsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid shards file: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("invalid shards file: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMap {
    shards: Vec<Shard>,
}

#[derive(Clone, PartialEq, Eq)]
pub struct Shard {
    pub name: String,
    /// The owner's URL: what `walletctl` (setup, audit) connects with. A function connects with
    /// its own role's `DATABASE_URL`.
    pub database_url: String,
    /// The partitions it holds, ascending.
    partitions: Vec<u16>,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("name", &self.name)
            .field("database_url", &redact(&self.database_url))
            .field("partitions", &ranges(&self.partitions))
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(rename = "shard")]
    shards: Vec<ShardEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShardEntry {
    name: String,
    database_url: String,
    partitions: String,
}

/// A shard's name: it ends consumer names (`deposit-a`) and Deployment names, so 1 to 16 of
/// `a-z 0-9`.
pub fn is_valid_name(name: &str) -> bool {
    (1..=16).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

impl ShardMap {
    pub fn parse(text: &str) -> Result<Self, ShardsError> {
        let file: File = toml::from_str(text)?;
        let invalid = |m: String| ShardsError::Invalid(m);
        let mut owner: Vec<Option<usize>> = vec![None; usize::from(PARTITIONS)];
        let mut shards = Vec::with_capacity(file.shards.len());
        for (i, e) in file.shards.into_iter().enumerate() {
            if !is_valid_name(&e.name) {
                return Err(invalid(format!(
                    "shard name `{}` is not 1 to 16 of a-z 0-9",
                    e.name
                )));
            }
            if let Some(twin) = shards.iter().find(|s: &&Shard| s.name == e.name) {
                return Err(invalid(format!("shard `{}` is defined twice", twin.name)));
            }
            e.database_url
                .parse::<tokio_postgres::Config>()
                .map_err(|err| {
                    invalid(format!(
                        "shard `{}`: database_url `{}`: {err}",
                        e.name,
                        redact(&e.database_url)
                    ))
                })?;
            let partitions = parse_ranges(&e.partitions)
                .map_err(|m| invalid(format!("shard `{}`: partitions: {m}", e.name)))?;
            for &p in &partitions {
                if let Some(other) = owner[usize::from(p)].replace(i) {
                    let other: &Shard = &shards[other];
                    return Err(invalid(format!(
                        "partition {p} is given to shard `{}` and to shard `{}`",
                        other.name, e.name
                    )));
                }
            }
            shards.push(Shard {
                name: e.name,
                database_url: e.database_url,
                partitions,
            });
        }
        let missing: Vec<u16> = (0..PARTITIONS)
            .filter(|&p| owner[usize::from(p)].is_none())
            .collect();
        if !missing.is_empty() {
            return Err(invalid(format!(
                "partitions {} belong to no shard (each of 0-{} needs one)",
                ranges(&missing),
                PARTITIONS - 1
            )));
        }
        Ok(Self { shards })
    }

    /// One shard per URL, named `a`, `b`, …, holding the partitions split evenly in order (the
    /// last takes what does not divide): the map tests and tools build. At most 26 shards.
    pub fn even(urls: &[String]) -> Self {
        let n = urls.len();
        assert!(
            (1..=26).contains(&n),
            "an even map has 1 to 26 shards, not {n}"
        );
        let width = PARTITIONS / u16::try_from(n).expect("at most 26");
        let shards = (0u16..)
            .zip(urls)
            .map(|(k, url)| Shard {
                name: char::from(b'a' + u8::try_from(k).expect("at most 26")).to_string(),
                database_url: url.clone(),
                partitions: if usize::from(k) + 1 == n {
                    (k * width..PARTITIONS).collect()
                } else {
                    (k * width..(k + 1) * width).collect()
                },
            })
            .collect();
        Self { shards }
    }

    /// The map as a shards file, which [`ShardMap::parse`] reads back.
    pub fn to_toml(&self) -> String {
        self.shards
            .iter()
            .map(|s| {
                format!(
                    "[[shard]]\nname = \"{}\"\ndatabase_url = \"{}\"\npartitions = \"{}\"\n",
                    s.name,
                    s.database_url,
                    ranges(&s.partitions)
                )
            })
            .collect()
    }

    pub fn load(path: &Path) -> Result<Self, ShardsError> {
        let text = std::fs::read_to_string(path).map_err(|source| ShardsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    pub fn get(&self, name: &str) -> Option<&Shard> {
        self.shards.iter().find(|s| s.name == name)
    }

    pub fn shard_of(&self, p: Partition) -> &Shard {
        self.shards
            .iter()
            .find(|s| s.holds(p))
            .expect("parse gives every partition a shard")
    }
}

impl Shard {
    pub fn holds(&self, p: Partition) -> bool {
        self.partitions.binary_search(&p.get()).is_ok()
    }

    pub fn partitions(&self) -> &[u16] {
        &self.partitions
    }

    /// What this shard's stream of a partitioned stream taking `subjects` takes (unprefixed):
    /// each subject followed by each of the shard's partitions, spelled out, so that a command
    /// on a token that is no partition is refused at its publisher.
    pub fn subjects(&self, subjects: &[String]) -> Vec<String> {
        subjects
            .iter()
            .flat_map(|s| self.partitions.iter().map(move |p| format!("{s}.{p}")))
            .collect()
    }
}

/// `"0-63,128"` → 0, 1, …, 63, 128 (ascending, each once).
fn parse_ranges(text: &str) -> Result<Vec<u16>, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim) {
        let number = |s: &str| {
            s.trim()
                .parse::<u16>()
                .ok()
                .filter(|&n| n < PARTITIONS)
                .ok_or_else(|| format!("`{s}` is not a partition (0-{})", PARTITIONS - 1))
        };
        let (from, to) = match part.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => (number(part)?, number(part)?),
        };
        if from > to {
            return Err(format!("`{part}` runs backwards"));
        }
        out.extend(from..=to);
    }
    out.sort_unstable();
    if let Some(w) = out.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("partition {} is listed twice", w[0]));
    }
    Ok(out)
}

/// `[0, 1, 2, 5]` → `"0-2,5"`.
pub fn ranges(partitions: &[u16]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < partitions.len() {
        let start = partitions[i];
        let mut end = start;
        while i + 1 < partitions.len() && partitions[i + 1] == end + 1 {
            i += 1;
            end += 1;
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, &str)]) -> Result<ShardMap, ShardsError> {
        let text: String = entries
            .iter()
            .map(|(name, partitions)| {
                format!(
                    "[[shard]]\nname = \"{name}\"\n\
                     database_url = \"postgres://postgres@db-{name}/wallet\"\n\
                     partitions = \"{partitions}\"\n"
                )
            })
            .collect();
        ShardMap::parse(&text)
    }

    #[test]
    fn an_even_map_splits_the_partitions_in_order_and_reads_back() {
        let urls: Vec<String> = ["x", "y", "z"]
            .iter()
            .map(|h| format!("postgres://postgres@{h}/wallet"))
            .collect();
        let m = ShardMap::even(&urls);
        let shape: Vec<(&str, String)> = m
            .shards()
            .iter()
            .map(|s| (s.name.as_str(), ranges(s.partitions())))
            .collect();
        assert_eq!(
            shape,
            [
                ("a", "0-84".to_owned()),
                ("b", "85-169".to_owned()),
                ("c", "170-255".to_owned())
            ]
        );
        assert_eq!(m.get("c").expect("c").database_url, urls[2]);
        assert_eq!(ShardMap::parse(&m.to_toml()).expect("reads back"), m);
    }

    #[test]
    fn every_partition_belongs_to_exactly_one_shard() {
        let m = map(&[("a", "0-127"), ("b", "128-200, 201-255")]).expect("a map");
        assert_eq!(m.shards().len(), 2);
        assert_eq!(m.shard_of(Partition::of("u-1")).name, "a"); // partition 2
        assert_eq!(m.shard_of(Partition::of("u-7")).name, "b"); // partition 144
        assert_eq!(m.get("b").expect("b").partitions().len(), 128);

        let err = |entries: &[(&str, &str)]| map(entries).expect_err("refused").to_string();
        assert!(
            err(&[("a", "0-127"), ("b", "129-255")]).contains("partitions 128 belong to no shard"),
            "{}",
            err(&[("a", "0-127"), ("b", "129-255")])
        );
        assert!(
            err(&[("a", "0-128"), ("b", "128-255")])
                .contains("partition 128 is given to shard `a` and to shard `b`")
        );
        assert!(err(&[("a", "0-255"), ("a", "")]).contains("defined twice"));
        assert!(err(&[("A", "0-255")]).contains("not 1 to 16 of a-z 0-9"));
        assert!(err(&[("a", "0-256")]).contains("`256` is not a partition"));
        assert!(err(&[("a", "5-0")]).contains("runs backwards"));
        assert!(err(&[("a", "0-255,3")]).contains("partition 3 is listed twice"));
        assert!(ShardMap::parse("[[shard]]\nname = \"a\"\npartitions = \"0-255\"\n").is_err());
    }

    #[test]
    fn a_shards_stream_takes_its_partitions() {
        let m = map(&[("a", "0-1,7"), ("b", "2-6,8-255")]).expect("a map");
        let subjects = ["wallet.deposit".to_owned()];
        assert_eq!(
            m.get("a").expect("a").subjects(&subjects),
            ["wallet.deposit.0", "wallet.deposit.1", "wallet.deposit.7"]
        );
        let whole = map(&[("a", "0-255")]).expect("one shard");
        let all = whole.shards()[0].subjects(&subjects);
        assert_eq!(all.len(), 256);
        assert_eq!(all[255], "wallet.deposit.255");
    }

    #[test]
    fn ranges_are_written_as_they_are_read() {
        assert_eq!(ranges(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        assert_eq!(parse_ranges("0-2,5,7-8"), Ok(vec![0, 1, 2, 5, 7, 8]));
        assert_eq!(ranges(&[]), "");
    }

    /// A URL's password never reaches a log through the map's `Debug`.
    #[test]
    fn debug_masks_the_password() {
        let m = ShardMap::parse(
            "[[shard]]\nname = \"a\"\ndatabase_url = \"postgres://u:hunter2@db/w\"\npartitions = \"0-255\"\n",
        )
        .expect("a map");
        assert!(!format!("{m:?}").contains("hunter2"));
    }
}
