//! kubelet's container garbage collection (pkg/kubelet/kuberuntime/kuberuntime_gc.go and
//! pkg/kubelet/container/container_gc.go): dead containers beyond the newest `MaxPerPodContainer` per (pod, container
//! name), sandboxes that are not ready and hold no containers (all of a pod that is gone, all but the newest of one
//! that exists), everything dead of pods that are gone, and the log folders of pods that are gone.
//!
//! The pod worker already removes what it kills when a pod is deleted or dropped by its source, and the planner
//! drops a pod's dead instances beyond the newest at each sync; this collector covers what no worker is looking at
//! (pods without a worker, what a worker left behind, log folders) and runs kubelet's full policy, so the two never
//! disagree on what stays: the newest dead instance of each container, for `kubectl logs --previous`.
//!
//! A container or sandbox of a pod that exists is only removed when a newer one of the same name exists, so one a
//! pod worker is creating or starting (the newest) is never touched; a pod's content is only treated as gone once
//! every pod source has reported (kubelet's `allSourcesReady`), so a pod not yet seen after a restart keeps it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::kubetypes::events::{self as ev, EventRecorder, EventType};
use crate::kubetypes::spec::MINIMUM_GRACE_PERIOD_SECONDS;
use crate::runtime::gc::ContainerListing;
use crate::runtime::{ContainerRunState, Runtime, RuntimeError, SandboxRecord};
use crate::status::store::PodStore;

/// kubelet's `ContainerGCPeriod` (pkg/kubelet/kubelet.go).
pub const CONTAINER_GC_PERIOD: Duration = Duration::from_secs(60);

/// kubelet's `GCPolicy` (pkg/kubelet/container/container_gc.go).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcPolicy {
    /// Minimum age at which a container can be garbage collected, zero for no limit.
    pub min_age: Duration,
    /// Max number of dead containers any single (pod UID, container name) pair may have, below zero for no limit.
    pub max_per_pod_container: i32,
    /// Max number of total dead containers, below zero for no limit.
    pub max_containers: i32,
}

impl Default for GcPolicy {
    /// kubelet's defaults, from its deprecated flags `--minimum-container-ttl-duration` (0),
    /// `--maximum-dead-containers-per-container` (1) and `--maximum-dead-containers` (-1).
    fn default() -> Self {
        Self { min_age: Duration::ZERO, max_per_pod_container: 1, max_containers: -1 }
    }
}

/// What kubelet's pod workers answer its garbage collector (`podStateProvider`), and its `SourcesReadyProvider`.
pub trait PodStateProvider: Send + Sync {
    /// Every pod source has reported at least once.
    fn all_sources_ready(&self) -> bool;
    /// All of the pod's content may go: the pod is gone (deleted and terminated, or no source has it) or evicted.
    fn should_pod_content_be_removed(&self, uid: &str) -> bool;
    /// The pod's runtime objects may go: its containers are all stopped for good (terminated, not necessarily
    /// deleted), or no source has it.
    fn should_pod_runtime_be_removed(&self, uid: &str) -> bool;
}

/// The pod state as the pod manager keeps it in the pod store: a pod is there from the moment the pod manager
/// admits it (before its worker creates anything in the runtime) until its worker has terminated it and removed
/// what it left, and pods that never run (terminal in the API, rejected) are there while their source has them.
/// `sources_ready` turns true once every source reported and the pod manager has taken in their pods.
#[derive(Clone)]
pub struct PodStoreState {
    pub store: PodStore,
    pub sources_ready: watch::Receiver<bool>,
}

impl PodStateProvider for PodStoreState {
    fn all_sources_ready(&self) -> bool {
        *self.sources_ready.borrow()
    }

    fn should_pod_content_be_removed(&self, uid: &str) -> bool {
        self.store.get(uid).is_none() && self.all_sources_ready()
    }

