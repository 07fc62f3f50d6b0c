//! `coap://` downloads against independent servers:
//! - libcoap's example server (Debian `libcoap3-bin`, 4.3.1; installed with apt-get when
//!   missing) with the package PUT to a dynamic resource (`-d`): whole fetches beyond block 4096,
//!   resume from the middle and at the end, a dead link in the middle (a lossy UDP proxy), 4.04,
//!   a receiver that hangs up, an unreachable server;
//! - aiocoap's file server (PyPI `aiocoap`, in a venv under `target/`): it tags every block with
//!   an ETag derived from the file's stat, so it shows the ETag checks on resume and in the
//!   middle of a transfer. libcoap 4.3.1 cannot: it sends no ETag for a transfer that does not
//!   start at block 0, and a new ETag for every transfer that does.
//!
//! Each test skips with a message when its server cannot be found or installed.

#[path = "download/support.rs"]
mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use lwm2md::runtime::download::{DownloadError, FetchRequest, fetch};
use support::{
    LossyProxy, Server, abort_after, collect, free_udp_port, pattern, replace_file, request, skip,
    test_config, tool, wait_for_coap,
};
use tempfile::TempDir;
use tokio::sync::mpsc;

/// libcoap's example server with dynamic resources, and its client for PUTs.
struct Libcoap {
    _server: Server,
    client: PathBuf,
    port: u16,
    dir: TempDir,
}

impl Libcoap {
    async fn start() -> Option<Self> {
        let Some(server) = tool(
            &["coap-server-notls", "coap-server-openssl", "coap-server"],
            "libcoap3-bin",
        ) else {
            skip("libcoap's coap-server is not installed and apt-get could not install it");
            return None;
        };
        let client = tool(
            &["coap-client-notls", "coap-client-openssl", "coap-client"],
            "libcoap3-bin",
        )?;
        let port = free_udp_port();
        let server = Server::spawn(Command::new(server).args([
            "-A",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-d",
            "8",
            "-v",
            "0",
        ]));
        wait_for_coap(port).await;
        let dir = tempfile::tempdir().expect("tempdir");
        Some(Self {
            _server: server,
            client,
            port,
            dir,
        })
    }

    /// PUTs `data` to `/name` (a dynamic resource) with coap-client, Block1 in 1 KiB blocks.
    fn put(&self, name: &str, data: &[u8]) {
        let file = self.dir.path().join(name);
        std::fs::write(&file, data).expect("write");
        let status = Command::new(&self.client)
            .args(["-m", "put", "-b", "1024", "-f"])
            .arg(&file)
            .arg(self.uri(name))
            .status()
            .expect("run coap-client");
        assert!(status.success(), "coap-client PUT failed");
    }

