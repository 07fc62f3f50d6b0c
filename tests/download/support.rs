//! Helpers shared by the download tests: finding (or installing) the independent servers,
//! free ports, child processes killed on drop, a byte-collecting sink, a lossy UDP proxy.

#![allow(dead_code)] // each test crate uses a different subset

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lwm2md::core::coap::endpoint::CoapConfig;
use lwm2md::runtime::download::{DownloadConfig, DownloadError, FetchMeta, FetchRequest, fetch};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// Finds the first of `names` on PATH; if none is there, tries `apt-get install -y apt_package`
/// (as root only) and looks again. `None`: the caller skips with a message.
pub(crate) fn tool(names: &[&str], apt_package: &str) -> Option<PathBuf> {
    let find = || names.iter().find_map(|name| which(name));
    if let Some(path) = find() {
        return Some(path);
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    if !root || which("apt-get").is_none() {
        return None;
    }
    eprintln!("installing {apt_package} for this test");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", apt_package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        let _ = Command::new("apt-get")
            .arg("update")
            .stdout(Stdio::null())
            .status();
        install();
    }
    find()
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Prints why a test does not run (cargo shows it with --nocapture).
/// Under `LWM2MD_REQUIRE_TOOLS` (set by tests/run, which installs every tool) a missing tool is
/// a broken setup and fails the test instead.
pub(crate) fn skip(why: &str) {
    assert!(
        std::env::var_os("LWM2MD_REQUIRE_TOOLS").is_none(),
        "required by LWM2MD_REQUIRE_TOOLS: {why}"
    );
    eprintln!("SKIPPED: {why}");
}

/// A UDP port that was free a moment ago.
pub(crate) fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free UDP port")
}

/// A TCP port that was free a moment ago.
pub(crate) fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free TCP port")
}

/// A child process, killed and reaped on drop.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) stdout: Option<BufReader<ChildStdout>>,
}

impl Server {
    /// Spawns `command` with stdout piped.
    pub(crate) fn spawn(command: &mut Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
        let stdout = child.stdout.take().map(BufReader::new);
        Self { child, stdout }
    }

    /// Reads stdout lines until one starts with `prefix`; returns it.
    pub(crate) fn wait_for_line(&mut self, prefix: &str) -> String {
        let out = self.stdout.as_mut().expect("stdout piped");
        let mut line = String::new();
        loop {
            line.clear();
            let n = out.read_line(&mut line).expect("read server stdout");
            assert!(n > 0, "server exited before printing {prefix:?}");
            if line.starts_with(prefix) {
                return line.trim().to_string();
            }
        }
    }

    /// Stops the process.
    pub(crate) fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Deterministic pseudo-random bytes (xorshift), different for each `seed`.
pub(crate) fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Settings for loopback tests: short timeouts, fast retries.
pub(crate) fn test_config() -> DownloadConfig {
    DownloadConfig {
        ca_file: None,
        connect_timeout: Duration::from_secs(3),
        idle_timeout: Duration::from_secs(3),
        overall_timeout: Duration::from_secs(60),
        retries: 4,
        retry_initial: Duration::from_millis(50),
        retry_max: Duration::from_millis(400),
        coap: CoapConfig {
            ack_timeout: Duration::from_millis(200),
            ack_random_factor: 1.0,
            max_retransmit: 2,
            ..CoapConfig::default()
        },
        block_szx: 6,
        coaps: Vec::new(),
    }
}

/// A request for `uri` from `start`.
pub(crate) fn request(uri: &str, start: u64, etag: Option<Vec<u8>>) -> FetchRequest {
    FetchRequest {
        uri: uri.to_string(),
        start,
        end: None,
        etag,
    }
}

/// Runs `fetch` with a small bounded channel and collects what reaches the receiver.
pub(crate) async fn collect(
    req: FetchRequest,
    config: &DownloadConfig,
) -> (Result<FetchMeta, DownloadError>, Vec<u8>) {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4);
    let reader = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Some(chunk) = rx.recv().await {
            assert!(!chunk.is_empty(), "empty chunk delivered");
            all.extend_from_slice(&chunk);
        }
        all
    });
    let result = fetch(req, config, tx).await;
    let bytes = reader.await.expect("reader task");
    (result, bytes)
}

