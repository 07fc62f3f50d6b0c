//! Screens datagrams before they reach the DTLS crate: what a DTLS 1.2 peer can never send is
//! dropped here, silently, as RFC 6347 §4.1.2.7 asks for invalid records.
//!
//! Why: the crate tears a PSK session down on the first record that does not decrypt, treats a
//! plaintext alert as the end of the session even after the handshake, and in debug builds
//! panics on an encrypted record shorter than its authentication tag. This filter removes every
//! record it can judge without the keys — malformed headers, unknown types or versions, wrong
//! epochs, and encrypted records too short to carry a nonce and a tag. A forged record that
//! passes (right shape, wrong tag) can only be caught by decrypting it; for that the session
//! adapter re-handshakes and the CoAP layer's retransmission resends what was in flight.

/// DTLS record header: type, version, epoch, sequence number, length.
pub const HEADER_LEN: usize = 13;
/// The explicit nonce of the AEAD suites (CCM, CCM_8, GCM) in every encrypted record.
const EXPLICIT_NONCE: usize = 8;
/// Largest record a peer may send (RFC 6347 §4.1: 2^14 plus the expansion allowed by TLS 1.2).
const MAX_RECORD: usize = (1 << 14) + 2048;

const CHANGE_CIPHER_SPEC: u8 = 20;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;
const SERVER_HELLO: u8 = 2;

/// Suites whose tag is 8 bytes (TLS_PSK_WITH_AES_128_CCM_8, TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8);
/// every other suite we offer has a 16-byte tag.
const CCM_8_SUITES: [u16; 2] = [0xC0A8, 0xC0AE];

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Dropped {
    /// Shorter than a record header, or a length field past the datagram's end.
    #[error("truncated record")]
    Truncated,
    /// A content type DTLS 1.2 does not have.
    #[error("unknown record type {0}")]
    Type(u8),
    /// Not DTLS 1.0 or 1.2.
    #[error("unknown record version {0:#06x}")]
    Version(u16),
    /// Longer than any record may be.
    #[error("record too long")]
    TooLong,
    /// An epoch this session is not in: plaintext (epoch 0) after the handshake, which is how a
    /// forged alert would arrive, or one from the future.
    #[error("record of epoch {0} outside the session's")]
    Epoch(u16),
    /// An encrypted record with no room for nonce, tag and at least one byte.
    #[error("encrypted record too short for its nonce and tag")]
    Short,
}

/// The filter's knowledge of one session.
#[derive(Debug, Clone, Default)]
pub struct RecordFilter {
    /// The handshake finished: only epoch 1 is valid from now on (no renegotiation).
    established: bool,
    /// Tag length of the suite the server chose (16 until its ServerHello was seen).
    tag_len: Option<usize>,
}

impl RecordFilter {
    /// A filter for a new handshake.
    pub fn new() -> Self {
        Self::default()
    }

    /// The handshake completed: plaintext records are no longer accepted.
    pub fn established(&mut self) {
        self.established = true;
    }

    /// Tag length of the negotiated suite, once the ServerHello went by.
    pub fn tag_len(&self) -> Option<usize> {
        self.tag_len
    }

    /// Checks every record of `datagram`; one bad record drops the whole datagram (a real peer
    /// never sends one).
    pub fn check(&mut self, datagram: &[u8]) -> Result<(), Dropped> {
        let mut rest = datagram;
        if rest.is_empty() {
            return Err(Dropped::Truncated);
        }
        let mut learnt = None;
        while !rest.is_empty() {
            let header = rest.get(..HEADER_LEN).ok_or(Dropped::Truncated)?;
            let kind = header[0];
            let version = u16::from_be_bytes([header[1], header[2]]);
            let epoch = u16::from_be_bytes([header[3], header[4]]);
            let len = usize::from(u16::from_be_bytes([header[11], header[12]]));
            if !matches!(
                kind,
                CHANGE_CIPHER_SPEC | ALERT | HANDSHAKE | APPLICATION_DATA
            ) {
                return Err(Dropped::Type(kind));
            }
            if version != 0xFEFD && version != 0xFEFF {
                return Err(Dropped::Version(version));
            }
            if len > MAX_RECORD {
                return Err(Dropped::TooLong);
            }
            let body = rest
                .get(HEADER_LEN..HEADER_LEN + len)
                .ok_or(Dropped::Truncated)?;
            match (epoch, self.established) {
                (0, true) | (2.., _) => return Err(Dropped::Epoch(epoch)),
                (0, false) => {
                    if kind == HANDSHAKE {
                        learnt = learnt.or_else(|| server_hello_suite(body));
                    }
                }
                (1, _) => {
                    let tag = self.tag_len.unwrap_or(16);
                    if kind != CHANGE_CIPHER_SPEC && len < EXPLICIT_NONCE + tag + 1 {
                        return Err(Dropped::Short);
                    }
                }
            }
            rest = &rest[HEADER_LEN + len..];
        }
        if let Some(suite) = learnt {
            self.tag_len = Some(if CCM_8_SUITES.contains(&suite) { 8 } else { 16 });
        }
        Ok(())
    }
}

