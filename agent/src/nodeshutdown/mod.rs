//! Graceful node shutdown, kubelet's `pkg/kubelet/nodeshutdown` (nodeshutdown_manager_linux.go, v1.28): with a
//! non-zero `shutdownGracePeriod` (or `shutdownGracePeriodByPodPriority`), the agent holds a logind delay
//! inhibitor. When logind announces the shutdown (`PrepareForShutdown(true)`), the node reports `Ready=False`
//! ("node is shutting down") and the pods are stopped by priority range, lowest first (by default: ordinary pods
//! within `shutdownGracePeriod - shutdownGracePeriodCriticalPods`, then pods of system-critical priority within
//! `shutdownGracePeriodCriticalPods`), each with its grace period capped to its range's. Every pod ends `Failed`
//! with reason `Terminated` and the `DisruptionTarget` condition; once those statuses are written to the API
//! server (or the period is over) the inhibitor is released and the shutdown goes on.

pub mod storage;
pub mod systemd;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::{watch, Notify};

use crate::config::{KubeletConfig, ShutdownGracePeriodByPodPriority};
use crate::kubetypes::duration::format_go_duration;
use crate::kubetypes::kill::{PodKiller, TerminalStatus};
use crate::kubetypes::spec;
use crate::nodeshutdown::systemd::{DBusCon, InhibitLock, LogindError};
use crate::status::store::PodStore;

// nodeshutdown_manager_linux.go
pub const NODE_SHUTDOWN_REASON: &str = "Terminated";
pub const NODE_SHUTDOWN_MESSAGE: &str = "Pod was terminated in response to imminent node shutdown.";
pub const NODE_SHUTDOWN_NOT_ADMITTED_REASON: &str = "NodeShutdown";
pub const NODE_SHUTDOWN_NOT_ADMITTED_MESSAGE: &str = "Pod was rejected as the node is shutting down.";
const DBUS_RECONNECT_PERIOD: Duration = Duration::from_secs(1);
pub const LOCAL_STORAGE_STATE_FILE: &str = "graceful_node_shutdown_state";
/// The error of kubelet's `ShutdownStatus`, which the Ready condition carries while the node shuts down.
pub const NODE_SHUTTING_DOWN: &str = "node is shutting down";
/// pkg/apis/scheduling/types.go: the two priorities `migrateConfig` splits the period between.
pub const DEFAULT_PRIORITY_WHEN_NO_DEFAULT_CLASS_EXISTS: i32 = 0;
pub const SYSTEM_CRITICAL_PRIORITY: i32 = 2 * 1_000_000_000;
/// k8s.io/api/core/v1 `PodReasonTerminationByKubelet`, the reason of the `DisruptionTarget` condition.
pub const POD_REASON_TERMINATION_BY_KUBELET: &str = "TerminationByKubelet";
/// How long logind's setting may take to show after the reload: logind handles the SIGHUP in its own time.
const RELOAD_SETTLE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ShutdownError {
    #[error(transparent)]
    Logind(#[from] LogindError),
    #[error("unable to override inhibit delay by shutdown manager: {0}")]
    Override(LogindError),
    #[error(
        "node shutdown manager was unable to update logind InhibitDelayMaxSec to {requested} (ShutdownGracePeriod), \
         current value of InhibitDelayMaxSec ({current}) is less than requested ShutdownGracePeriod"
    )]
    InhibitDelayTooShort { requested: String, current: String },
    #[error("failed to monitor shutdown: {0}")]
    Monitor(LogindError),
}

/// `migrateConfig`: `shutdownGracePeriod` and `shutdownGracePeriodCriticalPods` as two priority ranges, ordinary
/// pods (priority 0 and up) and system-critical ones. Nothing (the manager is off) for a zero period.
pub fn migrate_config(requested: Duration, critical: Duration) -> Vec<ShutdownGracePeriodByPodPriority> {
    if requested.is_zero() || critical > requested {
        return Vec::new();
    }
    let default_priority = requested - critical;
    let critical_priority = requested - default_priority;
    vec![
        ShutdownGracePeriodByPodPriority {
            priority: DEFAULT_PRIORITY_WHEN_NO_DEFAULT_CLASS_EXISTS,
            shutdown_grace_period_seconds: default_priority.as_secs() as i64,
        },
        ShutdownGracePeriodByPodPriority {
            priority: SYSTEM_CRITICAL_PRIORITY,
            shutdown_grace_period_seconds: critical_priority.as_secs() as i64,
        },
    ]
}

