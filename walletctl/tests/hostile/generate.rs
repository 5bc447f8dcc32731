//! The hostile messages: what each command subject's payload is, and every way to break it.

use rand::Rng;
use rand::rngs::StdRng;
use std::time::Duration;

use serde_json::{Value, json};

/// Hostile messages per command subject (`HOSTILE_PER_SUBJECT`).
pub fn per_subject() -> usize {
    std::env::var("HOSTILE_PER_SUBJECT")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_500)
}
/// A valid deposit after every this many hostile messages.
pub const VALID_EVERY: usize = 20;
/// A function process's peak resident memory must stay under this (its pod's limit is 256 MiB).
pub const MEMORY_BOUND_KIB: u64 = 128 * 1024;
/// Over the 64 KiB a command may be and under the 72 KiB a command stream stores with headers
/// (a larger one is refused at publish time). A hundred of them, and nesting up to 30,000 deep,
/// keep the dead letters within the test streams' 64 MiB.
pub const HUGE: usize = 70_000;
pub const WAIT: Duration = Duration::from_secs(300);

/// A command subject, its id field, the entity of its events, and a valid command to break.
pub struct Target {
    pub subject: &'static str,
    pub id_field: &'static str,
    pub entity: Option<&'static str>,
}

pub const TARGETS: [Target; 4] = [
    Target {
        subject: "wallet.deposit",
        id_field: "deposit_id",
        entity: Some("deposit"),
    },
    Target {
        subject: "wallet.transfer-out",
        id_field: "transfer_id",
        entity: Some("transfer"),
    },
    // Every broken ack is malformed: an ack with a valid id and status would wait two minutes
    // for its (unknown) transfer.
    Target {
        subject: "provider.alpha.ack",
        id_field: "transfer_id",
        entity: None,
    },
    Target {
        subject: "bonus.grant",
        id_field: "grant_id",
        entity: Some("bonus"),
    },
];

pub fn base(t: &Target, id: &str) -> serde_json::Map<String, Value> {
    let v = match t.subject {
        "wallet.deposit" => {
            json!({"deposit_id": id, "user_id": "u-hostile", "amount": "1.00", "currency": "USD"})
        }
        "wallet.transfer-out" => {
            json!({"transfer_id": id, "user_id": "u-rich", "provider": "alpha",
                                        "amount": "1.00", "currency": "USD"})
        }
        "provider.alpha.ack" => json!({"transfer_id": id, "status": "accepted"}),
        _ => json!({"grant_id": id, "campaign_id": "no-such-campaign", "user_id": "u-hostile"}),
    };
    v.as_object().unwrap().clone()
}

/// The fields whose breaking makes the command a rejection (or, for an ack, malformed).
pub fn breakable(t: &Target) -> Vec<&'static str> {
    match t.subject {
        "wallet.deposit" => vec!["user_id", "amount", "currency"],
        "wallet.transfer-out" => vec!["user_id", "provider", "amount", "currency"],
        "provider.alpha.ack" => vec!["status"],
        _ => vec!["campaign_id", "user_id"],
    }
}

pub fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

pub fn wrong_type(rng: &mut StdRng) -> Value {
    match rng.random_range(0..6) {
        0 => json!(rng.random::<i64>()),
        1 => json!(rng.random::<f64>()),
        2 => json!(rng.random::<bool>()),
        3 => Value::Null,
        4 => json!(["1.00"]),
        _ => json!({"value": "1.00"}),
    }
}

pub fn huge_number(rng: &mut StdRng) -> String {
    match rng.random_range(0..5) {
        0 => "1e400".into(),
        1 => "9".repeat(rng.random_range(20..5000)),
        2 => format!("\"{}\"", "9".repeat(rng.random_range(16..5000))),
        3 => format!("\"0.{}1\"", "0".repeat(rng.random_range(18..3000))),
        _ => "-1e-400".into(),
    }
}

pub fn bad_value(rng: &mut StdRng, field: &str) -> Value {
    let choices: &[&str] = match field {
        "amount" => &[
            "-1", "0", "0.00", "1e3", "1.001", " 1", "1,00", "+1", "NaN", "",
        ],
        "currency" => &["usd", "XXX", "", "US", "USDD"],
        "provider" => &["ALPHA", "gamma", "", "a b"],
        "status" => &["ACCEPTED", "ok", "", "accepted ", "pending"],
        _ => &["", "a b", "ä", "x/y", "u>"],
    };
    json!(choices[rng.random_range(0..choices.len())])
}