/// Runs `fetch` with a receiver that takes `keep` bytes and then hangs up (the verifier
/// refusing the package); returns the result and what it took.
pub(crate) async fn abort_after(
    req: FetchRequest,
    config: &DownloadConfig,
    keep: usize,
) -> (Result<FetchMeta, DownloadError>, Vec<u8>) {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(1);
    let reader = tokio::spawn(async move {
        let mut all = Vec::new();
        while all.len() < keep {
            match rx.recv().await {
                Some(chunk) => all.extend_from_slice(&chunk),
                None => break,
            }
        }
        all
    });
    let result = fetch(req, config, tx).await;
    (result, reader.await.expect("reader task"))
}

/// A UDP forwarder between one client and `server` that can be told to lose every datagram
/// for a while (a dead link), counting what passes and what is lost.
pub(crate) struct LossyProxy {
    /// Where clients send to.
    pub(crate) addr: SocketAddr,
    /// Drop everything while set.
    pub(crate) blackout: Arc<AtomicBool>,
    /// Datagrams passed server → client.
    pub(crate) to_client: Arc<AtomicU64>,
    /// Datagrams dropped (both directions).
    pub(crate) dropped: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl LossyProxy {
    /// Starts forwarding to `server`; one upstream socket for all clients, so the server sees
    /// one peer however often the client changes its port.
    pub(crate) async fn start(server: SocketAddr) -> Self {
        let front = UdpSocket::bind("127.0.0.1:0").await.expect("bind proxy");
        let back = UdpSocket::bind("127.0.0.1:0").await.expect("bind upstream");
        back.connect(server).await.expect("connect upstream");
        let addr = front.local_addr().expect("proxy addr");
        let blackout = Arc::new(AtomicBool::new(false));
        let to_client = Arc::new(AtomicU64::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        let (b, t, d) = (blackout.clone(), to_client.clone(), dropped.clone());
        let task = tokio::spawn(async move {
            let mut client: Option<SocketAddr> = None;
            let mut up = vec![0u8; 65536];
            let mut down = vec![0u8; 65536];
            loop {
                tokio::select! {
                    Ok((n, from)) = front.recv_from(&mut up) => {
                        client = Some(from);
                        if b.load(Ordering::SeqCst) {
                            d.fetch_add(1, Ordering::SeqCst);
                        } else {
                            let _ = back.send(&up[..n]).await;
                        }
                    }
                    Ok(n) = back.recv(&mut down) => {
                        if b.load(Ordering::SeqCst) {
                            d.fetch_add(1, Ordering::SeqCst);
                        } else if let Some(to) = client {
                            t.fetch_add(1, Ordering::SeqCst);
                            let _ = front.send_to(&down[..n], to).await;
                        }
                    }
                }
            }
        });
        Self {
            addr,
            blackout,
            to_client,
            dropped,
            task,
        }
    }
}

impl Drop for LossyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Writes `data` to `path` atomically enough for the servers (write + rename).
pub(crate) fn replace_file(path: &Path, data: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).expect("write file");
    std::fs::rename(&tmp, path).expect("rename file");
}

/// Waits until a CoAP server answers a ping (empty CON → RST) on `port`.
pub(crate) async fn wait_for_coap(port: u16) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    socket.connect(("127.0.0.1", port)).await.expect("connect");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 64];
    while Instant::now() < deadline {
        let _ = socket.send(&[0x40, 0x00, 0x12, 0x34]).await;
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(100), socket.recv(&mut buf)).await
            && n >= 4
        {
            return;
        }
    }
    panic!("CoAP server on port {port} never answered a ping");
}
