//! `http://` and `https://` downloads against independent servers:
//! - `tests/download/range_server.py` (Python's http.server plus Range, ETag, Last-Modified,
//!   If-Match, If-Unmodified-Since and fault injection: cut or stalled bodies, chunked framing,
//!   ignored ranges, 5xx, redirects), also over TLS (Python's ssl = OpenSSL) with a test CA made
//!   by `openssl req`;
//! - nginx (Debian `nginx-light`, installed with apt-get when missing) on a private config, for
//!   the standard behaviour of a real server: Range, If-Match → 412, 416 at the end.
//!
//! Each test skips with a message when its server cannot be found or installed.

#[path = "download/support.rs"]
mod support;

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lwm2md::runtime::download::{DownloadConfig, DownloadError};
use serde_json::Value;
use support::{
    Server, abort_after, collect, free_tcp_port, pattern, replace_file, request, skip, test_config,
    tool,
};
use tempfile::TempDir;

/// The Python range server with its request log.
struct RangeServer {
    _server: Server,
    port: u16,
    dir: TempDir,
    log: Arc<Mutex<Vec<Value>>>,
    tls: bool,
}

impl RangeServer {
    fn start() -> Option<Self> {
        Self::start_with(None)
    }

    /// With `tls = Some((cert, key))` it speaks HTTPS.
    fn start_with(tls: Option<(&Path, &Path)>) -> Option<Self> {
        let Some(python) = tool(&["python3"], "python3") else {
            skip("python3 is not available");
            return None;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/download/range_server.py");
        let mut command = Command::new(python);
        command.arg(script).arg("--root").arg(dir.path());
        if let Some((cert, key)) = tls {
            command.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        let mut server = Server::spawn(&mut command);
        let ready = server.wait_for_line("READY ");
        let port = ready
            .trim_start_matches("READY ")
            .parse()
            .expect("port number");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stdout = server.stdout.take().expect("stdout");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { return };
                if let Ok(record) = serde_json::from_str::<Value>(&line) {
                    sink.lock().expect("log").push(record);
                }
            }
        });
        Some(Self {
            _server: server,
            port,
            dir,
            log,
            tls: tls.is_some(),
        })
    }

    fn put(&self, name: &str, data: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        replace_file(&path, data);
        path
    }

    fn uri(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}{path}", self.port)
    }

    /// The requests logged so far (taken out of the log). The server prints each line before
    /// it answers, but our reader thread may not have picked it up yet: wait until the log has
    /// been quiet for 50 ms.
    fn requests(&self) -> Vec<Value> {
        let mut seen = usize::MAX;
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let now = self.log.lock().expect("log").len();
            if now == seen {
                return std::mem::take(&mut *self.log.lock().expect("log"));
            }
            seen = now;
        }
    }
}

fn field<'a>(record: &'a Value, name: &str) -> Option<&'a str> {
    record.get(name).and_then(Value::as_str)
}

