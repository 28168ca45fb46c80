//! Who is calling: every request but health checks is authenticated here, before any service
//! sees it, by a bearer token (a JWT from the configured issuer, or in development only a static
//! token) or by the client certificate of a mutual-TLS connection. The result is a
//! [`Principal`] in the request's extensions; what it may do is decided by
//! `caselog_domain::access` in the services.
//!
//! The same layer bounds each organisation's concurrent requests: the excess is refused at once
//! with RESOURCE_EXHAUSTED rather than queued. A request counts until its response body has
//! ended, so a stream (a subscription, a rebuild's progress) counts for as long as it runs, and
//! subscriptions have a bound of their own.

use crate::error::{Error, to_status};
use caselog_domain::{Grant, Principal};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Requests that need no credentials: health checks (load balancers and Kubernetes probes
/// cannot present client certificates or tokens). They reveal only whether the service serves.
const UNAUTHENTICATED_PREFIXES: &[&str] = &["/grpc.health.v1.Health/"];

/// Long-lived streams with their own per-organisation bound.
const SUBSCRIPTION_PATH: &str = "/caselog.v1.EventFeedService/SubscribeEvents";

/// The default bound on one organisation's requests in flight.
pub const DEFAULT_MAX_CONCURRENT_PER_CLIENT: usize = 64;

/// The default bound on one organisation's open subscriptions.
pub const DEFAULT_MAX_SUBSCRIPTIONS_PER_CLIENT: usize = 8;

/// How callers prove who they are. At least one way must be configured.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub jwt: Option<JwtSettings>,
    /// Client certificates are accepted (the TLS layer has verified them against the client CA).
    pub client_certificates: bool,
    /// Static development tokens, already checked to be switched on explicitly.
    pub dev_tokens: Option<DevTokens>,
    /// Concurrent requests one organisation may have in flight (streams included, until they
    /// end).
    pub max_concurrent_per_client: usize,
    /// Open `SubscribeEvents` streams one organisation may hold (each also counts as a request).
    pub max_subscriptions_per_client: usize,
}

impl Default for AuthSettings {
    /// No way to authenticate yet, and the default limits of `caselog serve`.
    fn default() -> AuthSettings {
        AuthSettings {
            jwt: None,
            client_certificates: false,
            dev_tokens: None,
            max_concurrent_per_client: DEFAULT_MAX_CONCURRENT_PER_CLIENT,
            max_subscriptions_per_client: DEFAULT_MAX_SUBSCRIPTIONS_PER_CLIENT,
        }
    }
}

/// Clock skew tolerated on `nbf` and `exp`.
pub const CLOCK_LEEWAY_SECONDS: u64 = 30;
/// The default longest token lifetime (`exp - iat`): one day.
pub const DEFAULT_MAX_TOKEN_LIFETIME_SECONDS: u64 = 86_400;

/// JWT bearer tokens: signed by one of `keys`, from `issuer`, for `audience`, valid now (`nbf`
/// and `exp`, with [`CLOCK_LEEWAY_SECONDS`]) and issued (`iat`) for at most `max_lifetime_seconds`.
#[derive(Clone)]
pub struct JwtSettings {
    pub issuer: String,
    pub audience: String,
    /// The longest `exp - iat` accepted: a token minted for a year is a standing credential.
    pub max_lifetime_seconds: u64,
    /// Verification keys by key id (the `kid` header); a token without `kid` may match any.
    pub keys: Vec<(String, Algorithm, DecodingKey)>,
}

