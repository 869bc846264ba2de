//! The volume manager, kubelet's `volumemanager` for the volume kinds a node sets up itself: each pod's volumes
//! live under `<root-dir>/pods/<uid>/volumes/kubernetes.io~<plugin>/<name>`, are set up before its containers start
//! (and again on every sync, which refreshes configMap, secret, downwardAPI and projected files), are passed to the
//! runtime as mounts, and are torn down when the pod is gone — also for pods that went while the agent was down.

pub mod atomic_writer;
pub mod backoff;
pub mod host_path;
pub mod ownership;
pub mod payload;
pub mod subpath;
pub mod token;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::{Container, Pod, Volume};

use crate::api::objects::PodObjects;
use crate::cm::pod::pod_resource_config;
use crate::kubetypes::backoff::random_unit;
use crate::kubetypes::env::{self, Lookup, NodeAllocatable};
use crate::kubetypes::events::{EventRecorder, EventType};
use crate::kubetypes::spec;
use crate::runtime::{Mount, MountPropagation};

use backoff::VolumeBackOffs;
use payload::Objects;
use token::{CachedToken, TokenCache, TokenKey, DEFAULT_EXPIRATION_SECONDS};

/// kubelet's event reason for a volume that could not be set up.
pub const EVENT_FAILED_MOUNT: &str = "FailedMount";
/// emptyDir volumes are open to every user of the pod, as kubelet makes them.
const EMPTY_DIR_MODE: u32 = 0o777;
/// kubelet's pod and volumes folders.
const POD_DIR_MODE: u32 = 0o750;
const TMPFS_MAGIC: i64 = 0x0102_1994;
const EMPTY_DIR_PLUGIN: &str = "kubernetes.io~empty-dir";
/// kubelet's `readyFileName` (`pkg/volume/util/util.go`).
const READY_FILE_NAME: &str = "ready";

/// The ConfigMaps and Secrets some volumes name, and the reader to fetch them with.
struct ObjectNames<'a> {
    api: &'a PodObjects,
    config_maps: BTreeSet<String>,
    secrets: BTreeSet<String>,
}

impl ObjectNames<'_> {
    async fn fetch(self, pod_uid: &str, ns: &str) -> Objects {
        let mut objects = Objects::default();
        for name in self.config_maps {
            let found = self.api.config_map(pod_uid, ns, &name).await;
            objects.config_maps.insert(name, found);
        }
        for name in self.secrets {
            let found = self.api.secret(pod_uid, ns, &name).await;
            objects.secrets.insert(name, found);
        }
        objects
    }
}

/// Volumes whose files the node writes: mounted read-only into containers whatever the mount says.
fn is_read_only_kind(v: &Volume) -> bool {
    v.config_map.is_some() || v.secret.is_some() || v.downward_api.is_some() || v.projected.is_some()
}

pub struct VolumeManager {
    /// `<root-dir>/pods`.
    pods_dir: PathBuf,
    /// Set once the API client exists; never for a standalone node.
    objects: OnceLock<PodObjects>,
    tokens: TokenCache,
    pub allocatable: NodeAllocatable,
    events: EventRecorder,
    /// Failed set-ups wait kubelet's per-volume back-off before they are tried again.
    back_offs: VolumeBackOffs,
}

/// What one pass of [`VolumeManager::mount_pod`] left.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodVolumes {
    /// The volumes not set up (failed now, or still in their back-off), sorted.
    pub unmounted: Vec<String>,
    /// When the earliest of them may be tried again.
    pub retry_in: Option<Duration>,
}

impl PodVolumes {
    /// Every volume is set up: the containers may start.
    pub fn ready(&self) -> bool {
        self.unmounted.is_empty()
    }
}

impl VolumeManager {
    pub fn new(root_dir: &Path, allocatable: NodeAllocatable, events: EventRecorder) -> Self {
        let objects = OnceLock::new();
        Self {
            pods_dir: root_dir.join("pods"),
            objects,
            tokens: TokenCache::default(),
            allocatable,
            events,
            back_offs: VolumeBackOffs::default(),
        }
    }

    /// Connects the manager to the API server.
    pub fn set_objects(&self, objects: PodObjects) {
        if self.objects.set(objects).is_err() {
            tracing::warn!("the API reader was already set");
        }
    }

