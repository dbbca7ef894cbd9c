//! Serves the API routes on the listening socket: plain HTTP, or HTTPS when `[tls]` names a
//! certificate chain and key (PEM), for sites without a TLS proxy in front.
//!
//! The certificate is reloaded when its files change, so a renewed certificate (certbot, a
//! Kubernetes secret) takes effect without a restart: each handshake uses the loaded pair, and
//! at most once a second a handshake first compares the files' modification times (and inode
//! numbers and sizes, as modification times can be coarse) with those loaded and, when they
//! differ, loads the pair again. A pair that does not load (say, the
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
            let stream =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => return tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => return tracing::debug!("TLS handshake timed out"),
                };
            let http =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
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
    stamps: [Option<FileStamp>; 2],
    checked: Instant,
}

/// What tells that a file changed: a new file renamed over it, or one rewritten in place.
#[derive(Debug, PartialEq, Eq)]
struct FileStamp {
    modified: SystemTime,
    inode: u64,
    len: u64,
}

impl Certificate {
    /// The pair `tls` names, loaded; `None` when HTTPS is not set.
    pub fn open(tls: &TlsSettings) -> anyhow::Result<Option<Arc<Certificate>>> {
        let Some((cert_file, key_file)) = tls.files()? else {
            return Ok(None);
        };
        let stamps = stamps(cert_file, key_file);
        let key = load(cert_file, key_file)?;
        Ok(Some(Arc::new(Certificate {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            loaded: Mutex::new(Loaded {
                key,
                stamps,
                checked: Instant::now(),
            }),
        })))
    }

    fn current(&self) -> Arc<CertifiedKey> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if loaded.checked.elapsed() >= RELOAD_CHECK_INTERVAL {
            loaded.checked = Instant::now();
            let stamps = stamps(&self.cert_file, &self.key_file);
            if stamps != loaded.stamps {
                match load(&self.cert_file, &self.key_file) {
                    Ok(key) => {
                        tracing::info!(cert_file = %self.cert_file.display(), "TLS certificate reloaded");
                        *loaded = Loaded {
                            key,
                            stamps,
                            ..*loaded
                        };
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

fn stamps(cert_file: &Path, key_file: &Path) -> [Option<FileStamp>; 2] {
    use std::os::unix::fs::MetadataExt;
    [cert_file, key_file].map(|path| {
        let metadata = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            modified: metadata.modified().ok()?,
            inode: metadata.ino(),
            len: metadata.len(),
        })
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let pair = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (cert, key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert, pair.cert.pem()).unwrap();
        std::fs::write(&key, pair.signing_key.serialize_pem()).unwrap();
        (cert, key)
    }

    #[test]
    fn a_pair_loads_and_a_mismatched_or_missing_one_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "a");
        let (_, other_key) = write_pair(dir.path(), "b");
        load(&cert, &key).unwrap();
        let mismatch = format!("{:#}", load(&cert, &other_key).unwrap_err());
        assert!(mismatch.contains("does not go with"), "{mismatch}");
        let missing = format!(
            "{:#}",
            load(&dir.path().join("none.crt"), &key).unwrap_err()
        );
        assert!(missing.starts_with("tls.cert_file"), "{missing}");
        std::fs::write(&other_key, "not a key").unwrap();
        let garbage = format!("{:#}", load(&cert, &other_key).unwrap_err());
        assert!(garbage.starts_with("tls.key_file"), "{garbage}");
    }

    #[test]
    fn a_changed_pair_is_served_once_it_loads_and_the_old_one_until_then() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "a");
        let tls = TlsSettings {
            cert_file: cert.clone(),
            key_file: key.clone(),
        };
        let certificate = Certificate::open(&tls).unwrap().unwrap();
        let first = certificate.current();
        let (new_cert, new_key) = write_pair(dir.path(), "b");
        // Half replaced: the new certificate with the old key does not load.
        std::fs::rename(&new_cert, &cert).unwrap();
        certificate.loaded.lock().unwrap().checked -= RELOAD_CHECK_INTERVAL;
        assert!(Arc::ptr_eq(&certificate.current(), &first));
        std::fs::rename(&new_key, &key).unwrap();
        assert!(
            Arc::ptr_eq(&certificate.current(), &first),
            "not looked at again within the interval"
        );
        certificate.loaded.lock().unwrap().checked -= RELOAD_CHECK_INTERVAL;
        let second = certificate.current();
        assert!(!Arc::ptr_eq(&second, &first));
        assert_ne!(second.cert, first.cert);
    }
}
