//! logind over the system bus, kubelet's `pkg/kubelet/nodeshutdown/systemd` (inhibit_linux.go): the delay
//! inhibitor that holds a shutdown back while pods stop, `PrepareForShutdown`, and the logind setting
//! (`InhibitDelayMaxSec`) that bounds how long any inhibitor may hold it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{Stream, StreamExt};

const LOGIND_SERVICE: &str = "org.freedesktop.login1";
const LOGIND_OBJECT: &str = "/org/freedesktop/login1";
const LOGIND_INTERFACE: &str = "org.freedesktop.login1.Manager";

/// kubelet's `logindConfigDirectory` and `kubeletLogindConf`.
pub const LOGIND_CONFIG_DIRECTORY: &str = "/etc/systemd/logind.conf.d/";
pub const KUBELET_LOGIND_CONF: &str = "99-kubelet.conf";

#[derive(Debug, thiserror::Error)]
pub enum LogindError {
    #[error("connect to the system bus: {0}")]
    Connect(zbus::Error),
    #[error("failed reading InhibitDelayMaxUSec property from logind: {0}")]
    InhibitDelay(zbus::Error),
    #[error("failed creating systemd inhibitor: {0}")]
    Inhibit(zbus::Error),
    #[error("unable to reload logind conf: {0}")]
    Reload(zbus::Error),
    #[error("watch PrepareForShutdown: {0}")]
    Monitor(zbus::Error),
    #[error("failed creating {dir} directory: {source}")]
    ConfigDir { dir: PathBuf, source: std::io::Error },
    #[error("failed writing logind shutdown inhibit override file {path}: {source}")]
    ConfigFile { path: PathBuf, source: std::io::Error },
}

/// A delay inhibitor: logind waits for it (up to `InhibitDelayMaxSec`) before it shuts the node down. Closing the
/// descriptor, i.e. dropping this, releases it.
#[derive(Debug)]
pub struct InhibitLock(#[allow(dead_code)] zbus::zvariant::OwnedFd);

/// kubelet's `DBusCon`.
pub struct DBusCon {
    conn: zbus::Connection,
}

impl DBusCon {
    pub async fn new() -> Result<Self, LogindError> {
        Ok(Self { conn: zbus::Connection::system().await.map_err(LogindError::Connect)? })
    }

    /// A proxy that reads properties fresh each time: `InhibitDelayMaxUSec` is read again after a reload.
    async fn proxy(
        &self,
        service: &'static str,
        path: &'static str,
        iface: &'static str,
    ) -> zbus::Result<zbus::Proxy<'static>> {
        zbus::proxy::Builder::new(&self.conn)
            .destination(service)?
            .path(path)?
            .interface(iface)?
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
    }

    async fn logind(&self) -> zbus::Result<zbus::Proxy<'static>> {
        self.proxy(LOGIND_SERVICE, LOGIND_OBJECT, LOGIND_INTERFACE).await
    }

    /// `CurrentInhibitDelay`: logind's `InhibitDelayMaxUSec`.
    pub async fn current_inhibit_delay(&self) -> Result<Duration, LogindError> {
        let usec: u64 = self
            .logind()
            .await
            .map_err(LogindError::InhibitDelay)?
            .get_property("InhibitDelayMaxUSec")
            .await
            .map_err(LogindError::InhibitDelay)?;
        Ok(Duration::from_micros(usec))
    }

    /// `InhibitShutdown`: a delay inhibitor with kubelet's who and why.
    pub async fn inhibit_shutdown(&self) -> Result<InhibitLock, LogindError> {
        let proxy = self.logind().await.map_err(LogindError::Inhibit)?;
        let fd: zbus::zvariant::OwnedFd = proxy
            .call("Inhibit", &("shutdown", "kubelet", "Kubelet needs time to handle node shutdown", "delay"))
            .await
            .map_err(LogindError::Inhibit)?;
        Ok(InhibitLock(fd))
    }

    /// `ReloadLogindConf`: SIGHUP to systemd-logind through systemd, which makes logind read its config again.
    pub async fn reload_logind_conf(&self) -> Result<(), LogindError> {
        let proxy = self
            .proxy("org.freedesktop.systemd1", "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager")
            .await
            .map_err(LogindError::Reload)?;
        let killed: Result<(), zbus::Error> =
            proxy.call("KillUnit", &("systemd-logind.service", "all", libc::SIGHUP)).await;
        killed.map_err(LogindError::Reload)
    }

    /// `MonitorShutdown`: the `PrepareForShutdown` signals' argument, true when a shutdown starts and false when
    /// it was cancelled. The stream ends with the connection.
    pub async fn monitor_shutdown(&self) -> Result<impl Stream<Item = bool> + Unpin + Send + 'static, LogindError> {
        let proxy = self.logind().await.map_err(LogindError::Monitor)?;
        let signals = proxy.receive_signal("PrepareForShutdown").await.map_err(LogindError::Monitor)?;
        Ok(signals
            .filter_map(|msg| async move {
                match msg.body().deserialize::<bool>() {
                    Ok(active) => Some(active),
                    Err(e) => {
                        tracing::error!(error = %e, "Failed obtaining shutdown event, PrepareForShutdown event was not bool type as expected");
                        None
                    }
                }
            })
            .boxed())
    }
}

/// The drop-in kubelet writes (`OverrideInhibitDelay`); logind's setting is in whole seconds.
pub fn logind_override(inhibit_delay_max: Duration) -> String {
    format!("# Kubelet logind override\n[Login]\nInhibitDelayMaxSec={:.0}\n", inhibit_delay_max.as_secs_f64())
}

/// `OverrideInhibitDelay`: writes `99-kubelet.conf` into `dir` (logind's drop-in folder outside tests).
pub fn override_inhibit_delay(dir: &Path, inhibit_delay_max: Duration) -> Result<(), LogindError> {
    std::fs::create_dir_all(dir).map_err(|source| LogindError::ConfigDir { dir: dir.to_owned(), source })?;
    let path = dir.join(KUBELET_LOGIND_CONF);
    std::fs::write(&path, logind_override(inhibit_delay_max)).map_err(|source| LogindError::ConfigFile { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drop_in_is_kubelets() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("logind.conf.d");
        override_inhibit_delay(&conf, Duration::from_secs(30)).unwrap();
        assert_eq!(
            std::fs::read_to_string(conf.join("99-kubelet.conf")).unwrap(),
            "# Kubelet logind override\n[Login]\nInhibitDelayMaxSec=30\n"
        );
        // Rewritten, not appended, when the period changes.
        override_inhibit_delay(&conf, Duration::from_millis(20_400)).unwrap();
        assert_eq!(
            std::fs::read_to_string(conf.join("99-kubelet.conf")).unwrap(),
            "# Kubelet logind override\n[Login]\nInhibitDelayMaxSec=20\n"
        );
        let blocked = dir.path().join("file");
        std::fs::write(&blocked, "").unwrap();
        let e = override_inhibit_delay(&blocked.join("sub"), Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().starts_with("failed creating"), "{e}");
    }
}