    fn uri(&self, name: &str) -> String {
        format!("coap://127.0.0.1:{}/{name}", self.port)
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

#[tokio::test]
async fn libcoap_whole_package_beyond_block_4096() {
    let Some(srv) = Libcoap::start().await else {
        return;
    };
    // 4101 blocks of 1 KiB: block numbers past 4095 need the 3-byte Block2 option, and the
    // body passes the 4 MiB mark where 16-bit block numbers wrap.
    let data = pattern(4101 * 1024 - 100, 1);
    srv.put("fw", &data);
    let started = Instant::now();
    let (result, got) = collect(request(&srv.uri("fw"), 0, None), &test_config()).await;
    let meta = result.expect("fetch");
    eprintln!("{} bytes in {:?}", got.len(), started.elapsed());
    assert!(
        got == data,
        "bytes differ (got {} of {})",
        got.len(),
        data.len()
    );
    assert_eq!(meta.total, Some(data.len() as u64), "Size2");
    assert!(meta.etag.is_some(), "libcoap tags a transfer from block 0");
}

#[tokio::test]
async fn libcoap_resume_from_the_middle_and_at_the_end() {
    let Some(srv) = Libcoap::start().await else {
        return;
    };
    let data = pattern(2 * 1024 * 1024, 2);
    srv.put("fw", &data);
    let config = test_config();
    let (result, _) = collect(request(&srv.uri("fw"), 0, None), &config).await;
    let etag = result.expect("first fetch").etag;
    // Not block-aligned: the block holding the offset is fetched and its head dropped.
    let (result, got) = collect(request(&srv.uri("fw"), 1_000_001, etag.clone()), &config).await;
    result.expect("resumed fetch");
    assert!(got == data[1_000_001..], "resumed bytes differ");
    // A bounded range.
    let mut req = request(&srv.uri("fw"), 5000, etag.clone());
    req.end = Some(70_000);
    let (result, got) = collect(req, &config).await;
    result.expect("range fetch");
    assert!(got == data[5000..70_000], "range bytes differ");
    // Exactly at the end (a multiple of the block size): nothing left, no error.
    let (result, got) = collect(request(&srv.uri("fw"), data.len() as u64, etag), &config).await;
    result.expect("fetch at the end");
    assert!(got.is_empty());
}

#[tokio::test]
async fn libcoap_dead_link_in_the_middle_resumes_byte_exact() {
    let Some(srv) = Libcoap::start().await else {
        return;
    };
    let data = pattern(3 * 1024 * 1024 + 17, 3);
    srv.put("fw", &data);
    let proxy = LossyProxy::start(srv.addr()).await;
    let uri = format!("coap://{}/fw", proxy.addr);
    let config = test_config();
    let fetching = tokio::spawn({
        let config = config.clone();
        async move { collect(request(&uri, 0, None), &config).await }
    });
    // Let ~1000 blocks through, then lose everything for longer than the endpoint's
    // retransmission span (0.2 + 0.4 + 0.8 s): at least one attempt times out.
    while proxy.to_client.load(Ordering::SeqCst) < 1000 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    proxy.blackout.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    proxy.blackout.store(false, Ordering::SeqCst);
    let (result, got) = fetching.await.expect("fetch task");
    result.expect("fetch resumes after the outage");
    assert!(
        got == data,
        "bytes differ (got {} of {})",
        got.len(),
        data.len()
    );
    // One exchange is 3 transmissions (max_retransmit 2): more were lost, so the endpoint gave
    // up at least once and a new attempt resumed.
    let dropped = proxy.dropped.load(Ordering::SeqCst);
    assert!(dropped > 3, "the outage dropped {dropped} datagrams");
}

#[tokio::test]
async fn libcoap_not_found_is_invalid_uri() {
    let Some(srv) = Libcoap::start().await else {
        return;
    };
    let (result, got) = collect(request(&srv.uri("no/such/fw"), 0, None), &test_config()).await;
    let error = result.expect_err("4.04");
    assert!(matches!(error, DownloadError::InvalidUri(_)), "{error:?}");
    assert_eq!(error.update_result(), 7);
    assert!(got.is_empty());
}

#[tokio::test]
async fn libcoap_new_transfer_with_another_etag_is_etag_changed() {
    let Some(srv) = Libcoap::start().await else {
        return;
    };
    srv.put("fw", &pattern(300_000, 4));
    let config = test_config();
    let (result, _) = collect(request(&srv.uri("fw"), 0, None), &config).await;
    let etag = result.expect("first fetch").etag.expect("ETag");
    // The package is replaced; the restarted transfer (block 0 on) carries another ETag.
    srv.put("fw", &pattern(300_000, 5));
    let (result, got) = collect(request(&srv.uri("fw"), 0, Some(etag)), &config).await;
    assert_eq!(result, Err(DownloadError::EtagChanged));
    assert!(got.is_empty(), "nothing of the new package is delivered");
}

#[tokio::test]
async fn libcoap_receiver_hanging_up_aborts() {
    let Some(srv) = Libcoap::start().await else {
        return;
    };
    let data = pattern(1024 * 1024, 6);
    srv.put("fw", &data);
    let (result, got) = abort_after(request(&srv.uri("fw"), 0, None), &test_config(), 50_000).await;
    assert_eq!(result, Err(DownloadError::Aborted));
    assert!(got.len() >= 50_000 && data.starts_with(&got));
}

#[tokio::test]
async fn unreachable_and_unresolvable_servers() {
    let mut config = test_config();
    config.retries = 1;
    // Nobody listens: every attempt times out (0.2 + 0.4 + 0.8 s), then the retry budget ends.
    let uri = format!("coap://127.0.0.1:{}/fw", free_udp_port());
    let started = Instant::now();
    let (result, _) = collect(request(&uri, 0, None), &config).await;
    assert!(
        matches!(result, Err(DownloadError::ConnectionLost(_))),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // A name that cannot resolve (RFC 6761 .invalid), without retries.
    config.retries = 0;
    config.connect_timeout = Duration::from_secs(2);
    let (result, _) = collect(request("coap://no-such-host.invalid/fw", 0, None), &config).await;
    assert!(
        matches!(result, Err(DownloadError::InvalidUri(_))),
        "{result:?}"
    );
    // coaps:// without [[update.coaps]] credentials for the URI: unsupported (Result 9).
    let (result, _) = collect(request("coaps://127.0.0.1/fw", 0, None), &config).await;
    assert!(
        matches!(&result, Err(DownloadError::UnsupportedScheme(s)) if s.contains("no [[update.coaps]] credentials")),
        "{result:?}"
    );
}

// ---- aiocoap file server: ETags on every block ----

/// `aiocoap-fileserver` from the interop venv, or from a venv of our own (created once).
fn aiocoap_fileserver() -> Option<PathBuf> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
            for venv in ["interop-venv", "download-venv"] {
                let bin = target.join(venv).join("bin/aiocoap-fileserver");
                if bin.is_file() {
                    return Some(bin);
                }
            }
            let venv = target.join("download-venv");
            eprintln!("creating {} with aiocoap", venv.display());
            let python = tool(&["python3"], "python3-venv")?;
            let ok = Command::new(python)
                .args(["-m", "venv"])
                .arg(&venv)
                .status()
                .is_ok_and(|s| s.success())
                && Command::new(venv.join("bin/pip"))
                    .args(["install", "-q", "aiocoap==0.4.17"])
                    .status()
                    .is_ok_and(|s| s.success());
            let bin = venv.join("bin/aiocoap-fileserver");
            (ok && bin.is_file()).then_some(bin)
        })
        .clone()
}