impl std::fmt::Debug for JwtSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSettings")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field(
                "keys",
                &self.keys.iter().map(|(kid, alg, _)| (kid, alg)).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl JwtSettings {
    /// Reads public keys (PEM: ECDSA P-256 or Ed25519); each file's stem is its key id. A
    /// directory stands for the `*.pem` files in it (a mounted ConfigMap or Secret, whose keys
    /// can then be added and removed without changing the command line).
    pub fn load(issuer: String, audience: String, key_files: &[PathBuf]) -> anyhow::Result<JwtSettings> {
        let mut files = Vec::new();
        for path in key_files {
            if path.is_dir() {
                let mut in_directory: Vec<PathBuf> = std::fs::read_dir(path)
                    .map_err(|e| anyhow::anyhow!("reading the JWT key directory {}: {e}", path.display()))?
                    .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                    .filter(|file| {
                        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                        // Kubernetes keeps its own entries (`..data`) beside the keys.
                        !name.starts_with('.') && name.ends_with(".pem") && file.is_file()
                    })
                    .collect();
                in_directory.sort();
                files.extend(in_directory);
            } else {
                files.push(path.clone());
            }
        }
        let mut pems = Vec::new();
        for path in &files {
            let pem = std::fs::read(path).map_err(|e| anyhow::anyhow!("reading JWT key {}: {e}", path.display()))?;
            let kid = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_owned();
            pems.push((kid, pem));
        }
        JwtSettings::from_pems(issuer, audience, &pems)
    }

    /// Public keys as PEM text, by key id.
    pub fn from_pems(issuer: String, audience: String, pems: &[(String, Vec<u8>)]) -> anyhow::Result<JwtSettings> {
        anyhow::ensure!(!pems.is_empty(), "JWT verification needs at least one key (--jwt-key)");
        let mut keys = Vec::new();
        for (kid, pem) in pems {
            let (algorithm, key) = if let Ok(key) = DecodingKey::from_ec_pem(pem) {
                (Algorithm::ES256, key)
            } else if let Ok(key) = DecodingKey::from_ed_pem(pem) {
                (Algorithm::EdDSA, key)
            } else {
                anyhow::bail!("JWT key {kid:?} is not a PEM ECDSA P-256 or Ed25519 public key (RSA is not accepted)");
            };
            keys.push((kid.clone(), algorithm, key));
        }
        Ok(JwtSettings {
            issuer,
            audience,
            max_lifetime_seconds: DEFAULT_MAX_TOKEN_LIFETIME_SECONDS,
            keys,
        })
    }
}

/// Static tokens for local development, from a JSON file:
/// `{"tokens": [{"token": "...", "organisation": "court:LS", "grants": ["court:LS"]}]}`.
#[derive(Debug, Clone, Default)]
pub struct DevTokens {
    by_token: HashMap<String, Principal>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DevTokenFile {
    tokens: Vec<DevTokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DevTokenEntry {
    token: String,
    organisation: String,
    grants: Vec<String>,
}

impl DevTokens {
    /// Reads the file; refused unless `switched_on` (static tokens never expire and are kept in a
    /// file, so they are for a developer's machine only).
    pub fn load(path: &Path, switched_on: bool) -> anyhow::Result<DevTokens> {
        anyhow::ensure!(
            switched_on,
            "refusing static development tokens from {}: they are for local development only; \
             pass --allow-dev-tokens (CASELOG_ALLOW_DEV_TOKENS=true) to use them",
            path.display()
        );
        let text =
            std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading dev tokens {}: {e}", path.display()))?;
        let file: DevTokenFile =
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("dev tokens {}: {e}", path.display()))?;
        let mut by_token = HashMap::new();
        for entry in file.tokens {
            anyhow::ensure!(
                entry.token.len() >= 16,
                "dev token for {} is shorter than 16 characters",
                entry.organisation
            );
            let principal = principal_of(entry.organisation, &entry.grants).map_err(|e| anyhow::anyhow!(e))?;
            by_token.insert(entry.token, principal);
        }
        Ok(DevTokens { by_token })
    }

    pub fn from_entries(entries: impl IntoIterator<Item = (String, Principal)>) -> DevTokens {
        DevTokens {
            by_token: entries.into_iter().collect(),
        }
    }
}

/// The claims caselog reads from a JWT. `org` names the organisation (defaults to `sub`);
/// `grants` holds textual grants such as `court:LS` or `reporting`.
#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    iat: u64,
    #[serde(default)]
    org: Option<String>,
    #[serde(default)]
    grants: Vec<String>,
}

fn principal_of(organisation: String, grants: &[String]) -> Result<Principal, String> {
    let valid_name = !organisation.is_empty()
        && organisation.len() <= 64
        && organisation
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':' | '.'));
    if !valid_name {
        return Err(format!(
            "organisation {organisation:?} must be 1-64 characters of letters, digits, '-', '_', ':', '.'"
        ));
    }
    if grants.is_empty() {
        return Err(format!("{organisation} holds no caselog grants"));
    }
    let grants = grants.iter().map(|g| Grant::parse(g)).collect::<Result<Vec<_>, _>>()?;
    Ok(Principal { organisation, grants })
}

/// Turns credentials into a principal.
#[derive(Debug)]
pub struct Authenticator {
    settings: AuthSettings,
    /// The JWT keys in use: those of the settings at start, replaced whole by
    /// [`Authenticator::replace_jwt`] (a key rotation), never edited in place.
    jwt: std::sync::RwLock<Option<Arc<JwtSettings>>>,
    /// Requests refused as unauthenticated, by reason (`caselog_auth_failures_total`).
    failures: opentelemetry::metrics::Counter<u64>,
    in_flight: PerOrganisation,
    subscriptions: PerOrganisation,
}

