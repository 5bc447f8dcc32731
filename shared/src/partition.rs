//! A user's partition: the one number that is to route a user's commands to the database shard
//! holding their wallets (docs/sharding.md). It will be stored in keys and carried in subjects,
//! so it is fixed forever: neither [`PARTITIONS`] nor the hash may ever change.
//!
//! The hash is FNV-1a, 32-bit, of the user id's UTF-8 bytes, modulo [`PARTITIONS`]: the one
//! nats-server computes for a subject mapping's `{{partition(256,n)}}` over a single token. A
//! client, a function and a server-side mapping therefore agree on every user's partition
//! (`tests/partition.rs` checks it against real nats-servers, 2.9 and the pinned current one).
//! The hash is `hash32::FnvHasher` (the `fnv` crate hashes to 64 bits only), fed the bytes
//! through `Hasher::write` alone: `str`'s `Hash` would append a terminator byte nats-server does
//! not hash.

use core::hash::Hasher as _;

use hash32::Hasher as _;

use crate::streams::StreamDef;

/// How many partitions there are. Never changed: it is part of every partition number.
pub const PARTITIONS: u16 = 256;

/// A partition number, below [`PARTITIONS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Partition(u16);

impl Partition {
    /// The partition of `user_id`.
    pub fn of(user_id: &str) -> Self {
        let mut hasher = hash32::FnvHasher::default();
        hasher.write(user_id.as_bytes());
        let hash = hasher.finish32();
        let p = hash % u32::from(PARTITIONS);
        Self(u16::try_from(p).expect("below PARTITIONS, a u16"))
    }

    /// Partition `p`; none at or above [`PARTITIONS`].
    pub fn new(p: u16) -> Option<Self> {
        (p < PARTITIONS).then_some(Self(p))
    }

    pub fn get(self) -> u16 {
        self.0
    }

    /// As the `partition SMALLINT` of the ledger's tables stores it.
    pub fn as_smallint(self) -> i16 {
        i16::try_from(self.0).expect("below PARTITIONS, an i16")
    }
}

/// The partitions of `users`, as a statement's `smallint[]` parameter takes them.
pub fn of_users<'a>(users: impl IntoIterator<Item = &'a str>) -> Vec<i16> {
    users
        .into_iter()
        .map(|u| Partition::of(u).as_smallint())
        .collect()
}

/// The subject a command of `user_id` for `subject` goes to on a partitioned stream:
/// `wallet.deposit` → `wallet.deposit.144` for `u-7`.
pub fn subject(subject: &str, user_id: &str) -> String {
    format!("{subject}.{}", Partition::of(user_id).get())
}

/// What a function checks of the partition a command arrived on: the bare subjects of its
/// stream when the stream is partitioned, none otherwise.
///
/// A command on `wallet.deposit.<p>` whose `user_id` is not in partition `p` is dead-lettered
/// `wrong_partition` before it is decided: once the ledger has several shards, deciding it
/// would open the user's wallets and remember its id on a shard that does not hold them. A
/// command on the bare subject names no partition and is not checked.
#[derive(Debug, Clone, Default)]
pub struct Routing {
    subjects: Vec<String>,
}

impl Routing {
    pub fn of(stream: &StreamDef) -> Self {
        let subjects = if stream.partitioned {
            stream.subjects.clone()
        } else {
            Vec::new()
        };
        Self { subjects }
    }

    /// The routing of requests to `subject` (without the namespace), which a request may also
    /// name followed by its user's partition (`wallet.balance.get.144`).
    pub fn of_subject(subject: &str) -> Self {
        Self {
            subjects: vec![subject.to_owned()],
        }
    }

    /// Where a client publishes a command of `user_id` for `subject` (without the namespace):
    /// on the user's partition ([`subject`]) when `subject` is one of this stream's, else as is.
    pub fn publish(&self, subject: &str, user_id: &str) -> String {
        if self.subjects.iter().any(|s| s == subject) {
            self::subject(subject, user_id)
        } else {
            subject.to_owned()
        }
    }