    /// The API reader, when the node has an API server.
    pub fn objects(&self) -> Option<&PodObjects> {
        self.objects.get()
    }

    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.pods_dir.join(uid)
    }

    fn volume_dir(&self, uid: &str, v: &Volume) -> Option<PathBuf> {
        crate::stats::volumes::plugin_dir(v).map(|p| self.pod_dir(uid).join("volumes").join(p).join(&v.name))
    }

    /// One pass of kubelet's reconciler over the pod's volumes, for one sync: sets up (or refreshes) every volume
    /// whose back-off allows it. A failure is a `FailedMount` warning, as each failed operation is in kubelet, and
    /// starts or lengthens that volume's back-off; the pod's containers wait until every volume is there, and the
    /// caller syncs again when the next retry is due.
    pub async fn mount_pod(&self, pod: &Pod) -> PodVolumes {
        let uid = spec::uid(pod);
        let volumes = spec::spec(pod).volumes.as_deref().unwrap_or_default();
        let mut retry_in: Option<Duration> = None;
        let mut earliest = |wait: Duration| retry_in = Some(retry_in.map_or(wait, |r| r.min(wait)));
        let mut unmounted = Vec::new();
        let now = Instant::now();
        let mut due = Vec::new();
        for v in volumes {
            match self.back_offs.safe_to_retry(uid, &v.name, now) {
                Ok(()) => due.push(v),
                Err(wait) => {
                    earliest(wait);
                    unmounted.push(v.name.clone());
                }
            }
        }
        let objects = match self.object_names(&due) {
            Some(names) if !due.is_empty() => Some(names.fetch(spec::uid(pod), spec::namespace(pod)).await),
            _ => None,
        };
        for v in due {
            match self.set_up(pod, v, objects.as_ref()).await {
                Ok(()) => self.back_offs.succeeded(uid, &v.name),
                Err(e) => {
                    let wait = self.back_offs.failed(uid, &v.name, Instant::now());
                    earliest(wait + Duration::from_millis(1));
                    unmounted.push(v.name.clone());
                    let message = format!("MountVolume.SetUp failed for volume {:?} : {e}", v.name);
                    // nestedpendingoperations' "No retries permitted until ..." line.
                    tracing::warn!(volume = %v.name, duration_before_retry = ?wait, error = %message, "volume operation failed");
                    self.events.record(pod, None, EventType::Warning, EVENT_FAILED_MOUNT, message);
                }
            }
        }
        unmounted.sort();
        PodVolumes { unmounted, retry_in }
    }

    /// The ConfigMaps and Secrets the given volumes name, to be read from the API.
    fn object_names<'a>(&'a self, volumes: &[&Volume]) -> Option<ObjectNames<'a>> {
        let api = self.objects.get()?;
        let mut config_maps = BTreeSet::new();
        let mut secrets = BTreeSet::new();
        for v in volumes {
            if let Some(c) = &v.config_map {
                config_maps.insert(c.name.clone());
            }
            if let Some(s) = &v.secret {
                secrets.insert(s.secret_name.clone().unwrap_or_default());
            }
            for s in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
                if let Some(c) = &s.config_map {
                    config_maps.insert(c.name.clone());
                }
                if let Some(s) = &s.secret {
                    secrets.insert(s.name.clone());
                }
            }
        }
        Some(ObjectNames { api, config_maps, secrets })
    }

    /// kubelet's token manager `GetServiceAccountToken`.
    async fn service_account_token(
        &self,
        pod: &Pod,
        audience: Option<&str>,
        expiration: Option<i64>,
    ) -> Result<String, String> {
        let Some(api) = self.objects.get() else {
            return Err("cannot request a service account token: the node runs without an API server".into());
        };
        let key = TokenKey {
            namespace: spec::namespace(pod).to_owned(),
            service_account: spec::spec(pod).service_account_name.clone().unwrap_or_else(|| "default".into()),
            audiences: audience.filter(|a| !a.is_empty()).map(|a| vec![a.to_owned()]).unwrap_or_default(),
            expiration_seconds: expiration.unwrap_or(DEFAULT_EXPIRATION_SECONDS),
            pod_name: spec::name(pod).to_owned(),
            pod_uid: spec::uid(pod).to_owned(),
        };
        let now = SystemTime::now();
        if let Some(t) = self.tokens.fresh(&key, now, random_unit()) {
            return Ok(t);
        }
        match api.request_token(&key.namespace, &key.service_account, &key.request()).await {
            Ok(tr) => match CachedToken::from_response(&tr, key.expiration_seconds, now) {
                Some(t) => {
                    let token = t.token.clone();
                    self.tokens.set(key, t);
                    Ok(token)
                }
                None => Err("failed to fetch token: the answer holds no token".into()),
            },
            // A token that has not expired yet still works while the API is away.
            Err(e) => self.tokens.unexpired(&key, now).ok_or(e),
        }
    }

    async fn set_up(&self, pod: &Pod, v: &Volume, objects: Option<&Objects>) -> Result<(), String> {
        let uid = spec::uid(pod);
        let sc = spec::spec(pod).security_context.as_ref();
        // No `fsGroupChangePolicy`: kubelet's emptyDir, configMap, secret, downwardAPI and projected plugins all call
        // `SetVolumeOwnership` with a nil policy (`empty_dir.go`, `secret.go`, ...); the pod's policy is for the
        // volume kinds (CSI, local, ...) this node does not set up.
        let fs_group = sc.and_then(|s| s.fs_group);
        if let Some(hp) = &v.host_path {
            return host_path::check_type(Path::new(&hp.path), hp.type_.as_deref().unwrap_or_default());
        }
        let Some(dir) = self.volume_dir(uid, v) else {
            return Err("volume type is not supported on this node".into());
        };
        self.ensure_pod_dirs(uid).map_err(|e| e.to_string())?;
        let payload = if let Some(ed) = &v.empty_dir {
            let medium = ed.medium.as_deref().unwrap_or_default();
            let ready = self.empty_dir_ready_file(uid, &v.name);
            if ready.as_deref().is_some_and(is_ready) && empty_dir_in_place(&dir, medium) {
                return Ok(());
            }
            match medium {
                "" => ensure_dir(&dir, EMPTY_DIR_MODE),
                "Memory" => {
                    let size = self.memory_volume_size(pod, ed.size_limit.as_ref().map(|q| q.0.as_str()));
                    ensure_tmpfs(&dir, size).and_then(|()| chmod(&dir, EMPTY_DIR_MODE))
                }
                other => Err(std::io::Error::other(format!("emptyDir medium {other:?} is not supported on this node"))),
            }
            .map_err(|e| e.to_string())?;
            if let Some(g) = fs_group {
                // kubelet's emptyDir SetUpAt logs a failed ownership change and goes on.
                if let Err(e) = set_ownership_blocking(dir.clone(), g, false).await {
                    tracing::warn!(uid, volume = %v.name, error = %e, "fsGroup ownership change failed");
                }
            }
            if let Some(ready) = ready {
                set_ready(&ready);
            }
            return Ok(());
        } else if let Some(c) = &v.config_map {
            let optional = c.optional.unwrap_or(false);
            payload::config_map_volume(objects, &c.name, c.items.as_deref(), c.default_mode, optional)?
        } else if let Some(s) = &v.secret {
            let optional = s.optional.unwrap_or(false);
            let name = s.secret_name.as_deref().unwrap_or_default();
            payload::secret_volume(objects, name, s.items.as_deref(), s.default_mode, optional)?
        } else if let Some(d) = &v.downward_api {
            let mode = d.default_mode.unwrap_or(payload::DEFAULT_MODE);
            payload::downward_api_payload(pod, d.items.as_deref().unwrap_or_default(), mode, self.allocatable)?
        } else if let Some(p) = &v.projected {
            let mut tokens = BTreeMap::new();
            for (i, s) in p.sources.iter().flatten().enumerate() {
                if let Some(t) = &s.service_account_token {
                    let token = self.service_account_token(pod, t.audience.as_deref(), t.expiration_seconds).await;
                    tokens.insert(i, token);
                }
            }
            payload::projected_payload(pod, p, objects, &tokens, self.allocatable, fs_group.is_some())?
        } else {
            return Err("volume type is not supported on this node".into());
        };
        // Secrets and tokens never touch the disk: their volumes are tmpfs, as kubelet's memory-backed wrappers.
        if v.secret.is_some() || v.projected.is_some() {
            ensure_tmpfs(&dir, self.memory_volume_size(pod, None)).map_err(|e| e.to_string())?;
        }
        ensure_dir(&dir, EMPTY_DIR_MODE).map_err(|e| e.to_string())?;
        // kubelet's setPerms: the whole volume is re-owned when (and only when) a new payload is written, before it
        // is published. Off the runtime: both the write and the walk are blocking.
        let written = tokio::task::spawn_blocking(move || {
            let set_perms = || match fs_group {
                Some(g) => ownership::set_volume_ownership(&dir, g, None, true).map_err(std::io::Error::other),
                None => Ok(()),
            };
            atomic_writer::write_with_perms(&dir, &payload, set_perms)
        })
        .await
        .map_err(|e| format!("failed to write volume files: {e}"))?;
        written.map_err(|e| format!("failed to write volume files: {e}"))?;
        Ok(())
    }

    /// kubelet's `calculateEmptyDirMemorySize`: the node's allocatable memory, lowered to the pod's memory limit and
    /// then to the volume's `sizeLimit`.
    fn memory_volume_size(&self, pod: &Pod, size_limit: Option<&str>) -> Option<i128> {
        let mut size = self.allocatable.memory_bytes;
        if let Some(limit) = pod_resource_config(spec::spec(pod)).memory_limit_bytes.map(i128::from) {
            if limit > 0 && limit <= size {
                size = limit;
            }
        }
        if let Some(limit) = size_limit.and_then(|s| crate::kubetypes::quantity::parse_value(s).ok()) {
            if limit > 0 && limit <= size {
                size = limit;
            }
        }
        (size > 0).then_some(size)
    }

    /// kubelet's emptyDir readiness file, `<pod>/plugins/kubernetes.io~empty-dir/<volume>/ready`: set once the volume
    /// is set up (and owned), so that later syncs and agent restarts leave it, and what the pod wrote there, alone.
    fn empty_dir_ready_file(&self, uid: &str, volume: &str) -> Option<PathBuf> {
        let mut parts = Path::new(volume).components();
        let single = matches!((parts.next(), parts.next()), (Some(std::path::Component::Normal(_)), None));
        single.then(|| self.pod_dir(uid).join("plugins").join(EMPTY_DIR_PLUGIN).join(volume).join(READY_FILE_NAME))
    }

    fn ensure_pod_dirs(&self, uid: &str) -> std::io::Result<()> {
        let volumes = self.pod_dir(uid).join("volumes");
        if !volumes.is_dir() {
            std::fs::create_dir_all(&volumes)?;
            chmod(&self.pod_dir(uid), POD_DIR_MODE)?;
            chmod(&volumes, POD_DIR_MODE)?;
        }
        Ok(())
    }

    /// kubelet's `makeMounts` for the pod's volumes: each `volumeMount` with its `subPath`/`subPathExpr` (checked
    /// as kubelet does), read-only flag and propagation. `envs` is the container's environment for `subPathExpr`.
    pub async fn container_mounts(
        &self,
        pod: &Pod,
        container: &Container,
        envs: &[(String, String)],
    ) -> Result<Vec<Mount>, String> {
        let uid = spec::uid(pod);
        let volumes = spec::spec(pod).volumes.as_deref().unwrap_or_default();
        let mut mounts = Vec::new();
        for (index, m) in container.volume_mounts.iter().flatten().enumerate() {
            let Some(v) = volumes.iter().find(|v| v.name == m.name) else {
                return Err(format!("cannot find volume {:?} to mount into container {:?}", m.name, container.name));
            };
            let volume_path = match (&v.host_path, self.volume_dir(uid, v)) {
                (Some(hp), _) => PathBuf::from(&hp.path),
                (None, Some(dir)) => dir,
                (None, None) => return Err(format!("volume {:?} is not supported on this node", v.name)),
            };
            let mut sub_path = m.sub_path.clone().unwrap_or_default();
            if let Some(expr) = m.sub_path_expr.as_deref().filter(|e| !e.is_empty()) {
                sub_path = env::expand_sub_path_expr(expr, envs)?;
            }
            let host_path = if sub_path.is_empty() {
                volume_path
            } else {
                check_sub_path(&sub_path)?;
                let s = subpath::SubPath {
                    volume_mount_index: index,
                    path: volume_path.join(&sub_path),
                    volume_name: v.name.clone(),
                    volume_path,
                    pod_dir: self.pod_dir(uid),
                    container_name: container.name.clone(),
                };
                sub_path_mount(s, sub_path, &m.name).await?
            };
            let privileged = container.security_context.as_ref().and_then(|s| s.privileged).unwrap_or(false);
            let propagation = match m.mount_propagation.as_deref() {
                Some("HostToContainer") => MountPropagation::HostToContainer,
                Some("Bidirectional") if privileged => MountPropagation::Bidirectional,
                Some("Bidirectional") => {
                    return Err("Bidirectional mount propagation is available only to privileged containers".into())
                }
                _ => MountPropagation::Private,
            };
            mounts.push(Mount {
                container_path: m.mount_path.clone(),
                host_path: host_path.to_string_lossy().into_owned(),
                readonly: m.read_only.unwrap_or(false) || is_read_only_kind(v),
                propagation,
            });
        }
        Ok(mounts)
    }

    /// Tears down the volumes of a pod that has finished, keeping its folder until the pod is gone.
    pub fn unmount_volumes(&self, uid: &str) {
        self.tokens.forget_pod(uid);
        self.back_offs.forget_pod(uid);
        clean_sub_paths(uid, &self.pod_dir(uid));
        let dir = self.pod_dir(uid).join("volumes");
        if !dir.exists() {
            return;
        }
        for m in mounts_under(&dir).into_iter().rev() {
            if let Err(e) = unmount(&m) {
                tracing::warn!(uid, path = %m.display(), error = %e, "cannot unmount pod volume");
            }
        }
        if !mounts_under(&dir).is_empty() {
            tracing::warn!(uid, dir = %dir.display(), "volumes folder still holds mounts; not removing it");
            return;
        }
        // kubelet's emptyDir TearDown removes the readiness file with the volume.
        let ready = self.pod_dir(uid).join("plugins").join(EMPTY_DIR_PLUGIN);
        if let Err(e) = std::fs::remove_dir_all(&ready) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(uid, dir = %ready.display(), error = %e, "cannot remove the emptyDir ready files");
            }
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => tracing::info!(uid, "volumes of the finished pod torn down"),
            Err(e) => tracing::warn!(uid, dir = %dir.display(), error = %e, "cannot remove the volumes folder"),
        }
    }

    /// Tears the pod's volumes down and removes its folder, once its containers are gone.
    pub fn unmount_pod(&self, uid: &str) {
        self.tokens.forget_pod(uid);
        if let Some(objects) = self.objects.get() {
            objects.release_pod(uid);
        }
        self.back_offs.forget_pod(uid);
        // The pod's last event (Killing) was recorded before its containers were stopped.
        self.events.pod_gone(uid);
        let dir = self.pod_dir(uid);
        if !dir.exists() {
            return;
        }
        clean_sub_paths(uid, &dir);
        for m in mounts_under(&dir).into_iter().rev() {
            if let Err(e) = unmount(&m) {
                tracing::warn!(uid, path = %m.display(), error = %e, "cannot unmount pod volume");
            }
        }
        if !mounts_under(&dir).is_empty() {
            tracing::warn!(uid, dir = %dir.display(), "pod folder still holds mounts; not removing it");
            return;
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => tracing::info!(uid, "pod volumes torn down"),
            Err(e) => tracing::warn!(uid, dir = %dir.display(), error = %e, "cannot remove pod folder"),
        }
    }

    /// kubelet's `cleanupOrphanedPodDirs`: the folders of pods neither a source nor the runtime knows any more.
    pub fn cleanup_orphaned_pod_dirs(&self, active: &BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(&self.pods_dir) else { return };
        for e in entries.flatten() {
            let uid = e.file_name().to_string_lossy().into_owned();
            if !active.contains(&uid) && e.path().is_dir() {
                tracing::info!(uid, "removing orphaned pod folder");
                self.unmount_pod(&uid);
            }
        }
    }
}

