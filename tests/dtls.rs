//! DTLS against two independent stacks: libcoap's example server built on OpenSSL and on GnuTLS
//! (Debian `libcoap3-bin`): PSK handshakes and CoAP requests over them, a wrong key failing
//! cleanly within the handshake timeout, and forged records injected mid-session by a relay
//! in front of the server (the session survives what the filter can judge, and the link
//! re-handshakes transparently after a forged record that passes the filter and kills the
//! crate's association, with no request lost).
//!
//! Each test skips with a message when its server cannot be found or installed.

#[path = "download/support.rs"]
mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lwm2md::runtime::dtls::{
    Credentials, DtlsError, DtlsLink, DtlsSession, DtlsSettings, LinkEvent, PskCredentials,
};
use support::{
    Server, collect, free_udp_port, pattern, request, skip, test_config, tool, wait_for_coap,
};
use tokio::net::UdpSocket;
use tokio::sync::{Mutex, mpsc};

const KEY: &str = "lwm2md-test-secret";

/// Starts libcoap's `binary` with `args` on 127.0.0.1: plain CoAP on the returned port, DTLS on
/// the next one. libcoap binds that second port itself, so a pair is tried until the server
/// holds both (with tests running in parallel, another server may take the second port
/// first; the DTLS endpoint is then silently missing and handshakes time out).
async fn spawn_libcoap(binary: &str, args: &[&str]) -> Option<(Server, u16)> {
    let Some(path) = tool(&[binary], "libcoap3-bin") else {
        skip(&format!(
            "{binary} is not installed and apt-get could not install it"
        ));
        return None;
    };
    for _ in 0..10 {
        let port = free_udp_port();
        if port == u16::MAX || std::net::UdpSocket::bind(("127.0.0.1", port + 1)).is_err() {
            continue;
        }
        // Dynamic resources (PUT creates them) exist on the server, not on the directory.
        let dynamic: &[&str] = if binary.starts_with("coap-server") {
            &["-d", "8"]
        } else {
            &[]
        };
        let server = Server::spawn(Command::new(&path).args(args).args(dynamic).args([
            "-A",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-v",
            "0",
        ]));
        wait_for_coap(port).await;
        // The DTLS port is ours only if we can no longer bind it.
        if std::net::UdpSocket::bind(("127.0.0.1", port + 1)).is_err() {
            return Some((server, port));
        }
    }
    panic!("{binary}: no pair of free UDP ports");
}

/// libcoap's server (or its resource directory, which accepts LwM2M's `POST /rd`) with a PSK;
/// plain CoAP on `port`, DTLS on `port + 1`.
struct Libcoap {
    _server: Server,
    port: u16,
}

impl Libcoap {
    async fn start(binary: &str) -> Option<Self> {
        let (server, port) = spawn_libcoap(binary, &["-k", KEY]).await?;
        Some(Self {
            _server: server,
            port,
        })
    }

    fn dtls(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port + 1))
    }
}

fn psk(key: &str) -> Credentials {
    Credentials::Psk(PskCredentials {
        identity: b"lwm2md-test".to_vec(),
        key: key.as_bytes().to_vec(),
    })
}

fn settings() -> DtlsSettings {
    DtlsSettings {
        handshake_timeout: Duration::from_secs(5),
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
    }
}

/// A CON GET /.well-known/core with message ID `mid` and a one-byte token.
fn get_core(mid: u16, token: u8) -> Vec<u8> {
    let mut msg = vec![0x41, 0x01];
    msg.extend_from_slice(&mid.to_be_bytes());
    msg.push(token);
    msg.push(0xBB);
    msg.extend_from_slice(b".well-known");
    msg.push(0x04);
    msg.extend_from_slice(b"core");
    msg
}

/// True when `datagram` is a 2.05 response carrying `token`.
fn is_content_for(datagram: &[u8], token: u8) -> bool {
    datagram.len() > 5 && datagram[1] == 0x45 && datagram[0] & 0x0F == 1 && datagram[4] == token
}

