//! The system half of the health gate: waits until a systemd unit (by default
//! `boot-complete.target`, which health checks are ordered before) is active, asking systemd over
//! the system D-Bus. The LwM2M half (a successful registration) is the core's.

use std::time::Duration;

use crate::core::effect::FwOutcome;

/// How often the unit's state is asked for while waiting (only during a trial boot).
const POLL: Duration = Duration::from_secs(2);

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    /// The object path of a loaded unit.
    fn get_unit(&self, name: &str) -> zbus::Result<zbus::OwnedObjectPath>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1"
)]
trait Unit {
    /// `active`, `activating`, `failed`...
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;
}

/// Waits until `target` is active (→ Healthy), failed (→ Unhealthy), or `timeout` passes. With no
/// target configured the system half of the gate is open.
pub async fn await_healthy(target: Option<&str>, timeout: Duration) -> FwOutcome {
    let Some(target) = target else {
        return FwOutcome::Healthy;
    };
    match tokio::time::timeout(timeout, wait_active(target)).await {
        Ok(Ok(())) => FwOutcome::Healthy,
        Ok(Err(e)) => FwOutcome::Unhealthy(e),
        Err(_) => {
            FwOutcome::Unhealthy(format!("{target} not active after {} s", timeout.as_secs()))
        }
    }
}

async fn wait_active(target: &str) -> Result<(), String> {
    let bus = zbus::Connection::system()
        .await
        .map_err(|e| format!("system bus: {e}"))?;
    let manager = ManagerProxy::new(&bus).await.map_err(|e| e.to_string())?;
    loop {
        // The target may not be loaded yet early in boot: keep asking.
        if let Ok(path) = manager.get_unit(target).await {
            let unit = UnitProxy::builder(&bus)
                .path(path)
                .cache_properties(zbus::proxy::CacheProperties::No)
                .build()
                .await
                .map_err(|e| e.to_string())?;
            match unit
                .active_state()
                .await
                .map_err(|e| e.to_string())?
                .as_str()
            {
                "active" => return Ok(()),
                "failed" => return Err(format!("{target} failed")),
                _ => {}
            }
        }
        tokio::time::sleep(POLL).await;
    }
}
