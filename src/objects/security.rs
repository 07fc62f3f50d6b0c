//! Object 0, LwM2M Security: one instance per server account (URI, security mode, credentials,
//! Short Server ID). Never readable by a device-management server (the core answers 4.01); the core
//! reads it internally to know where to register.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::core::lwm2m::error::Error;
use crate::core::lwm2m::value::{ResourceValue, Value};
use crate::core::object::{Ctx, Instances, Object};
use crate::model::ObjectMeta;

/// Security Mode (/0/x/2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// /0/x/11 Client Hold Off Time, seconds: how long to wait before a client-initiated
    /// bootstrap (Bootstrap-Server account only).
    #[serde(default)]
    pub hold_off: Option<u32>,
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
            hold_off: None,
        }
    }

    /// Builds an account from what a Bootstrap-Server wrote to `/0/{iid}`, refusing what this
    /// client could not use (the reason names the resource).
    fn from_bootstrap(iid: u16, res: &BTreeMap<u16, ResourceValue>) -> Result<Self, String> {
        let get = |rid: u16| match res.get(&rid) {
            Some(ResourceValue::Single(v)) => Some(v.clone()),
            _ => None,
        };
        let missing = |rid: u16, what: &str| format!("/0/{iid}/{rid} ({what}) is missing");
        let opaque = |rid: u16| match get(rid) {
            Some(Value::Opaque(b)) => b,
            _ => Vec::new(),
        };
        let Some(Value::String(uri)) = get(0) else {
            return Err(missing(0, "LwM2M Server URI"));
        };
        let Some(Value::Boolean(bootstrap)) = get(1) else {
            return Err(missing(1, "Bootstrap-Server"));
        };
        let mode = match get(2) {
            Some(Value::Integer(m)) => SecurityMode::from_code(m)
                .ok_or_else(|| format!("/0/{iid}/2: unknown security mode {m}"))?,
            _ => return Err(missing(2, "Security Mode")),
        };
        let ssid = match get(10) {
            Some(Value::Integer(id)) => Some(
                u16::try_from(id)
                    .ok()
                    .filter(|id| (1..=65534).contains(id))
                    .ok_or_else(|| format!("/0/{iid}/10: Short Server ID {id} is out of range"))?,
            ),
            _ if bootstrap => None,
            _ => return Err(missing(10, "Short Server ID")),
        };
        let account = Self {
            uri,
            bootstrap,
            mode,
            identity: opaque(3),
            server_public_key: opaque(4),
            secret_key: opaque(5),
            ssid,
            sni: match get(14) {
                Some(Value::String(s)) if !s.is_empty() => Some(s),
                _ => None,
            },
            hold_off: match get(11) {
                Some(Value::Integer(s)) => Some(
                    u32::try_from(s)
                        .map_err(|_| format!("/0/{iid}/11: hold-off time {s} is out of range"))?,
                ),
                _ => None,
            },
        };
        account.check_usable(iid)?;
        Ok(account)
    }

    /// The URI's scheme and the mode must go together, with the credentials the mode needs.
    fn check_usable(&self, iid: u16) -> Result<(), String> {
        let scheme = self
            .uri
            .split_once("://")
            .map(|(s, _)| s.to_ascii_lowercase())
            .ok_or_else(|| format!("/0/{iid}/0: {:?} is not a URI", self.uri))?;
        match (scheme.as_str(), self.mode) {
            ("coap", SecurityMode::NoSec) => Ok(()),
            ("coap", _) => Err(format!(
                "/0/{iid}: a coap:// URI needs security mode 3 (NoSec)"
            )),
            ("coaps", SecurityMode::NoSec) => Err(format!(
                "/0/{iid}: a coaps:// URI needs credentials, not NoSec"
            )),
            ("coaps", SecurityMode::Psk) => {
                if self.identity.is_empty() || self.secret_key.is_empty() {
                    Err(format!(
                        "/0/{iid}: PSK mode needs an identity (3) and a key (5)"
                    ))
                } else {
                    Ok(())
                }
            }
            ("coaps", SecurityMode::Certificate) => {
                if self.identity.is_empty()
                    || self.secret_key.is_empty()
                    || self.server_public_key.is_empty()
                {
                    Err(format!(
                        "/0/{iid}: certificate mode needs a certificate (3), a trust anchor (4) and a private key (5)"
                    ))
                } else {
                    Ok(())
                }
            }
            ("coaps", mode) => Err(format!(
                "/0/{iid}: security mode {} is not supported (the DTLS library has no raw public keys, and EST is not implemented)",
                mode.code()
            )),
            (other, _) => Err(format!(
                "/0/{iid}: URI scheme {other}:// is not supported (only coap:// and coaps://)"
            )),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    format: u32,
    accounts: BTreeMap<u16, SecurityAccount>,
}

/// The Security object.
#[derive(Debug, Default)]
pub struct Security {
    accounts: BTreeMap<u16, SecurityAccount>,
    /// The accounts came from a Bootstrap-Server (they are saved, and win over the factory
    /// configuration at the next start).
    bootstrapped: bool,
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
            bootstrapped: false,
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
        if a.hold_off.is_some() {
            ids.push(11);
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
            11 => Value::Integer(i64::from(a.hold_off.ok_or(Error::NotFound)?)),
            14 => Value::String(a.sni.clone().ok_or(Error::NotFound)?),
            _ => return Err(Error::NotFound),
        };
        Ok(ResourceValue::Single(v))
    }

    fn bootstrap_install(
        &mut self,
        ctx: &mut Ctx<'_>,
        instances: &Instances,
        commit: bool,
    ) -> Result<(), String> {
        let mut accounts = BTreeMap::new();
        for (iid, res) in instances {
            accounts.insert(*iid, SecurityAccount::from_bootstrap(*iid, res)?);
        }
        if accounts.values().filter(|a| a.bootstrap).count() > 1 {
            return Err("more than one Bootstrap-Server account".into());
        }
        let mut ssids: Vec<u16> = accounts.values().filter_map(|a| a.ssid).collect();
        ssids.sort_unstable();
        if let Some(w) = ssids.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("Short Server ID {} is used twice", w[0]));
        }
        if commit {
            self.accounts = accounts;
            self.bootstrapped = true;
            ctx.persist();
        }
        Ok(())
    }

    /// Only bootstrapped accounts are saved: factory ones come from the configuration, and the
    /// state file is private to the daemon (mode 0600), as the keys in it require.
    fn save_state(&self) -> Option<serde_json::Value> {
        if !self.bootstrapped {
            return None;
        }
        serde_json::to_value(Saved {
            format: 1,
            accounts: self.accounts.clone(),
        })
        .ok()
    }

    fn restore_state(&mut self, state: serde_json::Value) -> Result<(), String> {
        let saved: Saved = super::saved_state(state, "security", 1)?;
        log::info!(
            "using the {} account(s) from the last bootstrap instead of the configured ones",
            saved.accounts.len()
        );
        self.accounts = saved.accounts;
        self.bootstrapped = true;
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
