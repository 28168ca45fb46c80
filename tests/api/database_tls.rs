//! PostgreSQL over TLS, as every managed PostgreSQL requires: the service connects with the
//! libpq-style `sslmode`/`sslrootcert` URL parameters, verifies the server's certificate and
//! name under `verify-full`, and serves a whole append-and-read round trip over that connection.
//!
//! The test starts its own PostgreSQL cluster (initdb in a temporary directory, a free port on
//! 127.0.0.1, a generated certificate, `hostssl` only) and stops it at the end.

use caselog_store::ConnectSettings;
use caselog_tests::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A throwaway PostgreSQL cluster that accepts only TLS connections over TCP.
struct TlsPostgres {
    dir: PathBuf,
    bin: PathBuf,
    owner: Option<(u32, u32)>,
    port: u16,
}

impl TlsPostgres {
    /// Starts a cluster whose certificate names only `localhost`, issued by `ca`.
    fn start(ca: &Issuer<'static, KeyPair>) -> TlsPostgres {
        let bin = postgres_bin_dir();
        let dir = std::env::temp_dir().join(format!("caselog-tls-pg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&dir).unwrap();
        // initdb refuses to run as root: the cluster then belongs to the `postgres` user.
        let owner = running_as_root().then(|| user_ids("postgres"));
        let server_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "localhost");
        let server_cert = params.signed_by(&server_key, ca).unwrap();
        std::fs::write(dir.join("server.crt"), server_cert.pem()).unwrap();
        std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
        std::fs::set_permissions(dir.join("server.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
        if let Some((uid, gid)) = owner {
            for path in [dir.clone(), dir.join("server.crt"), dir.join("server.key")] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
            }
        }
        let port = free_port();
        let cluster = TlsPostgres { dir, bin, owner, port };
        cluster.run(
            "initdb",
            &[
                "-D",
                &cluster.data(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        // Only TLS over TCP; the Unix socket (in the cluster's own directory) is for pg_ctl.
        std::fs::write(
            Path::new(&cluster.data()).join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        let options = format!(
            "-p {port} -k {dir} -c listen_addresses=127.0.0.1 -c ssl=on -c ssl_cert_file={dir}/server.crt \
             -c ssl_key_file={dir}/server.key -c fsync=off",
            dir = cluster.dir.display()
        );
        cluster.run(
            "pg_ctl",
            &[
                "-D",
                &cluster.data(),
                "-o",
                &options,
                "-l",
                &cluster.log(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        cluster
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn log(&self) -> String {
        self.dir.join("server.log").display().to_string()
    }

    fn run(&self, program: &str, args: &[&str]) {
        let mut command = Command::new(self.bin.join(program));
        command.args(args).current_dir(&self.dir);
        if let Some((uid, gid)) = self.owner {
            command.uid(uid).gid(gid);
        }
        let output = command.output().unwrap_or_else(|e| panic!("{program}: {e}"));
        let log = std::fs::read_to_string(self.log()).unwrap_or_default();
        assert!(
            output.status.success(),
            "{program} failed: {}\n{}\n{log}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn url(&self, host: &str, parameters: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres?{parameters}", self.port)
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let mut command = Command::new(self.bin.join("pg_ctl"));
        command.args(["-D", &self.data(), "-m", "immediate", "-w", "stop"]);
        if let Some((uid, gid)) = self.owner {
            command.uid(uid).gid(gid);
        }
        let _ = command.output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The directory of `initdb`, `pg_ctl` and `postgres`: Debian keeps them off the PATH.
fn postgres_bin_dir() -> PathBuf {
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .collect();
    candidates.sort();
    candidates.reverse();
    if let Ok(path) = std::env::var("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    candidates
        .into_iter()
        .find(|dir| dir.join("initdb").exists() && dir.join("pg_ctl").exists())
        .expect("PostgreSQL's server programs (initdb, pg_ctl): install the postgresql package")
}

fn running_as_root() -> bool {
    command_output("id", &["-u"]) == "0"
}

fn user_ids(user: &str) -> (u32, u32) {
    let uid = command_output("id", &["-u", user]).parse().unwrap();
    let gid = command_output("id", &["-g", user]).parse().unwrap();
    (uid, gid)
}

fn command_output(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().unwrap();
    assert!(output.status.success(), "{program} {args:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn test_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

/// Whether a connection made with `url` is established, and over TLS.
async fn connects_over_tls(url: &str) -> Result<bool, String> {
    let settings = ConnectSettings {
        max_connections: 1,
        acquire_timeout: Duration::from_secs(10),
        ..ConnectSettings::default()
    };
    let pool = caselog_store::connect(url, &settings).map_err(|e| e.to_string())?;
    let ssl: Result<bool, _> = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&pool)
        .await;
    pool.close().await;
    ssl.map_err(|e| e.to_string())
}

#[tokio::test]
async fn the_service_runs_on_postgresql_over_verified_tls() {
    let (ca_pem, ca) = test_ca("caselog test database CA");
    let (other_ca_pem, _) = test_ca("some other CA");
    let cluster = TlsPostgres::start(&ca);
    let ca_file = cluster.dir.join("root.crt");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    let other_ca_file = cluster.dir.join("other.crt");
    std::fs::write(&other_ca_file, &other_ca_pem).unwrap();
    let verify_full = format!("sslmode=verify-full&sslrootcert={}", ca_file.display());

    // The cluster refuses plain connections, so whatever connects below did so over TLS.
    let plain = connects_over_tls(&cluster.url("localhost", "sslmode=disable")).await;
    assert!(plain.is_err(), "a plain connection was accepted: {plain:?}");
    assert_eq!(
        connects_over_tls(&cluster.url("localhost", "sslmode=require")).await,
        Ok(true)
    );
    assert_eq!(
        connects_over_tls(&cluster.url("localhost", &verify_full)).await,
        Ok(true)
    );

    // verify-full checks the issuer and the name: another CA, or a host name the certificate
    // does not carry (it names only localhost), is refused; verify-ca checks the issuer alone.
    let untrusted = format!("sslmode=verify-full&sslrootcert={}", other_ca_file.display());
    let refused = connects_over_tls(&cluster.url("localhost", &untrusted)).await;
    assert!(refused.is_err(), "a certificate from an untrusted CA was accepted");
    let wrong_name = connects_over_tls(&cluster.url("127.0.0.1", &verify_full)).await;
    assert!(wrong_name.is_err(), "a certificate for another name was accepted");
    let verify_ca = format!("sslmode=verify-ca&sslrootcert={}", ca_file.display());
    assert_eq!(connects_over_tls(&cluster.url("127.0.0.1", &verify_ca)).await, Ok(true));

    // The whole service over that connection: migrations, an append, a read.
    let pool = caselog_store::connect(&cluster.url("localhost", &verify_full), &ConnectSettings::default()).unwrap();
    caselog_store::MIGRATOR.run(&pool).await.unwrap();
    let server = TestServer::start(pool).await;
    let appended = server.issue_case("LS25C00001").await;
    assert_eq!(appended.version, 1);
    let case = server
        .client()
        .get_case(caselog_api::v1::GetCaseRequest {
            case_id: "LS25C00001".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(case.case.map(|c| c.case_id).as_deref(), Some("LS25C00001"));
}
