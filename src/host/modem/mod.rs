//! ModemManager on the system bus, for the radio resources of object 4.
//!
//! Object 4 is read synchronously from the core's loop, which must never wait for D-Bus. So an
//! async task ([`watch`]) mirrors ModemManager's state and publishes the derived
//! [`ModemInfo`] in a cache the probe reads without blocking ([`ModemHandle::info`]).
//!
//! The task is driven by signals only, never by a timer, so an idle daemon has no wake-ups:
//! - it subscribes to `NameOwnerChanged` for `org.freedesktop.ModemManager1` and to every signal
//!   ModemManager sends below `/org/freedesktop/ModemManager1`, *then* checks whether the name
//!   has an owner, so no change can fall between the check and the subscription;
//! - while ModemManager is running it reads the whole tree once (`GetManagedObjects`, plus
//!   `GetAll` for bearers, which are not in that tree) and then applies `PropertiesChanged`,
//!   `InterfacesAdded` and `InterfacesRemoved` as they come;
//! - when ModemManager leaves the bus the cache becomes `None`, and a new owner means a full
//!   re-read. It never calls ModemManager while the name has no owner, so it never triggers
//!   D-Bus activation of a ModemManager the administrator did not start.

mod state;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_core::Stream;
use tokio::sync::watch;
use zbus::message::Type as MessageType;
use zbus::proxy::{self, CacheProperties, MethodFlags};
use zbus::{Connection, MatchRule, Message, MessageStream, OwnedObjectPath, Proxy};

use self::state::{IFACE_BEARER, Interfaces, MmState, Properties};
use crate::objects::connectivity::ModemInfo;

/// ModemManager's well-known bus name.
const MM_NAME: &str = "org.freedesktop.ModemManager1";
/// ModemManager's ObjectManager path, the root of its objects.
const MM_PATH: &str = "/org/freedesktop/ModemManager1";
const DBUS_NAME: &str = "org.freedesktop.DBus";
const DBUS_PATH: &str = "/org/freedesktop/DBus";
const OBJECT_MANAGER: &str = "org.freedesktop.DBus.ObjectManager";
const PROPERTIES: &str = "org.freedesktop.DBus.Properties";
/// How long one call to ModemManager may take (the D-Bus reference timeout). Only armed while a
/// call is in flight, so it costs no idle wake-ups.
const CALL_TIMEOUT: Duration = Duration::from_secs(25);

/// Why the watcher stopped or a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ModemError {
    /// The bus refused or failed a call, or a reply did not have the expected type.
    #[error("D-Bus: {0}")]
    Bus(#[from] zbus::Error),
    /// ModemManager did not answer in time.
    #[error("ModemManager did not answer within {0:?}")]
    Timeout(Duration),
}

/// Aborts the watcher task when the last handle goes away.
#[derive(Debug)]
struct TaskGuard(tokio::task::JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A cheap, cloneable view of the modem cache that [`watch`] keeps up to date.
#[derive(Debug, Clone)]
pub struct ModemHandle {
    info: watch::Receiver<Option<ModemInfo>>,
    _task: Option<Arc<TaskGuard>>,
}

impl ModemHandle {
    /// A handle that never has a modem: for `[connectivity] modem_manager = false`, or when
    /// there is no system bus.
    pub fn disabled() -> Self {
        let (_, info) = watch::channel(None);
        Self { info, _task: None }
    }

    /// The first modem's current data, `None` when ModemManager is absent or has no modem.
    /// Never blocks on D-Bus.
    pub fn info(&self) -> Option<ModemInfo> {
        self.info.borrow().clone()
    }

    /// A receiver that wakes on every change of [`ModemHandle::info`]: the runtime can use it to
    /// re-evaluate observations of /4 when the radio changes instead of sampling.
    pub fn subscribe(&self) -> watch::Receiver<Option<ModemInfo>> {
        self.info.clone()
    }
}

/// Starts watching ModemManager on `conn` (normally `zbus::Connection::system()`, which honours
/// `DBUS_SYSTEM_BUS_ADDRESS`). Must be called within a tokio runtime; outside one it logs and
/// returns a disabled handle. The task stops when the last handle is dropped or the connection
/// closes.
pub fn watch(conn: Connection) -> ModemHandle {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        log::warn!("not in a tokio runtime: ModemManager data is unavailable");
        return ModemHandle::disabled();
    };
    let (tx, info) = watch::channel(None);
    let task = runtime.spawn(async move {
        match run(&conn, &tx).await {
            Ok(()) => log::info!("ModemManager watcher stopped: the bus connection closed"),
            Err(e) => log::warn!("ModemManager watcher stopped: {e}"),
        }
        tx.send_replace(None);
    });
    ModemHandle {
        info,
        _task: Some(Arc::new(TaskGuard(task))),
    }
}