/// The cipher suite of a (whole, unfragmented) ServerHello handshake message.
fn server_hello_suite(body: &[u8]) -> Option<u16> {
    // Handshake header: type, length (3), message_seq (2), fragment_offset (3), fragment_length (3).
    if *body.first()? != SERVER_HELLO || body.get(6..9)? != [0, 0, 0] {
        return None;
    }
    // server_version (2) + random (32), then session_id with its length byte.
    let hello = body.get(12..)?;
    let sid_len = usize::from(*hello.get(34)?);
    let at = 35 + sid_len;
    let suite = hello.get(at..at + 2)?;
    Some(u16::from_be_bytes([suite[0], suite[1]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u8, epoch: u16, body: &[u8]) -> Vec<u8> {
        let mut r = vec![kind, 0xFE, 0xFD];
        r.extend_from_slice(&epoch.to_be_bytes());
        r.extend_from_slice(&[0, 0, 0, 0, 0, 7]);
        r.extend_from_slice(&(body.len() as u16).to_be_bytes());
        r.extend_from_slice(body);
        r
    }

    fn server_hello(suite: u16) -> Vec<u8> {
        let mut hello = vec![0xFE, 0xFD];
        hello.extend_from_slice(&[9; 32]);
        hello.push(4);
        hello.extend_from_slice(&[1, 2, 3, 4]);
        hello.extend_from_slice(&suite.to_be_bytes());
        hello.push(0);
        let mut msg = vec![SERVER_HELLO, 0, 0, hello.len() as u8, 0, 1, 0, 0, 0, 0, 0];
        msg.push(hello.len() as u8);
        msg.extend_from_slice(&hello);
        record(HANDSHAKE, 0, &msg)
    }

    #[test]
    fn a_handshake_and_a_session_pass() {
        let mut f = RecordFilter::new();
        assert_eq!(f.check(&server_hello(0xC0A8)), Ok(()));
        assert_eq!(f.tag_len(), Some(8));
        // Finished, encrypted, in the same datagram as ChangeCipherSpec.
        let mut flight = record(CHANGE_CIPHER_SPEC, 0, &[1]);
        flight.extend(record(HANDSHAKE, 1, &[0; 40]));
        assert_eq!(f.check(&flight), Ok(()));
        f.established();
        // An empty CoAP ACK under CCM_8: 8 nonce + 4 + 8 tag.
        assert_eq!(f.check(&record(APPLICATION_DATA, 1, &[0; 20])), Ok(()));
        assert_eq!(f.check(&record(ALERT, 1, &[0; 18])), Ok(()));
    }

    #[test]
    fn what_no_peer_sends_is_dropped() {
        let mut f = RecordFilter::new();
        assert_eq!(f.check(&[]), Err(Dropped::Truncated));
        assert_eq!(f.check(&[23, 0xFE, 0xFD, 0, 1]), Err(Dropped::Truncated));
        assert_eq!(f.check(&record(99, 1, &[0; 40])), Err(Dropped::Type(99)));
        let mut v = record(APPLICATION_DATA, 1, &[0; 40]);
        v[2] = 0xFC;
        assert_eq!(f.check(&v), Err(Dropped::Version(0xFEFC)));
        let mut long = record(APPLICATION_DATA, 1, &[0; 40]);
        long[12] = 41; // claims more than the datagram holds
        assert_eq!(f.check(&long), Err(Dropped::Truncated));
        assert_eq!(
            f.check(&record(APPLICATION_DATA, 3, &[0; 40])),
            Err(Dropped::Epoch(3))
        );
        // Before the ServerHello the tag is assumed 16: 8 + 16 + 1.
        assert_eq!(
            f.check(&record(APPLICATION_DATA, 1, &[0; 24])),
            Err(Dropped::Short)
        );
        // A good record followed by garbage drops the datagram.
        let mut two = record(HANDSHAKE, 0, &[1, 2, 3]);
        two.extend_from_slice(&[0xFF; 5]);
        assert_eq!(f.check(&two), Err(Dropped::Truncated));
    }

    #[test]
    fn after_the_handshake_plaintext_is_dropped() {
        let mut f = RecordFilter::new();
        f.check(&server_hello(0xC0AC)).expect("hello");
        assert_eq!(f.tag_len(), Some(16));
        f.established();
        // A forged plaintext fatal alert would end the session inside the crate.
        assert_eq!(f.check(&record(ALERT, 0, &[2, 40])), Err(Dropped::Epoch(0)));
        assert_eq!(
            f.check(&record(APPLICATION_DATA, 1, &[0; 24])),
            Err(Dropped::Short)
        );
        assert_eq!(f.check(&record(APPLICATION_DATA, 1, &[0; 25])), Ok(()));
    }

    #[test]
    fn never_panics_on_any_prefix_or_bit_flip() {
        let mut flight = server_hello(0xC0A8);
        flight.extend(record(APPLICATION_DATA, 1, &[7; 30]));
        for cut in 0..flight.len() {
            let _ = RecordFilter::new().check(&flight[..cut]);
        }
        for i in 0..flight.len() * 8 {
            let mut f = flight.clone();
            f[i / 8] ^= 1 << (i % 8);
            let _ = RecordFilter::new().check(&f);
        }
    }
}
