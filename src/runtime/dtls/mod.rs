//! DTLS 1.2 for `coaps://`, over the webrtc-rs `dtls` crate, behind our own adapter so the
//! sans-IO core never sees it: [`filter`] screens records the crate must not see,
//! [`conn`] is the filtered socket the crate runs over, [`session`] is one association and
//! [`link`] keeps one alive (re-handshake with back-off, held datagrams).

pub mod conn;
pub mod filter;
pub mod link;
pub mod session;

pub use link::{DtlsLink, LinkEvent};
pub use session::{
    CertCredentials, Credentials, DtlsError, DtlsSession, DtlsSettings, PskCredentials,
};