#[tokio::test]
async fn whole_file_then_resume_with_range_and_if_match() {
    let Some(srv) = RangeServer::start() else {
        return;
    };
    let data = pattern(1024 * 1024 + 3, 1);
    srv.put("fw.bin", &data);
    let config = test_config();
    let (result, got) = collect(request(&srv.uri("/files/fw.bin"), 0, None), &config).await;
    let meta = result.expect("whole fetch");
    assert!(got == data);
    assert_eq!(meta.total, Some(data.len() as u64));
    let etag = meta.etag.expect("validator");
    assert!(etag.starts_with(b"\""), "the strong ETag is the validator");
    let sent = srv.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(field(&sent[0], "range"), None, "no Range for a whole fetch");

    let (result, got) = collect(
        request(&srv.uri("/files/fw.bin"), 700_001, Some(etag.clone())),
        &config,
    )
    .await;
    assert_eq!(result.expect("resume").etag, Some(etag.clone()));
    assert!(got == data[700_001..]);
    let sent = srv.requests();
    assert_eq!(field(&sent[0], "range"), Some("bytes=700001-"));
    assert_eq!(
        field(&sent[0], "if_match").map(str::as_bytes),
        Some(&etag[..])
    );
    assert_eq!(sent[0]["status"], 206);

    // A bounded range asks for exactly that.
    let mut req = request(&srv.uri("/files/fw.bin"), 10, Some(etag.clone()));
    req.end = Some(20);
    let (result, got) = collect(req, &config).await;
    result.expect("bounded");
    assert_eq!(got, data[10..20]);
    assert_eq!(field(&srv.requests()[0], "range"), Some("bytes=10-19"));

    // At the end: 416 with bytes */size means the range was complete.
    let (result, got) = collect(
        request(
            &srv.uri("/files/fw.bin"),
            data.len() as u64,
            Some(etag.clone()),
        ),
        &config,
    )
    .await;
    assert_eq!(result.expect("at the end").total, Some(data.len() as u64));
    assert!(got.is_empty());
    assert_eq!(srv.requests()[0]["status"], 416);

    // The package changed: If-Match fails with 412.
    srv.put("fw.bin", &pattern(data.len(), 2));
    let (result, got) = collect(
        request(&srv.uri("/files/fw.bin"), 700_001, Some(etag)),
        &config,
    )
    .await;
    assert_eq!(result, Err(DownloadError::EtagChanged));
    assert!(got.is_empty());
    assert_eq!(srv.requests()[0]["status"], 412);
}

#[tokio::test]
async fn cut_connections_resume_transparently() {
    let Some(srv) = RangeServer::start() else {
        return;
    };
    let data = pattern(1_000_000, 3);
    srv.put("fw.bin", &data);
    let config = test_config();
    // Every response breaks off after 300 000 bytes: four requests, each resuming with
    // Range + If-Match where the last one stopped.
    for framing in ["length", "chunked"] {
        let uri = srv.uri(&format!("/files/fw.bin?cut=300000&framing={framing}"));
        let (result, got) = collect(request(&uri, 0, None), &config).await;
        result.unwrap_or_else(|e| panic!("{framing}: {e}"));
        assert!(got == data, "{framing}: bytes differ");
        let sent = srv.requests();
        assert!(sent.len() >= 4, "{framing}: {} requests", sent.len());
        assert_eq!(field(&sent[0], "range"), None);
        for record in &sent[1..] {
            assert!(field(record, "range").is_some_and(|r| r.starts_with("bytes=")));
            assert!(field(record, "if_match").is_some(), "{record}");
        }
    }
    // Plain TCP, a body delimited by the close (no Content-Length, not chunked): a cut looks
    // exactly like the end. Only the package signature can catch that (over TLS the missing
    // close_notify does, see `https_with_the_test_ca`).
    let uri = srv.uri("/files/fw.bin?cut=300000&framing=close");
    let (result, got) = collect(request(&uri, 0, None), &config).await;
    result.expect("close-delimited");
    assert_eq!(got, data[..300_000]);
}

#[tokio::test]
async fn last_modified_is_the_fallback_validator() {
    let Some(srv) = RangeServer::start() else {
        return;
    };
    let data = pattern(500_000, 4);
    let path = srv.put("fw.bin", &data);
    let config = test_config();
    let uri = srv.uri("/files/fw.bin?validators=lm&cut=200000");
    let (result, got) = collect(request(&uri, 0, None), &config).await;
    let token = result
        .expect("fetch with Last-Modified only")
        .etag
        .expect("token");
    assert!(got == data);
    assert!(
        token.starts_with(b"Last-Modified: "),
        "{}",
        String::from_utf8_lossy(&token)
    );
    let sent = srv.requests();
    assert!(sent.len() >= 3);
    assert!(field(&sent[1], "if_unmodified_since").is_some());
    assert_eq!(field(&sent[1], "if_match"), None);
    // Modified since: 412 → EtagChanged.
    let later = std::time::SystemTime::now() + Duration::from_secs(30);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_modified(later))
        .expect("set mtime");
    let uri = srv.uri("/files/fw.bin?validators=lm");
    let (result, _) = collect(request(&uri, 1000, Some(token)), &config).await;
    assert_eq!(result, Err(DownloadError::EtagChanged));
}

