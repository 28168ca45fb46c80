//! The `caselog` binary as a person at a shell meets it: help and logs that keep secrets and
//! escape codes out of what is copied or redirected.

#![allow(clippy::unwrap_used)]

use std::process::Command;

fn caselog() -> Command {
    Command::new(env!("CARGO_BIN_EXE_caselog"))
}

#[test]
fn help_never_prints_the_database_password() {
    for subcommand in ["serve", "migrate", "rebuild"] {
        let output = caselog()
            .args([subcommand, "--help"])
            .env("DATABASE_URL", "postgres://caselog:s3cret-pw@db.example/caselog")
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(help.contains("DATABASE_URL"), "{subcommand}: {help}");
        assert!(
            !help.contains("s3cret-pw"),
            "{subcommand} --help shows the password:\n{help}"
        );
    }
}

/// What `caselog serve` logs to a pipe over `seconds`, with development tokens and a database
/// that never answers (nothing listens on port 1: the server waits for it until stopped).
fn serve_log(seconds: u64, env: &[(&str, &str)]) -> String {
    let tokens = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/dev-tokens.json");
    let mut command = caselog();
    command
        .args([
            "serve",
            "--dev-tokens",
            tokens,
            "--allow-dev-tokens",
            "--listen",
            "127.0.0.1:0",
        ])
        .env(
            "DATABASE_URL",
            "postgres://caselog:pw@127.0.0.1:1/caselog?connect_timeout=1",
        )
        .env_remove("NO_COLOR")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(seconds));
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn redirected_logs_carry_no_colour_codes() {
    // Development tokens are warned about at start.
    let log = serve_log(3, &[]);
    assert!(log.contains("development tokens"), "{log}");
    assert!(!log.contains('\u{1b}'), "escape codes in a redirected log:\n{log}");
}

#[test]
fn an_unreachable_collector_is_reported_in_the_log() {
    // Nothing listens on port 9 of loopback: every export fails at once.
    let log = serve_log(
        4,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
        ],
    );
    let failures = log.lines().filter(|line| line.contains("ExportError")).count();
    assert!(failures >= 1, "no export failure in the log:\n{log}");
}
