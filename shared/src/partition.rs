//! A user's partition: the one number that is to route a user's commands to the database shard
//! holding their wallets (docs/sharding.md). It will be stored in keys and carried in subjects,
//! so it is fixed forever: neither [`PARTITIONS`] nor the hash may ever change.
//!
//! The hash is FNV-1a, 32-bit, of the user id's UTF-8 bytes, modulo [`PARTITIONS`]: the one
//! nats-server computes for a subject mapping's `{{partition(256,n)}}` over a single token. A
//! client, a function and a server-side mapping therefore agree on every user's partition
//! (`tests/partition.rs` checks it against a real nats-server). It is written out here, two
//! constants and a loop, because the `fnv` crate hashes to 64 bits only.

/// How many partitions there are. Never changed: it is part of every partition number.
pub const PARTITIONS: u16 = 256;

/// The FNV-1a 32-bit parameters (the IETF draft "The FNV Non-Cryptographic Hash Algorithm").
const OFFSET_BASIS: u32 = 0x811c_9dc5;
const PRIME: u32 = 0x0100_0193;

/// A partition number, below [`PARTITIONS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Partition(u16);

impl Partition {
    /// The partition of `user_id`.
    pub fn of(user_id: &str) -> Self {
        let hash = user_id
            .bytes()
            .fold(OFFSET_BASIS, |h, b| (h ^ u32::from(b)).wrapping_mul(PRIME));
        let p = hash % u32::from(PARTITIONS);
        Self(u16::try_from(p).expect("below PARTITIONS, a u16"))
    }

    pub fn get(self) -> u16 {
        self.0
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