#[tokio::test]
async fn without_validators_a_resume_restarts_from_zero() {
    let Some(srv) = RangeServer::start() else {
        return;
    };
    let data = pattern(400_000, 5);
    srv.put("fw.bin", &data);
    let config = test_config();
    for kind in ["none", "weak"] {
        // A whole fetch works and reports no validator.
        let uri = srv.uri(&format!("/files/fw.bin?validators={kind}"));
        let (result, got) = collect(request(&uri, 0, None), &config).await;
        assert_eq!(result.expect("whole").etag, None, "{kind}");
        assert!(got == data);
        // A resume without one is refused before any request.
        srv.requests();
        let (result, _) = collect(request(&uri, 1000, None), &config).await;
        assert_eq!(result, Err(DownloadError::EtagChanged), "{kind}");
        assert!(srv.requests().is_empty());
        // A cut in the middle cannot be resumed either: the caller restarts from zero.
        let uri = srv.uri(&format!("/files/fw.bin?validators={kind}&cut=100000"));
        let (result, got) = collect(request(&uri, 0, None), &config).await;
        assert_eq!(result, Err(DownloadError::EtagChanged), "{kind}");
        assert_eq!(got, data[..100_000]);
    }
}

#[tokio::test]
async fn a_server_ignoring_range_is_skipped_through() {
    let Some(srv) = RangeServer::start() else {
        return;
    };
    let data = pattern(600_000, 6);
    srv.put("fw.bin", &data);
    let uri = srv.uri("/files/fw.bin?ranges=no");
    let config = test_config();
    let (result, _) = collect(request(&uri, 0, None), &config).await;
    let etag = result.expect("whole").etag;
    let (result, got) = collect(request(&uri, 250_000, etag), &config).await;
    result.expect("resume against 200");
    assert!(got == data[250_000..]);
    let sent = srv.requests();
    assert_eq!(sent.last().expect("request")["status"], 200);
}

#[tokio::test]
async fn status_codes() {
    let Some(srv) = RangeServer::start() else {
        return;
    };
    srv.put("fw.bin", &pattern(50_000, 7));
    let mut config = test_config();
    config.retries = 2;
    let fetch_error = |path: &str| {
        let uri = srv.uri(path);
        let config = config.clone();
        async move {
            collect(request(&uri, 0, None), &config)
                .await
                .0
                .expect_err(&uri)
        }
    };
    for path in ["/files/missing.bin", "/status/404", "/status/410"] {
        let e = fetch_error(path).await;
        assert!(matches!(e, DownloadError::InvalidUri(_)), "{path}: {e:?}");
    }
    let e = fetch_error("/status/403").await;
    assert!(matches!(e, DownloadError::Refused(_)), "{e:?}");
    assert_eq!(srv.requests().len(), 4, "4xx are not retried");
    // 5xx: retried (3 requests with retries = 2), then Refused.
    let e = fetch_error("/status/500").await;
    assert!(
        matches!(e, DownloadError::Refused(ref s) if s.contains("500")),
        "{e:?}"
    );
    assert_eq!(srv.requests().len(), 3);
    // A passing 503 is ridden out.
    let (result, got) = collect(request(&srv.uri("/files/fw.bin?flaky=2"), 0, None), &config).await;
    result.expect("after two 503s");
    assert_eq!(got.len(), 50_000);
    // Redirects: 5 are followed, 6 are too many; https → http is refused.
    let (result, got) = collect(request(&srv.uri("/redirect/5/fw.bin"), 0, None), &config).await;
    result.expect("5 redirects");
    assert_eq!(got.len(), 50_000);
    let e = fetch_error("/redirect/6/fw.bin").await;
    assert!(
        matches!(e, DownloadError::Refused(ref s) if s.contains("redirects")),
        "{e:?}"
    );
}

