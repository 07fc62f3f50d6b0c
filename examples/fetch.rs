//! Runs one `download::fetch` with a sink that only counts bytes, on a single-threaded runtime
//! like the daemon's, and prints the throughput. Used by `tests/bench/download.sh`.
//!
//! Usage: `fetch URI [--ca FILE] [--szx N] [--start N] [--etag TEXT]`

use std::process::ExitCode;
use std::time::Instant;

use lwm2md::runtime::download::{DownloadConfig, FetchRequest, fetch};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(uri) = args.next() else {
        eprintln!("usage: fetch URI [--ca FILE] [--szx N] [--start N] [--etag TEXT]");
        return ExitCode::from(2);
    };
    let mut config = DownloadConfig::default();
    let mut req = FetchRequest {
        uri,
        start: 0,
        end: None,
        etag: None,
    };
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_default();
        match flag.as_str() {
            "--ca" => config.ca_file = Some(value.into()),
            "--szx" => config.block_szx = value.parse().unwrap_or(6),
            "--start" => req.start = value.parse().unwrap_or(0),
            "--etag" => req.etag = Some(value.into_bytes()),
            other => {
                eprintln!("unknown option {other}");
                return ExitCode::from(2);
            }
        }
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
        let started = Instant::now();
        let counting = async {
            let mut bytes = 0u64;
            while let Some(chunk) = rx.recv().await {
                bytes += chunk.len() as u64;
            }
            bytes
        };
        let (result, bytes) = tokio::join!(fetch(req, &config, tx), counting);
        let secs = started.elapsed().as_secs_f64();
        match result {
            Ok(meta) => {
                println!(
                    "{bytes} bytes in {secs:.3} s = {:.1} MiB/s (total {:?}, etag {:?})",
                    bytes as f64 / secs / 1048576.0,
                    meta.total,
                    meta.etag.map(|e| String::from_utf8_lossy(&e).into_owned())
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fetch failed after {bytes} bytes: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
