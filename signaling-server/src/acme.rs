//! Automatic certificates from an ACME CA (Let's Encrypt by default), with `rustls-acme`.
//!
//! The TLS-ALPN-01 challenge is answered on the server's own TLS listener: `rustls-acme`'s
//! resolver is the certificate resolver of our rustls configuration, which also offers the
//! `acme-tls/1` protocol. A validation connection gets the challenge certificate during the
//! handshake and then closes; it never reaches the HTTP layer with a request. The CA connects
//! to port 443 of the domain, so `--listen` must be reachable there.
//!
//! The account key and the certificates are kept in the ACME cache directory (0700), in files
//! written 0600 through a temporary file and a rename.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use rustls_acme::{AccountCache, AcmeConfig, CertCache, ResolvesServerCertAcme};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::CertificateDer;
use sha2::{Digest as _, Sha256};

use crate::config::AcmeSettings;

/// Let's Encrypt's production directory, the default.
pub(crate) const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Cache files larger than this are refused (an account key or a chain is a few KiB).
const MAX_CACHE_FILE: u64 = 1024 * 1024;

/// Starts ordering (or loading the cached) certificate in a background task; returns the
/// resolver for the rustls configuration. Fails only on a bad `--acme-ca-file`.
pub(crate) fn start(settings: &AcmeSettings) -> Result<Arc<ResolvesServerCertAcme>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = match &settings.ca_file {
        None => AcmeConfig::new_with_provider(&settings.domains, Arc::clone(&provider)),
        Some(file) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(file)
                .map_err(|e| format!("--acme-ca-file {}: {e}", file.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("--acme-ca-file {}: {e}", file.display()))?;
                roots.add(cert).map_err(|e| {
                    format!(
                        "--acme-ca-file {}: not a usable CA certificate: {e}",
                        file.display()
                    )
                })?;
            }
            if roots.is_empty() {
                return Err(format!(
                    "--acme-ca-file {}: no certificate in it",
                    file.display()
                ));
            }
            let client = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            AcmeConfig::new_with_client_config(&settings.domains, Arc::new(client))
        }
    };
    let mut state = config
        .contact_push(format!("mailto:{}", settings.email))
        .directory(&settings.directory)
        .cache(FileCache {
            dir: settings.cache.clone(),
        })
        .state();
    let resolver = state.resolver();
    let domains = settings.domains.join(",");
    tokio::spawn(async move {
        use futures_util::StreamExt as _;
        // The state machine orders, renews (before expiry) and retries on its own; it only has
        // to be polled. Each step is logged.
        while let Some(event) = state.next().await {
            match event {
                Ok(ok) => tracing::info!(%domains, "ACME: {}", describe(&ok)),
                Err(e) => tracing::error!(%domains, "ACME: {e} (will retry)"),
            }
        }
    });
    Ok(resolver)
}

fn describe(ok: &rustls_acme::EventOk) -> &'static str {
    match ok {
        rustls_acme::EventOk::DeployedCachedCert => "serving the cached certificate",
        rustls_acme::EventOk::DeployedNewCert => "new certificate issued and serving it",
        rustls_acme::EventOk::CertCacheStore => "certificate saved in the cache",
        rustls_acme::EventOk::AccountCacheStore => "account key saved in the cache",
    }
}

/// The cache: one file per (domains, directory) certificate and per (contact, directory)
/// account, named by a hash of what it is for.
struct FileCache {
    dir: PathBuf,
}

impl FileCache {
    fn name(kind: &str, parts: &[String], directory: &str) -> String {
        let mut h = Sha256::new();
        for p in parts {
            h.update(p.as_bytes());
            h.update([0]);
        }
        h.update(directory.as_bytes());
        format!("{kind}-{}", crate::tls::hex_prefix(&h.finalize(), 16))
    }

    async fn read(&self, name: String) -> std::io::Result<Option<Vec<u8>>> {
        let path = self.dir.join(name);
        blocking(move || read_bounded(&path)).await
    }

    async fn write(&self, name: String, bytes: &[u8]) -> std::io::Result<()> {
        let dir = self.dir.clone();
        let bytes = bytes.to_vec();
        blocking(move || write_private(&dir, &name, &bytes)).await
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(std::io::Error::other)?
}

fn read_bounded(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut buf = Vec::new();
    f.take(MAX_CACHE_FILE + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_CACHE_FILE {
        return Err(std::io::Error::other(format!(
            "{} is larger than 1 MiB",
            path.display()
        )));
    }
    Ok(Some(buf))
}

/// Writes `dir/name` with mode 0600 (the directory is created 0700): a temporary file, synced,
/// then renamed over the old one, so a crash leaves either the old or the new file.
pub(crate) fn write_private(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let res = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(name))
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

#[async_trait]
impl CertCache for FileCache {
    type EC = std::io::Error;

    async fn load_cert(
        &self,
        domains: &[String],
        directory_url: &str,
    ) -> Result<Option<Vec<u8>>, Self::EC> {
        self.read(Self::name("cert", domains, directory_url)).await
    }

    async fn store_cert(
        &self,
        domains: &[String],
        directory_url: &str,
        cert: &[u8],
    ) -> Result<(), Self::EC> {
        self.write(Self::name("cert", domains, directory_url), cert)
            .await
    }
}

#[async_trait]
impl AccountCache for FileCache {
    type EA = std::io::Error;

    async fn load_account(
        &self,
        contact: &[String],
        directory_url: &str,
    ) -> Result<Option<Vec<u8>>, Self::EA> {
        self.read(Self::name("account", contact, directory_url))
            .await
    }

    async fn store_account(
        &self,
        contact: &[String],
        directory_url: &str,
        account: &[u8],
    ) -> Result<(), Self::EA> {
        self.write(Self::name("account", contact, directory_url), account)
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn cache_files_are_private_and_replaced_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("acme");
        write_private(&dir, "cert-x", b"one").unwrap();
        write_private(&dir, "cert-x", b"two").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("cert-x")), 0o600);
        assert_eq!(read_bounded(&dir.join("cert-x")).unwrap().unwrap(), b"two");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        assert!(read_bounded(&dir.join("nope")).unwrap().is_none());
    }
}
