//! How the reports write figures: `1,234,567`, `12.5` ms, "the fastest of 3 runs".

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// "the fastest of 3 runs: 39,406, 44,920, 51,085/s", when there were several runs.
pub fn fastest_of(rates: &[f64]) -> Option<String> {
    let all: Vec<String> = rates.iter().map(|r| rate(*r)).collect();
    (all.len() > 1).then(|| format!("the fastest of {} runs: {}/s", all.len(), all.join(", ")))
}

pub fn rate(r: f64) -> String {
    thousands(r.round() as u64)
}

pub fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}
