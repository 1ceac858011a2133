//! Keeps the rule of `src/protocol/mod.rs`: the protocol core performs no I/O, reads no clock, draws
//! no OS randomness and uses no randomly seeded hash map (std's `RandomState`). Fixed-seed maps
//! (`FxHashMap`) and maps keyed by a key handed in at birth (the KV store's `HashKey`, whose hasher
//! has no `Default`) are allowed for lookups. A mention of any of these in the
//! folder fails the build's tests, so the simulator keeps driving exactly what runs in production.

use std::path::Path;

const FORBIDDEN: &[(&str, &str)] = &[
    ("glommio", "the runtime's executor"),
    ("tokio", "an async runtime"),
    ("async fn", "async code"),
    (".await", "async code"),
    ("Instant::now", "the clock"),
    ("SystemTime", "the clock"),
    ("thread_rng", "OS randomness"),
    ("OsRng", "OS randomness"),
    ("from_entropy", "OS randomness"),
    ("std::net", "sockets"),
    ("TcpStream", "sockets"),
    ("UdpSocket", "sockets"),
    ("std::fs", "files"),
    ("std::thread", "threads"),
    ("std::collections::HashMap", "a randomly seeded map (use BTreeMap or FxHashMap)"),
    ("std::collections::HashSet", "a randomly seeded set (use BTreeSet or FxHashSet)"),
    ("collections::{HashMap", "a randomly seeded map (use BTreeMap or FxHashMap)"),
    ("RandomState", "a randomly seeded hasher"),
    ("DefaultHasher", "std's hasher, which is not guaranteed stable"),
];

fn rust_files(dir: &Path, found: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/protocol exists") {
        let path = entry.expect("readable entry").path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

#[test]
fn the_protocol_core_mentions_no_io_clock_or_os_randomness() {
    let mut files = Vec::new();
    rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src/protocol"), &mut files);
    assert!(files.len() >= 10, "found the role files: {files:?}");
    let mut offences = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable source");
        for (number, line) in text.lines().enumerate() {
            for (needle, what) in FORBIDDEN {
                if line.contains(needle) {
                    offences.push(format!("{}:{}: {what} ({needle})", file.display(), number + 1));
                }
            }
        }
    }
    assert!(offences.is_empty(), "the protocol core must stay sans-IO:\n{}", offences.join("\n"));
}
