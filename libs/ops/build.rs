//! Builds every `functions/*/function.toml` into the catalogue (`src/catalog.rs`), so that the CLI,
//! the test kit and `chaos` know every function from any working directory (the files stay the
//! one place a function is described).

use std::fmt::Write as _;

fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../functions");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut entries: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path().join("function.toml")))
                .collect()
        })
        .unwrap_or_default();
    entries.retain(|p| p.exists());
    entries.sort();
    let mut out = String::from(
        "/// Every functions/*/function.toml, as built.\npub const FUNCTION_SPECS: &[&str] = &[\n",
    );
    for p in entries {
        println!("cargo:rerun-if-changed={}", p.display());
        let _ = writeln!(out, "    include_str!({:?}),", p.display().to_string());
    }
    out.push_str("];\n");
    let path =
        std::path::Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("function_specs.rs");
    std::fs::write(path, out).expect("write function_specs.rs");
}