/// The periods the manager runs with (`NewManager`): `shutdownGracePeriodByPodPriority`, else the two from
/// `migrateConfig`, sorted by priority, lowest first. Empty when graceful shutdown is off.
pub fn shutdown_periods(config: &KubeletConfig) -> Vec<ShutdownGracePeriodByPodPriority> {
    let mut periods = if config.shutdown_grace_period_by_pod_priority.is_empty() {
        migrate_config(config.shutdown_grace_period, config.shutdown_grace_period_critical_pods)
    } else {
        config.shutdown_grace_period_by_pod_priority.clone()
    };
    periods.sort_by_key(|p| p.priority);
    periods
}

/// `periodRequested`: how long the whole shutdown may take, the sum of the ranges' periods.
pub fn period_requested(periods: &[ShutdownGracePeriodByPodPriority]) -> Duration {
    Duration::from_secs(periods.iter().map(|p| p.shutdown_grace_period_seconds.max(0) as u64).sum())
}

/// One priority range and the pods in it.
#[derive(Debug, Clone)]
pub struct PodShutdownGroup {
    pub period: ShutdownGracePeriodByPodPriority,
    pub pods: Vec<Arc<Pod>>,
}

/// `groupByPriority`: each pod goes to the highest range whose priority is not above its own; pods below the
/// lowest range go to the lowest, pods above the highest to the highest. `periods` is sorted, lowest first.
pub fn group_by_priority(periods: &[ShutdownGracePeriodByPodPriority], pods: Vec<Arc<Pod>>) -> Vec<PodShutdownGroup> {
    let mut groups: Vec<PodShutdownGroup> =
        periods.iter().map(|p| PodShutdownGroup { period: *p, pods: Vec::new() }).collect();
    if groups.is_empty() {
        return groups;
    }
    for pod in pods {
        let priority = spec::spec(&pod).priority.unwrap_or(0);
        // sort.Search: the first range with a priority >= the pod's.
        let mut index = groups.partition_point(|g| g.period.priority < priority);
        if index == groups.len() {
            index = groups.len() - 1;
        } else if index > 0 && groups[index].period.priority > priority {
            index -= 1;
        }
        groups[index].pods.push(pod);
    }
    groups
}

/// The grace period a pod is stopped with: its range's, or its own `terminationGracePeriodSeconds` when that is
/// shorter.
pub fn grace_period_override(pod: &Pod, group_period: i64) -> i64 {
    match spec::spec(pod).termination_grace_period_seconds {
        Some(own) if own <= group_period => own,
        _ => group_period,
    }
}

/// How long kubelet's `killPodNow` waits for a pod to stop: one and a half grace periods, at least 10 s.
pub fn kill_timeout(grace_period: i64) -> Duration {
    let grace = grace_period.max(0) as u64;
    Duration::from_secs((grace + grace / 2).max(10))
}

/// The status every pod stopped for the shutdown ends with.
pub fn terminal_status() -> TerminalStatus {
    TerminalStatus {
        reason: NODE_SHUTDOWN_REASON.into(),
        message: NODE_SHUTDOWN_MESSAGE.into(),
        disruption: Some((POD_REASON_TERMINATION_BY_KUBELET.into(), NODE_SHUTDOWN_MESSAGE.into())),
    }
}

/// `processShutdownEvent`'s loop: range after range, lowest priority first, all pods of a range at once; the next
/// range starts when every pod of this one stopped or its period is over (the kills still under way go on). Ranges
/// without pods are skipped.
pub async fn kill_groups<F, Fut>(groups: Vec<PodShutdownGroup>, kill: F)
where
    F: Fn(Arc<Pod>, i64) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    for group in groups.into_iter().filter(|g| !g.pods.is_empty()) {
        let period = group.period.shutdown_grace_period_seconds;
        let kills: Vec<_> = group
            .pods
            .into_iter()
            .map(|pod| {
                let grace = grace_period_override(&pod, period);
                tokio::spawn(kill(pod, grace))
            })
            .collect();
        let all = futures::future::join_all(kills);
        if tokio::time::timeout(Duration::from_secs(period.max(0) as u64), all).await.is_err() {
            tracing::info!(
                grace_period = period,
                priority = group.period.priority,
                "Shutdown manager pod killing time out"
            );
        }
    }
}

/// What `ensureInhibitDelay` needs of logind.
pub trait InhibitDelay {
    fn current_inhibit_delay(&self) -> impl Future<Output = Result<Duration, LogindError>> + Send;
    fn override_inhibit_delay(&self, delay: Duration) -> Result<(), LogindError>;
    fn reload_logind_conf(&self) -> impl Future<Output = Result<(), LogindError>> + Send;
}

