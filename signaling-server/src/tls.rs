//! TLS from PEM certificate and key files, with rustls (ring provider).
//!
//! The files are checked one by one so that a mistake gets a precise message (which file, and
//! what is wrong with it) at start-up, instead of a handshake failure on the client side later.
//! The certificate is served through [`ReloadableCert`], which SIGHUP refreshes from the same
//! files without touching the connections already open: a renewed certificate takes effect for
//! new connections, and a bad new file leaves the old certificate in place.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{PemObject as _, SectionKind};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest as _, Sha256};

/// Larger certificate or key files are refused (a chain of a few certificates is a few KiB).
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// A certificate or key file that cannot be used; says which file and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {}: {what}", path.display())]
pub(crate) struct TlsFileError {
    /// `--tls-cert` or `--tls-key`.
    pub(crate) flag: &'static str,
    /// The file.
    pub(crate) path: PathBuf,
    /// What is wrong with it.
    pub(crate) what: String,
}

/// The certificate and key files given by `--tls-cert` and `--tls-key`.
#[derive(Debug, Clone)]
pub(crate) struct CertFiles {
    /// PEM certificate chain, leaf first.
    pub(crate) cert: PathBuf,
    /// PEM private key.
    pub(crate) key: PathBuf,
}

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_pem(flag: &'static str, path: &Path) -> Result<Vec<(SectionKind, Vec<u8>)>, TlsFileError> {
    use std::io::Read as _;
    let err = |what: String| TlsFileError {
        flag,
        path: path.to_owned(),
        what,
    };
    let file = std::fs::File::open(path).map_err(|e| err(format!("cannot read it: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(format!("cannot read it: {e}")))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(err("larger than 1 MiB; not a PEM certificate or key".into()));
    }
    let mut sections = Vec::new();
    for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(&bytes) {
        match item {
            Ok(section) => sections.push(section),
            Err(e) => return Err(err(format!("damaged PEM: {e}"))),
        }
    }
    if sections.is_empty() {
        return Err(err(
            "not a PEM file (no -----BEGIN ...----- section); give the PEM file, e.g. \
             fullchain.pem, not a DER or PKCS#12 file"
                .into(),
        ));
    }
    Ok(sections)
}

fn is_key(kind: SectionKind) -> bool {
    matches!(
        kind,
        SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey
    )
}

/// Reads and checks both files: a certificate chain, a private key rustls can sign with, and a
/// key that belongs to the leaf certificate.
pub(crate) fn load(files: &CertFiles) -> Result<CertifiedKey, TlsFileError> {
    let cert_err = |what: String| TlsFileError {
        flag: "--tls-cert",
        path: files.cert.clone(),
        what,
    };
    let key_err = |what: String| TlsFileError {
        flag: "--tls-key",
        path: files.key.clone(),
        what,
    };
    let cert_sections = read_pem("--tls-cert", &files.cert)?;
    let chain: Vec<CertificateDer<'static>> = cert_sections
        .iter()
        .filter(|(k, _)| *k == SectionKind::Certificate)
        .map(|(_, der)| CertificateDer::from(der.clone()))
        .collect();
    if chain.is_empty() {
        let hint = if cert_sections.iter().any(|(k, _)| is_key(*k)) {
            " (it holds a private key: are --tls-cert and --tls-key swapped?)"
        } else {
            ""
        };
        return Err(cert_err(format!(
            "no certificate in it (expected -----BEGIN CERTIFICATE-----){hint}"
        )));
    }
    let key_sections = read_pem("--tls-key", &files.key)?;
    let mut keys = key_sections
        .into_iter()
        .filter_map(|(kind, der)| match kind {
            SectionKind::PrivateKey => Some(PrivateKeyDer::Pkcs8(der.into())),
            SectionKind::RsaPrivateKey => Some(PrivateKeyDer::Pkcs1(der.into())),
            SectionKind::EcPrivateKey => Some(PrivateKeyDer::Sec1(der.into())),
            _ => None,
        });
    let Some(key) = keys.next() else {
        return Err(key_err(
            "no private key in it (expected -----BEGIN PRIVATE KEY-----, EC PRIVATE KEY or RSA \
             PRIVATE KEY; an encrypted key must be decrypted first)"
                .into(),
        ));
    };
    if keys.next().is_some() {
        return Err(key_err("more than one private key in it".into()));
    }
    let provider = ring();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| key_err(format!("unusable private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(key_err(format!(
                "this key does not match the certificate in --tls-cert {}",
                files.cert.display()
            )))
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(e) => Err(cert_err(format!(
            "the first certificate is not usable: {e}"
        ))),
    }
}

/// The first 16 hex digits of the leaf certificate's SHA-256, to tell certificates apart in the
/// log.
pub(crate) fn fingerprint(key: &CertifiedKey) -> String {
    let leaf = key.cert.first().map(|c| c.as_ref()).unwrap_or_default();
    hex_prefix(&Sha256::digest(leaf), 8)
}

/// Lower-case hex of the first `n` bytes.
pub(crate) fn hex_prefix(bytes: &[u8], n: usize) -> String {
    use std::fmt::Write as _;
    bytes.iter().take(n).fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The server certificate, swapped in place on reload.
#[derive(Debug)]
pub(crate) struct ReloadableCert {
    files: CertFiles,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadableCert {
    /// Loads the files once; fails with the precise reason.
    pub(crate) fn load(files: CertFiles) -> Result<ReloadableCert, TlsFileError> {
        let key = load(&files)?;
        Ok(ReloadableCert {
            files,
            current: RwLock::new(Arc::new(key)),
        })
    }

    /// Reads the files again. On success new handshakes use the new certificate and its
    /// fingerprint is returned; on failure the old certificate stays.
    pub(crate) fn reload(&self) -> Result<String, TlsFileError> {
        let key = load(&self.files)?;
        let fp = fingerprint(&key);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
        Ok(fp)
    }

    /// The fingerprint of the certificate served now.
    pub(crate) fn current_fingerprint(&self) -> String {
        fingerprint(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The rustls server configuration (HTTP/1.1 only) that serves this certificate.
    pub(crate) fn server_config(
        self: &Arc<Self>,
    ) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(ring())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

/// The rustls server configuration for ACME: `rustls-acme`'s resolver, which answers
/// TLS-ALPN-01 validation handshakes (ALPN `acme-tls/1`) with the challenge certificate and
/// everything else with the issued one.
pub(crate) fn acme_server_config(
    resolver: Arc<dyn ResolvesServerCert>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![
        b"http/1.1".to_vec(),
        rustls_acme::acme::ACME_TLS_ALPN_NAME.to_vec(),
    ];
    Ok(Arc::new(cfg))
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(PoisonError::into_inner),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn files(cert: PathBuf, key: PathBuf) -> CertFiles {
        CertFiles { cert, key }
    }

    #[test]
    fn garbage_files_get_precise_errors() {
        let d = tempfile::tempdir().unwrap();
        let garbage = write(d.path(), "garbage", "hello, not a certificate\n");
        let key_only = write(
            d.path(),
            "key.pem",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        );
        let missing = d.path().join("missing.pem");

        let e = load(&files(garbage.clone(), garbage.clone())).unwrap_err();
        assert_eq!(e.flag, "--tls-cert");
        assert!(e.to_string().contains("not a PEM file"), "{e}");

        let e = load(&files(key_only.clone(), garbage.clone())).unwrap_err();
        assert!(e.to_string().contains("swapped"), "{e}");

        let e = load(&files(missing, garbage)).unwrap_err();
        assert!(e.to_string().contains("cannot read it"), "{e}");
    }
}
