//! TLS for the signaling connection (`wss://`): rustls with the ring provider, the Mozilla root
//! certificates (webpki-roots), and optionally the CA of a self-signed deployment
//! (`--ca-file PEM`). Certificate failures are turned into one sentence that says what failed
//! and what to do.
//!
//! The signaling server is untrusted with call content (the e2ee handshake protects against it),
//! but TLS still matters: without it, join tokens, room ids, SDP and IP addresses cross the
//! network in clear, and anyone on the path could play signaling server.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// Largest CA file read: a bundle of a few hundred certificates is well under this.
pub const MAX_CA_FILE_BYTES: u64 = 1024 * 1024;

/// A TLS set-up that could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA file could not be read.
    #[error("--ca-file {}: {message}", .path.display())]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("TLS set-up: {0}")]
    Config(String),
}

/// The client configuration for `wss://` connections: the Mozilla roots, plus every
/// certificate in `ca_file` (PEM) as an extra trust anchor.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        for cert in read_ca_file(path)? {
            roots.add(cert).map_err(|e| TlsError::CaFile {
                path: path.to_owned(),
                message: format!("not a usable CA certificate: {e}"),
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The TLS configuration for `turns:` relays (TURN over TLS through the tunnel): the same
/// trust as [`client_config`] (the Mozilla roots plus `ca_file`), with the TURN ALPN. `None`
/// without a CA file: the tunnel's own default is exactly the web roots.
pub fn turn_client_config(
    ca_file: Option<&Path>,
) -> Result<Option<Arc<rustls::ClientConfig>>, TlsError> {
    let Some(path) = ca_file else {
        return Ok(None);
    };
    let certs = read_ca_file(path)?;
    aparte_turn_tunnel::tls_client_config(&certs)
        .map(Some)
        .map_err(|e| TlsError::CaFile {
            path: path.to_owned(),
            message: e.to_string(),
        })
}

/// Reads every certificate of a PEM file; a file with none, or with anything unreadable, is
/// an error (never silently an empty trust store).
fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let fail = |message: String| TlsError::CaFile {
        path: path.to_owned(),
        message,
    };
    let size = std::fs::metadata(path)
        .map_err(|e| fail(e.to_string()))?
        .len();
    if size > MAX_CA_FILE_BYTES {
        return Err(fail(format!(
            "{size} bytes; a CA file is at most {MAX_CA_FILE_BYTES}"
        )));
    }
    let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("not a PEM certificate file ({e})")))?;
    if certs.is_empty() {
        return Err(fail(
            "no certificate in it (expected -----BEGIN CERTIFICATE----- blocks)".into(),
        ));
    }
    Ok(certs)
}

/// A certificate or TLS failure explained for people, when `error` is one. rustls's error
/// reaches us either as tungstenite's TLS error or inside the I/O error of the TLS stream.
pub fn explain(error: &tokio_tungstenite::tungstenite::Error, url: &str) -> Option<String> {
    use tokio_tungstenite::tungstenite::error::TlsError as WsTls;
    use tokio_tungstenite::tungstenite::Error as Ws;
    let rustls_error: Option<&rustls::Error> = match error {
        Ws::Tls(WsTls::Rustls(e)) => Some(e.as_ref()),
        Ws::Tls(other) => return Some(format!("TLS with {url} failed: {other}")),
        Ws::Io(io) => io.get_ref().and_then(|inner| inner.downcast_ref()),
        _ => None,
    };
    rustls_error.map(|e| format!("TLS with {url} failed: {}", fix_for(e)))
}

/// What a rustls failure means and what to do about it.
fn fix_for(e: &rustls::Error) -> String {
    use rustls::{CertificateError, Error as Tls};
    match e {
        Tls::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "its certificate is not signed by a trusted authority; for a self-signed \
             deployment pass its CA with --ca-file FILE.pem (or ca_file in the config file)"
                .to_owned()
        }
        Tls::InvalidCertificate(CertificateError::NotValidForName)
        | Tls::InvalidCertificate(CertificateError::NotValidForNameContext { .. }) => {
            "its certificate is for another name; use the host name the certificate was \
             issued for in --server"
                .to_owned()
        }
        Tls::InvalidCertificate(CertificateError::Expired)
        | Tls::InvalidCertificate(CertificateError::ExpiredContext { .. }) => {
            "its certificate has expired; the server's operator must renew it (or check \
             this machine's clock)"
                .to_owned()
        }
        Tls::InvalidCertificate(CertificateError::NotValidYet)
        | Tls::InvalidCertificate(CertificateError::NotValidYetContext { .. }) => {
            "its certificate is not valid yet; check this machine's clock".to_owned()
        }
        Tls::InvalidCertificate(other) => format!("its certificate was refused: {other:?}"),
        Tls::InvalidMessage(_) | Tls::InappropriateHandshakeMessage { .. } => {
            "it does not speak TLS there; is it a plain ws:// server, or the wrong port?".to_owned()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_ca_file_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = client_config(Some(&empty)).unwrap_err().to_string();
        assert!(e.contains("no certificate"), "{e}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(
            &junk,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(client_config(Some(&junk)).is_err());
        let missing = dir.path().join("missing.pem");
        let e = client_config(Some(&missing)).unwrap_err().to_string();
        assert!(e.contains("missing.pem"), "{e}");
    }

    #[test]
    fn without_a_ca_file_the_web_roots_are_trusted() {
        assert!(client_config(None).is_ok());
    }
}
