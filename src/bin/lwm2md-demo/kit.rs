//! What a vendor prepares before a firmware update, made in-process for the demo: an ed25519
//! signing key (the device trusts its public half), two demo images, and two signed packages
//! built with the same builder `lwm2md-package create` uses. Plus a third, forged package: a
//! copy of one with a single byte of its signature flipped.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use lwm2md::update::package::builder::{self, BuildOptions};
use lwm2md::update::package::{Compression, HEADER_LEN, Header, SIGNATURE_LEN, keys};
use sha2::{Digest as _, Sha256};

/// The compatible string of the demo gateway: a package for other hardware is refused.
pub(crate) const COMPATIBLE: &str = "lwm2md-demo-gw";
/// The size of each demo image.
const IMAGE_SIZE: usize = 1536 << 10;
/// Image bytes per package chunk (each chunk is hashed, so a resumed or failed transfer is
/// detected chunk by chunk rather than only at the end).
const CHUNK_SIZE: u32 = 64 << 10;

/// A signed package.
pub(crate) struct Package {
    /// `2.0.0`, `3.0.0`.
    pub(crate) version: String,
    /// The whole package file.
    pub(crate) bytes: Vec<u8>,
    /// Where it was written.
    pub(crate) path: PathBuf,
    /// The size of the image inside.
    pub(crate) image_size: u64,
    /// Its SHA-256, to check the slot afterwards.
    pub(crate) image_sha256: [u8; 32],
}

/// The demo's keys and packages.
pub(crate) struct Kit {
    /// The directory of trusted public keys (`[update] keys_dir`).
    pub(crate) keys_dir: PathBuf,
    /// The signing key's id (in every package's manifest).
    pub(crate) key_id: String,
    /// Version 2.0.0 (pushed) and 3.0.0 (pulled).
    pub(crate) v2: Package,
    /// See `v2`.
    pub(crate) v3: Package,
    /// 2.0.0 again with one signature byte flipped.
    pub(crate) forged: Vec<u8>,
}

impl Kit {
    /// Creates key, images and packages under `dir`.
    pub(crate) fn create(dir: &Path) -> anyhow::Result<Self> {
        let key = signing_key()?;
        let keys_dir = dir.join("keys.d");
        std::fs::create_dir_all(&keys_dir).context("creating the keys directory")?;
        let public = keys::format_public_key(&key.verifying_key(), "lwm2md demo vendor");
        std::fs::write(keys_dir.join("demo-vendor.pub"), public).context("writing the key")?;
        let packages = dir.join("packages");
        std::fs::create_dir_all(&packages).context("creating the packages directory")?;
        let v2 = package(&key, &packages, "2.0.0", 2)?;
        let v3 = package(&key, &packages, "3.0.0", 3)?;
        let forged = forge(&v2.bytes)?;
        Ok(Self {
            keys_dir,
            key_id: keys::key_id(&key.verifying_key()).0,
            v2,
            v3,
            forged,
        })
    }
}

/// A fresh key from the OS RNG (the demo is a program, not the deterministic core).
fn signing_key() -> anyhow::Result<ed25519_dalek::SigningKey> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?;
    Ok(ed25519_dalek::SigningKey::from_bytes(&seed))
}

/// Builds and signs the package of image `seed` as `version`, writes it to `dir`.
fn package(
    key: &ed25519_dalek::SigningKey,
    dir: &Path,
    version: &str,
    seed: u64,
) -> anyhow::Result<Package> {
    let image = image(seed, IMAGE_SIZE);
    let options = BuildOptions {
        compatible: COMPATIBLE.to_owned(),
        name: "demo-os".to_owned(),
        version: version.to_owned(),
        security_version: 1,
        compression: Compression::Zstd,
        chunk_size: CHUNK_SIZE,
    };
    let mut bytes = Vec::new();
    builder::build(
        &mut image.as_slice(),
        &mut Cursor::new(Vec::new()),
        &mut bytes,
        &options,
        key,
    )
    .with_context(|| format!("building package {version}"))?;
    let path = dir.join(format!("demo-os-{version}.pkg"));
    std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(Package {
        version: version.to_owned(),
        bytes,
        path,
        image_size: image.len() as u64,
        image_sha256: Sha256::digest(&image).into(),
    })
}

/// A demo image: like a real root file system, half compressible text, half noise.
fn image(seed: u64, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size);
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut page = 0u32;
    while out.len() < size {
        while out.len() % 4096 < 2048 && out.len() < size {
            out.extend_from_slice(format!("demo-os {seed} page {page}\n").as_bytes());
        }
        while out.len() % 4096 >= 2048 && out.len() < size {
            // xorshift64: cheap, reproducible noise that does not compress.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            out.extend_from_slice(&state.to_le_bytes());
        }
        page += 1;
    }
    out.truncate(size);
    out
}

/// `package` with the first byte of its signature flipped: what an attacker, or a corrupted
/// mirror, would deliver.
fn forge(package: &[u8]) -> anyhow::Result<Vec<u8>> {
    let head: &[u8; HEADER_LEN] = package
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .context("package shorter than its header")?;
    let header = Header::parse(head).context("the package header")?;
    let at = usize::try_from(header.payload_start())? - SIGNATURE_LEN;
    let mut forged = package.to_vec();
    let byte = forged
        .get_mut(at)
        .context("package shorter than its signature")?;
    *byte ^= 0x01;
    Ok(forged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_differ_by_seed_and_have_the_size() {
        let (a, b) = (image(2, 10_000), image(3, 10_000));
        assert_eq!((a.len(), b.len()), (10_000, 10_000));
        assert_ne!(a, b);
    }
}