/// The watcher loop; returns when the connection closes.
async fn run(conn: &Connection, tx: &watch::Sender<Option<ModemInfo>>) -> Result<(), ModemError> {
    let owner_rule = MatchRule::builder()
        .msg_type(MessageType::Signal)
        .sender(DBUS_NAME)
        .interface(DBUS_NAME)
        .member("NameOwnerChanged")
        .arg(0, MM_NAME)
        .build()?;
    let mut owner_changes = MessageStream::for_match_rule(owner_rule, conn, None).await?;
    let mm_rule = MatchRule::builder()
        .msg_type(MessageType::Signal)
        .sender(MM_NAME)
        .path_namespace(MM_PATH)
        .build()?;
    let mut mm_signals = MessageStream::for_match_rule(mm_rule, conn, None).await?;

    let mut state = if name_has_owner(conn).await? {
        read_all(conn).await
    } else {
        log::info!("ModemManager is not on the bus; waiting for it");
        None
    };
    publish(tx, state.as_ref());
    loop {
        tokio::select! {
            message = next(&mut owner_changes) => {
                let Some(message) = message else { return Ok(()) };
                if let Some(has_owner) = owner_appeared(&message) {
                    state = if has_owner { read_all(conn).await } else { None };
                    log::info!("ModemManager {}", if has_owner { "appeared" } else { "left" });
                }
            }
            message = next(&mut mm_signals) => {
                let Some(message) = message else { return Ok(()) };
                match state.as_mut() {
                    // A signal from a ModemManager we could not read yet: try again now,
                    // unless it is a late signal from one that has already left.
                    None if name_has_owner(conn).await.unwrap_or(false) => {
                        state = read_all(conn).await;
                    }
                    None => {}
                    Some(s) => {
                        apply_signal(s, &message);
                        read_missing_bearers(conn, s).await;
                    }
                }
            }
        }
        publish(tx, state.as_ref());
    }
}

/// The next message of a stream; `None` when it ends. Errors (a message that failed to
/// parse) are skipped.
async fn next(stream: &mut MessageStream) -> Option<Message> {
    loop {
        match poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await? {
            Ok(message) => return Some(message),
            Err(e) => log::debug!("skipping a bad D-Bus message: {e}"),
        }
    }
}

/// Publishes the derived info, waking subscribers only when it changed.
fn publish(tx: &watch::Sender<Option<ModemInfo>>, state: Option<&MmState>) {
    let info = state.and_then(MmState::info);
    tx.send_if_modified(|current| {
        let changed = *current != info;
        if changed {
            *current = info;
        }
        changed
    });
}

/// For a `NameOwnerChanged` about ModemManager: whether the name now has an owner.
fn owner_appeared(message: &Message) -> Option<bool> {
    let body = message.body();
    let (name, _old, new): (String, String, String) = body.deserialize().ok()?;
    (name == MM_NAME).then_some(!new.is_empty())
}