struct Aiocoap {
    _server: Server,
    port: u16,
    dir: TempDir,
}

impl Aiocoap {
    async fn start() -> Option<Self> {
        let Some(bin) = aiocoap_fileserver() else {
            skip("aiocoap-fileserver is not available (no venv, pip could not install aiocoap)");
            return None;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_udp_port();
        let server = Server::spawn(
            Command::new(bin)
                .arg("--bind")
                .arg(format!("127.0.0.1:{port}"))
                .arg(dir.path()),
        );
        wait_for_coap(port).await;
        Some(Self {
            _server: server,
            port,
            dir,
        })
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn uri(&self, name: &str) -> String {
        format!("coap://127.0.0.1:{}/{name}", self.port)
    }
}

#[tokio::test]
async fn aiocoap_resume_checks_the_etag() {
    let Some(srv) = Aiocoap::start().await else {
        return;
    };
    let data = pattern(200_000, 7);
    replace_file(&srv.file("fw.bin"), &data);
    let config = test_config();
    let (result, got) = collect(request(&srv.uri("fw.bin"), 0, None), &config).await;
    let etag = result
        .expect("whole fetch")
        .etag
        .expect("aiocoap sends an ETag");
    assert!(got == data);
    // Resume with the right ETag: every block carries it, and it matches.
    let (result, got) = collect(
        request(&srv.uri("fw.bin"), 123_456, Some(etag.clone())),
        &config,
    )
    .await;
    assert_eq!(result.expect("resume").etag, Some(etag.clone()));
    assert!(got == data[123_456..]);
    // The package is replaced: resuming with the old ETag must not splice the new one in.
    replace_file(&srv.file("fw.bin"), &pattern(200_000, 8));
    let (result, got) = collect(request(&srv.uri("fw.bin"), 123_456, Some(etag)), &config).await;
    assert_eq!(result, Err(DownloadError::EtagChanged));
    assert!(got.is_empty());
}

#[tokio::test]
async fn aiocoap_change_in_the_middle_is_etag_changed() {
    let Some(srv) = Aiocoap::start().await else {
        return;
    };
    let data = pattern(300_000, 9);
    let path = srv.file("fw.bin");
    replace_file(&path, &data);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(1);
    let req = FetchRequest {
        uri: srv.uri("fw.bin"),
        start: 0,
        end: None,
        etag: None,
    };
    let config = test_config();
    let fetching = fetch(req, &config, tx);
    // The receiver replaces the package once the first bytes arrived (the download hands
    // blocks over gathered into pieces of 64 KiB: after 64 blocks).
    let receiving = async {
        let mut got = Vec::new();
        let mut replaced = false;
        while let Some(chunk) = rx.recv().await {
            got.extend_from_slice(&chunk);
            if !replaced {
                replace_file(&path, &pattern(300_000, 10));
                replaced = true;
            }
        }
        got
    };
    let (result, got) = tokio::join!(fetching, receiving);
    assert_eq!(result, Err(DownloadError::EtagChanged));
    assert!(
        got.len() < data.len() && data.starts_with(&got),
        "only old bytes delivered"
    );
}
