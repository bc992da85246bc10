//! What each library crate makes its users compile: a program that only
//! talks to a hub, or a driver, never builds the hub's HTTP server.

use std::process::Command;

/// The crates `package` compiles for its users (normal dependencies only).
fn dependencies(package: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(cargo)
        .current_dir(root)
        .args([
            "tree",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
            "-p",
            package,
        ])
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

const SERVER_CRATES: &[&str] = &[
    "axum",
    "hyper",
    "hyper-util",
    "tower",
    "tower-http",
    "utoipa",
    "clap",
    "patchbay-hub",
    "patchbay-web",
];

#[test]
fn the_client_crate_is_small_and_serverless() {
    let deps = dependencies("patchbay-client");
    for s in SERVER_CRATES {
        assert!(
            !deps.iter().any(|d| d == s),
            "patchbay-client pulls in {s}: {deps:?}"
        );
    }
    assert!(deps.len() < 40, "{} crates: {deps:?}", deps.len());
}

#[test]
fn drivers_do_not_build_the_server() {
    let deps = dependencies("patchbay-drivers");
    for s in SERVER_CRATES.iter().filter(|s| **s != "clap") {
        assert!(
            !deps.iter().any(|d| d == s),
            "patchbay-drivers pulls in {s}"
        );
    }
}