/// kubelet's start-up check: when logind's `InhibitDelayMaxSec` is shorter than the period, the drop-in raises it
/// and logind reloads; a setting that stays too short (another drop-in sorts after ours) is an error.
pub async fn ensure_inhibit_delay(bus: &impl InhibitDelay, requested: Duration) -> Result<Duration, ShutdownError> {
    let current = bus.current_inhibit_delay().await?;
    if requested <= current {
        return Ok(current);
    }
    bus.override_inhibit_delay(requested).map_err(ShutdownError::Override)?;
    bus.reload_logind_conf().await?;
    let until = tokio::time::Instant::now() + RELOAD_SETTLE;
    let mut updated = bus.current_inhibit_delay().await?;
    while updated < requested && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        updated = bus.current_inhibit_delay().await?;
    }
    if requested > updated {
        return Err(ShutdownError::InhibitDelayTooShort {
            requested: format_go_duration(requested),
            current: format_go_duration(updated),
        });
    }
    Ok(updated)
}

/// logind on the system bus, with the drop-in folder of this host.
struct Logind {
    bus: DBusCon,
    conf_dir: PathBuf,
}

impl InhibitDelay for Logind {
    fn current_inhibit_delay(&self) -> impl Future<Output = Result<Duration, LogindError>> + Send {
        self.bus.current_inhibit_delay()
    }

    fn override_inhibit_delay(&self, delay: Duration) -> Result<(), LogindError> {
        systemd::override_inhibit_delay(&self.conf_dir, delay)
    }

    fn reload_logind_conf(&self) -> impl Future<Output = Result<(), LogindError>> + Send {
        self.bus.reload_logind_conf()
    }
}

/// One connection's watch: the inhibitor held and the shutdown signals.
struct Session {
    logind: Logind,
    lock: Option<InhibitLock>,
    events: std::pin::Pin<Box<dyn futures::Stream<Item = bool> + Send>>,
}

/// kubelet's node shutdown manager.
pub struct ShutdownManager {
    periods: Vec<ShutdownGracePeriodByPodPriority>,
    killer: PodKiller,
    store: PodStore,
    /// A status manager writes the store's statuses to an API server: wait for it before releasing the inhibitor.
    flush_statuses: bool,
    /// kubelet's `ShutdownStatus`: true from `PrepareForShutdown(true)` until a cancellation; the node's Ready
    /// condition reads it.
    shutting_down: watch::Sender<bool>,
    /// kubelet's `syncNodeStatus`: the node status is sent at once rather than at the next period.
    sync_node_status: Option<Arc<Notify>>,
    state_file: PathBuf,
    logind_conf_dir: PathBuf,
}

impl ShutdownManager {
    /// `NewManager`: `None` when graceful shutdown is off (no period configured).
    pub fn new(
        config: &KubeletConfig,
        killer: PodKiller,
        store: PodStore,
        flush_statuses: bool,
        shutting_down: watch::Sender<bool>,
        sync_node_status: Option<Arc<Notify>>,
    ) -> Option<Self> {
        let periods = shutdown_periods(config);
        if periods.is_empty() {
            return None;
        }
        tracing::info!(
            shutdown_grace_period_requested = %format_go_duration(config.shutdown_grace_period),
            shutdown_grace_period_critical_pods = %format_go_duration(config.shutdown_grace_period_critical_pods),
            shutdown_grace_period_by_pod_priority = ?periods,
            "Creating node shutdown manager"
        );
        Some(Self {
            periods,
            killer,
            store,
            flush_statuses,
            shutting_down,
            sync_node_status,
            state_file: config.root_dir.join(LOCAL_STORAGE_STATE_FILE),
            logind_conf_dir: PathBuf::from(systemd::LOGIND_CONFIG_DIRECTORY),
        })
    }

    /// kubelet's `Start`: a failure to start is logged and leaves the manager off, as kubelet does not hold its
    /// start-up for it; a watch that ends later (the bus went away) is started again every second. Never returns.
    pub async fn run(self) {
        let mut first = true;
        loop {
            match self.start().await {
                Ok(session) => {
                    self.watch(session).await;
                    tracing::error!("Ended to watching the node for shutdown events");
                }
                Err(e) if first => {
                    tracing::error!(error = %e, "Failed to start node shutdown manager");
                    return std::future::pending().await;
                }
                Err(e) => tracing::error!(error = %e, "Unable to watch the node for shutdown events"),
            }
            first = false;
            tokio::time::sleep(DBUS_RECONNECT_PERIOD).await;
            tracing::info!("Restarting watch for node shutdown events");
        }
    }