/// kubelet's checks of a subPath before it is used (`makeMounts`): relative and without `..`.
fn check_sub_path(sub_path: &str) -> Result<(), String> {
    if Path::new(sub_path).is_absolute() {
        return Err(format!("error SubPath `{sub_path}` must not be an absolute path"));
    }
    // `ValidatePathNoBacksteps` (pkg/volume/validation/pv_validation.go).
    if sub_path.split('/').any(|e| e == "..") {
        return Err(format!("unable to provision SubPath `{sub_path}`: must not contain '..'"));
    }
    Ok(())
}

/// kubelet's subPath part of `makeMounts`, off the async runtime: the bind mount the runtime gets, or kubelet's
/// error for the container. The detail goes to the node's log only: it could tell the pod about the host's files.
async fn sub_path_mount(s: subpath::SubPath, sub_path: String, mount_name: &str) -> Result<PathBuf, String> {
    let container = s.container_name.clone();
    let prepared = tokio::task::spawn_blocking(move || prepare_sub_path(&s, &sub_path)).await;
    let (step, detail) = match prepared {
        Ok(Ok(path)) => return Ok(path),
        Ok(Err(SubPathFailure::Mode(e))) => return Err(e),
        Ok(Err(SubPathFailure::Create(e))) => ("create subPath directory", e.to_string()),
        Ok(Err(SubPathFailure::Prepare(e))) => ("prepare subPath", e.to_string()),
        Err(e) => ("prepare subPath", e.to_string()),
    };
    tracing::error!(
        container,
        volume_mount = mount_name,
        error = detail,
        "failed to {step} for volumeMount of the container"
    );
    Err(format!("failed to {step} for volumeMount {mount_name:?} of container {container:?}"))
}

