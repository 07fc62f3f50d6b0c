//! The whole-payload SHA-256 on a core of its own.
//!
//! Why: verifying a package hashes every payload byte twice (its chunk's hash, then the whole
//! payload's), and SHA-256 is nearly all of a pull's CPU time on gateways without SHA
//! instructions. The chunk hash must be known before the chunk is written; the whole-payload
//! hash only at the end, so it can run beside the verifier. Pieces are copied into a few
//! recycled buffers (a bounded queue: memory does not grow with the package, and a slow hasher
//! slows the verifier rather than piling up bytes).

use std::sync::Mutex;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use crate::update::package::digest::{Sha256, StreamDigest};

/// Buffers queued for the thread (each as large as the pieces given, a chunk at most). Two
/// are enough to keep it busy; every extra one is another chunk of memory.
const QUEUE: usize = 2;

/// A [`StreamDigest`] computed on a thread started with the first bytes (inline when no
/// thread can be started).
#[derive(Debug, Default)]
pub struct BackgroundSha256 {
    state: State,
}

#[derive(Debug, Default)]
enum State {
    #[default]
    NotStarted,
    Thread(Running),
    Inline(Sha256),
}

#[derive(Debug)]
struct Running {
    tx: SyncSender<Vec<u8>>,
    /// Buffers the thread is done with (a `Mutex` only because `StreamDigest` is `Sync`).
    spare: Mutex<Receiver<Vec<u8>>>,
    thread: JoinHandle<[u8; 32]>,
}

impl BackgroundSha256 {
    /// A digest whose thread starts with the first `update`.
    pub fn start() -> Self {
        Self::default()
    }

    fn spawn() -> State {
        let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE);
        let (back, spare) = sync_channel::<Vec<u8>>(QUEUE + 2);
        let spawned = super::background::spawn("lwm2md-sha256", move || {
            let mut hash = Sha256::new();
            for buf in rx {
                hash.update(&buf);
                // Full or gone: the buffer is simply freed.
                let _ = back.try_send(buf);
            }
            hash.finalize()
        });
        match spawned {
            Ok(thread) => State::Thread(Running {
                tx,
                spare: Mutex::new(spare),
                thread,
            }),
            Err(e) => {
                log::warn!("firmware: no hashing thread ({e}); hashing inline");
                State::Inline(Sha256::new())
            }
        }
    }
}

impl Running {
    /// A buffer the thread is done with, or a new empty one.
    fn spare(&self) -> Vec<u8> {
        self.spare
            .lock()
            .ok()
            .and_then(|spare| spare.try_recv().ok())
            .unwrap_or_default()
    }

    fn send(&self, buf: Vec<u8>) {
        // A thread that died leaves the digest wrong, so the comparison at the end fails: a
        // refused package, never an accepted one.
        let _ = self.tx.send(buf);
    }
}

impl BackgroundSha256 {
    fn state(&mut self) -> &mut State {
        if matches!(self.state, State::NotStarted) {
            self.state = Self::spawn();
        }
        &mut self.state
    }
}

impl StreamDigest for BackgroundSha256 {
    fn update(&mut self, data: &[u8]) {
        match self.state() {
            State::NotStarted => {}
            State::Inline(hash) => hash.update(data),
            State::Thread(running) => {
                let mut buf = running.spare();
                buf.clear();
                buf.extend_from_slice(data);
                running.send(buf);
            }
        }
    }

    fn update_owned(&mut self, data: Vec<u8>) -> Vec<u8> {
        match self.state() {
            State::NotStarted => data,
            State::Inline(hash) => {
                hash.update(&data);
                data
            }
            State::Thread(running) => {
                // Taken first: the thread may be done with one already, and `data` is queued
                // behind it.
                let spare = running.spare();
                running.send(data);
                spare
            }
        }
    }

    fn finish(self: Box<Self>) -> [u8; 32] {
        match self.state {
            State::NotStarted => Sha256::new().finalize(),
            State::Inline(hash) => hash.finalize(),
            State::Thread(Running { tx, thread, .. }) => {
                drop(tx);
                thread.join().unwrap_or([0; 32])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use sha2::Digest as _;

    use super::*;

    #[test]
    fn agrees_with_an_inline_hash_whatever_the_pieces() {
        let data: Vec<u8> = (0..1_000_003u32).map(|i| (i ^ (i >> 7)) as u8).collect();
        let expected: [u8; 32] = sha2::Sha256::digest(&data).into();
        for piece in [1, 4096, 65_537, 1 << 20] {
            let mut h: Box<dyn StreamDigest> = Box::new(BackgroundSha256::start());
            for p in data.chunks(piece) {
                h.update(p);
            }
            assert_eq!(h.finish(), expected, "pieces of {piece}");
            // Handed over by ownership, with the returned buffers reused (stale contents).
            let mut h: Box<dyn StreamDigest> = Box::new(BackgroundSha256::start());
            let mut buf = Vec::new();
            for p in data.chunks(piece) {
                buf.clear();
                buf.extend_from_slice(p);
                buf = h.update_owned(buf);
            }
            assert_eq!(h.finish(), expected, "owned pieces of {piece}");
        }
        let empty: Box<dyn StreamDigest> = Box::new(BackgroundSha256::start());
        assert_eq!(empty.finish(), <[u8; 32]>::from(sha2::Sha256::digest(b"")));
    }
}
