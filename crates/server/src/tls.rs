//! TLS on the gRPC port, done here rather than by tonic so that the server's certificate, its
//! key and the client CA can be replaced while serving (`caselog serve` does it on SIGHUP): a
//! connection made after [`ServerTls::replace`] gets the new ones, one already open keeps what it
//! was established with, so a renewal drops no call.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_stream::{Stream, StreamExt};

/// A handshake not finished by then is dropped: a client that connects and says nothing holds
/// only its own socket, and only for this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the {what} is not PEM: {detail}")]
    NotPem { what: &'static str, detail: String },
    #[error("the {0} holds no certificate")]
    NoCertificate(&'static str),
    #[error("the certificate and key cannot serve TLS: {0}")]
    Unusable(String),
}

/// The server side of TLS: its certificate chain and key, and the CA whose client certificates
/// it verifies (optional at the TLS layer, so that bearer-token callers connect too; the
/// authenticator refuses a caller with neither).
#[derive(Debug)]
pub struct ServerTls {
    config: RwLock<Arc<rustls::ServerConfig>>,
    verifies_clients: bool,
}

impl ServerTls {
    pub fn from_pem(cert_chain: &[u8], key: &[u8], client_ca: Option<&[u8]>) -> Result<ServerTls, TlsError> {
        Ok(ServerTls {
            config: RwLock::new(server_config(cert_chain, key, client_ca)?),
            verifies_clients: client_ca.is_some(),
        })
    }

    /// Serves new connections with these instead. Refused, and the ones in use kept, when they
    /// cannot serve, or when a client CA is given to a server started without one (or the
    /// reverse): whether callers may use certificates is decided at start.
    pub fn replace(&self, cert_chain: &[u8], key: &[u8], client_ca: Option<&[u8]>) -> Result<(), TlsError> {
        if client_ca.is_some() != self.verifies_clients {
            return Err(TlsError::Unusable(
                "a client CA can be replaced, but not added or removed, while serving".into(),
            ));
        }
        let config = server_config(cert_chain, key, client_ca)?;
        *self.config.write().unwrap_or_else(std::sync::PoisonError::into_inner) = config;
        Ok(())
    }

    fn current(&self) -> Arc<rustls::ServerConfig> {
        self.config
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

fn server_config(
    cert_chain: &[u8],
    key: &[u8],
    client_ca: Option<&[u8]>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = certificates("server certificate", cert_chain)?;
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| TlsError::NotPem {
        what: "server key",
        detail: e.to_string(),
    })?;
    let builder = rustls::ServerConfig::builder();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in certificates("client CA", ca)? {
                roots
                    .add(certificate)
                    .map_err(|e| TlsError::Unusable(format!("the client CA: {e}")))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Unusable(format!("the client CA: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Unusable(e.to_string()))?;
    // gRPC is HTTP/2 only.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

fn certificates(what: &'static str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::NotPem {
            what,
            detail: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(what));
    }
    Ok(chain)
}

/// What a TLS connection tells the services (a request extension): the peer's address and the
/// certificate chain it presented, already verified against the client CA.
#[derive(Debug, Clone)]
pub struct TlsPeer {
    pub remote_addr: Option<SocketAddr>,
    pub certificates: Option<Arc<Vec<CertificateDer<'static>>>>,
}

/// An established TLS connection, as tonic serves it.
#[derive(Debug)]
pub struct TlsConnection {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer: TlsPeer,
}

impl tonic::transport::server::Connected for TlsConnection {
    type ConnectInfo = TlsPeer;

    fn connect_info(&self) -> TlsPeer {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The connections of `tcp` once their handshakes are done, each with the configuration current
/// when it arrived. Handshakes run side by side, so a slow or silent client delays no one else;
/// one that fails or takes longer than [`HANDSHAKE_TIMEOUT`] is logged and dropped. Accepting stops
/// when the returned stream is dropped.
pub fn incoming<S>(tls: Arc<ServerTls>, mut tcp: S) -> impl Stream<Item = std::io::Result<TlsConnection>>
where
    S: Stream<Item = std::io::Result<TcpStream>> + Send + Unpin + 'static,
{
    let (established, receiver) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = tcp.next() => accepted,
                () = established.closed() => return,
            };
            let stream = match accepted {
                Some(Ok(stream)) => stream,
                Some(Err(err)) => {
                    tracing::debug!(error = %err, "accepting a connection failed");
                    continue;
                }
                None => return,
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
            let established = established.clone();
            tokio::spawn(async move {
                let remote_addr = stream.peer_addr().ok();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let certificates = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .map(|chain| Arc::new(chain.iter().map(|c| c.clone().into_owned()).collect()));
                        let peer = TlsPeer {
                            remote_addr,
                            certificates,
                        };
                        let _ = established.send(Ok(TlsConnection { stream, peer })).await;
                    }
                    Ok(Err(err)) => tracing::debug!(error = %err, ?remote_addr, "TLS handshake failed"),
                    Err(_) => tracing::debug!(?remote_addr, "TLS handshake not finished in time"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}