/// Sends GET /.well-known/core over `session` until a 2.05 arrives (CoAP-style retries).
async fn get_over(session: &DtlsSession, mid: u16, token: u8) {
    let mut buf = vec![0u8; 4096];
    for _ in 0..5 {
        session.send(&get_core(mid, token)).await.expect("send");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(got) = tokio::time::timeout_at(deadline, session.recv(&mut buf)).await {
            let n = got.expect("session alive");
            if is_content_for(&buf[..n], token) {
                return;
            }
        }
    }
    panic!("no 2.05 for GET /.well-known/core");
}

#[tokio::test]
async fn psk_handshake_and_requests_against_openssl_and_gnutls() {
    for binary in ["coap-server-openssl", "coap-server-gnutls"] {
        let Some(server) = Libcoap::start(binary).await else {
            return;
        };
        let session = DtlsSession::connect(server.dtls(), &psk(KEY), &settings())
            .await
            .unwrap_or_else(|e| panic!("{binary}: {e}"));
        for i in 0..3u8 {
            get_over(&session, 0x100 + u16::from(i), i).await;
        }
        session.close().await;
    }
}

#[tokio::test]
async fn a_wrong_key_fails_within_the_handshake_timeout() {
    for binary in ["coap-server-openssl", "coap-server-gnutls"] {
        let Some(server) = Libcoap::start(binary).await else {
            return;
        };
        let started = Instant::now();
        let err = DtlsSession::connect(server.dtls(), &psk("not-the-key"), &settings())
            .await
            .expect_err("must not connect");
        assert!(
            matches!(err, DtlsError::Timeout { .. } | DtlsError::Handshake { .. }),
            "{binary}: {err:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(8), "{binary}");
        // The message names the cause, never the key.
        assert!(!err.to_string().contains("not-the-key"), "{err}");
    }
}

/// A UDP relay between the client and the server that can also inject datagrams towards the
/// client, from the address the client is connected to (as an on-path forger would).
struct Relay {
    addr: SocketAddr,
    socket: Arc<UdpSocket>,
    client: Arc<Mutex<Option<SocketAddr>>>,
    /// Every datagram relayed: (towards the server, length).
    log: Arc<std::sync::Mutex<Vec<(bool, usize)>>>,
}

impl Relay {
    async fn start(server: SocketAddr) -> Self {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
        let addr = socket.local_addr().expect("addr");
        let client = Arc::new(Mutex::new(None));
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, c, l) = (Arc::clone(&socket), Arc::clone(&client), Arc::clone(&log));
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_535];
            while let Ok((n, from)) = s.recv_from(&mut buf).await {
                let upstream = from != server;
                if let Ok(mut l) = l.lock() {
                    l.push((upstream, n));
                }
                if upstream {
                    *c.lock().await = Some(from);
                    let _ = s.send_to(&buf[..n], server).await;
                } else if let Some(to) = *c.lock().await {
                    let _ = s.send_to(&buf[..n], to).await;
                }
            }
        });
        Self {
            addr,
            socket,
            client,
            log,
        }
    }

    /// Forgets what was relayed so far.
    fn reset(&self) {
        if let Ok(mut l) = self.log.lock() {
            l.clear();
        }
    }

    /// (datagrams, bytes) each way and the flights (runs of datagrams in one direction) since
    /// the last reset: a handshake's round trips are its flights / 2.
    fn traffic(&self) -> Traffic {
        let log = self.log.lock().map(|l| l.clone()).unwrap_or_default();
        let mut t = Traffic::default();
        let mut last = None;
        for (up, n) in log {
            if up {
                t.up_datagrams += 1;
                t.up_bytes += n;
            } else {
                t.down_datagrams += 1;
                t.down_bytes += n;
            }
            if last != Some(up) {
                t.flights += 1;
                last = Some(up);
            }
        }
        t
    }

    async fn inject(&self, datagram: &[u8]) {
        let to = self.client.lock().await.expect("a client");
        self.socket.send_to(datagram, to).await.expect("inject");
    }
}