impl Authenticator {
    pub fn new(mut settings: AuthSettings) -> anyhow::Result<Authenticator> {
        anyhow::ensure!(
            settings.jwt.is_some() || settings.client_certificates || settings.dev_tokens.is_some(),
            "no way to authenticate callers is configured: give --jwt-issuer/--jwt-audience/--jwt-key, \
             --tls-client-ca, or for local development --dev-tokens with --allow-dev-tokens"
        );
        anyhow::ensure!(
            settings.max_concurrent_per_client > 0 && settings.max_subscriptions_per_client > 0,
            "the per-client concurrency and subscription limits must be positive"
        );
        Ok(Authenticator {
            // Held apart from the other settings, so that a replacement is the only copy.
            jwt: std::sync::RwLock::new(settings.jwt.take().map(Arc::new)),
            // From the meter provider of the moment: an authenticator is made once per server.
            failures: opentelemetry::global::meter("caselog")
                .u64_counter("caselog.auth.failures")
                .with_description("Requests refused as UNAUTHENTICATED, by reason")
                .build(),
            settings,
            in_flight: Mutex::new(HashMap::new()),
            subscriptions: Mutex::new(HashMap::new()),
        })
    }

    /// Verifies tokens with `jwt` from now on (requests already verified are not asked again):
    /// how keys are rotated without a restart. Refused when the service was started without
    /// JWT verification, which a reload does not switch on.
    pub fn replace_jwt(&self, jwt: JwtSettings) -> anyhow::Result<()> {
        let mut held = self.jwt.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        anyhow::ensure!(held.is_some(), "this service was started without JWT verification");
        *held = Some(Arc::new(jwt));
        Ok(())
    }

    /// A bearer token if the request carries one, else the client certificate.
    pub fn authenticate(
        &self,
        headers: &http::HeaderMap,
        peer_certificates: Option<&[tonic::transport::CertificateDer<'static>]>,
    ) -> Result<Principal, Error> {
        self.identify(headers, peer_certificates).map_err(|refused| {
            self.failures
                .add(1, &[opentelemetry::KeyValue::new("reason", refused.reason)]);
            Error::Unauthenticated(refused.message)
        })
    }

    fn identify(
        &self,
        headers: &http::HeaderMap,
        peer_certificates: Option<&[tonic::transport::CertificateDer<'static>]>,
    ) -> Result<Principal, Refused> {
        if let Some(value) = headers.get(http::header::AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    Refused::new(
                        "malformed_header",
                        "the authorization header must be \"Bearer <token>\"",
                    )
                })?;
            return self.principal_of_token(token);
        }
        if self.settings.client_certificates
            && let Some(leaf) = peer_certificates.and_then(|certs| certs.first())
        {
            return from_certificate(leaf);
        }
        Err(Refused::new(
            "no_credentials",
            "no credentials: send \"authorization: Bearer <token>\" or connect with a client certificate",
        ))
    }