pub fn control_chars(rng: &mut StdRng, s: &str) -> String {
    let c = ['\u{0}', '\u{7}', '\n', '\r', '\t', '\u{1b}', '\u{7f}'][rng.random_range(0..7)];
    let at = rng.random_range(0..=s.len());
    format!("{}{c}{}", &s[..at], &s[at..])
}

/// One hostile payload for `t` carrying command id `id`, and its kind.
pub fn hostile(
    rng: &mut StdRng,
    t: &Target,
    id: &str,
    huge_left: &mut usize,
) -> (&'static str, Vec<u8>) {
    let mut cmd = base(t, id);
    let field = {
        let f = breakable(t);
        f[rng.random_range(0..f.len())]
    };
    let to_bytes = |m: &serde_json::Map<String, Value>| serde_json::to_vec(m).unwrap();
    match rng.random_range(0..11) {
        0 => {
            let n = rng.random_range(0..512);
            ("random bytes", (0..n).map(|_| rng.random::<u8>()).collect())
        }
        1 => {
            let full = to_bytes(&cmd);
            let cut = rng.random_range(0..full.len());
            ("truncated JSON", full[..cut].to_vec())
        }
        2 => {
            // Deep ones are large: a few hundred of them, or the test's DLQ would fill.
            let depth = if *huge_left > 0 && rng.random_range(0..4) == 0 {
                *huge_left -= 1;
                [10_000, 30_000][rng.random_range(0..2)]
            } else {
                200
            };
            let text = if rng.random::<bool>() {
                nested(depth)
            } else {
                let mut s = String::from_utf8(to_bytes(&cmd)).unwrap();
                s.pop();
                format!("{s},\"{field}\":{}}}", nested(depth))
            };
            ("deeply nested JSON", text.into_bytes())
        }
        3 => {
            let mut s = String::from_utf8(to_bytes(&cmd)).unwrap();
            s.pop();
            let field = if t.subject == "bonus.grant" {
                "user_id"
            } else {
                field
            };
            let field = if breakable(t).contains(&"amount") {
                "amount"
            } else {
                field
            };
            (
                "huge numbers",
                format!("{s},\"{field}\":{}}}", huge_number(rng)).into_bytes(),
            )
        }
        4 => {
            let target = if rng.random::<bool>() {
                t.id_field
            } else {
                field
            };
            cmd.insert(target.into(), wrong_type(rng));
            ("wrong types", to_bytes(&cmd))
        }
        5 => {
            if rng.random::<bool>() {
                cmd.insert(t.id_field.into(), json!(control_chars(rng, id)));
            } else {
                let v = cmd[field].as_str().unwrap_or("x").to_owned();
                cmd.insert(field.into(), json!(control_chars(rng, &v)));
            }
            ("control characters", to_bytes(&cmd))
        }
        6 if *huge_left > 0 => {
            *huge_left -= 1;
            cmd.insert("padding".into(), json!("x".repeat(HUGE)));
            ("payloads over 64 KiB", to_bytes(&cmd))
        }
        7 => {
            let mut bytes = to_bytes(&cmd);
            // Inside the id's string: JSON must be UTF-8.
            let at = bytes
                .windows(id.len())
                .position(|w| w == id.as_bytes())
                .unwrap();
            bytes[at] = [0xff, 0xc3, 0x80, 0xed][rng.random_range(0..4)];
            ("invalid UTF-8", bytes)
        }
        8 => {
            let v = [
                json!([cmd.clone()]),
                json!(id),
                json!(42),
                Value::Null,
                json!(true),
            ][rng.random_range(0..5)]
            .clone();
            ("JSON that is no object", serde_json::to_vec(&v).unwrap())
        }
        9 => {
            cmd.insert(field.into(), bad_value(rng, field));
            ("invalid field values", to_bytes(&cmd))
        }
        _ => {
            // The same key twice, the valid value first: the last one counts.
            let target = if rng.random::<bool>() {
                t.id_field
            } else {
                field
            };
            let mut s = String::from_utf8(to_bytes(&cmd)).unwrap();
            s.pop();
            let bad = if target == t.id_field {
                json!("a b")
            } else {
                bad_value(rng, target)
            };
            (
                "duplicate keys",
                format!("{s},{:?}:{bad}}}", target).into_bytes(),
            )
        }
    }
}