/// A PSK link to libcoap (OpenSSL) through a [`Relay`], once its first association is up.
async fn link_through_relay() -> Option<(Libcoap, Relay, DtlsLink, mpsc::Receiver<LinkEvent>)> {
    let server = Libcoap::start("coap-server-openssl").await?;
    let relay = Relay::start(server.dtls()).await;
    let (events_tx, mut events) = mpsc::channel(64);
    let link = DtlsLink::spawn(
        "127.0.0.1".into(),
        relay.addr.port(),
        psk(KEY),
        settings(),
        events_tx,
    );
    assert!(matches!(next(&mut events).await, LinkEvent::Up(_)));
    Some((server, relay, link, events))
}

async fn next(events: &mut mpsc::Receiver<LinkEvent>) -> LinkEvent {
    tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("an event in time")
        .expect("link alive")
}

fn record(kind: u8, epoch: u16, seq: u8, body: &[u8]) -> Vec<u8> {
    let mut r = vec![kind, 0xFE, 0xFD];
    r.extend_from_slice(&epoch.to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0, 0x7F, seq]);
    r.extend_from_slice(&(body.len() as u16).to_be_bytes());
    r.extend_from_slice(body);
    r
}

#[tokio::test]
async fn forged_records_are_dropped_without_ending_the_session() {
    let Some(server) = Libcoap::start("coap-server-openssl").await else {
        return;
    };
    let relay = Relay::start(server.dtls()).await;
    let session = DtlsSession::connect(relay.addr, &psk(KEY), &settings())
        .await
        .expect("handshake through the relay");
    get_over(&session, 1, 1).await;
    let forged: [Vec<u8>; 4] = [
        vec![0xFF; 40],             // garbage
        record(21, 0, 1, &[2, 40]), // plaintext fatal alert (handshake_failure)
        record(23, 1, 2, &[0; 10]), // encrypted record shorter than nonce + tag
        record(23, 7, 3, &[0; 60]), // an epoch that does not exist
    ];
    for (i, datagram) in forged.iter().enumerate() {
        relay.inject(datagram).await;
        get_over(&session, 10 + i as u16, 10 + i as u8).await;
    }
    assert_eq!(session.dropped(), 4);
}

#[tokio::test]
async fn the_link_re_handshakes_after_a_record_that_kills_the_association() {
    let Some((_server, relay, link, mut events)) = link_through_relay().await else {
        return;
    };
    // Well-formed, right epoch, long enough: only decrypting shows it is forged, and the crate
    // ends a PSK association on that.
    relay.inject(&record(23, 1, 200, &[0x5A; 64])).await;
    // A request sent right away is not lost: held while the link handshakes again and sent
    // after, or (sent on the dying association) retransmitted as the CoAP layer does.
    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut downs, mut ups) = (0, 0);
    let mut resend = tokio::time::interval(Duration::from_millis(1500));
    loop {
        assert!(
            Instant::now() < deadline,
            "no answer after the re-handshake"
        );
        let event = tokio::select! {
            _ = resend.tick() => {
                assert!(link.send(get_core(0x777, 0x77)));
                continue;
            }
            e = next(&mut events) => e,
        };
        match event {
            LinkEvent::Down { .. } => downs += 1,
            LinkEvent::Up(_) => ups += 1,
            LinkEvent::Datagram(d) if is_content_for(&d, 0x77) => break,
            LinkEvent::Datagram(_) => {}
        }
    }
    // The forged record ended the crate's association (it cannot drop a record that fails to
    // decrypt); the link handshook again and the request still got its answer.
    assert!(downs >= 1, "the forged record did not end the association");
    assert_eq!(downs, ups, "every loss was followed by a new handshake");
}

