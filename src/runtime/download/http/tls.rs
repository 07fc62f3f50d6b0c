//! The rustls client configuration for `https://`: the system trust store plus the configured CA
//! file, ring as the crypto provider (the DTLS stack brings ring anyway; aws-lc would add a C
//! build and megabytes), host-name verification always on (rustls's WebPKI verifier; there is
//! deliberately no switch to turn it off).

use std::path::Path;
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

use crate::runtime::download::DownloadError;

/// Builds the configuration: roots from the system store (as OpenSSL finds it: `SSL_CERT_FILE`,
/// `SSL_CERT_DIR`, `/etc/ssl/certs`, …) and every certificate in `ca_file`.
///
/// An unreadable or empty `ca_file` is an error (a configuration mistake should not silently
/// fall back to the system store); an empty system store is fine when `ca_file` has roots.
pub(super) fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, DownloadError> {
    let tls = DownloadError::Tls;
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        log::debug!("download: system trust store: {error}");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    log::debug!("download: {added} system CA certificates ({ignored} unusable)");
    if let Some(path) = ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect())
            .map_err(|e| tls(format!("CA file {}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(tls(format!("CA file {}: no certificates", path.display())));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| tls(format!("CA file {}: {e}", path.display())))?;
        }
    }
    if roots.is_empty() {
        return Err(tls(
            "no trusted CA certificates (empty system store, no ca_file)".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The rustls error inside an I/O error from the TLS stream, if that is what it is: the
/// handshake failed on certificates or protocol, not on the network.
pub(super) fn tls_failure(error: &std::io::Error) -> Option<&rustls::Error> {
    error.get_ref()?.downcast_ref::<rustls::Error>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_ca_file_is_a_tls_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        assert!(matches!(
            client_config(Some(&missing)),
            Err(DownloadError::Tls(_))
        ));
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();
        assert!(matches!(
            client_config(Some(&empty)),
            Err(DownloadError::Tls(_))
        ));
    }
}