/// Applies one ModemManager signal to the mirror; unknown or malformed signals change nothing.
fn apply_signal(state: &mut MmState, message: &Message) {
    let header = message.header();
    let (Some(path), Some(member)) = (header.path(), header.member()) else {
        return;
    };
    let body = message.body();
    let applied = match member.as_str() {
        "PropertiesChanged" => body.deserialize::<(String, Properties, Vec<String>)>().map(
            |(interface, changed, invalidated)| {
                state.properties_changed(path.as_str(), &interface, &changed, &invalidated);
            },
        ),
        "InterfacesAdded" => body
            .deserialize::<(OwnedObjectPath, Interfaces)>()
            .map(|(object, interfaces)| state.interfaces_added(object.as_str(), &interfaces)),
        "InterfacesRemoved" => {
            body.deserialize::<(OwnedObjectPath, Vec<String>)>()
                .map(|(object, interfaces)| {
                    state.interfaces_removed(object.as_str(), &interfaces);
                    state.prune_bearers();
                })
        }
        // Other ModemManager signals (StateChanged, Added SMS...) are mirrored by properties.
        _ => Ok(()),
    };
    if let Err(e) = applied {
        log::debug!("ignoring a malformed {member} from ModemManager: {e}");
    }
}

/// Whether ModemManager's name has an owner (asked without activating it).
async fn name_has_owner(conn: &Connection) -> Result<bool, ModemError> {
    let reply = conn
        .call_method(
            Some(DBUS_NAME),
            DBUS_PATH,
            Some(DBUS_NAME),
            "NameHasOwner",
            &(MM_NAME,),
        )
        .await?;
    Ok(reply.body().deserialize::<bool>()?)
}

/// Reads ModemManager's whole state; `None` (logged) when it cannot be read right now, in which
/// case the next signal from it triggers another attempt.
async fn read_all(conn: &Connection) -> Option<MmState> {
    match managed_objects(conn).await {
        Ok(mut state) => {
            read_missing_bearers(conn, &mut state).await;
            Some(state)
        }
        Err(e) => {
            log::warn!("cannot read ModemManager's modems: {e}");
            None
        }
    }
}

async fn managed_objects(conn: &Connection) -> Result<MmState, ModemError> {
    let objects: HashMap<OwnedObjectPath, Interfaces> =
        call(conn, MM_PATH, OBJECT_MANAGER, "GetManagedObjects", &()).await?;
    Ok(MmState::from_managed(objects.into_iter().map(
        |(path, interfaces)| (path.as_str().to_string(), interfaces),
    )))
}

/// Reads the bearers the modems list that the mirror lacks. A bearer that cannot be read is
/// recorded empty (disconnected, no APN) so it is not asked for on every signal; its own
/// `PropertiesChanged` fills it in later.
async fn read_missing_bearers(conn: &Connection, state: &mut MmState) {
    for path in state.missing_bearers() {
        let properties = match bearer_properties(conn, &path).await {
            Ok(properties) => properties,
            Err(e) => {
                log::debug!("cannot read bearer {path}: {e}");
                Properties::new()
            }
        };
        state.set_bearer(&path, &properties);
    }
    state.prune_bearers();
}

async fn bearer_properties(conn: &Connection, path: &str) -> Result<Properties, ModemError> {
    call(conn, path, PROPERTIES, "GetAll", &(IFACE_BEARER,)).await
}

/// One method call to ModemManager, bounded by [`CALL_TIMEOUT`]. Sent with NO_AUTO_START: if
/// ModemManager left the bus meanwhile, the call fails instead of D-Bus-activating it.
async fn call<B, R>(
    conn: &Connection,
    path: &str,
    interface: &str,
    method: &str,
    body: &B,
) -> Result<R, ModemError>
where
    B: serde::Serialize + zbus::DynamicType,
    R: for<'d> zbus::wire::DynamicDeserialize<'d>,
{
    let proxy: Proxy<'_> = proxy::Builder::new(conn)
        .destination(MM_NAME)
        .path(path)
        .interface(interface)
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    let reply = proxy.call_with_flags::<_, _, R>(method, MethodFlags::NO_AUTO_START, body);
    tokio::time::timeout(CALL_TIMEOUT, reply)
        .await
        .map_err(|_| ModemError::Timeout(CALL_TIMEOUT))??
        // `None` only answers calls sent with NO_REPLY_EXPECTED, which these are not.
        .ok_or(ModemError::Bus(zbus::Error::InvalidReply))
}