    async fn start(&self) -> Result<Session, ShutdownError> {
        let logind = Logind { bus: DBusCon::new().await?, conf_dir: self.logind_conf_dir.clone() };
        let delay = ensure_inhibit_delay(&logind, period_requested(&self.periods)).await?;
        let lock = logind.bus.inhibit_shutdown().await?;
        // On an error here the lock is dropped, which releases it.
        let events = logind.bus.monitor_shutdown().await.map_err(ShutdownError::Monitor)?;
        tracing::info!(
            inhibit_delay_max = %format_go_duration(delay),
            period = %format_go_duration(period_requested(&self.periods)),
            "node shutdown manager holds a delay inhibitor and watches for shutdown"
        );
        Ok(Session { logind, lock: Some(lock), events: Box::pin(events) })
    }

    /// The event loop of kubelet's `start`: a shutdown is processed and releases the inhibitor; a cancelled one
    /// takes a new inhibitor.
    async fn watch(&self, mut session: Session) {
        while let Some(shutting_down) = session.events.next().await {
            let event = if shutting_down { "shutdown" } else { "cancelled" };
            tracing::info!(event, "Shutdown manager detected new shutdown event");
            self.shutting_down.send_replace(shutting_down);
            if shutting_down {
                if let Some(sync) = &self.sync_node_status {
                    sync.notify_one();
                }
                self.process_shutdown_event(session.lock.take()).await;
            } else {
                match session.logind.bus.inhibit_shutdown().await {
                    // The new one is held before the old one (if any) is released.
                    Ok(lock) => session.lock = Some(lock),
                    Err(e) => tracing::error!(error = %e, "cannot take the shutdown inhibitor again"),
                }
            }
        }
    }

    fn store_state(&self, start: jiff::Timestamp, end: Option<jiff::Timestamp>) {
        if let Err(e) = storage::store(&self.state_file, &storage::state_json(start, end)) {
            tracing::error!(error = %e, file = %self.state_file.display(), "Failed to store graceful shutdown state");
        }
    }

    /// `processShutdownEvent`, then the wait for the statuses to reach the API server; the inhibitor is released
    /// at the end, whatever happened.
    async fn process_shutdown_event(&self, lock: Option<InhibitLock>) {
        tracing::info!("Shutdown manager processing shutdown event");
        let started = tokio::time::Instant::now();
        let start_time = jiff::Timestamp::now();
        self.store_state(start_time, None);
        let groups = group_by_priority(&self.periods, self.killer.active_pods());
        let killer = self.killer.clone();
        let store = self.store.clone();
        kill_groups(groups, move |pod, grace| {
            let killer = killer.clone();
            let store = store.clone();
            async move {
                let key = spec::key(&pod);
                let uid = spec::uid(&pod).to_owned();
                tracing::info!(pod = %key, grace_period = grace, "Shutdown manager killing pod with gracePeriod");
                match killer.kill_pod(&uid, Some(grace), terminal_status(), kill_timeout(grace)).await {
                    Ok(()) => {
                        let status = store.get(&uid).and_then(|(_, s, _)| s).unwrap_or_default();
                        tracing::info!(
                            pod = %key,
                            phase = %status.phase.as_deref().unwrap_or(""),
                            reason = %status.reason.as_deref().unwrap_or(""),
                            status_message = %status.message.as_deref().unwrap_or(""),
                            "Shutdown manager finished killing pod"
                        );
                    }
                    Err(e) => tracing::info!(pod = %key, error = %e, "Shutdown manager failed killing pod"),
                }
            }
        })
        .await;
        if self.flush_statuses {
            let left =
                (started + period_requested(&self.periods)).saturating_duration_since(tokio::time::Instant::now());
            let pending = self.store.wait_written(left).await;
            if pending.is_empty() {
                tracing::info!(took = ?started.elapsed(), "pod statuses written to the API server");
            } else {
                tracing::warn!(pods = ?pending, "pod statuses not written to the API server before the shutdown");
            }
        }
        self.store_state(start_time, Some(jiff::Timestamp::now()));
        drop(lock);
        tracing::info!(took = ?started.elapsed(), "Shutdown manager completed processing shutdown event, node will shutdown shortly");
    }
}

#[cfg(test)]
mod tests;