/// The daemon with one `coaps://` server using PSK `key` from a file of mode `mode`.
struct Daemon {
    child: std::process::Child,
    log: Arc<std::sync::Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// With PSK `key` in a file of mode `mode`.
    fn spawn(port: u16, key: &str, mode: u32) -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let key_file = dir.path().join("psk.key");
        std::fs::write(&key_file, key).expect("key");
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let server = format!(
            "uri = \"coaps://127.0.0.1:{port}\"\nsecurity = \"psk\"\n\
             psk_identity = \"dtls-e2e\"\npsk_key_file = \"{}\"\n",
            key_file.display()
        );
        Self::start(dir, &server)
    }

    /// With `server` as the rest of its one `[[server]]` table.
    fn start(dir: tempfile::TempDir, server: &str) -> Self {
        use std::io::BufRead as _;
        let config = dir.path().join("lwm2md.toml");
        std::fs::write(
            &config,
            format!(
                "[agent]\nendpoint = \"urn:dev:os:dtls-e2e\"\nstate_dir = \"{}\"\n\n\
                 [[server]]\nshort_id = 1\n{server}",
                dir.path().join("state").display(),
            ),
        )
        .expect("config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_lwm2md"))
            .arg("--config")
            .arg(&config)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn lwm2md");
        let log = Arc::new(std::sync::Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(mut l) = sink.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
        Self {
            child,
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits until the log holds every one of `needles` (in any order).
    async fn wait_for(&self, needles: &[&str], within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let log = self.log();
            if needles.iter().all(|n| log.contains(n)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("log lacks {needles:?}:\n{}", self.log());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_daemon_registers_over_dtls_psk_with_openssl_and_gnutls() {
    for binary in ["coap-rd-openssl", "coap-rd-gnutls"] {
        let Some(rd) = Libcoap::start(binary).await else {
            return;
        };
        let daemon = Daemon::spawn(rd.dtls().port(), KEY, 0o600);
        daemon
            .wait_for(
                &["association with 127.0.0.1", "registered with server 1"],
                Duration::from_secs(15),
            )
            .await;
        assert!(!daemon.log().contains(KEY), "the key was logged");
    }
}

#[tokio::test]
async fn a_wrong_psk_is_logged_and_retried_with_back_off() {
    let Some(rd) = Libcoap::start("coap-rd-openssl").await else {
        return;
    };
    let daemon = Daemon::spawn(rd.dtls().port(), "not-the-key", 0o600);
    daemon
        .wait_for(
            &["next handshake in 1s", "next handshake in 2s"],
            Duration::from_secs(40),
        )
        .await;
    let log = daemon.log();
    assert!(!log.contains("registered with server 1"), "{log}");
    assert!(!log.contains("not-the-key"), "the key was logged");
}

#[tokio::test]
async fn a_key_file_readable_by_others_is_refused() {
    let daemon = Daemon::spawn(5684, KEY, 0o644);
    let mut daemon = daemon;
    let status = daemon.child.wait().expect("wait");
    assert!(!status.success());
    // The reader thread may still be draining stderr.
    daemon
        .wait_for(&["readable by others (mode 0644)"], Duration::from_secs(5))
        .await;
}

/// A test PKI: a CA, a server certificate for `server.example` and a client certificate, all
/// ECDSA P-256, written as PEM for libcoap and kept as DER for the client.
struct Pki {
    dir: tempfile::TempDir,
    ca_der: Vec<u8>,
    client_der: Vec<u8>,
    client_key_der: Vec<u8>,
}

impl Pki {
    fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let alg = &rcgen::PKCS_ECDSA_P256_SHA256;
        let ca_key = KeyPair::generate_for(alg).expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "lwm2md test CA");
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let leaf = |name: &str| {
            let key = KeyPair::generate_for(alg).expect("key");
            let mut params = CertificateParams::new(vec![name.to_string()]).expect("params");
            params.distinguished_name.push(DnType::CommonName, name);
            let cert = params.signed_by(&key, &ca, &ca_key).expect("sign");
            (cert, key)
        };
        let (server, server_key) = leaf("server.example");
        let (client, client_key) = leaf("urn:dev:os:dtls-e2e");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("ca.pem");
        std::fs::write(dir.path().join("server.pem"), server.pem()).expect("server.pem");
        std::fs::write(dir.path().join("server.key"), server_key.serialize_pem()).expect("key");
        // coap-rd takes certificate and key from one file.
        std::fs::write(
            dir.path().join("server-and-key.pem"),
            format!("{}{}", server.pem(), server_key.serialize_pem()),
        )
        .expect("server-and-key.pem");
        std::fs::write(dir.path().join("client.pem"), client.pem()).expect("client.pem");
        let client_key_file = dir.path().join("client.key");
        std::fs::write(&client_key_file, client_key.serialize_pem()).expect("client.key");
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&client_key_file, std::fs::Permissions::from_mode(0o600))
                .expect("chmod");
        }
        Self {
            dir,
            ca_der: ca.der().to_vec(),
            client_der: client.der().to_vec(),
            client_key_der: client_key.serialize_der(),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn credentials(&self, server_name: &str, anchor: &[u8]) -> Credentials {
        Credentials::Certificate(lwm2md::runtime::dtls::CertCredentials {
            certificate: self.client_der.clone(),
            private_key: self.client_key_der.clone(),
            trust_anchor: anchor.to_vec(),
            server_name: server_name.into(),
        })
    }
}

/// libcoap's server with the PKI's server certificate, verifying clients against its CA.
async fn libcoap_pki(binary: &str, pki: &Pki) -> Option<(Server, SocketAddr)> {
    // The resource directory has no -j: its -c file holds the key too.
    let key = if binary.starts_with("coap-rd") {
        vec!["-c".to_string(), pki.path("server-and-key.pem")]
    } else {
        vec![
            "-c".to_string(),
            pki.path("server.pem"),
            "-j".to_string(),
            pki.path("server.key"),
        ]
    };
    let ca = pki.path("ca.pem");
    let mut args: Vec<&str> = key.iter().map(String::as_str).collect();
    args.extend(["-C", &ca, "-R", &ca]);
    let (server, port) = spawn_libcoap(binary, &args).await?;
    Some((server, SocketAddr::from(([127, 0, 0, 1], port + 1))))
}

#[tokio::test]
async fn certificate_handshakes_verify_the_server_against_anchor_and_name() {
    let pki = Pki::new();
    for binary in ["coap-server-openssl", "coap-server-gnutls"] {
        let Some((_server, addr)) = libcoap_pki(binary, &pki).await else {
            return;
        };
        // Mutual authentication, the server's chain and name checked.
        let session = DtlsSession::connect(
            addr,
            &pki.credentials("server.example", &pki.ca_der),
            &settings(),
        )
        .await
        .unwrap_or_else(|e| panic!("{binary}: {e}"));
        get_over(&session, 0x200, 0x20).await;
        session.close().await;

        // The certificate is valid but for another name: the handshake is aborted.
        let err = DtlsSession::connect(
            addr,
            &pki.credentials("other.example", &pki.ca_der),
            &settings(),
        )
        .await
        .expect_err("host-name mismatch must abort");
        assert!(
            matches!(err, DtlsError::Handshake { .. }),
            "{binary}: {err:?}"
        );

        // Another trust anchor (the client's own certificate is no CA of the server's).
        let err = DtlsSession::connect(
            addr,
            &pki.credentials("server.example", &pki.client_der),
            &settings(),
        )
        .await
        .expect_err("unknown issuer must abort");
        assert!(
            matches!(err, DtlsError::Handshake { .. }),
            "{binary}: {err:?}"
        );
    }
}

#[tokio::test]
async fn the_daemon_registers_over_dtls_with_certificates() {
    let pki = Pki::new();
    let Some((_rd, addr)) = libcoap_pki("coap-rd-openssl", &pki).await else {
        return;
    };
    let server = format!(
        "uri = \"coaps://127.0.0.1:{}\"\nsecurity = \"certificate\"\n\
         certificate_file = \"{}\"\nprivate_key_file = \"{}\"\n\
         server_certificate_file = \"{}\"\nserver_name = \"server.example\"\n",
        addr.port(),
        pki.path("client.pem"),
        pki.path("client.key"),
        pki.path("ca.pem"),
    );
    let daemon = Daemon::start(tempfile::tempdir().expect("tempdir"), &server);
    daemon
        .wait_for(
            &["association with 127.0.0.1", "registered with server 1"],
            Duration::from_secs(15),
        )
        .await;
}

#[derive(Debug, Default, Clone, Copy)]
struct Traffic {
    up_datagrams: usize,
    up_bytes: usize,
    down_datagrams: usize,
    down_bytes: usize,
    flights: usize,
}

/// Handshake cost, for `tests/bench/dtls.sh` (ignored in the test run): time (median of 20
/// on loopback), datagrams, bytes and flights through the relay, for PSK and certificates
/// against OpenSSL and GnuTLS; and a re-handshake after a lost association, which costs a full
/// handshake (the crate has no session resumption or Connection ID).
#[tokio::test]
#[ignore = "benchmark: tests/bench/dtls.sh"]
async fn bench_handshake_cost() {
    let pki = Pki::new();
    println!(
        "{:<22} {:<8} {:>9} {:>9} {:>14} {:>14} {:>12}",
        "server", "mode", "median", "max", "client→server", "server→client", "round trips"
    );
    for binary in ["coap-server-openssl", "coap-server-gnutls"] {
        for mode in ["psk", "cert"] {
            let (_server, addr) = if mode == "psk" {
                let Some(server) = Libcoap::start(binary).await else {
                    return;
                };
                let addr = server.dtls();
                (Box::new(server) as Box<dyn std::any::Any>, addr)
            } else {
                let Some((server, addr)) = libcoap_pki(binary, &pki).await else {
                    return;
                };
                (Box::new(server) as Box<dyn std::any::Any>, addr)
            };
            let relay = Relay::start(addr).await;
            let creds = if mode == "psk" {
                psk(KEY)
            } else {
                pki.credentials("server.example", &pki.ca_der)
            };
            let mut times = Vec::new();
            let mut traffic = Traffic::default();
            for _ in 0..20 {
                relay.reset();
                let t0 = Instant::now();
                let session = DtlsSession::connect(relay.addr, &creds, &settings())
                    .await
                    .expect("handshake");
                times.push(t0.elapsed());
                traffic = relay.traffic();
                session.close().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            times.sort();
            println!(
                "{binary:<22} {mode:<8} {:>6.1} ms {:>6.1} ms {:>4} dg {:>5} B {:>4} dg {:>5} B {:>12}",
                times[times.len() / 2].as_secs_f64() * 1e3,
                times[times.len() - 1].as_secs_f64() * 1e3,
                traffic.up_datagrams,
                traffic.up_bytes,
                traffic.down_datagrams,
                traffic.down_bytes,
                traffic.flights / 2,
            );
        }
    }
    // A re-handshake: the link after a forged record ended the association, PSK, OpenSSL.
    let Some((_server, relay, _link, mut events)) = link_through_relay().await else {
        return;
    };
    relay.reset();
    let t0 = Instant::now();
    relay.inject(&record(23, 1, 200, &[0x5A; 64])).await;
    loop {
        if let LinkEvent::Up(_) = next(&mut events).await {
            break;
        }
    }
    let t = relay.traffic();
    println!(
        "re-handshake (PSK, OpenSSL) after a lost association: {:.1} ms from the forged record, \
         {} + {} datagrams, {} + {} bytes (a full handshake)",
        t0.elapsed().as_secs_f64() * 1e3,
        t.up_datagrams,
        t.down_datagrams,
        t.up_bytes,
        t.down_bytes
    );
}

/// PUTs `data` to the dynamic resource `/name` over plain CoAP (`port`), with libcoap's client.
fn put_plain(port: u16, name: &str, data: &[u8]) {
    let client = tool(
        &["coap-client-openssl", "coap-client-notls", "coap-client"],
        "libcoap3-bin",
    )
    .expect("coap-client");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join(name);
    std::fs::write(&file, data).expect("write");
    let status = Command::new(client)
        .args(["-m", "put", "-b", "1024", "-f"])
        .arg(&file)
        .arg(format!("coap://127.0.0.1:{port}/{name}"))
        .status()
        .expect("run coap-client");
    assert!(status.success(), "coap-client PUT failed");
}

fn coaps_config(
    prefix: &str,
    security: lwm2md::config::ServerSecurity,
) -> lwm2md::runtime::download::DownloadConfig {
    let mut config = test_config();
    config.coaps = vec![lwm2md::config::CoapsCredential {
        prefix: prefix.into(),
        security,
    }];
    config
}

#[tokio::test]
async fn block2_downloads_over_dtls_with_psk_and_certificates() {
    use lwm2md::config::{Secret, ServerSecurity};
    let data = pattern(300_000, 21);
    let pki = Pki::new();
    for binary in ["coap-server-openssl", "coap-server-gnutls"] {
        // PSK.
        let Some(server) = Libcoap::start(binary).await else {
            return;
        };
        put_plain(server.port, "fw.bin", &data);
        let psk = ServerSecurity::Psk {
            identity: b"lwm2md-test".to_vec(),
            key: Secret(KEY.as_bytes().to_vec()),
        };
        let uri = format!("coaps://127.0.0.1:{}/fw.bin", server.port + 1);
        let (result, got) = collect(
            request(&uri, 0, None),
            &coaps_config("coaps://127.0.0.1", psk.clone()),
        )
        .await;
        assert!(result.is_ok(), "{binary}: {result:?}");
        assert!(got == data, "{binary}: PSK download differs");

        // A URI no credentials are configured for: unsupported (Result 9), nothing fetched.
        let (result, _) = collect(
            request(&uri, 0, None),
            &coaps_config("coaps://fw.example", psk),
        )
        .await;
        assert!(
            matches!(
                result,
                Err(lwm2md::runtime::download::DownloadError::UnsupportedScheme(
                    _
                ))
            ),
            "{result:?}"
        );

        // Certificates, mutual; a resume from the middle.
        let Some((_pki_server, addr)) = libcoap_pki(binary, &pki).await else {
            return;
        };
        put_plain(addr.port() - 1, "fw.bin", &data);
        let cert = ServerSecurity::Certificate {
            certificate: pki.client_der.clone(),
            private_key: Secret(pki.client_key_der.clone()),
            server_certificate: pki.ca_der.clone(),
            server_name: Some("server.example".into()),
        };
        let uri = format!("coaps://127.0.0.1:{}/fw.bin", addr.port());
        let (result, got) = collect(
            request(&uri, 123_456, None),
            &coaps_config("coaps://127.0.0.1", cert),
        )
        .await;
        assert!(result.is_ok(), "{binary}: {result:?}");
        assert!(
            got == data[123_456..],
            "{binary}: certificate download differs"
        );
    }
}

#[tokio::test]
async fn a_server_that_forgot_the_association_gets_a_new_handshake() {
    let Some(first) = Libcoap::start("coap-rd-openssl").await else {
        return;
    };
    let port = first.port;
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("psk.key");
    std::fs::write(&key_file, KEY).expect("key");
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    // A short lifetime brings the Update soon; fast CoAP give-up and retry keep the test short.
    let server = format!(
        "uri = \"coaps://127.0.0.1:{}\"\nlifetime = 6\nsecurity = \"psk\"\n\
         psk_identity = \"dtls-e2e\"\npsk_key_file = \"{}\"\n\
         [coap]\nack_timeout = 0.5\nmax_retransmit = 1\n[registration]\nretry_initial = 1\n",
        port + 1,
        key_file.display()
    );
    let daemon = Daemon::start(dir, &server);
    daemon
        .wait_for(&["registered with server 1"], Duration::from_secs(15))
        .await;
    // The server restarts: it has forgotten the association, and says nothing about it.
    drop(first);
    let path = tool(&["coap-rd-openssl"], "libcoap3-bin").expect("coap-rd-openssl");
    let _second = Server::spawn(Command::new(path).args([
        "-A",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-k",
        KEY,
        "-v",
        "0",
    ]));
    wait_for_coap(port).await;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let log = daemon.log();
        if log.contains("new DTLS handshake")
            && log.matches("registered with server 1").count() >= 2
        {
            break;
        }
        assert!(Instant::now() < deadline, "no new registration:\n{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
