//! Architecture invariants, checked by reading the source: the sans-IO core (`src/core`,
//! `src/objects`, `src/model`) never reaches the OS, and every module says what it is for.

use std::path::{Path, PathBuf};

/// Identifiers that mean I/O, clock reads, process control or OS randomness.
const FORBIDDEN: &[&str] = &[
    "tokio",
    "std::fs",
    "std::net",
    "std::process",
    "std::thread",
    "std::env",
    "std::io::stdin",
    "Instant::now",
    "SystemTime::now",
    "UNIX_EPOCH",
    "thread_rng",
    "OsRng",
    "getrandom",
    "from_entropy",
    "zbus",
    "nix::",
    "libc::",
];

const SANS_IO_DIRS: &[&str] = &["src/core", "src/objects", "src/model", "src/update"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Strips `//` comments so prose may mention the forbidden names.
fn code_only(line: &str) -> &str {
    line.split("//").next().unwrap_or("")
}

#[test]
fn sans_io_core_never_reaches_the_os() {
    let mut violations = Vec::new();
    for dir in SANS_IO_DIRS {
        let mut files = Vec::new();
        rust_files(&root().join(dir), &mut files);
        assert!(!files.is_empty(), "{dir} has no sources");
        for file in files {
            let text = std::fs::read_to_string(&file).expect("readable source");
            // Unit tests at the bottom of a file (after `#[cfg(test)]`) may use real clocks and files.
            for (n, line) in text
                .lines()
                .enumerate()
                .take_while(|(_, l)| l.trim() != "#[cfg(test)]")
            {
                let code = code_only(line);
                for word in FORBIDDEN {
                    if code.contains(word) {
                        violations.push(format!(
                            "{}:{}: {word}: {}",
                            file.display(),
                            n + 1,
                            line.trim()
                        ));
                    }
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "the sans-IO core reaches the OS:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_checker_catches_a_violation() {
    // Guard against a scanner that silently matches nothing.
    let sample = "let t = std::time::Instant::now(); // comment about tokio";
    assert!(FORBIDDEN.iter().any(|w| code_only(sample).contains(w)));
    assert!(!code_only("// tokio in a comment").contains("tokio"));
}

#[test]
fn every_module_has_a_doc_line() {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let mut missing = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable source");
        let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        if !first.starts_with("//!") {
            missing.push(file.display().to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "modules without a //! doc line:\n{}",
        missing.join("\n")
    );
}