    fn principal_of_token(&self, token: &str) -> Result<Principal, Refused> {
        if let Some(dev) = &self.settings.dev_tokens
            && let Some(principal) = dev.by_token.get(token)
        {
            return Ok(principal.clone());
        }
        let jwt = self
            .jwt
            .read()
            .map_or_else(|poisoned| poisoned.into_inner().clone(), |held| held.clone());
        let Some(jwt) = jwt else {
            return Err(Refused::new("unknown_token", "the bearer token is not recognised"));
        };
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Refused::new("malformed_token", "the bearer token is not a well-formed JWT"))?;
        let candidates = jwt
            .keys
            .iter()
            .filter(|(kid, algorithm, _)| *algorithm == header.alg && header.kid.as_ref().is_none_or(|k| k == kid));
        let mut last_error = Refused::new(
            "no_matching_key",
            format!(
                "no configured key verifies tokens signed with {:?}{}",
                header.alg,
                header
                    .kid
                    .as_deref()
                    .map(|k| format!(" and key id {k:?}"))
                    .unwrap_or_default()
            ),
        );
        for (_, algorithm, key) in candidates {
            let mut validation = Validation::new(*algorithm);
            validation.set_issuer(&[&jwt.issuer]);
            validation.set_audience(&[&jwt.audience]);
            validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
            validation.leeway = CLOCK_LEEWAY_SECONDS;
            validation.validate_nbf = true;
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => {
                    let claims = data.claims;
                    let lifetime = claims.exp.saturating_sub(claims.iat);
                    if lifetime > jwt.max_lifetime_seconds {
                        return Err(Refused::new(
                            "lifetime_too_long",
                            format!(
                                "the bearer token is valid for {lifetime} s from its issue (iat to exp); this service accepts at most {} s",
                                jwt.max_lifetime_seconds
                            ),
                        ));
                    }
                    let organisation = claims.org.unwrap_or(claims.sub);
                    return principal_of(organisation, &claims.grants).map_err(|e| {
                        Refused::new("unusable_claims", format!("the token's claims are not usable: {e}"))
                    });
                }
                Err(err) => last_error = token_problem(err.kind()),
            }
        }
        Err(last_error)
    }

    /// A permit for one request of `organisation`, or RESOURCE_EXHAUSTED when it has as many in
    /// flight as it may.
    /// A subscription also takes a permit of the organisation's subscription bound.
    fn admit(&self, organisation: &str, path: &str) -> Result<Vec<OwnedSemaphorePermit>, Error> {
        let mut permits = vec![permit(
            &self.in_flight,
            organisation,
            self.settings.max_concurrent_per_client,
            |limit| Error::TooManyConcurrentRequests { limit },
        )?];
        if path == SUBSCRIPTION_PATH {
            permits.push(permit(
                &self.subscriptions,
                organisation,
                self.settings.max_subscriptions_per_client,
                |limit| Error::TooManySubscriptions { limit },
            )?);
        }
        Ok(permits)
    }
}

type PerOrganisation = Mutex<HashMap<String, Arc<Semaphore>>>;

fn permit(
    semaphores: &PerOrganisation,
    organisation: &str,
    limit: usize,
    refusal: impl FnOnce(usize) -> Error,
) -> Result<OwnedSemaphorePermit, Error> {
    let semaphore = {
        let mut semaphores = semaphores.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        semaphores
            .entry(organisation.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(limit)))
            .clone()
    };
    semaphore.try_acquire_owned().map_err(|_| refusal(limit))
}

/// A response body that holds its request's permits until it is dropped: until a stream has
/// ended or its client has gone.
#[derive(Debug)]
pub struct PermittedBody<B> {
    inner: Pin<Box<B>>,
    _permits: Vec<OwnedSemaphorePermit>,
}

impl<B> PermittedBody<B> {
    fn new(inner: B, permits: Vec<OwnedSemaphorePermit>) -> PermittedBody<B> {
        PermittedBody {
            inner: Box::pin(inner),
            _permits: permits,
        }
    }
}

impl<B: http_body::Body> http_body::Body for PermittedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.get_mut().inner.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Default> Default for PermittedBody<B> {
    fn default() -> PermittedBody<B> {
        PermittedBody::new(B::default(), Vec::new())
    }
}

impl Authenticator {}

fn token_problem(kind: &jsonwebtoken::errors::ErrorKind) -> Refused {
    use jsonwebtoken::errors::ErrorKind;
    match kind {
        ErrorKind::ExpiredSignature => Refused::new("expired", "the bearer token has expired; obtain a new one"),
        ErrorKind::ImmatureSignature => Refused::new("not_yet_valid", "the bearer token is not valid yet"),
        ErrorKind::InvalidAudience => {
            Refused::new("wrong_audience", "the bearer token is not for this service (audience)")
        }
        ErrorKind::InvalidIssuer => Refused::new(
            "wrong_issuer",
            "the bearer token is from an issuer this service does not trust",
        ),
        ErrorKind::InvalidSignature => Refused::new("bad_signature", "the bearer token's signature does not verify"),
        ErrorKind::MissingRequiredClaim(claim) => {
            Refused::new("missing_claim", format!("the bearer token lacks the {claim:?} claim"))
        }
        _ => Refused::new("invalid_token", "the bearer token is not valid"),
    }
}

/// Why a request is not authenticated: a fixed `reason` (the `caselog_auth_failures_total`
/// label, a small set) and the message the caller reads.
struct Refused {
    reason: &'static str,
    message: String,
}

impl Refused {
    fn new(reason: &'static str, message: impl Into<String>) -> Refused {
        Refused {
            reason,
            message: message.into(),
        }
    }
}

