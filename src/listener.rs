//! Serves the API routes on the listening socket: plain HTTP, or HTTPS when `[tls]` names a
//! certificate chain and key (PEM), for sites without a TLS proxy in front.
//!
//! The certificate is reloaded when its files change, so a renewed certificate (certbot, a
//! Kubernetes secret) takes effect without a restart: each handshake uses the loaded pair, and
//! at most once a second a handshake first compares the files' modification times with those
//! loaded and, when they differ, loads the pair again. A pair that does not load (say, the
//! certificate replaced and the key not yet) leaves the old one in use and is tried again.
//! Both paths stop the same way: no new connections, then the requests in flight finish.

use crate::settings::TlsSettings;
use anyhow::Context;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::sign::CertifiedKey;
use warp::Filter;

/// How often, at most, a handshake looks whether the files changed.
const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `routes` on `listener` until `shutdown` completes, then finishes the requests in
/// flight. HTTPS when `tls` is set.
pub async fn serve<F, R>(
    routes: F,
    listener: TcpListener,
    tls: Option<Arc<Certificate>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) where
    F: Filter<Extract = (R,), Error = std::convert::Infallible> + Clone + Send + Sync + 'static,
    R: warp::Reply,
{
    let Some(certificate) = tls else {
        warp::serve(routes)
            .incoming(listener)
            .graceful(shutdown)
            .run()
            .await;
        return;
    };
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .with_no_client_auth()
    .with_cert_resolver(certificate);
    let mut config = config;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let connections = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let (acceptor, service, watcher) = (
            acceptor.clone(),
            warp::service(routes.clone()),
            connections.watcher(),
        );
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => return tracing::debug!("TLS handshake timed out"),
            };
            let http = hyper_util::server::conn::auto::Builder::new(
                hyper_util::rt::TokioExecutor::new(),
            );
            let connection = http.serve_connection_with_upgrades(
                hyper_util::rt::TokioIo::new(stream),
                hyper_util::service::TowerToHyperService::new(service),
            );
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(error = %e, "HTTPS connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.shutdown().await;
}

/// The certificate chain and key of `[tls]`, reloaded when their files change.
#[derive(Debug)]
pub struct Certificate {
    cert_file: PathBuf,
    key_file: PathBuf,
    loaded: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    modified: [Option<SystemTime>; 2],
    checked: Instant,
}

impl Certificate {
    /// The pair `tls` names, loaded; `None` when HTTPS is not set.
    pub fn open(tls: &TlsSettings) -> anyhow::Result<Option<Arc<Certificate>>> {
        let Some((cert_file, key_file)) = tls.files()? else {
            return Ok(None);
        };
        let modified = modified_times(cert_file, key_file);
        let key = load(cert_file, key_file)?;
        Ok(Some(Arc::new(Certificate {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            loaded: Mutex::new(Loaded {
                key,
                modified,
                checked: Instant::now(),
            }),
        })))
    }

    fn current(&self) -> Arc<CertifiedKey> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if loaded.checked.elapsed() >= RELOAD_CHECK_INTERVAL {
            loaded.checked = Instant::now();
            let modified = modified_times(&self.cert_file, &self.key_file);
            if modified != loaded.modified {
                match load(&self.cert_file, &self.key_file) {
                    Ok(key) => {
                        tracing::info!(cert_file = %self.cert_file.display(), "TLS certificate reloaded");
                        *loaded = Loaded { key, modified, ..*loaded };
                    }
                    Err(e) => tracing::warn!(
                        error = format!("{e:#}"),
                        "the changed TLS certificate does not load; still serving the previous one"
                    ),
                }
            }
        }
        Arc::clone(&loaded.key)
    }
}

impl rustls::server::ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn modified_times(cert_file: &Path, key_file: &Path) -> [Option<SystemTime>; 2] {
    [cert_file, key_file].map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
}

/// Reads a PEM certificate chain and its private key, and checks that they belong together.
fn load(cert_file: &Path, key_file: &Path) -> anyhow::Result<Arc<CertifiedKey>> {
    let chain = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("tls.cert_file {}", cert_file.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "tls.cert_file {} holds no certificate",
        cert_file.display()
    );
    let key = PrivateKeyDer::from_pem_file(key_file)
        .with_context(|| format!("tls.key_file {}", key_file.display()))?;
    let key = CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider())
        .with_context(|| {
            format!(
                "tls.key_file {} does not go with tls.cert_file {}",
                key_file.display(),
                cert_file.display()
            )
        })?;
    Ok(Arc::new(key))
}