#[tokio::test]
async fn timeouts() {
    let Some(srv) = RangeServer::start() else {
        return;
    };
    srv.put("fw.bin", &pattern(100_000, 8));
    let mut config = test_config();
    config.connect_timeout = Duration::from_millis(500);
    config.idle_timeout = Duration::from_millis(500);
    config.retries = 1;
    // No response head: the connect/first-response timeout, twice.
    let started = Instant::now();
    let (result, _) = collect(
        request(&srv.uri("/files/fw.bin?stall-head=1"), 0, None),
        &config,
    )
    .await;
    assert!(
        matches!(result, Err(DownloadError::ConnectionLost(_))),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    // A body that stops: the idle timeout; no byte ever arrives, so no progress, so give up.
    let (result, _) = collect(request(&srv.uri("/files/fw.bin?stall=0"), 0, None), &config).await;
    assert!(
        matches!(result, Err(DownloadError::ConnectionLost(_))),
        "{result:?}"
    );
    // Stalls after some bytes make progress each time; the overall timeout ends it.
    config.overall_timeout = Duration::from_millis(1500);
    config.retries = 100;
    let started = Instant::now();
    let (result, got) = collect(
        request(&srv.uri("/files/fw.bin?stall=10"), 0, None),
        &config,
    )
    .await;
    assert!(
        matches!(result, Err(DownloadError::ConnectionLost(ref s)) if s.contains("overall")),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(got.len() >= 10);
}

#[tokio::test]
async fn receiver_hanging_up_aborts() {
    let Some(srv) = RangeServer::start() else {
        return;
    };
    let data = pattern(2_000_000, 9);
    srv.put("fw.bin", &data);
    let (result, got) = abort_after(
        request(&srv.uri("/files/fw.bin"), 0, None),
        &test_config(),
        100_000,
    )
    .await;
    assert_eq!(result, Err(DownloadError::Aborted));
    assert!(data.starts_with(&got));
}

// ---- HTTPS ----

/// A test PKI made with `openssl`: a CA, a server certificate for `localhost` only (no IP
/// address), and an unrelated second CA.
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn create() -> Option<Self> {
        let Some(openssl) = tool(&["openssl"], "openssl") else {
            skip("openssl is not available");
            return None;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let run = |args: &[&str]| {
            let out = Command::new(&openssl)
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("run openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        for ca in ["ca", "other-ca"] {
            run(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
                "-days",
                "2",
                "-subj",
                &format!("/CN=lwm2md test {ca}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
        }
        run(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        std::fs::write(
            dir.path().join("server.ext"),
            "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write ext");
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ]);
        Some(Self { dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

#[tokio::test]
async fn https_with_the_test_ca() {
    let Some(pki) = Pki::create() else {
        return;
    };
    let Some(srv) =
        RangeServer::start_with(Some((&pki.path("server.pem"), &pki.path("server.key"))))
    else {
        return;
    };
    let data = pattern(700_000, 10);
    srv.put("fw.bin", &data);
    let localhost = |path: &str| format!("https://localhost:{}{path}", srv.port);
    let mut config = test_config();
    config.ca_file = Some(pki.path("ca.pem"));
    // Trusted through ca_file; cut connections (no close_notify) resume over TLS too.
    let (result, got) = collect(
        request(&localhost("/files/fw.bin?cut=250000"), 0, None),
        &config,
    )
    .await;
    result.expect("https fetch");
    assert!(got == data);
    // A close-delimited body cut without close_notify is an error over TLS, then resumed.
    let (result, got) = collect(
        request(&localhost("/files/fw.bin?framing=close"), 0, None),
        &config,
    )
    .await;
    result.expect("close-delimited over TLS");
    assert!(got == data);
    let tls_error = |uri: String, config: DownloadConfig| async move {
        let (result, got) = collect(request(&uri, 0, None), &config).await;
        assert!(got.is_empty());
        match result {
            Err(DownloadError::Tls(why)) => why,
            other => panic!("{uri}: expected a TLS error, got {other:?}"),
        }
    };
    // The system store alone does not know the test CA.
    let mut system_only = config.clone();
    system_only.ca_file = None;
    let why = tls_error(localhost("/files/fw.bin"), system_only).await;
    eprintln!("system store only: {why}");
    // Another CA.
    let mut wrong = config.clone();
    wrong.ca_file = Some(pki.path("other-ca.pem"));
    let why = tls_error(localhost("/files/fw.bin"), wrong).await;
    eprintln!("wrong CA: {why}");
    // Right CA, wrong name: the certificate is for localhost, not 127.0.0.1.
    let why = tls_error(srv.uri("/files/fw.bin"), config.clone()).await;
    eprintln!("name mismatch: {why}");
    assert!(why.to_lowercase().contains("not valid for"), "{why}");
    // https → http redirects are refused.
    let to = format!("http://127.0.0.1:{}/files/fw.bin", free_tcp_port());
    let uri = localhost(&format!("/redirect-to?to={to}"));
    let (result, _) = collect(request(&uri, 0, None), &config).await;
    assert!(
        matches!(result, Err(DownloadError::Refused(_))),
        "{result:?}"
    );
}

// ---- nginx ----

struct Nginx {
    _server: Server,
    port: u16,
    www: PathBuf,
    _dir: TempDir,
}

impl Nginx {
    async fn start() -> Option<Self> {
        let Some(nginx) = tool(&["nginx"], "nginx-light") else {
            skip("nginx is not installed and apt-get could not install nginx-light");
            return None;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let www = dir.path().join("www");
        std::fs::create_dir(&www).expect("www");
        let port = free_tcp_port();
        let d = dir.path().display();
        let conf = format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log stderr warn;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               server {{ listen 127.0.0.1:{port}; root {}; }}\n}}\n",
            www.display()
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("conf");
        let server = Server::spawn(
            Command::new(nginx)
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(&conf_path),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "nginx did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Some(Self {
            _server: server,
            port,
            www,
            _dir: dir,
        })
    }
}

#[tokio::test]
async fn nginx_range_if_match_and_end() {
    let Some(srv) = Nginx::start().await else {
        return;
    };
    let data = pattern(3 * 1024 * 1024 + 5, 11);
    let path = srv.www.join("fw.bin");
    replace_file(&path, &data);
    let uri = format!("http://127.0.0.1:{}/fw.bin", srv.port);
    let config = test_config();
    let (result, got) = collect(request(&uri, 0, None), &config).await;
    let meta = result.expect("whole");
    assert!(got == data);
    assert_eq!(meta.total, Some(data.len() as u64));
    let etag = meta.etag.expect("nginx sends a strong ETag");
    // Resume: 206 from the offset.
    let (result, got) = collect(request(&uri, 2_000_000, Some(etag.clone())), &config).await;
    result.expect("resume");
    assert!(got == data[2_000_000..]);
    // At the end: 416 with bytes */size.
    let (result, got) = collect(
        request(&uri, data.len() as u64, Some(etag.clone())),
        &config,
    )
    .await;
    result.expect("at the end");
    assert!(got.is_empty());
    // Changed (nginx's ETag is mtime-size): If-Match → 412.
    replace_file(&path, &pattern(data.len() + 1, 12));
    let (result, got) = collect(request(&uri, 2_000_000, Some(etag)), &config).await;
    assert_eq!(result, Err(DownloadError::EtagChanged));
    assert!(got.is_empty());
    // 404.
    let (result, _) = collect(request(&format!("{uri}.missing"), 0, None), &config).await;
    assert!(
        matches!(result, Err(DownloadError::InvalidUri(_))),
        "{result:?}"
    );
}