/// Which step of `makeMounts`'s subPath handling failed: kubelet tells the container which, not why.
#[derive(Debug)]
enum SubPathFailure {
    Mode(String),
    Create(subpath::SubPathError),
    Prepare(subpath::SubPathError),
}

/// kubelet's subPath steps of `makeMounts` (blocking): a missing subPath is created inside the volume with the
/// volume's mode (`SafeMakeDir`), then bind-mounted under the pod's `volume-subpaths` (`PrepareSafeSubpath`);
/// returns the bind mount, which is what the runtime gets.
fn prepare_sub_path(s: &subpath::SubPath, sub_path: &str) -> Result<PathBuf, SubPathFailure> {
    // kubelet's `hu.PathExists`: an error other than "not there" only skips the creation.
    let exists = match std::fs::metadata(&s.path) {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => {
            tracing::error!(path = %s.path.display(), error = %e, "could not determine if subPath exists");
            true
        }
    };
    if !exists {
        // Created now so that it gets the volume's mode (with an fsGroup, g+rwx) rather than the runtime's 0755.
        let perm =
            std::fs::metadata(&s.volume_path).map_err(|e| SubPathFailure::Mode(e.to_string()))?.permissions().mode();
        subpath::safe_make_dir(Path::new(sub_path), &s.volume_path, perm).map_err(SubPathFailure::Create)?;
    }
    subpath::bind_sub_path(s).map_err(SubPathFailure::Prepare)
}