    fn should_pod_runtime_be_removed(&self, uid: &str) -> bool {
        match self.store.status_phase(uid) {
            Some(phase) => phase == "Succeeded" || phase == "Failed",
            None => self.store.get(uid).is_none() && self.all_sources_ready(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ContainerGcError {
    #[error("{0}")]
    Runtime(#[from] RuntimeError),
    #[error("failed to read podLogsRootDirectory {dir:?}: {source}")]
    ReadLogsDir { dir: PathBuf, source: std::io::Error },
    /// kubelet's `utilerrors.NewAggregate` of the three steps' errors.
    #[error("[{}]", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))]
    Aggregate(Vec<ContainerGcError>),
}

/// Containers whose pod's content may go are all removed; whose pod may only lose its runtime objects, too, when
/// `evict_non_deleted_pods` (the eviction manager's `DeleteAllUnusedContainers`).
fn pod_is_removable(pods: &dyn PodStateProvider, uid: &str, evict_non_deleted_pods: bool) -> bool {
    pods.should_pod_content_be_removed(uid) || (evict_non_deleted_pods && pods.should_pod_runtime_be_removed(uid))
}

/// kubelet's `evictContainers` decision: the dead containers (not running, created at least `min_age` before `now`)
/// to remove, oldest of each (pod, name) first.
pub fn containers_to_remove<'a>(
    containers: &'a [ContainerListing],
    policy: &GcPolicy,
    all_sources_ready: bool,
    evict_non_deleted_pods: bool,
    pods: &dyn PodStateProvider,
    now: SystemTime,
) -> Vec<&'a ContainerListing> {
    let newest_gc_time = now.checked_sub(policy.min_age).unwrap_or(SystemTime::UNIX_EPOCH);
    let mut units: BTreeMap<(&str, &str), Vec<&ContainerListing>> = BTreeMap::new();
    for c in containers {
        if c.state == ContainerRunState::Running || c.created_at > newest_gc_time {
            continue;
        }
        units.entry((c.pod_uid.as_str(), c.name.as_str())).or_default().push(c);
    }
    // Newest first within each unit, kubelet's `byCreated`.
    for unit in units.values_mut() {
        unit.sort_by_key(|c| std::cmp::Reverse(c.created_at));
    }
    let mut remove = Vec::new();
    if all_sources_ready {
        units.retain(|(uid, _), unit| {
            if pod_is_removable(pods, uid, evict_non_deleted_pods) {
                remove.extend(unit.iter().rev().copied());
                false
            } else {
                true
            }
        });
    }
    let mut keep_per_unit = |units: &mut BTreeMap<(&str, &str), Vec<&'a ContainerListing>>, max: usize| {
        for unit in units.values_mut() {
            if unit.len() > max {
                remove.extend(unit.drain(max..).rev());
            }
        }
    };
    if let Ok(max) = usize::try_from(policy.max_per_pod_container) {
        keep_per_unit(&mut units, max);
    }
    if let Ok(max) = usize::try_from(policy.max_containers) {
        let count: usize = units.values().map(Vec::len).sum();
        if count > max && !units.is_empty() {
            // An equal number per unit (at least one), then the oldest of all beyond the limit.
            let per_unit = (max / units.len()).max(1);
            keep_per_unit(&mut units, per_unit);
            let mut flattened: Vec<&ContainerListing> = units.values().flatten().copied().collect();
            if flattened.len() > max {
                flattened.sort_by_key(|c| std::cmp::Reverse(c.created_at));
                remove.extend(flattened.drain(max..).rev());
            }
        }
    }
    remove
}

/// kubelet's `evictSandboxes` decision: sandboxes that are not ready and hold no container, all of them for a pod
/// that may go, all but the newest for one that stays. `containers` is every container, running or not.
pub fn sandboxes_to_remove<'a>(
    sandboxes: &'a [SandboxRecord],
    containers: &[ContainerListing],
    evict_non_deleted_pods: bool,
    pods: &dyn PodStateProvider,
) -> Vec<&'a SandboxRecord> {
    let holding: BTreeSet<&str> = containers.iter().map(|c| c.sandbox_id.as_str()).collect();
    let mut by_pod: BTreeMap<&str, Vec<&SandboxRecord>> = BTreeMap::new();
    for s in sandboxes {
        by_pod.entry(s.pod_uid.as_str()).or_default().push(s);
    }
    let mut remove = Vec::new();
    for (uid, mut list) in by_pod {
        list.sort_by_key(|s| std::cmp::Reverse(s.created_at));
        // The latest dead sandbox of a pod that is gone goes too, even when an active one is kept.
        let keep = if pod_is_removable(pods, uid, evict_non_deleted_pods) { 0 } else { 1 };
        remove.extend(list.into_iter().skip(keep).rev().filter(|s| !s.ready && !holding.contains(s.id.as_str())));
    }
    remove
}

