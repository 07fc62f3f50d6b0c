//! One DTLS 1.2 association with a server, and the link that keeps one alive: handshake with a
//! timeout, re-handshake with exponential back-off when the association is lost (a fatal
//! alert, a record the crate could not decrypt, the server forgetting us), datagrams sent
//! while it is down held back and sent after the new handshake.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dtls::cipher_suite::CipherSuiteId;
use dtls::config::{Config, ExtendedMasterSecretType};
use dtls::conn::DTLSConn;
use rustls_pki_types::CertificateDer;
use tokio::net::UdpSocket;
use webrtc_util::conn::Conn;

use super::conn::FilteredConn;
use super::filter::RecordFilter;

/// Pre-shared key credentials. The key never appears in `Debug` output or logs.
#[derive(Clone)]
pub struct PskCredentials {
    /// PSK identity (up to 128 bytes, LwM2M Transport §5.2).
    pub identity: Vec<u8>,
    /// The key (up to 64 bytes).
    pub key: Vec<u8>,
}

impl std::fmt::Debug for PskCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PskCredentials")
            .field("identity", &String::from_utf8_lossy(&self.identity))
            .field("key", &"<secret>")
            .finish()
    }
}

/// Certificate credentials (security mode 2). The private key never appears in `Debug`.
#[derive(Clone)]
pub struct CertCredentials {
    /// The client certificate (DER, /0/x/3).
    pub certificate: Vec<u8>,
    /// Its private key (PKCS#8 DER, /0/x/5): ECDSA P-256 or Ed25519.
    pub private_key: Vec<u8>,
    /// The trust anchor the server's certificate must chain to (DER, /0/x/4).
    pub trust_anchor: Vec<u8>,
    /// The name the server's certificate must carry (/0/x/14, else the URI's host).
    pub server_name: String,
}

impl std::fmt::Debug for CertCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertCredentials")
            .field("certificate", &self.certificate.len())
            .field("private_key", &"<secret>")
            .field("trust_anchor", &self.trust_anchor.len())
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// How the client authenticates.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// Security mode 0.
    Psk(PskCredentials),
    /// Security mode 2: the server is verified against the trust anchor and its name.
    Certificate(CertCredentials),
}

impl Credentials {
    /// The credentials configured as `security` (`None` for NoSec). A certificate's expected
    /// server name defaults to `host`.
    pub fn from_config(security: &crate::config::ServerSecurity, host: &str) -> Option<Self> {
        use crate::config::ServerSecurity;
        match security {
            ServerSecurity::NoSec => None,
            ServerSecurity::Psk { identity, key } => Some(Self::Psk(PskCredentials {
                identity: identity.clone(),
                key: key.0.clone(),
            })),
            ServerSecurity::Certificate {
                certificate,
                private_key,
                server_certificate,
                server_name,
            } => Some(Self::Certificate(CertCredentials {
                certificate: certificate.clone(),
                private_key: private_key.0.clone(),
                trust_anchor: server_certificate.clone(),
                server_name: server_name.clone().unwrap_or_else(|| host.to_string()),
            })),
        }
    }
}

/// Timing of handshakes.
#[derive(Debug, Clone)]
pub struct DtlsSettings {
    /// One handshake attempt gives up after this (the crate itself never does: OpenSSL does
    /// not answer a wrong PSK at all).
    pub handshake_timeout: Duration,
    /// First wait before a new handshake after a failed one; doubled each time.
    pub backoff_min: Duration,
    /// Longest wait between handshakes.
    pub backoff_max: Duration,
}

impl Default for DtlsSettings {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// Why a DTLS association could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DtlsError {
    /// The local socket could not be opened or connected.
    #[error("socket: {0}")]
    Socket(String),
    /// The handshake failed (alert, bad credentials, bad certificate).
    #[error("handshake with {peer} failed: {why}")]
    Handshake {
        /// The server.
        peer: SocketAddr,
        /// The crate's reason.
        why: String,
    },
    /// No handshake within the timeout (a wrong PSK often looks like this).
    #[error("no handshake with {peer} within {after:?} (wrong credentials, or no server)")]
    Timeout {
        /// The server.
        peer: SocketAddr,
        /// The timeout.
        after: Duration,
    },
    /// The association ended (alert, undecryptable record, closed).
    #[error("association with {peer} lost: {why}")]
    Lost {
        /// The server.
        peer: SocketAddr,
        /// The crate's reason.
        why: String,
    },
}

/// Our cipher suites, in order of preference (LwM2M mandates the CCM_8 ones; CCM and GCM
/// follow for servers that disabled CCM_8).
fn suites(creds: &Credentials) -> Vec<CipherSuiteId> {
    match creds {
        Credentials::Psk(_) => vec![
            CipherSuiteId::Tls_Psk_With_Aes_128_Ccm_8,
            CipherSuiteId::Tls_Psk_With_Aes_128_Ccm,
            CipherSuiteId::Tls_Psk_With_Aes_128_Gcm_Sha256,
        ],
        Credentials::Certificate(_) => vec![
            CipherSuiteId::Tls_Ecdhe_Ecdsa_With_Aes_128_Ccm_8,
            CipherSuiteId::Tls_Ecdhe_Ecdsa_With_Aes_128_Ccm,
            CipherSuiteId::Tls_Ecdhe_Ecdsa_With_Aes_128_Gcm_Sha256,
        ],
    }
}