/// Unmounts and removes the pod's subPath bind mounts (kubelet's `CleanSubPaths`, done before its volumes are torn
/// down, since a bind mount keeps a tmpfs volume alive).
fn clean_sub_paths(uid: &str, pod_dir: &Path) {
    if let Err(e) = subpath::clean_sub_paths(pod_dir) {
        tracing::warn!(uid, error = %e, "cannot clean subpath mounts");
    }
}

fn chmod(path: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// kubelet's emptyDir `setupDir`: only the permission bits are compared, so the setgid bit an `fsGroup` gave the
/// volume stays.
fn ensure_dir(dir: &Path, mode: u32) -> std::io::Result<()> {
    if !dir.is_dir() {
        std::fs::create_dir_all(dir)?;
    }
    if std::fs::metadata(dir)?.permissions().mode() & 0o777 != mode {
        chmod(dir, mode)?;
    }
    Ok(())
}

/// kubelet's `IsReady`: the readiness file exists and is a regular file.
fn is_ready(file: &Path) -> bool {
    std::fs::symlink_metadata(file).is_ok_and(|m| m.is_file())
}

/// kubelet's `SetReady`; a failure is logged, as kubelet does, and only costs a second setup.
fn set_ready(file: &Path) {
    let created = file
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(file).map(drop));
    if let Err(e) = created {
        tracing::error!(file = %file.display(), error = %e, "Can't touch the ready file");
    }
}

