//! The crate boundaries of ARCHITECTURE.md, checked from `cargo metadata`: dependencies point
//! inwards, only the application and the store reach PostgreSQL, and nothing below the gRPC
//! crate knows about protobuf or tonic.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Each workspace crate and the names of its normal (not dev or build) dependencies.
fn normal_dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|package| {
            let dependencies = package["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["kind"].is_null())
                .map(|d| d["name"].as_str().unwrap().to_owned())
                .collect();
            (package["name"].as_str().unwrap().to_owned(), dependencies)
        })
        .collect()
}

#[test]
fn only_the_application_and_the_store_reach_postgresql() {
    // The test kit and the benchmarks talk to PostgreSQL directly on purpose (fresh databases,
    // raw baselines); neither is shipped.
    let allowed = ["caselog-store", "caselog-app", "caselog-tests", "caselog-bench"];
    let crates = normal_dependencies();
    assert!(crates.contains_key("caselog-app"), "{crates:?}");
    for (name, dependencies) in &crates {
        if !allowed.contains(&name.as_str()) {
            assert!(
                !dependencies.contains("sqlx"),
                "{name} depends on sqlx: go through caselog-app"
            );
        }
    }
}

#[test]
fn the_inner_crates_know_nothing_of_grpc() {
    let transport = [
        "tonic",
        "prost",
        "prost-types",
        "caselog-api",
        "caselog-server",
        "caselog-cli",
    ];
    let inner = [
        "caselog-calendar",
        "caselog-domain",
        "caselog-projections",
        "caselog-workload",
        "caselog-store",
        "caselog-app",
        "caselog-report",
    ];
    let crates = normal_dependencies();
    for name in inner {
        let dependencies = &crates[name];
        for forbidden in transport {
            assert!(!dependencies.contains(forbidden), "{name} depends on {forbidden}");
        }
    }
}

#[test]
fn the_domain_and_projections_do_no_io() {
    let io = ["tokio", "sqlx", "caselog-store", "tonic"];
    let crates = normal_dependencies();
    for name in [
        "caselog-calendar",
        "caselog-domain",
        "caselog-projections",
        "caselog-report",
    ] {
        for forbidden in io {
            assert!(!crates[name].contains(forbidden), "{name} depends on {forbidden}");
        }
    }
}

#[test]
fn the_grpc_crate_does_not_carry_the_generator_or_the_command_line() {
    let crates = normal_dependencies();
    for forbidden in ["caselog-workload", "caselog-cli", "clap"] {
        assert!(
            !crates["caselog-server"].contains(forbidden),
            "caselog-server depends on {forbidden}"
        );
    }
}

#[test]
fn the_store_knows_the_identities_of_the_domain_and_nothing_above_it() {
    let crates = normal_dependencies();
    let ours: Vec<&String> = crates["caselog-store"]
        .iter()
        .filter(|name| name.starts_with("caselog-"))
        .collect();
    assert_eq!(ours, ["caselog-domain"], "the store may use the domain's types only");
}
