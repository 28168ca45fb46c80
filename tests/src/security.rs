//! Credentials for tests: a throw-away certificate authority (server and client certificates),
//! an ECDSA key pair signing JWTs, and static development tokens, all made at run time.

use caselog_domain::{Grant, Principal};
use caselog_server::auth::{AuthSettings, Authenticator, BearerToken, DevTokens, JwtSettings};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// The development token of the test harness: it migrates history (appends anything) and
/// administers (reads anything), so that tests of other features need not juggle roles.
pub const HARNESS_TOKEN: &str = "harness-dev-token-0123456789";
pub const HARNESS: &str = "test-harness";
pub const JWT_ISSUER: &str = "https://idp.caselog.test";
pub const JWT_AUDIENCE: &str = "caselog";
pub const JWT_KID: &str = "test-key-1";

/// The static development token of a single grant (every grant of the tests has one).
pub fn dev_token(grant: &str) -> String {
    format!("dev-token-for-{grant}")
}

const DEV_GRANTS: &[&str] = &[
    "court:LS",
    "court:MA",
    "local_authority:E08000035",
    "local_authority:E09000001",
    "practice:A5",
    "practice:A3",
    "reporting",
    "admin",
    "migration",
];

fn dev_tokens() -> DevTokens {
    let mut entries: Vec<(String, Principal)> = DEV_GRANTS
        .iter()
        .map(|g| {
            (
                dev_token(g),
                Principal {
                    organisation: (*g).to_owned(),
                    grants: vec![Grant::parse(g).unwrap()],
                },
            )
        })
        .collect();
    entries.push((
        HARNESS_TOKEN.to_owned(),
        Principal {
            organisation: HARNESS.to_owned(),
            grants: vec![Grant::Migration, Grant::Administrator],
        },
    ));
    DevTokens::from_entries(entries)
}

/// The key pair that signs test JWTs.
fn jwt_key() -> &'static KeyPair {
    static KEY: OnceLock<KeyPair> = OnceLock::new();
    KEY.get_or_init(|| KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap())
}

/// What a test token says.
#[derive(Debug, Clone)]
pub struct TokenSpec {
    pub organisation: String,
    pub grants: Vec<String>,
    pub issuer: String,
    pub audience: String,
    /// Seconds from now; negative for an expired token.
    pub expires_in: i64,
    /// `nbf`, seconds from now, when set.
    pub not_before_in: Option<i64>,
    /// `iat`, seconds from now (0: now).
    pub issued_in: i64,
}

impl TokenSpec {
    pub fn new(grant: &str) -> TokenSpec {
        TokenSpec {
            organisation: grant.to_owned(),
            grants: vec![grant.to_owned()],
            issuer: JWT_ISSUER.to_owned(),
            audience: JWT_AUDIENCE.to_owned(),
            expires_in: 600,
            not_before_in: None,
            issued_in: 0,
        }
    }

    /// Signed with the test key the server trusts.
    pub fn sign(&self) -> String {
        self.sign_with(jwt_key())
    }

    pub fn sign_with(&self, key: &KeyPair) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        let mut claims = serde_json::json!({
            "sub": format!("client-of-{}", self.organisation),
            "org": self.organisation,
            "grants": self.grants,
            "iss": self.issuer,
            "aud": self.audience,
            "iat": now + self.issued_in,
            "exp": now + self.expires_in,
        });
        if let Some(nbf) = self.not_before_in {
            claims["nbf"] = (now + nbf).into();
        }
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(JWT_KID.to_owned());
        let key = jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }
}

/// A throw-away CA with a server certificate for 127.0.0.1 and client certificates on demand.
pub struct Pki {
    ca_pem: String,
    ca: Issuer<'static, KeyPair>,
    server_cert: String,
    server_key: String,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pki")
    }
}

impl Pki {
    pub fn new() -> Pki {
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.distinguished_name.push(DnType::CommonName, "caselog test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let ca = Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut server_params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        server_params
            .distinguished_name
            .push(DnType::CommonName, "caselog test server");
        let server_cert = server_params.signed_by(&server_key, &ca).unwrap();
        Pki {
            ca_pem: ca_cert.pem(),
            ca,
            server_cert: server_cert.pem(),
            server_key: server_key.serialize_pem(),
        }
    }

    /// TLS for the server, asking for (optional) client certificates from this CA.
    pub fn server_tls(&self) -> Arc<caselog_server::tls::ServerTls> {
        Arc::new(
            caselog_server::tls::ServerTls::from_pem(
                self.server_cert.as_bytes(),
                self.server_key.as_bytes(),
                Some(self.ca_pem.as_bytes()),
            )
            .unwrap(),
        )
    }

    /// The PEM of this CA's certificate, its server certificate and the server's key.
    pub fn pems(&self) -> (&str, &str, &str) {
        (&self.ca_pem, &self.server_cert, &self.server_key)
    }

    /// A client certificate whose common name is `common_name`, signed by this CA (a certificate
    /// from another `Pki` is one the server does not trust).
    pub fn client_identity(&self, common_name: &str) -> Identity {
        self.client_identity_named(&[common_name])
    }

    /// A client certificate whose subject has one or two common names.
    pub fn client_identity_named(&self, common_names: &[&str]) -> Identity {
        self.client_identity_with(common_names, &[])
    }

    /// A client certificate whose subject has one or two common names, with DNS subject
    /// alternative names.
    pub fn client_identity_with(&self, common_names: &[&str], alternative_names: &[&str]) -> Identity {
        assert!(matches!(common_names.len(), 1 | 2));
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params =
            CertificateParams::new(alternative_names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, common_names[0]);
        if let Some(second) = common_names.get(1) {
            // rcgen keeps one value per attribute type: the second common name goes in under
            // the same OID (2.5.4.3) spelled as a custom type.
            params
                .distinguished_name
                .push(DnType::CustomDnType(vec![2, 5, 4, 3]), *second);
        }
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Identity::from_pem(cert.pem(), key.serialize_pem())
    }

    /// A TLS channel to `addr`, presenting `identity` when given.
    pub async fn channel(
        &self,
        addr: SocketAddr,
        identity: Option<Identity>,
    ) -> Result<Channel, tonic::transport::Error> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name("localhost");
        if let Some(identity) = identity {
            tls = tls.identity(identity);
        }
        Endpoint::from_shared(format!("https://{addr}"))?
            .tls_config(tls)?
            .connect()
            .await
    }
}

impl Default for Pki {
    fn default() -> Pki {
        Pki::new()
    }
}

/// The authenticator of test servers: development tokens, test JWTs and (when the server has
/// TLS) client certificates.
pub fn authenticator(client_certificates: bool, max_concurrent_per_client: usize) -> Arc<Authenticator> {
    let jwt = JwtSettings::from_pems(
        JWT_ISSUER.to_owned(),
        JWT_AUDIENCE.to_owned(),
        &[(JWT_KID.to_owned(), jwt_key().public_key_pem().into_bytes())],
    )
    .unwrap();
    Arc::new(
        Authenticator::new(AuthSettings {
            jwt: Some(jwt),
            client_certificates,
            dev_tokens: Some(dev_tokens()),
            max_concurrent_per_client,
            max_subscriptions_per_client: caselog_server::auth::DEFAULT_MAX_SUBSCRIPTIONS_PER_CLIENT,
        })
        .unwrap(),
    )
}

/// A channel whose requests carry a bearer token.
pub type AuthChannel = caselog_server::auth::WithToken;

pub fn with_token(channel: Channel, token: &str) -> AuthChannel {
    AuthChannel::new(channel, BearerToken::new(Some(token)).unwrap())
}
