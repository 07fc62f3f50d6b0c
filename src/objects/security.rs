//! Object 0, LwM2M Security: one instance per server account (URI, security mode, credentials,
//! Short Server ID). Never readable by a device-management server (the core answers 4.01); the core
//! reads it internally to know where to register.

use std::collections::BTreeMap;
use std::fmt;

use crate::core::lwm2m::error::Error;
use crate::core::lwm2m::value::{ResourceValue, Value};
use crate::core::object::{Ctx, Object};
use crate::model::ObjectMeta;

/// Security Mode (/0/x/2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityMode {
    /// 0: pre-shared key.
    Psk,
    /// 1: raw public key.
    RawPublicKey,
    /// 2: X.509 certificate.
    Certificate,
    /// 3: no security (plain CoAP).
    NoSec,
    /// 4: certificate with EST.
    CertificateEst,
}

impl SecurityMode {
    fn code(self) -> i64 {
        match self {
            Self::Psk => 0,
            Self::RawPublicKey => 1,
            Self::Certificate => 2,
            Self::NoSec => 3,
            Self::CertificateEst => 4,
        }
    }

    fn from_code(code: i64) -> Option<Self> {
        Some(match code {
            0 => Self::Psk,
            1 => Self::RawPublicKey,
            2 => Self::Certificate,
            3 => Self::NoSec,
            4 => Self::CertificateEst,
            _ => return None,
        })
    }
}

/// One Security instance. `Debug` never prints key material.
#[derive(Clone, PartialEq, Eq)]
pub struct SecurityAccount {
    /// /0/x/0 LwM2M Server URI.
    pub uri: String,
    /// /0/x/1 true for the Bootstrap-Server account.
    pub bootstrap: bool,
    /// /0/x/2.
    pub mode: SecurityMode,
    /// /0/x/3 PSK identity or client certificate.
    pub identity: Vec<u8>,
    /// /0/x/4 server public key or certificate.
    pub server_public_key: Vec<u8>,
    /// /0/x/5 PSK or private key (secret).
    pub secret_key: Vec<u8>,
    /// /0/x/10 Short Server ID (absent for the bootstrap account).
    pub ssid: Option<u16>,
    /// /0/x/14 SNI: the name the server's certificate must carry (and the TLS SNI), when it
    /// is not the URI's host (e.g. the URI holds an IP address).
    pub sni: Option<String>,
}

impl fmt::Debug for SecurityAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecurityAccount")
            .field("uri", &self.uri)
            .field("bootstrap", &self.bootstrap)
            .field("mode", &self.mode)
            .field("ssid", &self.ssid)
            .field(
                "secret_key",
                &format_args!("<{} bytes redacted>", self.secret_key.len()),
            )
            .finish_non_exhaustive()
    }
}

impl SecurityAccount {
    /// A plain-CoAP (NoSec) account for a device-management server.
    pub fn nosec(uri: impl Into<String>, ssid: u16) -> Self {
        Self {
            uri: uri.into(),
            bootstrap: false,
            mode: SecurityMode::NoSec,
            identity: Vec::new(),
            server_public_key: Vec::new(),
            secret_key: Vec::new(),
            ssid: Some(ssid),
            sni: None,
        }
    }
}

/// The Security object.
#[derive(Debug, Default)]
pub struct Security {
    accounts: BTreeMap<u16, SecurityAccount>,
}

impl Security {
    /// One instance per account, numbered from 0 in order.
    pub fn new(accounts: Vec<SecurityAccount>) -> Self {
        Self {
            accounts: accounts
                .into_iter()
                .enumerate()
                .map(|(i, a)| (i as u16, a))
                .collect(),
        }
    }

    /// The accounts by instance id.
    pub fn accounts(&self) -> &BTreeMap<u16, SecurityAccount> {
        &self.accounts
    }
}

impl Object for Security {
    fn meta(&self) -> &'static ObjectMeta {
        crate::model::object(0).expect("object 0 is in the shipped model")
    }

    fn instances(&self) -> Vec<u16> {
        self.accounts.keys().copied().collect()
    }

    fn resources(&self, instance: u16) -> Vec<u16> {
        let Some(a) = self.accounts.get(&instance) else {
            return Vec::new();
        };
        let mut ids = vec![0, 1, 2, 3, 4, 5];
        if a.ssid.is_some() {
            ids.push(10);
        }
        if a.sni.is_some() {
            ids.push(14);
        }
        ids
    }

    fn read(
        &mut self,
        _ctx: &mut Ctx<'_>,
        instance: u16,
        resource: u16,
    ) -> Result<ResourceValue, Error> {
        let a = self.accounts.get(&instance).ok_or(Error::NotFound)?;
        let v = match resource {
            0 => Value::String(a.uri.clone()),
            1 => Value::Boolean(a.bootstrap),
            2 => Value::Integer(a.mode.code()),
            3 => Value::Opaque(a.identity.clone()),
            4 => Value::Opaque(a.server_public_key.clone()),
            5 => Value::Opaque(a.secret_key.clone()),
            10 => Value::Integer(i64::from(a.ssid.ok_or(Error::NotFound)?)),
            14 => Value::String(a.sni.clone().ok_or(Error::NotFound)?),
            _ => return Err(Error::NotFound),
        };
        Ok(ResourceValue::Single(v))
    }

    /// Only the Bootstrap-Server may write /0 (the core enforces that); values are already typed.
    fn write(
        &mut self,
        ctx: &mut Ctx<'_>,
        instance: u16,
        resource: u16,
        value: ResourceValue,
    ) -> Result<(), Error> {
        let a = self.accounts.get_mut(&instance).ok_or(Error::NotFound)?;
        let ResourceValue::Single(v) = value else {
            return Err(Error::bad("single-instance resource"));
        };
        match (resource, v) {
            (0, Value::String(s)) => a.uri = s,
            (1, Value::Boolean(b)) => a.bootstrap = b,
            (2, Value::Integer(m)) => {
                a.mode =
                    SecurityMode::from_code(m).ok_or_else(|| Error::bad("unknown security mode"))?
            }
            (3, Value::Opaque(b)) => a.identity = b,
            (4, Value::Opaque(b)) => a.server_public_key = b,
            (5, Value::Opaque(b)) => a.secret_key = b,
            (10, Value::Integer(id)) => {
                a.ssid = Some(
                    u16::try_from(id).map_err(|_| Error::bad("short server id out of range"))?,
                )
            }
            (14, Value::String(s)) => a.sni = Some(s),
            _ => return Err(Error::not_allowed("resource is not supported")),
        }
        ctx.persist();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_the_secret() {
        let mut a = SecurityAccount::nosec("coap://x", 1);
        a.secret_key = b"topsecret".to_vec();
        let text = format!("{a:?}");
        assert!(
            !text.contains("topsecret") && text.contains("redacted"),
            "{text}"
        );
    }

    #[test]
    fn mode_codes_round_trip() {
        for code in 0..=4 {
            assert_eq!(
                SecurityMode::from_code(code).map(SecurityMode::code),
                Some(code)
            );
        }
        assert_eq!(SecurityMode::from_code(5), None);
    }
}