/// kubelet's `parsePodUIDFromLogsDirectory`: `<namespace>_<name>_<uid>`.
pub fn pod_uid_from_logs_directory(name: &str) -> &str {
    name.rsplit('_').next().unwrap_or(name)
}

/// kubelet's `evictPodLogsDirectories` decision: the folders under the pod logs directory of pods whose content
/// may go, only once every source has reported.
pub fn pod_log_dirs_to_remove<'a>(
    dirs: &'a [String],
    all_sources_ready: bool,
    pods: &dyn PodStateProvider,
) -> Vec<&'a str> {
    if !all_sources_ready {
        return Vec::new();
    }
    dirs.iter()
        .map(String::as_str)
        .filter(|d| pods.should_pod_content_be_removed(pod_uid_from_logs_directory(d)))
        .collect()
}

/// kubelet's `containerGC` with its `realContainerGC` front.
pub struct ContainerGc {
    runtime: Runtime,
    policy: GcPolicy,
    pods: Arc<dyn PodStateProvider>,
    pod_logs_dir: PathBuf,
    events: EventRecorder,
}

impl ContainerGc {
    pub fn new(
        runtime: Runtime,
        policy: GcPolicy,
        pods: Arc<dyn PodStateProvider>,
        pod_logs_dir: PathBuf,
        events: EventRecorder,
    ) -> Self {
        Self { runtime, policy, pods, pod_logs_dir, events }
    }

    /// kubelet's `GarbageCollect`: the periodic collection, which keeps what belongs to pods that are not deleted.
    pub async fn garbage_collect(&self) -> Result<(), ContainerGcError> {
        self.collect(self.pods.all_sources_ready(), false).await
    }

    /// kubelet's `DeleteAllUnusedContainers`, which the eviction manager calls under pressure: also removes the dead
    /// containers and sandboxes of pods that are terminated but not deleted.
    pub async fn delete_all_unused_containers(&self) -> Result<(), ContainerGcError> {
        tracing::info!("Attempting to delete unused containers");
        self.collect(self.pods.all_sources_ready(), true).await
    }

