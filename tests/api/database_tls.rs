//! PostgreSQL over TLS, as every managed PostgreSQL requires: the service connects with the
//! libpq-style `sslmode`/`sslrootcert` URL parameters, verifies the server's certificate and
//! name under `verify-full`, and serves a whole append-and-read round trip over that connection.
//!
//! The test starts its own PostgreSQL cluster (initdb in a temporary directory, a free port on
//! 127.0.0.1, a generated certificate, `hostssl` only) and stops it at the end.

use caselog_store::ConnectSettings;
use caselog_tests::cluster::LocalCluster;
use caselog_tests::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use std::time::Duration;

/// Starts a cluster that accepts only TLS over TCP (the Unix socket, in the cluster's own
/// directory, is for pg_ctl), whose certificate names only `localhost`, issued by `ca`.
fn tls_cluster(ca: &Issuer<'static, KeyPair>) -> LocalCluster {
    let mut cluster = LocalCluster::init("tls-pg", "local all all trust\nhostssl all all 127.0.0.1/32 trust\n");
    let server_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, "localhost");
    let server_cert = params.signed_by(&server_key, ca).unwrap();
    let cert = cluster.write_file("server.crt", server_cert.pem().as_bytes(), 0o644);
    let key = cluster.write_file("server.key", server_key.serialize_pem().as_bytes(), 0o600);
    cluster.start(&format!(
        "-c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
        cert.display(),
        key.display()
    ));
    cluster
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
    let cluster = tls_cluster(&ca);
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
