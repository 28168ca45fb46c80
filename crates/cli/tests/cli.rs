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

#[test]
fn a_projection_gather_longer_than_a_query_waits_is_refused_before_serving() {
    for millis in ["0", "2001"] {
        let mut serve = caselog()
            .args(["serve", "--projection-busy-gather-ms", millis])
            .env("DATABASE_URL", "postgres://caselog@127.0.0.1:1/none")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Accepted, it would wait for a database that never answers: stopped, it fails here.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while serve.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                serve.kill().unwrap();
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let output = serve.wait_with_output().unwrap();
        let message = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{millis}: {message}");
        assert!(message.contains("--projection-busy-gather-ms"), "{millis}: {message}");
        assert!(message.contains("1..=2000"), "{millis}: {message}");
    }
}

/// What `caselog serve` logs to a pipe over `seconds`, with development tokens and a database
/// that never answers (nothing listens on port 1: the server waits for it until stopped).
fn serve_log(seconds: u64, env: &[(&str, &str)]) -> String {
    serve_log_with(&[], env, |_| {
        std::thread::sleep(std::time::Duration::from_secs(seconds))
    })
}

/// As [`serve_log`], with `args` added, while `during` runs (given the process id).
fn serve_log_with(args: &[&str], env: &[(&str, &str)], during: impl FnOnce(u32)) -> String {
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
        .args(args)
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
    during(child.id());
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

/// Two P-256 public keys (public, so harmless in a test).
const KEY_A: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEnB4+loDYuGsP6QQKjR0rnUNfU+de
Mudb78Qp6kCf4IsyC+1NOtp0NpaehZ7wxgKFm8Hq0BzFYmTTNumv5VmSsw==
-----END PUBLIC KEY-----
";
const KEY_B: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEnExa9eJ1rbD7BYUkLZ9HDVux/CC5
4XbY2626hMmcqjM46IyEVL4XO1xdmAnRvCm4t2yTuSSAIAJLAdGNZTZVUg==
-----END PUBLIC KEY-----
";

#[test]
fn sighup_reloads_the_jwt_keys_of_a_directory_and_keeps_them_when_the_new_ones_are_unreadable() {
    let keys = std::env::temp_dir().join(format!("caselog-jwt-keys-{}", std::process::id()));
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::write(keys.join("key-a.pem"), KEY_A).unwrap();
    // Kubernetes' own entries in a mounted directory are not keys.
    std::fs::write(keys.join("..data"), "not a key").unwrap();
    let hangup = |pid: u32| {
        let sent = Command::new("kill").args(["-HUP", &pid.to_string()]).status().unwrap();
        assert!(sent.success());
        std::thread::sleep(std::time::Duration::from_millis(800));
    };
    let log = serve_log_with(
        &[
            "--jwt-issuer",
            "https://login.example.org",
            "--jwt-audience",
            "caselog",
            "--jwt-key",
            keys.to_str().unwrap(),
        ],
        &[],
        |pid| {
            std::thread::sleep(std::time::Duration::from_millis(1500));
            std::fs::write(keys.join("key-b.pem"), KEY_B).unwrap();
            hangup(pid);
            std::fs::write(keys.join("key-c.pem"), "not a key").unwrap();
            hangup(pid);
        },
    );
    let _ = std::fs::remove_dir_all(&keys);
    let reloaded: Vec<&str> = log.lines().filter(|line| line.contains("JWT keys reloaded")).collect();
    assert_eq!(reloaded.len(), 1, "{log}");
    assert!(reloaded[0].contains(r#"["key-a", "key-b"]"#), "{log}");
    let kept: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("JWT keys not reloaded"))
        .collect();
    assert_eq!(kept.len(), 1, "{log}");
    assert!(kept[0].contains("key-c"), "{log}");
}

#[test]
fn health_answers_for_container_probes_from_the_plain_text_port() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("http://127.0.0.1:{port}");
    let health = |service: &str| {
        let output = caselog()
            .args(["health", "--server", &address, "--service", service])
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        )
    };
    let mut answers = Vec::new();
    serve_log_with(&["--health-listen", &format!("127.0.0.1:{port}")], &[], |_| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while health("liveness").0 != Some(0) {
            assert!(std::time::Instant::now() < deadline, "liveness never answered");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        answers.push(health("liveness"));
        // The database never answers: alive, not ready.
        answers.push(health(""));
    });
    assert_eq!(answers[0], (Some(0), "SERVING".to_owned()));
    assert_eq!(answers[1], (Some(1), "NOT_SERVING".to_owned()));
    // Nothing listens any more.
    let (code, said) = health("");
    assert_eq!(code, Some(1));
    assert!(said.starts_with("NOT_SERVING ("), "{said}");
}