/// The principal of a verified client certificate: its subject common name is a grant
/// (`court:LS`, `practice:A5`, ...) and also names the organisation.
fn from_certificate(leaf: &[u8]) -> Result<Principal, Refused> {
    let (_, certificate) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|_| Refused::new("bad_certificate", "the client certificate cannot be read"))?;
    // One identity per certificate: with several common names, which one is "the" caller
    // depends on who reads the certificate.
    let mut common_names = certificate.subject().iter_common_name();
    let common_name = common_names
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| Refused::new("bad_certificate", "the client certificate has no subject common name"))?
        .to_owned();
    if common_names.next().is_some() {
        return Err(Refused::new(
            "bad_certificate",
            "the client certificate's subject has more than one common name; issue it with exactly one",
        ));
    }
    // Other software may take a subject alternative name as the identity: any that names
    // something other than the common name makes the certificate ambiguous.
    let alternative_names = certificate.subject_alternative_name().map_err(|_| {
        Refused::new(
            "bad_certificate",
            "the client certificate's alternative names cannot be read",
        )
    })?;
    let conflicting = alternative_names
        .into_iter()
        .flat_map(|san| &san.value.general_names)
        .any(|name| {
            use x509_parser::extensions::GeneralName;
            match name {
                GeneralName::DNSName(n) | GeneralName::RFC822Name(n) | GeneralName::URI(n) => *n != common_name,
                GeneralName::IPAddress(_) => false,
                _ => true,
            }
        });
    if conflicting {
        return Err(Refused::new(
            "bad_certificate",
            "the client certificate names another identity in its subject alternative names than its common name",
        ));
    }
    principal_of(common_name.clone(), &[common_name]).map_err(|e| {
        Refused::new(
            "bad_certificate",
            format!("the client certificate's common name is not a caselog grant: {e}"),
        )
    })
}

/// The authenticated caller of a request (put there by [`AuthLayer`]).
pub fn caller<T>(request: &tonic::Request<T>) -> Result<Arc<Principal>, Error> {
    request
        .extensions()
        .get::<Arc<Principal>>()
        .cloned()
        .ok_or_else(|| Error::Unauthenticated("the request was not authenticated".into()))
}

/// Authenticates every request and bounds each organisation's concurrency.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    authenticator: Arc<Authenticator>,
}

impl AuthLayer {
    pub fn new(authenticator: Arc<Authenticator>) -> AuthLayer {
        AuthLayer { authenticator }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authenticated<S>;

    fn layer(&self, inner: S) -> Authenticated<S> {
        Authenticated {
            inner,
            authenticator: self.authenticator.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Authenticated<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Authenticated<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<PermittedBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        // The service that was polled ready serves this request; its clone serves the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = request.uri().path().to_owned();
        if UNAUTHENTICATED_PREFIXES.iter().any(|p| path.starts_with(p)) {
            let response = inner.call(request);
            return Box::pin(async move { Ok(response.await?.map(|body| PermittedBody::new(body, Vec::new()))) });
        }
        let certificates = request
            .extensions()
            .get::<crate::tls::TlsPeer>()
            .and_then(|peer| peer.certificates.clone());
        let admitted = self
            .authenticator
            .authenticate(request.headers(), certificates.as_deref().map(Vec::as_slice))
            .and_then(|principal| {
                let permits = self.authenticator.admit(&principal.organisation, &path)?;
                Ok((principal, permits))
            });
        match admitted {
            Ok((principal, permits)) => {
                tracing::Span::current().record("caller", principal.organisation.as_str());
                request.extensions_mut().insert(Arc::new(principal));
                let response = inner.call(request);
                Box::pin(async move { Ok(response.await?.map(|body| PermittedBody::new(body, permits))) })
            }
            Err(err) => {
                tracing::info!(error = %err, %path, "request refused before any service");
                let status = to_status(err);
                Box::pin(std::future::ready(Ok(status
                    .into_http::<ResBody>()
                    .map(|body| PermittedBody::new(body, Vec::new())))))
            }
        }
    }
}

/// The client side: adds `authorization: Bearer <token>` to every request of a channel (nothing
/// when there is no token, for a caller identified by its client certificate).
#[derive(Debug, Clone)]
pub struct BearerToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl BearerToken {
    pub fn new(token: Option<&str>) -> Result<BearerToken, tonic::metadata::errors::InvalidMetadataValue> {
        token
            .map(|t| tonic::metadata::MetadataValue::try_from(format!("Bearer {t}")))
            .transpose()
            .map(BearerToken)
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A channel whose requests carry a bearer token.
pub type WithToken = tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerToken>;
