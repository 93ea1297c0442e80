//! TLS for every outbound connection (the webhook, `wss://` links, `state_url`): the system's
//! roots plus an optional private CA from a PEM file (SPEC 2 rev 12, `backend.ca_file` and
//! `gateway.ca_file`). rustls with the ring provider: no OpenSSL, nothing bundled.
//!
//! The system roots are what `rustls-native-certs` finds: on Linux the distribution's bundle
//! (`/etc/ssl/certs`), or the file and directory named by `SSL_CERT_FILE` / `SSL_CERT_DIR`.
//! A CA file is read whenever a client is built, i.e. at start and at every reload, so a renewed
//! private CA is picked up by a SIGHUP, and a reload naming a bad one is refused.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// Largest CA file read: a bundle of a few hundred certificates is well under this.
const CA_FILE_LIMIT: u64 = 4 * 1024 * 1024;

/// Why a TLS client configuration could not be built. Names the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the CA file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("the CA file {path} is larger than {CA_FILE_LIMIT} bytes")]
    TooLarge { path: String },
    #[error("the CA file {path} holds no PEM certificate (a `-----BEGIN CERTIFICATE-----` block)")]
    Empty { path: String },
    #[error(
        "the CA file {path} holds a certificate that cannot be used as a trust anchor: {error}"
    )]
    Invalid { path: String, error: String },
    #[error("cannot set up TLS: {0}")]
    Rustls(String),
}

/// A client configuration trusting the system's roots plus every certificate in `ca_file`.
/// No ALPN: the webhook speaks HTTP/1.1 and a WebSocket upgrade needs HTTP/1.1. `needed` says
/// whether a configured URL uses TLS: only then is an empty trust store worth a warning.
pub fn client_config(ca_file: Option<&Path>, needed: bool) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!(error = %error, "a system CA certificate source could not be read");
    }
    let (_added, ignored) = roots.add_parsable_certificates(native.certs);
    if ignored > 0 {
        tracing::debug!(
            ignored,
            "system CA certificates that rustls cannot use were skipped"
        );
    }
    if let Some(path) = ca_file {
        roots.roots.extend(ca_roots(path)?.roots);
    }
    if roots.is_empty() && needed {
        tracing::warn!(
            "no CA certificates: the system has none (install ca-certificates, or set SSL_CERT_FILE) \
             and no ca_file is configured; https:// and wss:// connections will fail"
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The trust anchors of a PEM CA file, read capped. A file with a broken block, or with a
/// certificate that cannot be a trust anchor, is refused as a whole rather than half used.
/// The config's check calls this too, so `check` refuses what a start would.
pub(crate) fn ca_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let shown = || path.display().to_string();
    let mut text = Vec::new();
    crate::system::open_regular(path)
        .and_then(|file| file.take(CA_FILE_LIMIT + 1).read_to_end(&mut text))
        .map_err(|error| TlsError::Read {
            path: shown(),
            error,
        })?;
    if text.len() as u64 > CA_FILE_LIMIT {
        return Err(TlsError::TooLarge { path: shown() });
    }
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid {
            path: shown(),
            error: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty { path: shown() });
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| TlsError::Invalid {
            path: shown(),
            error: e.to_string(),
        })?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_that_is_missing_empty_or_broken_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let error = client_config(Some(&missing), true).unwrap_err().to_string();
        assert!(error.contains("missing.pem"), "{error}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let error = client_config(Some(&empty), true).unwrap_err().to_string();
        assert!(error.contains("holds no PEM certificate"), "{error}");

        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\nbm90IGRlcg==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let error = client_config(Some(&broken), true).unwrap_err().to_string();
        assert!(
            error.contains("broken.pem") && error.contains("trust anchor"),
            "{error}"
        );
    }

    #[test]
    fn the_system_roots_alone_make_a_config() {
        client_config(None, true).unwrap();
    }
}