    /// kubelet's runtime `GarbageCollect(gcPolicy, allSourcesReady, evictNonDeletedPods)`: containers, then
    /// sandboxes left with none, then the log folders of pods that are gone.
    pub async fn collect(&self, all_sources_ready: bool, evict_non_deleted_pods: bool) -> Result<(), ContainerGcError> {
        let mut errors = Vec::new();
        if let Err(e) = self.evict_containers(all_sources_ready, evict_non_deleted_pods).await {
            errors.push(e);
        }
        if let Err(e) = self.evict_sandboxes(evict_non_deleted_pods).await {
            errors.push(e);
        }
        if let Err(e) = self.evict_pod_logs_directories(all_sources_ready) {
            errors.push(e);
        }
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(ContainerGcError::Aggregate(errors)),
        }
    }

    async fn evict_containers(&self, all_sources_ready: bool, evict_non_deleted: bool) -> Result<(), ContainerGcError> {
        let containers = self.runtime.list_all_containers().await?;
        let now = SystemTime::now();
        let remove =
            containers_to_remove(&containers, &self.policy, all_sources_ready, evict_non_deleted, &*self.pods, now);
        for c in remove {
            self.remove_container(c).await;
        }
        Ok(())
    }

    /// kubelet's `removeOldestN` step for one container: one in an unknown state may still run, so it is stopped
    /// first; then its log files go with it (kubelet's `removeContainerLog`), then the container.
    async fn remove_container(&self, c: &ContainerListing) {
        if c.state == ContainerRunState::Unknown {
            tracing::info!(container_id = %c.id, "Container is in unknown state, try killing it before removal");
            let grace = c.termination_grace_period.unwrap_or(0).max(MINIMUM_GRACE_PERIOD_SECONDS);
            if let Err(e) = self.runtime.stop_container(&c.id, grace).await {
                tracing::error!(container_id = %c.id, error = %e, "Failed to stop container");
                return;
            }
        }
        tracing::debug!(container_id = %c.id, pod_uid = %c.pod_uid, container = %c.name, "Removing container");
        match self.runtime.container_log_path(&c.id).await {
            Ok((path, _)) if !path.is_empty() => remove_log_files(Path::new(&path)),
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                tracing::error!(container_id = %c.id, error = %e, "Failed to remove container");
                return;
            }
        }
        if let Err(e) = self.runtime.remove_container(&c.id).await {
            tracing::error!(container_id = %c.id, error = %e, "Failed to remove container");
        }
    }

    async fn evict_sandboxes(&self, evict_non_deleted: bool) -> Result<(), ContainerGcError> {
        let (containers, sandboxes) =
            tokio::join!(self.runtime.list_all_containers(), self.runtime.list_pod_sandboxes(None));
        let (containers, sandboxes) = (containers?, sandboxes?);
        for s in sandboxes_to_remove(&sandboxes, &containers, evict_non_deleted, &*self.pods) {
            tracing::debug!(sandbox_id = %s.id, pod_uid = %s.pod_uid, "Removing sandbox");
            // A sandbox should have been stopped before it got here; stopping it again guards the rare case.
            if let Err(e) = self.runtime.stop_pod_sandbox(&s.id).await {
                tracing::error!(sandbox_id = %s.id, error = %e, "Failed to stop sandbox before removing");
                continue;
            }
            if let Err(e) = self.runtime.remove_pod_sandbox(&s.id).await {
                tracing::error!(sandbox_id = %s.id, error = %e, "Failed to remove sandbox");
            }
        }
        Ok(())
    }

    fn evict_pod_logs_directories(&self, all_sources_ready: bool) -> Result<(), ContainerGcError> {
        if !all_sources_ready {
            return Ok(());
        }
        let read = std::fs::read_dir(&self.pod_logs_dir)
            .map_err(|source| ContainerGcError::ReadLogsDir { dir: self.pod_logs_dir.clone(), source })?;
        let dirs: Vec<String> = read.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        for dir in pod_log_dirs_to_remove(&dirs, all_sources_ready, &*self.pods) {
            tracing::debug!(pod_uid = pod_uid_from_logs_directory(dir), "Removing pod logs");
            let path = self.pod_logs_dir.join(dir);
            if let Err(e) = std::fs::remove_dir_all(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::error!(path = %path.display(), error = %e, "Failed to remove pod logs directory");
                }
            }
        }
        Ok(())
    }

    /// The container half of kubelet's `StartGarbageCollection`: a collection every `period`; a failure is an
    /// error log and a `ContainerGCFailed` warning on the node.
    pub async fn run(self: Arc<Self>, period: Duration) {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut logged_failure = false;
        loop {
            tick.tick().await;
            match self.garbage_collect().await {
                Err(e) => {
                    tracing::error!(error = %e, "Container garbage collection failed");
                    self.events.record_node(EventType::Warning, ev::CONTAINER_GC_FAILED, e.to_string());
                    logged_failure = true;
                }
                Ok(()) if logged_failure => {
                    tracing::info!("Container garbage collection succeeded");
                    logged_failure = false;
                }
                Ok(()) => tracing::debug!("Container garbage collection succeeded"),
            }
        }
    }
}

/// kubelet's `containerLogManager.Clean`: the log file and its rotations (`<path>*`).
fn remove_log_files(log: &Path) {
    let (Some(dir), Some(name)) = (log.parent(), log.file_name()) else { return };
    let name = name.to_string_lossy();
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(name.as_ref()) {
            if let Err(err) = std::fs::remove_file(e.path()) {
                if err.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %e.path().display(), error = %err, "Failed to remove container log");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