    /// False when `subject` (without the namespace) names a partition other than `user_id`'s,
    /// written as [`subject`] writes it.
    pub fn admits(&self, subject: &str, user_id: &str) -> bool {
        self.token(subject)
            .is_none_or(|named| named == Partition::of(user_id).get().to_string())
    }

    /// The partition `subject` (without the namespace) names, if it names one.
    pub fn named(&self, subject: &str) -> Option<Partition> {
        let token = self.token(subject)?;
        let p = Partition::new(token.parse().ok()?)?;
        // Only as [`subject`] writes it: `0144` names no partition.
        (p.get().to_string() == token).then_some(p)
    }

    /// What follows one of the bare subjects and a dot in `subject`, the bare subject's `*`
    /// matching any one token (`provider.*.ack` and `provider.alpha.ack.17` give `17`).
    fn token<'s>(&self, subject: &'s str) -> Option<&'s str> {
        self.subjects.iter().find_map(|bare| {
            let n = bare.split('.').count();
            let mut tokens = subject.splitn(n + 1, '.');
            bare.split('.')
                .all(|want| tokens.next().is_some_and(|got| want == "*" || want == got))
                .then(|| tokens.next())
                .flatten()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/sharding.md's vectors: whatever computes a partition (another client, a shard map
    /// written by hand) must give these.
    #[test]
    fn the_documented_vectors_hold() {
        for (user, partition) in [
            ("u-1", 2),
            ("u-7", 144),
            ("u-1000000", 210),
            ("player:42", 116),
        ] {
            assert_eq!(Partition::of(user).get(), partition, "{user}");
        }
    }

    #[test]
    fn a_command_is_admitted_on_its_bare_subject_or_its_users_partition_only() {
        let stream = |partitioned| {
            let file = format!(
                "[[stream]]\nname = \"S\"\nsubjects = [\"wallet.deposit\"]\n\
                 partitioned = {partitioned}\nduplicate_window = \"30s\"\nmax_bytes = 1\n\
                 max_msg_size = 1\n"
            );
            let t = crate::streams::Topology::parse(&file).expect("a stream");
            Routing::of(&t.streams[0])
        };
        let routing = stream(true);
        assert!(routing.admits("wallet.deposit", "u-7"));
        assert!(routing.admits("wallet.deposit.144", "u-7"));
        for wrong in [
            "wallet.deposit.2",
            "wallet.deposit.0144",
            "wallet.deposit.x",
            "wallet.deposit.144.1",
        ] {
            assert!(!routing.admits(wrong, "u-7"), "{wrong}");
        }
        // Not a partitioned stream: its subjects carry no partition to check.
        assert!(stream(false).admits("wallet.deposit.2", "u-7"));

        // The partition a subject names, for a command that names no user (an ack).
        let named = |subject| routing.named(subject).map(Partition::get);
        assert_eq!(named("wallet.deposit.144"), Some(144));
        assert_eq!(named("wallet.deposit.0"), Some(0));
        for none in [
            "wallet.deposit",
            "wallet.deposit.256",
            "wallet.deposit.0144",
            "wallet.deposit.x",
            "other.1",
        ] {
            assert_eq!(named(none), None, "{none}");
        }
        assert_eq!(stream(false).named("wallet.deposit.2"), None);

        // A party's subject: its `*` is any one token.
        let acks = Routing::of_subject("provider.*.ack");
        assert_eq!(
            acks.named("provider.alpha.ack.17").map(Partition::get),
            Some(17)
        );
        for none in [
            "provider.alpha.ack",
            "provider.a.b.ack.17",
            "provider.alpha.ackx.17",
            "provider.alpha.ack.1.7",
        ] {
            assert_eq!(acks.named(none), None, "{none}");
        }
    }

    /// FNV-1a's own published values (before the modulo), so that a wrong constant cannot hide
    /// behind four vectors.
    #[test]
    fn the_hash_is_fnv_1a_32() {
        // fnv1a32("") = 0x811c9dc5, fnv1a32("a") = 0xe40c292c, fnv1a32("foobar") = 0xbf9cf968.
        assert_eq!(Partition::of("").get(), 0xc5);
        assert_eq!(Partition::of("a").get(), 0x2c);
        assert_eq!(Partition::of("foobar").get(), 0x68);
    }
}
