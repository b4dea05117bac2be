//! TLS from PEM certificate and key files, with rustls.

use std::path::Path;

use axum_server::tls_rustls::RustlsConfig;

/// Loads the certificate chain and private key.
pub(crate) async fn load(cert: &Path, key: &Path) -> std::io::Result<RustlsConfig> {
    RustlsConfig::from_pem_file(cert, key).await
}
