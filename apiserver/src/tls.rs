//! HTTPS for the embedded server. kubectl (client-go) sends a kubeconfig's credentials only
//! over TLS, so a server that wants a bearer token must serve HTTPS: each start makes a CA
//! of its own and a serving certificate for `127.0.0.1` and `localhost` signed by it,
//! trusted by whoever holds the CA (the kubeconfig written carries it).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A client that has not finished its handshake by then is dropped, so it holds nothing.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The certificates of one server.
pub struct Certificates {
    /// The CA's certificate (PEM), for clients to trust.
    pub ca_pem: String,
    /// The CA's certificate (DER).
    pub ca_der: Vec<u8>,
    acceptor: TlsAcceptor,
}

fn tls_error(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("making the server's certificates: {e}"))
}

impl Certificates {
    /// A fresh CA and a serving certificate for `127.0.0.1` and `localhost` signed by it.
    pub fn generate() -> std::io::Result<Certificates> {
        let ca_key = KeyPair::generate().map_err(tls_error)?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(tls_error)?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.distinguished_name
            .push(DnType::CommonName, "charon-apiserver CA");
        let ca_cert = ca.self_signed(&ca_key).map_err(tls_error)?;
        let issuer = Issuer::new(ca, ca_key);

        let key = KeyPair::generate().map_err(tls_error)?;
        let mut serving = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .map_err(tls_error)?;
        serving
            .distinguished_name
            .push(DnType::CommonName, "charon-apiserver");
        let cert = serving.signed_by(&key, &issuer).map_err(tls_error)?;

        let chain = vec![cert.der().clone(), ca_cert.der().clone()];
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(tls_error)?;
        Ok(Certificates {
            ca_pem: ca_cert.pem(),
            ca_der: CertificateDer::as_ref(ca_cert.der()).to_vec(),
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Serves TLS on `listener`: handshakes run side by side, so a slow or silent client
    /// holds up no other.
    pub fn listen(&self, listener: TcpListener) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (ready, accepted) = mpsc::channel(64);
        let acceptor = self.acceptor.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, peer)) = listener.accept().await else {
                    // Out of descriptors and the like: wait, as axum's own listener does.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let acceptor = acceptor.clone();
                let ready = ready.clone();
                tokio::spawn(async move {
                    if let Ok(Ok(tls)) =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                    {
                        let _ = ready.send((tls, peer)).await;
                    }
                });
            }
        });
        Ok(TlsListener {
            accepted,
            local,
            task,
        })
    }
}

/// A listener handing axum connections whose TLS handshake is done.
pub struct TlsListener {
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        // Stop accepting once the server is done with the listener.
        self.task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            if let Some(connection) = self.accepted.recv().await {
                return connection;
            }
            // The accepting task is gone (aborted on drop only): nothing more comes.
            std::future::pending::<()>().await;
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
