//! `lwm2md-package`: generate signing keys, create, inspect and verify firmware packages.
//!
//! The format and the verifier live in `lwm2md::update::package`; this binary only does the
//! file handling around them (key file modes, temporary files, reading in pieces). See the
//! README's "Package format" section for an example session.
//!
//! Exit status: 0 on success, 1 when a package is refused or a command fails, 2 for usage
//! errors (clap's convention).

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use lwm2md::update::package::builder::{self, BuildOptions, DEFAULT_CHUNK_SIZE};
use lwm2md::update::package::{
    self as pkg, Compression, HEADER_LEN, Header, ImageSink, ImageVerifier, Manifest, PackageError,
    PackageReader, Policy, SIGNATURE_LEN, TrustedKeys, Unverified, Verified, keys,
};

/// Pieces `verify` feeds the reader: what a download typically delivers at once.
const PIECE: usize = 64 << 10;

/// Create, inspect and verify signed lwm2md firmware packages.
#[derive(Debug, Parser)]
#[command(name = "lwm2md-package", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate an ed25519 signing key: <STEM>.key (secret, mode 0600) and <STEM>.pub.
    Keygen {
        /// Path stem of the two files.
        #[arg(long, value_name = "STEM")]
        out: PathBuf,
        /// Comment written after the public key (e.g. who holds the key).
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Build and sign a package from an image.
    Create {
        /// Private key file (from `keygen`; must not be accessible by group or others).
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        /// The image to write to the slot.
        #[arg(long, value_name = "IMG")]
        image: PathBuf,
        /// The package to write.
        #[arg(long, value_name = "PKG")]
        out: PathBuf,
        /// Compatible string the device must have.
        #[arg(long)]
        compatible: String,
        /// Package name (shown in /5/0/6).
        #[arg(long)]
        name: String,
        /// Package version (shown in /5/0/7).
        #[arg(long)]
        version: String,
        /// Anti-rollback version: devices refuse packages below their installed one.
        #[arg(long, default_value_t = 0)]
        security_version: u64,
        /// Compression of every chunk.
        #[arg(long, value_enum, default_value_t = CompressionArg::Zstd)]
        compression: CompressionArg,
        /// Image bytes per chunk (4K..16M; a K or M suffix means KiB or MiB).
        #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value_t = DEFAULT_CHUNK_SIZE)]
        chunk_size: u32,
    },
    /// Print header and manifest as JSON (nothing is verified).
    Inspect {
        /// The package.
        package: PathBuf,
    },
    /// Verify a package completely against trusted keys, as the daemon would.
    Verify {
        /// Directory of trusted keys: every *.pub file; a *.pub.revoked file revokes its key.
        #[arg(long, value_name = "DIR")]
        keys_dir: PathBuf,
        /// Also treat this key id as revoked (repeatable).
        #[arg(long, value_name = "ID")]
        revoked: Vec<String>,
        /// The device's compatible string (default: whatever the package says, unchecked).
        #[arg(long)]
        compatible: Option<String>,
        /// The device's installed security version.
        #[arg(long, default_value_t = 0)]
        min_security_version: u64,
        /// The package.
        package: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CompressionArg {
    None,
    Zstd,
    Gzip,
}

impl From<CompressionArg> for Compression {
    fn from(c: CompressionArg) -> Self {
        match c {
            CompressionArg::None => Self::None,
            CompressionArg::Zstd => Self::Zstd,
            CompressionArg::Gzip => Self::Gzip,
        }
    }
}

fn parse_size(text: &str) -> Result<u32, String> {
    let (digits, unit) = match text.strip_suffix(['K', 'k']) {
        Some(d) => (d, 1 << 10),
        None => match text.strip_suffix(['M', 'm']) {
            Some(d) => (d, 1 << 20),
            None => (text, 1),
        },
    };
    digits
        .parse::<u32>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| format!("{text:?} is not a size in bytes (e.g. 262144, 256K, 1M)"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Keygen { out, comment } => keygen(&out, &comment),
        Command::Create {
            key,
            image,
            out,
            compatible,
            name,
            version,
            security_version,
            compression,
            chunk_size,
        } => {
            let options = BuildOptions {
                compatible,
                name,
                version,
                security_version,
                compression: compression.into(),
                chunk_size,
            };
            create(&key, &image, &out, &options)
        }
        Command::Inspect { package } => inspect(&package),
        Command::Verify {
            keys_dir,
            revoked,
            compatible,
            min_security_version,
            package,
        } => verify(
            &keys_dir,
            &revoked,
            compatible,
            min_security_version,
            &package,
        ),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lwm2md-package: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn with_suffix(stem: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(stem.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

/// Creates `path` (never overwriting) with `mode` and writes `text`.
fn write_new(path: &Path, mode: u32, text: &str) -> anyhow::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

fn keygen(stem: &Path, comment: &str) -> anyhow::Result<()> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?;
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    seed.fill(0);
    let (secret, public) = (with_suffix(stem, ".key"), with_suffix(stem, ".pub"));
    write_new(&secret, 0o600, &keys::format_secret_key(&key))?;
    write_new(
        &public,
        0o644,
        &keys::format_public_key(&key.verifying_key(), comment),
    )?;
    println!("{}", keys::key_id(&key.verifying_key()));
    eprintln!(
        "wrote {} (keep secret) and {}",
        secret.display(),
        public.display()
    );
    Ok(())
}

/// Reads a private key, refusing a file that group or others can access (like ssh does): a
/// signing key others can read is no longer a secret.
fn read_secret_key(path: &Path) -> anyhow::Result<ed25519_dalek::SigningKey> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // The mode of the file actually opened, not of whatever the path points to later.
    let mode = file.metadata()?.mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "refusing to use {}: mode {mode:03o} lets group or others access the private key \
             (chmod 600 it)",
            path.display()
        );
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .with_context(|| format!("reading {}", path.display()))?;
    keys::parse_secret_key(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Removes the listed files when dropped (temporary files on every exit path).
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

fn create(key: &Path, image: &Path, out: &Path, options: &BuildOptions) -> anyhow::Result<()> {
    let key = read_secret_key(key)?;
    let mut image_file =
        BufReader::new(File::open(image).with_context(|| format!("opening {}", image.display()))?);
    let (scratch_path, partial) = (with_suffix(out, ".payload.tmp"), with_suffix(out, ".tmp"));
    let _cleanup = Cleanup(vec![scratch_path.clone(), partial.clone()]);
    let mut scratch = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&scratch_path)
        .with_context(|| format!("creating {}", scratch_path.display()))?;
    let mut writer = BufWriter::new(
        File::create(&partial).with_context(|| format!("creating {}", partial.display()))?,
    );
    let manifest = builder::build(&mut image_file, &mut scratch, &mut writer, options, &key)
        .with_context(|| format!("building from {}", image.display()))?;
    let file = writer.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    // Appears complete or not at all.
    fs::rename(&partial, out).with_context(|| format!("renaming to {}", out.display()))?;
    println!(
        "{}: {} {} for {:?}, {} image bytes in {} chunks of {}, {} payload bytes ({}), key {}",
        out.display(),
        manifest.name,
        manifest.version,
        manifest.compatible,
        manifest.image_size,
        manifest.chunk_count(),
        manifest.chunk_size,
        manifest.payload_size,
        manifest.compression,
        manifest.key_id
    );
    Ok(())
}

/// Reads header, manifest and signature from the start of a package file.
fn read_head(file: &mut File) -> anyhow::Result<Unverified> {
    let mut head = [0u8; HEADER_LEN];
    file.read_exact(&mut head).context("reading the header")?;
    let header = Header::parse(&head)?;
    let mut prefix = head.to_vec();
    let rest = u64::from(header.manifest_len) + SIGNATURE_LEN as u64;
    file.take(rest).read_to_end(&mut prefix)?;
    Ok(Unverified::parse(&prefix)?)
}

fn inspect(path: &Path) -> anyhow::Result<()> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata()?.len();
    let head = read_head(&mut file).with_context(|| format!("reading {}", path.display()))?;
    let start = head.header.payload_start();
    let m = &head.manifest;
    let json = serde_json::json!({
        "header": {
            "magic": String::from_utf8_lossy(&pkg::MAGIC),
            "format_version": head.header.version,
            "manifest_length": head.header.manifest_len,
        },
        "manifest": m.to_json(),
        "chunk_count": m.chunk_count(),
        "signature": {
            "key_id": m.key_id,
            "ed25519": pkg::to_hex(&head.signature),
            "verified": false,
        },
        "payload_offset": start,
        "file_size": size,
        "payload_complete": size == start + m.payload_size,
    });
    println!("{}", serde_json::to_string_pretty(&json)?);
    Ok(())
}

/// Loads the keys exactly as the daemon does (`*.pub` trusted, `*.pub.revoked` revoked).
fn load_keys(dir: &Path, revoked: &[String]) -> anyhow::Result<TrustedKeys> {
    for id in revoked {
        let valid = id.len() == 16 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !valid {
            bail!("--revoked {id:?} is not a key id (16 lowercase hex digits)");
        }
    }
    lwm2md::runtime::firmware::assemble::load_keys(dir, revoked).map_err(|e| anyhow::anyhow!(e))
}

/// Writes nothing: checks that chunks arrive in order and hashes the image bytes it is given,
/// independently of the reader's own image hash.
struct HashingSink {
    next_offset: u64,
    image: Option<ImageVerifier>,
}

impl ImageSink for HashingSink {
    fn begin(&mut self, manifest: &Verified<Manifest>) -> Result<(), PackageError> {
        self.image = Some(ImageVerifier::new(manifest));
        Ok(())
    }

    fn chunk(&mut self, index: u32, image_offset: u64, data: &[u8]) -> Result<(), PackageError> {
        if image_offset != self.next_offset {
            return Err(PackageError::Sink(format!(
                "chunk {index} at offset {image_offset}, expected {}",
                self.next_offset
            )));
        }
        self.next_offset += data.len() as u64;
        if let Some(v) = &mut self.image {
            v.update(data);
        }
        Ok(())
    }
}

fn verify(
    keys_dir: &Path,
    revoked: &[String],
    compatible: Option<String>,
    min_security_version: u64,
    path: &Path,
) -> anyhow::Result<()> {
    let keys = load_keys(keys_dir, revoked)?;
    if keys.is_empty() {
        eprintln!("warning: no usable key in {}", keys_dir.display());
    }
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let compatible = match compatible {
        Some(c) => c,
        None => {
            // Take the package's own string: this checks authenticity, not fitness for a device.
            let head = read_head(&mut file).map_err(|e| anyhow::anyhow!("REFUSED: {e:#}"))?;
            eprintln!("note: compatible string not checked (no --compatible)");
            file = File::open(path)?;
            head.manifest.compatible
        }
    };
    let policy = Policy {
        compatible,
        min_security_version,
        max_image_size: u64::MAX,
    };
    let mut reader = PackageReader::new(Arc::new(keys), policy);
    let mut sink = HashingSink {
        next_offset: 0,
        image: None,
    };
    let mut piece = vec![0u8; PIECE];
    loop {
        let n = file.read(&mut piece)?;
        let Some(bytes) = piece.get(..n).filter(|b| !b.is_empty()) else {
            break;
        };
        reader.feed(bytes, &mut sink).map_err(|e| refusal(&e))?;
    }
    let manifest = reader.finish(&mut sink).map_err(|e| refusal(&e))?;
    if let Some(v) = sink.image.take() {
        v.finish().map_err(|e| refusal(&e))?;
    }
    println!("OK {} {}", manifest.name, manifest.version);
    Ok(())
}

/// A refusal, with the Update Result the daemon would report for it.
fn refusal(e: &PackageError) -> anyhow::Error {
    anyhow::anyhow!("REFUSED: {e} (Update Result {})", e.update_result())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("256K"), Ok(256 << 10));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert!(parse_size("1G").is_err());
        assert!(parse_size("5000M").is_err());
        assert!(parse_size("").is_err());
    }
}