/// kubelet's emptyDir SetUpAt with the readiness file present: a disk volume whose folder exists, a memory volume
/// whose tmpfs is mounted, needs nothing more.
fn empty_dir_in_place(dir: &Path, medium: &str) -> bool {
    match medium {
        "" => dir.is_dir(),
        "Memory" => is_mount_point(dir) && is_tmpfs(dir),
        _ => false,
    }
}

/// [`ownership::set_volume_ownership`] of a volume the pod can write to, off the runtime, without a policy.
async fn set_ownership_blocking(dir: PathBuf, fs_group: i64, readonly: bool) -> Result<(), String> {
    tokio::task::spawn_blocking(move || ownership::set_volume_ownership(&dir, fs_group, None, readonly))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

fn c_path(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other)
}

/// Whether `dir` is a mount point: its device differs from its parent's.
fn is_mount_point(dir: &Path) -> bool {
    let (Ok(m), Some(Ok(p))) = (std::fs::metadata(dir), dir.parent().map(std::fs::metadata)) else { return false };
    m.dev() != p.dev()
}

fn is_tmpfs(dir: &Path) -> bool {
    let Ok(path) = c_path(dir) else { return false };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a zeroed out-parameter of the right type.
    let rc = unsafe { libc::statfs(path.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == TMPFS_MAGIC
}

/// Mounts a tmpfs on `dir` unless one is there, with `size` bytes at most.
fn ensure_tmpfs(dir: &Path, size: Option<i128>) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    if is_mount_point(dir) && is_tmpfs(dir) {
        return Ok(());
    }
    let target = c_path(dir)?;
    let data = CString::new(size.map(|s| format!("size={s}")).unwrap_or_default()).map_err(std::io::Error::other)?;
    let source = c"tmpfs";
    // SAFETY: valid C strings for the duration of the call.
    let rc = unsafe { libc::mount(source.as_ptr(), target.as_ptr(), source.as_ptr(), 0, data.as_ptr().cast()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn unmount(dir: &Path) -> std::io::Result<()> {
    let target = c_path(dir)?;
    // SAFETY: a valid C string; MNT_DETACH leaves no reference behind.
    let rc = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Mount points at or under `dir` from `/proc/self/mountinfo`, shallowest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return Vec::new() };
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| p.components().count());
    found.dedup();
    found
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The pod's environment lookups: what `env::container_envs` needs from the API for one container.
pub async fn fetch_env_objects(
    objects: &PodObjects,
    pod_uid: &str,
    namespace: &str,
    container: &Container,
) -> (
    BTreeMap<String, Lookup<k8s_openapi::api::core::v1::ConfigMap>>,
    BTreeMap<String, Lookup<k8s_openapi::api::core::v1::Secret>>,
) {
    let (cms, secrets) = env::referenced_objects(container);
    let mut config_maps = BTreeMap::new();
    for name in cms {
        let found = objects.config_map(pod_uid, namespace, &name).await;
        config_maps.insert(name, found);
    }
    let mut out_secrets = BTreeMap::new();
    for name in secrets {
        let found = objects.secret(pod_uid, namespace, &name).await;
        out_secrets.insert(name, found);
    }
    (config_maps, out_secrets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manager(root: &Path) -> VolumeManager {
        VolumeManager::new(root, NodeAllocatable::default(), EventRecorder::default())
    }

    fn pod_with(volumes: serde_json::Value, mounts: serde_json::Value, privileged: bool) -> (Pod, Container) {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "p", "namespace": "ns", "uid": "u1" },
            "spec": { "volumes": volumes, "containers": [{ "name": "app", "volumeMounts": mounts,
                "securityContext": { "privileged": privileged } }] },
        }))
        .unwrap();
        let c = pod.spec.as_ref().unwrap().containers[0].clone();
        (pod, c)
    }

    #[tokio::test]
    async fn mounts_follow_kubelets_make_mounts() {
        let dir = tempfile::tempdir().unwrap();
        let vm = manager(dir.path());
        let volumes = serde_json::json!([
            { "name": "cfg", "configMap": { "name": "c" } },
            { "name": "scratch", "emptyDir": {} },
            { "name": "host", "hostPath": { "path": "/var/log" } },
        ]);
        let mounts = serde_json::json!([
            { "name": "cfg", "mountPath": "/etc/cfg" },
            { "name": "scratch", "mountPath": "/data", "mountPropagation": "HostToContainer" },
            { "name": "host", "mountPath": "/logs", "readOnly": true },
        ]);
        let (pod, c) = pod_with(volumes.clone(), mounts, false);
        let got = vm.container_mounts(&pod, &c, &[]).await.unwrap();
        let pods = dir.path().join("pods/u1/volumes");
        assert_eq!(
            got,
            vec![
                Mount {
                    container_path: "/etc/cfg".into(),
                    host_path: pods.join("kubernetes.io~configmap/cfg").display().to_string(),
                    readonly: true,
                    propagation: MountPropagation::Private,
                },
                Mount {
                    container_path: "/data".into(),
                    host_path: pods.join("kubernetes.io~empty-dir/scratch").display().to_string(),
                    readonly: false,
                    propagation: MountPropagation::HostToContainer,
                },
                Mount {
                    container_path: "/logs".into(),
                    host_path: "/var/log".into(),
                    readonly: true,
                    propagation: MountPropagation::Private,
                },
            ],
            "configMap files are always read-only"
        );
        let (pod, c) = pod_with(volumes.clone(), serde_json::json!([{ "name": "nope", "mountPath": "/x" }]), false);
        assert_eq!(
            vm.container_mounts(&pod, &c, &[]).await.unwrap_err(),
            "cannot find volume \"nope\" to mount into container \"app\""
        );
        let bidi = serde_json::json!([{ "name": "host", "mountPath": "/x", "mountPropagation": "Bidirectional" }]);
        let (pod, c) = pod_with(volumes.clone(), bidi.clone(), false);
        assert_eq!(
            vm.container_mounts(&pod, &c, &[]).await.unwrap_err(),
            "Bidirectional mount propagation is available only to privileged containers"
        );
        let (pod, c) = pod_with(volumes, bidi, true);
        assert_eq!(vm.container_mounts(&pod, &c, &[]).await.unwrap()[0].propagation, MountPropagation::Bidirectional);
    }

    #[tokio::test]
    async fn sub_path_exprs_expand_from_the_container_env() {
        let dir = tempfile::tempdir().unwrap();
        let vm = manager(dir.path());
        let volumes = serde_json::json!([{ "name": "scratch", "emptyDir": {} }]);
        let vol = dir.path().join("pods/u1/volumes/kubernetes.io~empty-dir/scratch");
        std::fs::create_dir_all(&vol).unwrap();
        chmod(&vol, 0o777).unwrap();
        let mounts = serde_json::json!([
            { "name": "scratch", "mountPath": "/data" },
            { "name": "scratch", "mountPath": "/logs", "subPathExpr": "$(POD)/logs" },
        ]);
        let (pod, c) = pod_with(volumes.clone(), mounts.clone(), false);
        assert_eq!(vm.container_mounts(&pod, &c, &[]).await.unwrap_err(), "missing value for POD");
        let env = vec![("POD".to_owned(), "..".to_owned())];
        assert_eq!(
            vm.container_mounts(&pod, &c, &env).await.unwrap_err(),
            "unable to provision SubPath `../logs`: must not contain '..'"
        );
        let env = vec![("POD".to_owned(), "/etc".to_owned())];
        assert_eq!(
            vm.container_mounts(&pod, &c, &env).await.unwrap_err(),
            "error SubPath `/etc/logs` must not be an absolute path"
        );
        // A symlink out of the volume: kubelet's message, nothing created where it leads.
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), vol.join("esc")).unwrap();
        let env = vec![("POD".to_owned(), "esc".to_owned())];
        assert_eq!(
            vm.container_mounts(&pod, &c, &env).await.unwrap_err(),
            "failed to create subPath directory for volumeMount \"scratch\" of container \"app\""
        );
        assert!(!outside.path().join("logs").exists());
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let env = vec![("POD".to_owned(), "web-1".to_owned())];
        let got = vm.container_mounts(&pod, &c, &env).await.unwrap();
        let target = dir.path().join("pods/u1/volume-subpaths/scratch/app/1");
        assert_eq!(got[1].host_path, target.display().to_string(), "the volumeMount's index names the bind mount");
        assert!(vol.join("web-1/logs").is_dir(), "created before the container starts");
        assert_eq!(std::fs::metadata(vol.join("web-1/logs")).unwrap().permissions().mode() & 0o7777, 0o777);
        std::fs::write(vol.join("web-1/logs/x"), "y").unwrap();
        assert_eq!(std::fs::read_to_string(target.join("x")).unwrap(), "y", "the bind mount holds the subPath");
        vm.unmount_pod("u1");
        assert!(mounts_under(dir.path()).is_empty());
        assert!(!dir.path().join("pods/u1").exists());
    }

    #[test]
    fn a_pod_torn_down_is_reported_gone_to_the_event_poster() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let vm = VolumeManager::new(dir.path(), NodeAllocatable::default(), EventRecorder::new(tx));
        vm.unmount_pod("u1");
        assert_eq!(rx.try_recv(), Ok(crate::kubetypes::events::EventMessage::PodGone("u1".into())));
    }

    #[tokio::test]
    async fn a_failed_set_up_waits_its_back_off_and_then_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let vm = manager(dir.path());
        let host = dir.path().join("appears-later");
        let volumes = serde_json::json!([
            { "name": "scratch", "emptyDir": {} },
            { "name": "host", "hostPath": { "path": host, "type": "Directory" } },
        ]);
        let (pod, _) = pod_with(volumes, serde_json::json!([]), false);
        let first = vm.mount_pod(&pod).await;
        assert_eq!(first.unmounted, ["host"], "only the failed volume waits");
        assert_eq!(first.retry_in, Some(Duration::from_millis(501)), "kubelet's initialDurationBeforeRetry");
        std::fs::create_dir(&host).unwrap();
        let again = vm.mount_pod(&pod).await;
        assert_eq!(again.unmounted, ["host"], "not tried again within its back-off");
        let wait = again.retry_in.unwrap();
        assert!(wait <= Duration::from_millis(501), "{wait:?}");
        tokio::time::sleep(wait).await;
        assert_eq!(vm.mount_pod(&pod).await, PodVolumes::default(), "tried again once the back-off ended");
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/var/lib/a\\040b"), "/var/lib/a b");
        assert_eq!(unescape_mountinfo("/x\\134y"), "/x\\y");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }
}