fn config(creds: &Credentials) -> Result<Config, String> {
    let mut config = Config {
        cipher_suites: suites(creds),
        extended_master_secret: ExtendedMasterSecretType::Request,
        ..Config::default()
    };
    match creds {
        Credentials::Psk(psk) => {
            let key = psk.key.clone();
            config.psk = Some(Arc::new(move |_hint: &[u8]| {
                let key = key.clone();
                Box::pin(async move { Ok(key) })
            }));
            config.psk_identity_hint = Some(psk.identity.clone());
        }
        Credentials::Certificate(cert) => {
            let key = rcgen::KeyPair::try_from(cert.private_key.as_slice())
                .map_err(|e| format!("private key (PKCS#8 DER, ECDSA P-256 or Ed25519): {e}"))?;
            let private_key = dtls::crypto::CryptoPrivateKey::from_key_pair(&key)
                .map_err(|e| format!("private key: {e}"))?;
            config.certificates = vec![dtls::crypto::Certificate {
                certificate: vec![CertificateDer::from(cert.certificate.clone())],
                private_key,
            }];
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from(cert.trust_anchor.clone()))
                .map_err(|e| format!("trust anchor: {e}"))?;
            config.roots_cas = roots;
            // Verified against the certificate (the crate checks the chain, then the name);
            // also sent as SNI.
            config.server_name.clone_from(&cert.server_name);
        }
    }
    Ok(config)
}

/// One established association.
pub struct DtlsSession {
    conn: DTLSConn,
    transport: Arc<FilteredConn>,
    peer: SocketAddr,
}

impl std::fmt::Debug for DtlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DtlsSession")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl DtlsSession {
    /// Opens a socket connected to `peer` and runs one handshake.
    pub async fn connect(
        peer: SocketAddr,
        creds: &Credentials,
        settings: &DtlsSettings,
    ) -> Result<Self, DtlsError> {
        let socket_error = |e: std::io::Error| DtlsError::Socket(e.to_string());
        let local: SocketAddr = if peer.is_ipv6() {
            SocketAddr::from(([0u16; 8], 0))
        } else {
            SocketAddr::from(([0u8; 4], 0))
        };
        let socket = UdpSocket::bind(local).await.map_err(socket_error)?;
        socket.connect(peer).await.map_err(socket_error)?;
        let filter = Arc::new(Mutex::new(RecordFilter::new()));
        let transport = Arc::new(FilteredConn::new(Arc::new(socket), Arc::clone(&filter)));
        let conn: Arc<dyn Conn + Send + Sync> = Arc::clone(&transport) as _;
        let config = config(creds).map_err(|why| DtlsError::Handshake {
            peer,
            why: format!("credentials unusable: {why}"),
        })?;
        let handshake = DTLSConn::new(conn, config, true, None);
        let conn = match tokio::time::timeout(settings.handshake_timeout, handshake).await {
            Err(_) => {
                return Err(DtlsError::Timeout {
                    peer,
                    after: settings.handshake_timeout,
                });
            }
            Ok(Err(e)) => {
                return Err(DtlsError::Handshake {
                    peer,
                    why: e.to_string(),
                });
            }
            Ok(Ok(conn)) => conn,
        };
        if let Ok(mut f) = filter.lock() {
            f.established();
        }
        Ok(Self {
            conn,
            transport,
            peer,
        })
    }

    /// Sends one CoAP datagram.
    pub async fn send(&self, data: &[u8]) -> Result<(), DtlsError> {
        self.conn
            .write(data, None)
            .await
            .map(|_| ())
            .map_err(|e| self.lost(&e))
    }

    /// Receives one CoAP datagram.
    pub async fn recv(&self, buf: &mut [u8]) -> Result<usize, DtlsError> {
        self.conn.read(buf, None).await.map_err(|e| self.lost(&e))
    }

    /// Datagrams the record filter dropped.
    pub fn dropped(&self) -> u64 {
        self.transport.dropped()
    }

    /// The server.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    fn lost(&self, e: &dtls::Error) -> DtlsError {
        DtlsError::Lost {
            peer: self.peer,
            why: e.to_string(),
        }
    }

    /// Ends the association (close_notify).
    pub async fn close(&self) {
        let _ = self.conn.close().await;
    }
}

/// The next wait of an exponential back-off.
pub fn backoff(settings: &DtlsSettings, failures: u32) -> Duration {
    let factor = 1u32.checked_shl(failures.min(16)).unwrap_or(u32::MAX);
    settings
        .backoff_min
        .saturating_mul(factor)
        .min(settings.backoff_max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_never_printed() {
        let creds = Credentials::Psk(PskCredentials {
            identity: b"dev-1".to_vec(),
            key: b"very secret".to_vec(),
        });
        let text = format!("{creds:?}");
        assert!(
            text.contains("dev-1") && !text.contains("very secret"),
            "{text}"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = DtlsSettings {
            handshake_timeout: Duration::from_secs(1),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        };
        let waits: Vec<u64> = (0..8).map(|n| backoff(&s, n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(backoff(&s, u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn psk_offers_ccm_8_first() {
        let creds = Credentials::Psk(PskCredentials {
            identity: b"i".to_vec(),
            key: b"k".to_vec(),
        });
        assert_eq!(
            suites(&creds).first(),
            Some(&CipherSuiteId::Tls_Psk_With_Aes_128_Ccm_8)
        );
    }
}
