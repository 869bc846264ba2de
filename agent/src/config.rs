//! The agent's configuration: a subset of kubelet's `KubeletConfiguration` (kubelet.config.k8s.io/v1beta1), read from
//! `--config`, with command-line flags taking precedence, as in kubelet.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cm::cgroups::CgroupDriver;
use crate::cm::pod::{CpuMemory, Reservations};
use crate::eviction::threshold::{
    hard_memory_bytes, parse_threshold_config, ThresholdSettings, DEFAULT_PRESSURE_TRANSITION_PERIOD,
};
use crate::eviction::EvictionConfig;
use crate::kubetypes::quantity::{parse_milli, parse_value};
use crate::pods::sysctl::SysctlAllowlist;

pub const CONFIG_API_VERSION: &str = "kubelet.config.k8s.io/v1beta1";
pub const CONFIG_KIND: &str = "KubeletConfiguration";

/// kubelet's `--container-runtime-endpoint` default.
pub const DEFAULT_RUNTIME_ENDPOINT: &str = "unix:///run/containerd/containerd.sock";
pub const DEFAULT_ROOT_DIR: &str = "/var/lib/rkubelet";
/// kubelet's `podLogsDir` default; CRI log paths of every pod live below it.
pub const DEFAULT_POD_LOGS_DIR: &str = "/var/log/pods";
/// kubelet's `fileCheckFrequency` default. The manifest folder is also watched through inotify, so this is only the
/// interval of the safety-net rescan.
pub const DEFAULT_FILE_CHECK_FREQUENCY: Duration = Duration::from_secs(20);
/// kubelet's `syncFrequency` default: how often a pod worker re-syncs a pod with nothing happening to it.
pub const DEFAULT_SYNC_FREQUENCY: Duration = Duration::from_secs(60);
pub const DEFAULT_NODE_STATUS_UPDATE_FREQUENCY: Duration = Duration::from_secs(10);
pub const DEFAULT_NODE_STATUS_REPORT_FREQUENCY: Duration = Duration::from_secs(300);
pub const DEFAULT_NODE_LEASE_DURATION_SECONDS: i32 = 40;
pub const DEFAULT_MAX_PODS: u32 = 110;
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";
pub const DEFAULT_RESOLV_CONF: &str = "/etc/resolv.conf";
/// kubelet's old `--cni-conf-dir` default, where containerd's CRI plugin reads network configs.
pub const DEFAULT_CNI_CONF_DIR: &str = "/etc/cni/net.d";
/// The bridge name the reference bridge plugin defaults to.
pub const DEFAULT_CNI_BRIDGE_NAME: &str = "cni0";
/// kubelet's `port`: the authenticated HTTPS server (logs, exec, stats).
pub const DEFAULT_PORT: u16 = 10250;
/// kubelet's `healthzPort` and `healthzBindAddress`.
pub const DEFAULT_HEALTHZ_PORT: u16 = 10248;
pub const DEFAULT_HEALTHZ_BIND_ADDRESS: &str = "127.0.0.1";
/// kubelet's `authentication.webhook.cacheTTL`, `authorization.webhook.cacheAuthorizedTTL` and
/// `cacheUnauthorizedTTL` defaults.
pub const DEFAULT_AUTHENTICATION_CACHE_TTL: Duration = Duration::from_secs(120);
pub const DEFAULT_AUTHORIZED_CACHE_TTL: Duration = Duration::from_secs(300);
pub const DEFAULT_UNAUTHORIZED_CACHE_TTL: Duration = Duration::from_secs(30);
/// kubelet's `containerLogMaxSize` (10Mi) and `containerLogMaxFiles`.
pub const DEFAULT_CONTAINER_LOG_MAX_SIZE: &str = "10Mi";
pub const DEFAULT_CONTAINER_LOG_MAX_FILES: u32 = 5;
/// kubelet's `imageGCHighThresholdPercent` (85: below docker's old 90% `dm.min_free_space`),
/// `imageGCLowThresholdPercent` (80) and `imageMinimumGCAge` (2m) defaults.
pub const DEFAULT_IMAGE_GC_HIGH_THRESHOLD_PERCENT: i32 = 85;
pub const DEFAULT_IMAGE_GC_LOW_THRESHOLD_PERCENT: i32 = 80;
pub const DEFAULT_IMAGE_MINIMUM_GC_AGE: Duration = Duration::from_secs(2 * 60);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("parse config file {path}: {source}")]
    Parse { path: PathBuf, source: serde_yaml::Error },
    #[error("config file {path}: apiVersion {found:?} is not supported (want {CONFIG_API_VERSION:?})")]
    ApiVersion { path: PathBuf, found: String },
    #[error("config file {path}: kind {found:?} is not supported (want {CONFIG_KIND:?})")]
    Kind { path: PathBuf, found: String },
    #[error("config file {path}: field {field}: {reason} (want a Go duration such as \"20s\" or \"1m30s\")")]
    Duration { path: PathBuf, field: &'static str, reason: String },
    #[error("config file {path}: {source}")]
    Eviction { path: PathBuf, source: crate::eviction::threshold::ThresholdError },
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid { what: &'static str, value: String, reason: String },
    #[error(transparent)]
    PressureStall(#[from] crate::eviction::psi::PressureStallConfigError),
}

/// The file format: the fields of `KubeletConfiguration` the agent understands, under their kubelet names.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeletConfigurationFile {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub static_pod_path: Option<String>,
    pub file_check_frequency: Option<String>,
    pub sync_frequency: Option<String>,
    pub address: Option<String>,
    pub read_only_port: Option<u16>,
    pub container_runtime_endpoint: Option<String>,
    pub pod_logs_dir: Option<String>,
    pub serialize_image_pulls: Option<bool>,
    pub max_pods: Option<u32>,
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Option<String>,
    /// rkubelet extensions: where to write the pod network's CNI config, and its bridge's name.
    pub cni_conf_dir: Option<String>,
    pub cni_bridge_name: Option<String>,
    #[serde(rename = "clusterDNS")]
    pub cluster_dns: Option<Vec<String>>,
    pub cluster_domain: Option<String>,
    pub resolv_conf: Option<String>,
    pub allowed_unsafe_sysctls: Option<Vec<String>>,
    pub seccomp_default: Option<bool>,
    pub logging: Option<LoggingConfiguration>,
    pub cgroup_driver: Option<String>,
    #[serde(rename = "cgroupsPerQOS")]
    pub cgroups_per_qos: Option<bool>,
    pub enforce_node_allocatable: Option<Vec<String>>,
    pub system_reserved: Option<BTreeMap<String, String>>,
    pub kube_reserved: Option<BTreeMap<String, String>>,
    pub eviction_hard: Option<BTreeMap<String, String>>,
    pub register_with_taints: Option<Vec<k8s_openapi::api::core::v1::Taint>>,
    #[serde(rename = "singleProcessOOMKill")]
    pub single_process_oom_kill: Option<bool>,
    pub enable_server: Option<bool>,
    pub port: Option<u16>,
    pub healthz_port: Option<u16>,
    pub healthz_bind_address: Option<String>,
    pub tls_cert_file: Option<String>,
    pub tls_private_key_file: Option<String>,
    #[serde(rename = "serverTLSBootstrap")]
    pub server_tls_bootstrap: Option<bool>,
    pub rotate_certificates: Option<bool>,
    pub authentication: Option<AuthenticationFile>,
    pub authorization: Option<AuthorizationFile>,
    pub container_log_max_size: Option<String>,
    pub container_log_max_files: Option<u32>,
    // Eviction (kubelet's names; `evictionHard` is above).
    pub eviction_soft: Option<BTreeMap<String, String>>,
    pub eviction_soft_grace_period: Option<BTreeMap<String, String>>,
    pub eviction_max_pod_grace_period: Option<i32>,
    pub eviction_minimum_reclaim: Option<BTreeMap<String, String>>,
    pub eviction_pressure_transition_period: Option<String>,
    pub local_storage_capacity_isolation: Option<bool>,
    // Image garbage collection.
    #[serde(rename = "imageGCHighThresholdPercent")]
    pub image_gc_high_threshold_percent: Option<i32>,
    #[serde(rename = "imageGCLowThresholdPercent")]
    pub image_gc_low_threshold_percent: Option<i32>,
    #[serde(rename = "imageMinimumGCAge")]
    pub image_minimum_gc_age: Option<String>,
    // Node housekeeping: PID limits and graceful node shutdown.
    pub pod_pids_limit: Option<i64>,
    pub shutdown_grace_period: Option<String>,
    pub shutdown_grace_period_critical_pods: Option<String>,
    pub shutdown_grace_period_by_pod_priority: Option<Vec<ShutdownGracePeriodByPodPriority>>,
    /// How often each pod volume's `du` is taken; zero or negative turns volume figures off.
    pub volume_stats_agg_period: Option<String>,
    /// The agent's own eviction signal on memory PSI (`eviction::psi`); kubelet has no such key.
    pub eviction_pressure_stall: Option<BTreeMap<String, String>>,
    pub node_status_update_frequency: Option<String>,
    pub node_status_report_frequency: Option<String>,
    pub node_lease_duration_seconds: Option<i32>,
    #[serde(rename = "providerID")]
    pub provider_id: Option<String>,
    pub register_node: Option<bool>,
    pub feature_gates: Option<BTreeMap<String, bool>>,
    /// Fields kubelet knows but this agent does not: accepted with a warning, as kubelet's lenient decoding does.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, serde_yaml::Value>,
    /// Made from flags alone (no `--config`): kubelet's flag defaults apply, not the file's.
    #[serde(skip)]
    pub from_flags_only: bool,
}

/// One entry of `shutdownGracePeriodByPodPriority`: pods of at least this priority (up to the next entry's) get
/// this many seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShutdownGracePeriodByPodPriority {
    pub priority: i32,
    pub shutdown_grace_period_seconds: i64,
}

#[derive(Debug, Default, Deserialize)]
pub struct LoggingConfiguration {
    pub verbosity: Option<u32>,
    pub format: Option<String>,
}

/// `authentication` of the file: x509 client certificates, bearer tokens through TokenReview, anonymous requests.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthenticationFile {
    pub x509: Option<X509File>,
    pub webhook: Option<AuthnWebhookFile>,
    pub anonymous: Option<AnonymousFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509File {
    #[serde(rename = "clientCAFile")]
    pub client_ca_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthnWebhookFile {
    pub enabled: Option<bool>,
    #[serde(rename = "cacheTTL")]
    pub cache_ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct AnonymousFile {
    pub enabled: Option<bool>,
}

/// `authorization` of the file: `AlwaysAllow` or `Webhook` (SubjectAccessReview).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationFile {
    pub mode: Option<String>,
    pub webhook: Option<AuthzWebhookFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthzWebhookFile {
    #[serde(rename = "cacheAuthorizedTTL")]
    pub cache_authorized_ttl: Option<String>,
    #[serde(rename = "cacheUnauthorizedTTL")]
    pub cache_unauthorized_ttl: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorizationMode {
    AlwaysAllow,
    Webhook,
}

/// How the kubelet server authenticates and authorises its callers.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerAuth {
    pub client_ca_file: Option<PathBuf>,
    pub webhook_authentication: bool,
    pub authentication_cache_ttl: Duration,
    pub anonymous: bool,
    pub authorization_mode: AuthorizationMode,
    /// The mode was given (file or flag) rather than defaulted: only then does Webhook without an API server stop
    /// the agent, so that a standalone node with the file's defaults still starts.
    pub authorization_mode_set: bool,
    pub authorized_ttl: Duration,
    pub unauthorized_ttl: Duration,
}

/// Flags that override the file; `None` means "not given on the command line".
#[derive(Debug, Default, Clone)]
pub struct FlagOverrides {
    pub pod_manifest_path: Option<String>,
    pub container_runtime_endpoint: Option<String>,
    pub root_dir: Option<String>,
    pub hostname_override: Option<String>,
    pub read_only_port: Option<u16>,
    pub address: Option<String>,
    pub pod_cidr: Option<String>,
    pub resolv_conf: Option<String>,
    pub verbosity: Option<u32>,
    pub port: Option<u16>,
    pub healthz_port: Option<u16>,
    pub tls_cert_file: Option<String>,
    pub tls_private_key_file: Option<String>,
    pub client_ca_file: Option<String>,
    pub anonymous_auth: Option<bool>,
    pub authentication_token_webhook: Option<bool>,
    pub authorization_mode: Option<String>,
}

/// The resolved configuration the agent runs with.
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    pub node_name: String,
    pub static_pod_path: Option<PathBuf>,
    pub file_check_frequency: Duration,
    pub sync_frequency: Duration,
    pub address: IpAddr,
    pub read_only_port: u16,
    pub container_runtime_endpoint: String,
    pub root_dir: PathBuf,
    pub pod_logs_dir: PathBuf,
    pub serialize_image_pulls: bool,
    pub max_pods: u32,
    pub pod_cidr: Option<String>,
    pub cni_conf_dir: PathBuf,
    pub cni_bridge_name: String,
    pub cluster_dns: Vec<IpAddr>,
    pub cluster_domain: String,
    pub resolv_conf: PathBuf,
    /// Sysctls (or `prefix*` patterns) pods may set beyond the safe ones, checked to be namespaced.
    pub allowed_unsafe_sysctls: Vec<String>,
    pub seccomp_default: bool,
    pub verbosity: u32,
    pub cgroup_driver: CgroupDriver,
    pub cgroups_per_qos: bool,
    pub enforce_node_allocatable: Vec<String>,
    pub system_reserved: CpuMemory,
    pub kube_reserved: CpuMemory,
    pub register_with_taints: Vec<k8s_openapi::api::core::v1::Taint>,
    pub single_process_oom_kill: bool,
    pub enable_server: bool,
    pub port: u16,
    pub healthz_port: u16,
    pub healthz_bind_address: IpAddr,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_private_key_file: Option<PathBuf>,
    /// The serving certificate comes from the cluster (`kubernetes.io/kubelet-serving` CSR), rotated before expiry.
    pub server_tls_bootstrap: bool,
    /// The client certificate is renewed from the cluster before it expires (kubelet's default: off; kubeadm sets it).
    pub rotate_certificates: bool,
    pub auth: ServerAuth,
    pub container_log_max_size: i128,
    pub container_log_max_files: u32,
    /// The eviction manager's thresholds and periods (`evictionHard` with kubelet's defaults, `evictionSoft`...).
    pub eviction: EvictionConfig,
    /// Image garbage collection: at or above `image_gc_high_threshold_percent` of the image filesystem used, unused
    /// images at least `image_minimum_gc_age` old are removed down to `image_gc_low_threshold_percent`.
    pub image_gc_high_threshold_percent: i32,
    pub image_gc_low_threshold_percent: i32,
    pub image_minimum_gc_age: Duration,
    // Node housekeeping: PID limits and graceful node shutdown.
    /// kubelet's `podPidsLimit`: each pod cgroup's `pids.max`; -1 (the default) for none.
    pub pod_pids_limit: i64,
    /// kubelet's `shutdownGracePeriod`: how long the node delays its shutdown to stop pods; zero turns graceful
    /// node shutdown off.
    pub shutdown_grace_period: Duration,
    /// kubelet's `shutdownGracePeriodCriticalPods`: the part of `shutdownGracePeriod` kept for critical pods.
    pub shutdown_grace_period_critical_pods: Duration,
    /// kubelet's `shutdownGracePeriodByPodPriority`, instead of the two above.
    pub shutdown_grace_period_by_pod_priority: Vec<ShutdownGracePeriodByPodPriority>,
    /// kubelet's `volumeStatsAggPeriod` (1m, also when zero); `None` when negative (volume figures off).
    pub volume_stats_agg_period: Option<Duration>,
    /// How often the node's status is computed and compared with the Node object (kubelet: 10 s).
    pub node_status_update_frequency: Duration,
    /// How often the status is sent when nothing changed (kubelet: 5 m, or the update frequency when only that is
    /// set).
    pub node_status_report_frequency: Duration,
    /// The node Lease's duration (kubelet: 40 s); it is renewed every quarter of it.
    pub node_lease_duration_seconds: i32,
    /// kubelet's `providerID`: the Node's `spec.providerID` at registration.
    pub provider_id: Option<String>,
    /// kubelet's `registerNode`: whether the agent creates its Node object or waits for someone else to.
    pub register_node: bool,
    /// The `EventedPLEG` feature gate (alpha and off in v1.28): the runtime's container events drive the pod cache.
    pub evented_pleg: bool,
    /// Unknown file fields, reported once logging is up.
    pub warnings: Vec<String>,
}

/// `systemReserved` / `kubeReserved`: cpu and memory (other resources are accepted and not enforced).
fn parse_reserved(what: &'static str, map: &Option<BTreeMap<String, String>>) -> Result<CpuMemory, ConfigError> {
    let mut out = CpuMemory::default();
    for (k, v) in map.iter().flatten() {
        let invalid = |e: crate::kubetypes::quantity::QuantityError| ConfigError::Invalid {
            what,
            value: format!("{k}={v}"),
            reason: e.to_string(),
        };
        match k.as_str() {
            "cpu" => out.cpu_milli = parse_milli(v).map_err(invalid)?,
            "memory" => out.memory_bytes = parse_value(v).map_err(invalid)?,
            _ => {}
        }
    }
    Ok(out)
}

impl KubeletConfig {
    pub fn reservations(&self, memory_capacity: i128) -> Reservations {
        Reservations {
            system: self.system_reserved,
            kube: self.kube_reserved,
            eviction_hard_memory_bytes: hard_memory_bytes(&self.eviction.thresholds, memory_capacity),
        }
    }

    /// `enforceNodeAllocatable` contains `pods`: the `kubepods` cgroup gets the allocatable memory limit.
    pub fn enforce_pods_allocatable(&self) -> bool {
        self.enforce_node_allocatable.iter().any(|e| e == "pods")
    }
}

/// kubelet's validation of the graceful shutdown settings (pkg/kubelet/apis/config/validation/validation.go).
fn validate_shutdown(
    period: Duration,
    critical: Duration,
    by_priority: &[ShutdownGracePeriodByPodPriority],
) -> Result<(), ConfigError> {
    let invalid = |what: &'static str, value: Duration, reason: String| ConfigError::Invalid {
        what,
        value: crate::kubetypes::duration::format_go_duration(value),
        reason,
    };
    let go = crate::kubetypes::duration::format_go_duration;
    if critical > period {
        return Err(invalid(
            "shutdownGracePeriodCriticalPods",
            critical,
            format!(
                "invalid configuration: shutdownGracePeriodCriticalPods {} must be <= shutdownGracePeriod {}",
                go(critical),
                go(period)
            ),
        ));
    }
    for (what, d) in [("shutdownGracePeriod", period), ("shutdownGracePeriodCriticalPods", critical)] {
        if !d.is_zero() && d < Duration::from_secs(1) {
            return Err(invalid(
                what,
                d,
                format!("invalid configuration: {what} {} must be either zero or otherwise >= 1 sec", go(d)),
            ));
        }
    }
    if !by_priority.is_empty() && (!period.is_zero() || !critical.is_zero()) {
        return Err(invalid(
            "shutdownGracePeriodByPodPriority",
            period,
            "invalid configuration: Cannot specify both shutdownGracePeriodByPodPriority and shutdownGracePeriod at the same time".into(),
        ));
    }
    Ok(())
}

impl KubeletConfigurationFile {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let value: serde_yaml::Value =
            serde_yaml::from_str(text).map_err(|source| ConfigError::Parse { path: path.to_owned(), source })?;
        Self::from_value(path, value)
    }

    /// The file with the fields that flags give laid over it: flags take precedence over the file, as in kubelet.
    pub fn load_with_flags(path: &Path, flag_fields: &serde_yaml::Mapping) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let mut value: serde_yaml::Value =
            serde_yaml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.to_owned(), source })?;
        if let serde_yaml::Value::Mapping(file) = &mut value {
            overlay_flag_fields(file, flag_fields);
        }
        Self::from_value(path, value)
    }

    /// The fields flags give, without a config file: kubelet's flag defaults apply to the rest.
    pub fn from_flags(flag_fields: &serde_yaml::Mapping) -> Result<Self, ConfigError> {
        let mut file = serde_yaml::Mapping::new();
        file.insert("apiVersion".into(), CONFIG_API_VERSION.into());
        file.insert("kind".into(), CONFIG_KIND.into());
        overlay_flag_fields(&mut file, flag_fields);
        let mut file = Self::from_value(Path::new("<flags>"), serde_yaml::Value::Mapping(file))?;
        file.from_flags_only = true;
        Ok(file)
    }

    fn from_value(path: &Path, value: serde_yaml::Value) -> Result<Self, ConfigError> {
        let file: Self =
            serde_yaml::from_value(value).map_err(|source| ConfigError::Parse { path: path.to_owned(), source })?;
        let api_version = file.api_version.clone().unwrap_or_default();
        if api_version != CONFIG_API_VERSION {
            return Err(ConfigError::ApiVersion { path: path.to_owned(), found: api_version });
        }
        let kind = file.kind.clone().unwrap_or_default();
        if kind != CONFIG_KIND {
            return Err(ConfigError::Kind { path: path.to_owned(), found: kind });
        }
        Ok(file)
    }
}

/// The feature gate of kubelet's evented PLEG.
pub const EVENTED_PLEG: &str = "EventedPLEG";
/// The feature gates the agent acts on; others are accepted with a warning.
const SUPPORTED_FEATURE_GATES: [&str; 1] = [EVENTED_PLEG];

/// Lays the flags' fields over the file's: a field a flag gives replaces the file's, except inside the nested
/// structs (`authentication`, `authorization`) and `featureGates`, where only the keys the flags give are replaced
/// (kubelet merges `--feature-gates` into the file's gates).
fn overlay_flag_fields(file: &mut serde_yaml::Mapping, flag_fields: &serde_yaml::Mapping) {
    const NESTED: [&str; 6] = ["authentication", "authorization", "webhook", "x509", "anonymous", "featureGates"];
    for (key, value) in flag_fields {
        let nested = key.as_str().is_some_and(|k| NESTED.contains(&k));
        match (file.get_mut(key), value) {
            (Some(serde_yaml::Value::Mapping(inner)), serde_yaml::Value::Mapping(flags)) if nested => {
                overlay_flag_fields(inner, flags)
            }
            _ => {
                file.insert(key.clone(), value.clone());
            }
        }
    }
}

impl KubeletConfig {
    /// Merges the file (if any) with flags and applies kubelet's defaults.
    pub fn resolve(
        file: Option<(&Path, KubeletConfigurationFile)>,
        flags: &FlagOverrides,
        hostname: &str,
    ) -> Result<Self, ConfigError> {
        // Without a file, kubelet's flag defaults apply: anonymous requests allowed, no token webhook, AlwaysAllow
        // (its `applyLegacyDefaults`); a file brings the v1beta1 defaults: no anonymous, webhook on, Webhook mode.
        let legacy_defaults = file.as_ref().is_none_or(|(_, f)| f.from_flags_only);
        let (path, file) = match file {
            Some((p, f)) => (p.to_owned(), f),
            None => (PathBuf::from("<none>"), KubeletConfigurationFile::default()),
        };
        // kubelet's v1beta1 defaulting treats a zero duration as unset (`== zeroDuration`): kubeadm's
        // kubelet-config writes `0s` for most of them and means kubelet's defaults.
        let duration = |field: &'static str, value: &Option<String>, default: Duration| match value {
            None => Ok(default),
            Some(v) => match crate::kubetypes::duration::parse_go_duration(v) {
                Ok(d) if d.is_zero() => Ok(default),
                Ok(d) => Ok(d),
                Err(reason) => Err(ConfigError::Duration { path: path.clone(), field, reason }),
            },
        };
        let file_check_frequency =
            duration("fileCheckFrequency", &file.file_check_frequency, DEFAULT_FILE_CHECK_FREQUENCY)?;
        let sync_frequency = duration("syncFrequency", &file.sync_frequency, DEFAULT_SYNC_FREQUENCY)?;
        // Zero when unset: kubelet's defaulting makes an update frequency set alone the report frequency too.
        let update_given = duration("nodeStatusUpdateFrequency", &file.node_status_update_frequency, Duration::ZERO)?;
        let (node_status_update_frequency, report_default) = if update_given.is_zero() {
            (DEFAULT_NODE_STATUS_UPDATE_FREQUENCY, DEFAULT_NODE_STATUS_REPORT_FREQUENCY)
        } else {
            (update_given, update_given)
        };
        let node_status_report_frequency =
            duration("nodeStatusReportFrequency", &file.node_status_report_frequency, report_default)?;

        // kubelet lower-cases the node name derived from the hostname or the override.
        let node_name = flags.hostname_override.as_deref().unwrap_or(hostname).trim().to_lowercase();
        if node_name.is_empty() {
            return Err(ConfigError::Invalid {
                what: "node name",
                value: node_name,
                reason: "empty: set --hostname-override".into(),
            });
        }

        let address_text = flags.address.clone().or(file.address.clone()).unwrap_or_else(|| "0.0.0.0".into());
        let address = address_text.parse().map_err(|e: std::net::AddrParseError| ConfigError::Invalid {
            what: "address",
            value: address_text.clone(),
            reason: e.to_string(),
        })?;
        let cluster_dns = file
            .cluster_dns
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|s| {
                s.parse().map_err(|e: std::net::AddrParseError| ConfigError::Invalid {
                    what: "clusterDNS entry",
                    value: s.clone(),
                    reason: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;

        let allowed_unsafe_sysctls = file.allowed_unsafe_sysctls.clone().unwrap_or_default();
        if let Err(e) = SysctlAllowlist::new(&allowed_unsafe_sysctls) {
            return Err(ConfigError::Invalid {
                what: "allowedUnsafeSysctls",
                value: allowed_unsafe_sysctls.join(","),
                reason: e.to_string(),
            });
        }

        let static_pod_path = flags
            .pod_manifest_path
            .clone()
            .or(file.static_pod_path.clone())
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        let feature_gates = file.feature_gates.clone().unwrap_or_default();
        let warnings = file
            .unknown
            .keys()
            .map(|k| format!("config file {}: field {k:?} is not supported by rkubelet and is ignored", path.display()))
            .chain(
                feature_gates
                    .keys()
                    .filter(|g| !SUPPORTED_FEATURE_GATES.contains(&g.as_str()))
                    .map(|g| format!("featureGates: {g:?} is not supported by rkubelet and is ignored")),
            )
            .collect();

        let cgroup_driver = file.cgroup_driver.as_deref().unwrap_or("cgroupfs").parse().map_err(|reason| {
            ConfigError::Invalid { what: "cgroupDriver", value: file.cgroup_driver.clone().unwrap_or_default(), reason }
        })?;
        let enforce_node_allocatable = file.enforce_node_allocatable.clone().unwrap_or_else(|| vec!["pods".into()]);
        let eviction = EvictionConfig {
            thresholds: parse_threshold_config(&ThresholdSettings {
                hard: file.eviction_hard.as_ref(),
                soft: file.eviction_soft.as_ref(),
                soft_grace_period: file.eviction_soft_grace_period.as_ref(),
                minimum_reclaim: file.eviction_minimum_reclaim.as_ref(),
                enforce_node_allocatable: &enforce_node_allocatable,
            })
            .map_err(|source| ConfigError::Eviction { path: path.clone(), source })?,
            max_pod_grace_period_seconds: file.eviction_max_pod_grace_period.unwrap_or(0).into(),
            pressure_transition_period: duration(
                "evictionPressureTransitionPeriod",
                &file.eviction_pressure_transition_period,
                DEFAULT_PRESSURE_TRANSITION_PERIOD,
            )?,
            local_storage_capacity_isolation: file.local_storage_capacity_isolation.unwrap_or(true),
            pressure_stall: crate::eviction::psi::parse_thresholds(
                file.eviction_pressure_stall.as_ref().unwrap_or(&BTreeMap::new()),
            )?,
        };

        let healthz_text = file.healthz_bind_address.clone().unwrap_or_else(|| DEFAULT_HEALTHZ_BIND_ADDRESS.into());
        let healthz_bind_address = healthz_text.parse().map_err(|e: std::net::AddrParseError| {
            ConfigError::Invalid { what: "healthzBindAddress", value: healthz_text.clone(), reason: e.to_string() }
        })?;
        let authn = file.authentication.as_ref();
        let authz = file.authorization.as_ref();
        let mode_text = flags
            .authorization_mode
            .clone()
            .or(authz.and_then(|a| a.mode.clone()))
            .unwrap_or_else(|| if legacy_defaults { "AlwaysAllow" } else { "Webhook" }.into());
        let authorization_mode = match mode_text.as_str() {
            "AlwaysAllow" => AuthorizationMode::AlwaysAllow,
            "Webhook" => AuthorizationMode::Webhook,
            _ => {
                return Err(ConfigError::Invalid {
                    what: "authorization.mode",
                    value: mode_text,
                    reason: "want AlwaysAllow or Webhook".into(),
                })
            }
        };
        let authz_webhook = authz.and_then(|a| a.webhook.as_ref());
        let auth = ServerAuth {
            client_ca_file: flags
                .client_ca_file
                .clone()
                .or(authn.and_then(|a| a.x509.as_ref()).and_then(|x| x.client_ca_file.clone()))
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
            webhook_authentication: flags
                .authentication_token_webhook
                .or(authn.and_then(|a| a.webhook.as_ref()).and_then(|w| w.enabled))
                .unwrap_or(!legacy_defaults),
            authentication_cache_ttl: duration(
                "authentication.webhook.cacheTTL",
                &authn.and_then(|a| a.webhook.as_ref()).and_then(|w| w.cache_ttl.clone()),
                DEFAULT_AUTHENTICATION_CACHE_TTL,
            )?,
            anonymous: flags
                .anonymous_auth
                .or(authn.and_then(|a| a.anonymous.as_ref()).and_then(|a| a.enabled))
                .unwrap_or(legacy_defaults),
            authorization_mode,
            authorization_mode_set: flags.authorization_mode.is_some() || authz.is_some_and(|a| a.mode.is_some()),
            authorized_ttl: duration(
                "authorization.webhook.cacheAuthorizedTTL",
                &authz_webhook.and_then(|w| w.cache_authorized_ttl.clone()),
                DEFAULT_AUTHORIZED_CACHE_TTL,
            )?,
            unauthorized_ttl: duration(
                "authorization.webhook.cacheUnauthorizedTTL",
                &authz_webhook.and_then(|w| w.cache_unauthorized_ttl.clone()),
                DEFAULT_UNAUTHORIZED_CACHE_TTL,
            )?,
        };
        let max_size_text =
            file.container_log_max_size.clone().unwrap_or_else(|| DEFAULT_CONTAINER_LOG_MAX_SIZE.into());
        let container_log_max_size = parse_value(&max_size_text).map_err(|e| ConfigError::Invalid {
            what: "containerLogMaxSize",
            value: max_size_text.clone(),
            reason: e.to_string(),
        })?;
        // kubelet's defaults and validation (apis/config/v1beta1/defaults.go, apis/config/validation/validation.go).
        let image_gc_high_threshold_percent =
            file.image_gc_high_threshold_percent.unwrap_or(DEFAULT_IMAGE_GC_HIGH_THRESHOLD_PERCENT);
        let image_gc_low_threshold_percent =
            file.image_gc_low_threshold_percent.unwrap_or(DEFAULT_IMAGE_GC_LOW_THRESHOLD_PERCENT);
        for (what, value) in [
            ("imageGCHighThresholdPercent", image_gc_high_threshold_percent),
            ("imageGCLowThresholdPercent", image_gc_low_threshold_percent),
        ] {
            if !(0..=100).contains(&value) {
                let reason = "must be between 0 and 100, inclusive".into();
                return Err(ConfigError::Invalid { what, value: value.to_string(), reason });
            }
        }
        if image_gc_low_threshold_percent >= image_gc_high_threshold_percent {
            return Err(ConfigError::Invalid {
                what: "imageGCLowThresholdPercent",
                value: image_gc_low_threshold_percent.to_string(),
                reason: format!("must be less than imageGCHighThresholdPercent {image_gc_high_threshold_percent}"),
            });
        }
        let image_minimum_gc_age =
            duration("imageMinimumGCAge", &file.image_minimum_gc_age, DEFAULT_IMAGE_MINIMUM_GC_AGE)?;
        // Node housekeeping: PID limits and graceful node shutdown.
        let shutdown_grace_period = duration("shutdownGracePeriod", &file.shutdown_grace_period, Duration::ZERO)?;
        let shutdown_grace_period_critical_pods =
            duration("shutdownGracePeriodCriticalPods", &file.shutdown_grace_period_critical_pods, Duration::ZERO)?;
        let shutdown_grace_period_by_pod_priority =
            file.shutdown_grace_period_by_pod_priority.clone().unwrap_or_default();
        validate_shutdown(
            shutdown_grace_period,
            shutdown_grace_period_critical_pods,
            &shutdown_grace_period_by_pod_priority,
        )?;
        let path_of = |flag: &Option<String>, field: &Option<String>| {
            flag.clone().or(field.clone()).filter(|s| !s.is_empty()).map(PathBuf::from)
        };

        Ok(KubeletConfig {
            enable_server: file.enable_server.unwrap_or(true),
            port: flags.port.or(file.port).unwrap_or(DEFAULT_PORT),
            healthz_port: flags.healthz_port.or(file.healthz_port).unwrap_or(DEFAULT_HEALTHZ_PORT),
            healthz_bind_address,
            tls_cert_file: path_of(&flags.tls_cert_file, &file.tls_cert_file),
            tls_private_key_file: path_of(&flags.tls_private_key_file, &file.tls_private_key_file),
            server_tls_bootstrap: file.server_tls_bootstrap.unwrap_or(false),
            rotate_certificates: file.rotate_certificates.unwrap_or(false),
            auth,
            container_log_max_size,
            container_log_max_files: file.container_log_max_files.unwrap_or(DEFAULT_CONTAINER_LOG_MAX_FILES),
            volume_stats_agg_period: match file.volume_stats_agg_period.as_deref().map(str::trim) {
                Some(v) if v.starts_with('-') => None,
                v => Some(duration(
                    "volumeStatsAggPeriod",
                    &v.map(str::to_owned),
                    crate::stats::volumes::DEFAULT_VOLUME_STATS_AGG_PERIOD,
                )?),
            },
            node_status_update_frequency,
            node_status_report_frequency,
            node_lease_duration_seconds: match file.node_lease_duration_seconds {
                None | Some(0) => DEFAULT_NODE_LEASE_DURATION_SECONDS,
                Some(n) if n > 0 => n,
                Some(n) => {
                    return Err(ConfigError::Invalid {
                        what: "nodeLeaseDurationSeconds",
                        value: n.to_string(),
                        reason: "must be greater than 0".into(),
                    })
                }
            },
            provider_id: file.provider_id.clone().filter(|p| !p.is_empty()),
            register_node: file.register_node.unwrap_or(true),
            evented_pleg: feature_gates.get(EVENTED_PLEG).copied().unwrap_or(false),
            cgroup_driver,
            cgroups_per_qos: file.cgroups_per_qos.unwrap_or(true),
            enforce_node_allocatable,
            system_reserved: parse_reserved("systemReserved", &file.system_reserved)?,
            kube_reserved: parse_reserved("kubeReserved", &file.kube_reserved)?,
            eviction,
            register_with_taints: file.register_with_taints.clone().unwrap_or_default(),
            single_process_oom_kill: file.single_process_oom_kill.unwrap_or(false),
            node_name,
            static_pod_path,
            file_check_frequency,
            sync_frequency,
            address,
            read_only_port: flags.read_only_port.or(file.read_only_port).unwrap_or(0),
            container_runtime_endpoint: flags
                .container_runtime_endpoint
                .clone()
                .or(file.container_runtime_endpoint.clone())
                .unwrap_or_else(|| DEFAULT_RUNTIME_ENDPOINT.into()),
            root_dir: PathBuf::from(flags.root_dir.clone().unwrap_or_else(|| DEFAULT_ROOT_DIR.into())),
            pod_logs_dir: PathBuf::from(file.pod_logs_dir.clone().unwrap_or_else(|| DEFAULT_POD_LOGS_DIR.into())),
            serialize_image_pulls: file.serialize_image_pulls.unwrap_or(true),
            max_pods: file.max_pods.unwrap_or(DEFAULT_MAX_PODS),
            pod_cidr: flags.pod_cidr.clone().or(file.pod_cidr.clone()).filter(|s| !s.is_empty()),
            cni_conf_dir: PathBuf::from(file.cni_conf_dir.clone().unwrap_or_else(|| DEFAULT_CNI_CONF_DIR.into())),
            cni_bridge_name: file.cni_bridge_name.clone().unwrap_or_else(|| DEFAULT_CNI_BRIDGE_NAME.into()),
            cluster_dns,
            cluster_domain: file.cluster_domain.clone().unwrap_or_else(|| DEFAULT_CLUSTER_DOMAIN.into()),
            resolv_conf: PathBuf::from(
                flags.resolv_conf.clone().or(file.resolv_conf.clone()).unwrap_or_else(|| DEFAULT_RESOLV_CONF.into()),
            ),
            allowed_unsafe_sysctls,
            seccomp_default: file.seccomp_default.unwrap_or(false),
            verbosity: flags.verbosity.or(file.logging.as_ref().and_then(|l| l.verbosity)).unwrap_or(0),
            image_gc_high_threshold_percent,
            image_gc_low_threshold_percent,
            image_minimum_gc_age,
            warnings,
            // Node housekeeping: PID limits and graceful node shutdown.
            // kubelet's v1beta1 defaulting turns an unset or negative limit into -1.
            pod_pids_limit: file.pod_pids_limit.filter(|l| *l >= 0).unwrap_or(-1),
            shutdown_grace_period,
            shutdown_grace_period_critical_pods,
            shutdown_grace_period_by_pod_priority,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<KubeletConfigurationFile, ConfigError> {
        KubeletConfigurationFile::parse(Path::new("/etc/rkubelet/config.yaml"), text)
    }

    #[test]
    fn feature_gates_from_flags_are_merged_into_the_files_and_evented_pleg_is_honoured() {
        let dir = std::env::temp_dir().join(format!("rkubelet-feature-gates-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.yaml");
        std::fs::write(
            &path,
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
             featureGates:\n  EventedPLEG: false\n  Foo: true\n",
        )
        .unwrap();
        let resolve = |flags: &str| {
            let flags: serde_yaml::Mapping = serde_yaml::from_str(flags).unwrap();
            let file = KubeletConfigurationFile::load_with_flags(&path, &flags).unwrap();
            KubeletConfig::resolve(Some((Path::new("/c.yaml"), file)), &FlagOverrides::default(), "h").unwrap()
        };
        let c = resolve("{}");
        assert!(!c.evented_pleg);
        let c = resolve("featureGates:\n  EventedPLEG: true\n");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(c.evented_pleg, "the flag's gate wins");
        assert_eq!(
            c.warnings,
            ["featureGates: \"Foo\" is not supported by rkubelet and is ignored"],
            "the file's stays"
        );
    }

    #[test]
    fn flag_fields_replace_the_files_and_keep_its_nested_neighbours() {
        let dir = std::env::temp_dir().join(format!("rkubelet-flag-fields-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.yaml");
        std::fs::write(
            &path,
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nmaxPods: 20\n\
             clusterDNS: [10.0.0.1]\nauthentication:\n  anonymous:\n    enabled: true\n  webhook:\n    enabled: false\n",
        )
        .unwrap();
        let flags: serde_yaml::Mapping =
            serde_yaml::from_str("maxPods: 30\nauthentication:\n  webhook:\n    cacheTTL: 1m\n").unwrap();
        let file = KubeletConfigurationFile::load_with_flags(&path, &flags).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(file.max_pods, Some(30), "the flag wins");
        assert_eq!(file.cluster_dns, Some(vec!["10.0.0.1".to_owned()]), "fields no flag gives stay");
        let authn = file.authentication.as_ref().unwrap();
        assert_eq!(authn.anonymous.as_ref().and_then(|a| a.enabled), Some(true), "nested neighbours stay");
        let webhook = authn.webhook.as_ref().unwrap();
        assert_eq!((webhook.enabled, webhook.cache_ttl.as_deref()), (Some(false), Some("1m")));

        // Without --config, kubelet's flag defaults (anonymous allowed, AlwaysAllow) still apply.
        let only = KubeletConfigurationFile::from_flags(&flags).unwrap();
        let config =
            KubeletConfig::resolve(Some((Path::new("<flags>"), only)), &FlagOverrides::default(), "h").unwrap();
        assert_eq!(config.max_pods, 30);
        assert!(config.auth.anonymous);
        assert_eq!(config.auth.authorization_mode, AuthorizationMode::AlwaysAllow);
        assert_eq!(config.auth.authentication_cache_ttl, Duration::from_secs(60));
    }

    #[test]
    fn rejects_unknown_api_version_and_kind() {
        let err = parse("apiVersion: kubelet.config.k8s.io/v1alpha9\nkind: KubeletConfiguration\n").unwrap_err();
        assert!(matches!(err, ConfigError::ApiVersion { .. }), "{err}");
        assert!(err.to_string().contains("v1alpha9"));
        let err = parse("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeProxyConfiguration\n").unwrap_err();
        assert!(matches!(err, ConfigError::Kind { .. }), "{err}");
        let err = parse("kind: KubeletConfiguration\n").unwrap_err();
        assert!(matches!(err, ConfigError::ApiVersion { .. }), "{err}");
    }

    #[test]
    fn malformed_file_is_a_parse_error_naming_the_file() {
        let err = parse("apiVersion: [unclosed\n").unwrap_err();
        assert!(err.to_string().contains("/etc/rkubelet/config.yaml"), "{err}");
    }

    #[test]
    fn defaults_match_kubelet() {
        let c = KubeletConfig::resolve(None, &FlagOverrides::default(), "Node-A").unwrap();
        assert_eq!(c.node_name, "node-a");
        assert_eq!(c.container_runtime_endpoint, DEFAULT_RUNTIME_ENDPOINT);
        assert_eq!(c.root_dir, PathBuf::from("/var/lib/rkubelet"));
        assert_eq!(c.pod_logs_dir, PathBuf::from("/var/log/pods"));
        assert_eq!(c.read_only_port, 0);
        assert_eq!(c.file_check_frequency, Duration::from_secs(20));
        assert_eq!(c.max_pods, 110);
        assert!(c.serialize_image_pulls);
        assert!(c.static_pod_path.is_none());
        assert_eq!(c.cgroup_driver, CgroupDriver::Cgroupfs);
        assert!(c.cgroups_per_qos);
        assert!(c.enforce_pods_allocatable());
        assert_eq!(c.reservations(1 << 30).eviction_hard_memory_bytes, 100 << 20);
        assert_eq!(c.eviction.thresholds.len(), 5, "kubelet's four defaults and the allocatable copy");
        assert_eq!(c.eviction.pressure_transition_period, Duration::from_secs(300));
        assert_eq!(c.eviction.max_pod_grace_period_seconds, 0);
        assert_eq!(c.address, "0.0.0.0".parse::<IpAddr>().unwrap());
        assert_eq!((c.port, c.healthz_port), (10250, 10248));
        assert_eq!(c.healthz_bind_address, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(c.container_log_max_size, 10 << 20);
        assert_eq!(c.container_log_max_files, 5);
        assert_eq!(c.pod_pids_limit, -1);
        // Flag defaults (no file): kubelet's legacy anonymous + AlwaysAllow.
        assert!(c.auth.anonymous && !c.auth.webhook_authentication);
        assert_eq!(c.auth.authorization_mode, AuthorizationMode::AlwaysAllow);
        assert!(!c.auth.authorization_mode_set);
    }

    #[test]
    fn a_config_file_brings_the_v1beta1_server_auth_defaults() {
        let file = parse("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n").unwrap();
        let c = KubeletConfig::resolve(Some((Path::new("/c.yaml"), file)), &FlagOverrides::default(), "h").unwrap();
        assert!(!c.auth.anonymous && c.auth.webhook_authentication);
        assert_eq!(c.auth.authorization_mode, AuthorizationMode::Webhook);
        assert!(!c.auth.authorization_mode_set, "defaulted, not set");
        assert_eq!(c.auth.authentication_cache_ttl, Duration::from_secs(120));
        assert_eq!(
            (c.auth.authorized_ttl, c.auth.unauthorized_ttl),
            (Duration::from_secs(300), Duration::from_secs(30))
        );
        let file = parse(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nport: 11250\n\
             authentication: {anonymous: {enabled: true}, webhook: {enabled: false, cacheTTL: 10s}, \
             x509: {clientCAFile: /pki/ca.crt}}\nauthorization: {mode: AlwaysAllow}\ntlsCertFile: /pki/k.crt\n",
        )
        .unwrap();
        let c = KubeletConfig::resolve(Some((Path::new("/c.yaml"), file)), &FlagOverrides::default(), "h").unwrap();
        assert_eq!(c.port, 11250);
        assert!(c.auth.anonymous && !c.auth.webhook_authentication);
        assert_eq!(c.auth.authentication_cache_ttl, Duration::from_secs(10));
        assert_eq!(c.auth.client_ca_file, Some(PathBuf::from("/pki/ca.crt")));
        assert_eq!(c.auth.authorization_mode, AuthorizationMode::AlwaysAllow);
        assert!(c.auth.authorization_mode_set);
        assert_eq!(c.tls_cert_file, Some(PathBuf::from("/pki/k.crt")));
        let file = parse(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nauthorization: {mode: RBAC}\n",
        )
        .unwrap();
        let e = KubeletConfig::resolve(Some((Path::new("/c.yaml"), file)), &FlagOverrides::default(), "h").unwrap_err();
        assert!(e.to_string().contains("authorization.mode"), "{e}");
    }

    #[test]
    fn rotate_certificates_is_read_and_off_by_default() {
        let resolve = |extra: &str| {
            let file =
                parse(&format!("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n{extra}"))
                    .unwrap();
            KubeletConfig::resolve(Some((Path::new("/c.yaml"), file)), &FlagOverrides::default(), "h").unwrap()
        };
        assert!(!resolve("").rotate_certificates);
        let on = resolve("rotateCertificates: true\n");
        assert!(on.rotate_certificates);
        assert!(on.warnings.iter().all(|w| !w.contains("rotateCertificates")), "{:?}", on.warnings);
    }

    #[test]
    fn invalid_cgroup_settings_are_named() {
        let file = |extra: &str| {
            parse(&format!("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n{extra}")).unwrap()
        };
        let resolve = |f| KubeletConfig::resolve(Some((Path::new("/c.yaml"), f)), &FlagOverrides::default(), "h");
        let e = resolve(file("cgroupDriver: docker\n")).unwrap_err();
        assert!(e.to_string().contains("cgroupDriver") && e.to_string().contains("docker"), "{e}");
        let e = resolve(file("kubeReserved:\n  memory: a lot\n")).unwrap_err();
        assert!(e.to_string().contains("kubeReserved") && e.to_string().contains("memory=a lot"), "{e}");
        let e = resolve(file("evictionHard:\n  memory.available: 150%\n")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "config file /c.yaml: evictionHard: eviction percentage threshold memory.available must be <= 100%: 150%"
        );
        let e = resolve(file("evictionSoft:\n  nodefs.available: 1Gi\n")).unwrap_err();
        assert!(e.to_string().contains("grace period must be specified for the soft eviction threshold"), "{e}");
        let e = resolve(file("evictionPressureTransitionPeriod: soon\n")).unwrap_err();
        assert!(e.to_string().contains("evictionPressureTransitionPeriod"), "{e}");
        let c = resolve(file(
            "evictionHard: {nodefs.available: 2Gi}\nevictionSoft: {memory.available: 1Gi}\n\
             evictionSoftGracePeriod: {memory.available: 90s}\nevictionMaxPodGracePeriod: 20\n\
             evictionMinimumReclaim: {nodefs.available: 500Mi}\nevictionPressureTransitionPeriod: 30s\n",
        ))
        .unwrap();
        assert_eq!(c.eviction.thresholds.len(), 2, "{:?}", c.eviction.thresholds);
        assert_eq!(c.eviction.max_pod_grace_period_seconds, 20);
        assert_eq!(c.eviction.pressure_transition_period, Duration::from_secs(30));
        assert_eq!(c.reservations(1 << 30).eviction_hard_memory_bytes, 0, "no hard memory threshold given");
    }

    #[test]
    fn allowed_unsafe_sysctls_are_checked_at_start() {
        let file = |extra: &str| {
            parse(&format!("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n{extra}")).unwrap()
        };
        let resolve = |f| KubeletConfig::resolve(Some((Path::new("/c.yaml"), f)), &FlagOverrides::default(), "h");
        let c = resolve(file("allowedUnsafeSysctls: [\"net.core.*\", kernel.msgmax]\n")).unwrap();
        assert_eq!(c.allowed_unsafe_sysctls, vec!["net.core.*", "kernel.msgmax"]);
        assert!(!c.seccomp_default);
        assert!(resolve(file("seccompDefault: true\n")).unwrap().seccomp_default);
        let e = resolve(file("allowedUnsafeSysctls: [vm.swappiness]\n")).unwrap_err();
        assert!(e.to_string().contains("allowedUnsafeSysctls") && e.to_string().contains("not known to be namespaced"));
    }

    #[test]
    fn resolv_conf_flag_wins_over_the_file_and_may_be_empty() {
        let file = || {
            parse("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nresolvConf: /run/r.conf\n")
                .unwrap()
        };
        let resolve = |f, flags: &FlagOverrides| KubeletConfig::resolve(Some((Path::new("/c.yaml"), f)), flags, "h");
        assert_eq!(resolve(file(), &FlagOverrides::default()).unwrap().resolv_conf, PathBuf::from("/run/r.conf"));
        let flags = FlagOverrides { resolv_conf: Some(String::new()), ..Default::default() };
        assert_eq!(resolve(file(), &flags).unwrap().resolv_conf, PathBuf::new(), "empty turns the host's file off");
        let none = KubeletConfig::resolve(None, &FlagOverrides::default(), "h").unwrap();
        assert_eq!(none.resolv_conf, PathBuf::from(DEFAULT_RESOLV_CONF));
    }

    #[test]
    fn flags_override_file() {
        let file = parse(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nstaticPodPath: /etc/manifests\n\
             readOnlyPort: 10255\ncontainerRuntimeEndpoint: unix:///file.sock\nfileCheckFrequency: 5s\n\
             logging:\n  verbosity: 2\nevictionHard:\n  memory.available: 5%\npodCIDR: 10.88.0.0/16\n\
             clusterDNS: [10.96.0.10]\ncniConfDir: /etc/cni/net.d\nfeatureGates:\n  Foo: true\n\
             cgroupDriver: systemd\ncgroupsPerQOS: false\nsystemReserved:\n  cpu: 100m\n  memory: 1Gi\n",
        )
        .unwrap();
        let flags = FlagOverrides {
            container_runtime_endpoint: Some("unix:///flag.sock".into()),
            read_only_port: Some(10266),
            hostname_override: Some("edge-1".into()),
            ..Default::default()
        };
        let c = KubeletConfig::resolve(Some((Path::new("/c.yaml"), file)), &flags, "host").unwrap();
        assert_eq!(c.container_runtime_endpoint, "unix:///flag.sock");
        assert_eq!(c.read_only_port, 10266);
        assert_eq!(c.static_pod_path, Some(PathBuf::from("/etc/manifests")));
        assert_eq!(c.file_check_frequency, Duration::from_secs(5));
        assert_eq!(c.node_name, "edge-1");
        assert_eq!(c.verbosity, 2);
        assert_eq!(c.pod_cidr.as_deref(), Some("10.88.0.0/16"));
        assert_eq!(c.cluster_dns, vec!["10.96.0.10".parse::<IpAddr>().unwrap()]);
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("featureGates: \"Foo\""), "{:?}", c.warnings);
        assert!(!c.evented_pleg, "off by default, as in v1.28");
        assert_eq!(c.cgroup_driver, CgroupDriver::Systemd);
        assert!(!c.cgroups_per_qos);
        assert_eq!(c.system_reserved, CpuMemory { cpu_milli: 100, memory_bytes: 1 << 30 });
        assert_eq!(c.reservations(1000).eviction_hard_memory_bytes, 50);
    }

    #[test]
    fn a_huge_duration_in_the_config_is_a_clear_error() {
        let file = parse(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nsyncFrequency: 99999999999999999999999h\n",
        )
        .unwrap();
        let err =
            KubeletConfig::resolve(Some((Path::new("/c.yaml"), file)), &FlagOverrides::default(), "h").unwrap_err();
        assert_eq!(
            err.to_string(),
            "config file /c.yaml: field syncFrequency: time: invalid duration \"99999999999999999999999h\" \
             (want a Go duration such as \"20s\" or \"1m30s\")"
        );
    }

    #[test]
    fn pod_pids_limit_is_read_and_a_negative_one_means_none() {
        let resolve = |extra: &str| {
            let text = format!("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n{extra}");
            KubeletConfig::resolve(Some((Path::new("/c.yaml"), parse(&text).unwrap())), &FlagOverrides::default(), "h")
                .unwrap()
        };
        let c = resolve("podPidsLimit: 20\n");
        assert_eq!(c.pod_pids_limit, 20);
        assert!(c.warnings.is_empty(), "a known field: {:?}", c.warnings);
        assert_eq!(resolve("podPidsLimit: -5\n").pod_pids_limit, -1);
        assert_eq!(resolve("").pod_pids_limit, -1);
    }

    #[test]
    fn graceful_shutdown_settings_are_read_and_validated_as_kubelet() {
        let resolve = |extra: &str| {
            let text = format!("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n{extra}");
            KubeletConfig::resolve(Some((Path::new("/c.yaml"), parse(&text).unwrap())), &FlagOverrides::default(), "h")
        };
        let c = resolve("").unwrap();
        assert_eq!((c.shutdown_grace_period, c.shutdown_grace_period_critical_pods), (Duration::ZERO, Duration::ZERO));
        assert!(c.shutdown_grace_period_by_pod_priority.is_empty());
        let c = resolve("shutdownGracePeriod: 30s\nshutdownGracePeriodCriticalPods: 10s\n").unwrap();
        assert_eq!(c.shutdown_grace_period, Duration::from_secs(30));
        assert_eq!(c.shutdown_grace_period_critical_pods, Duration::from_secs(10));
        assert!(c.warnings.is_empty(), "known fields: {:?}", c.warnings);
        let c = resolve(
            "shutdownGracePeriodByPodPriority:\n- {priority: 0, shutdownGracePeriodSeconds: 20}\n\
             - {priority: 2000000000, shutdownGracePeriodSeconds: 5}\n",
        )
        .unwrap();
        assert_eq!(
            c.shutdown_grace_period_by_pod_priority,
            vec![
                ShutdownGracePeriodByPodPriority { priority: 0, shutdown_grace_period_seconds: 20 },
                ShutdownGracePeriodByPodPriority { priority: 2_000_000_000, shutdown_grace_period_seconds: 5 },
            ]
        );
        let e = resolve("shutdownGracePeriod: 10s\nshutdownGracePeriodCriticalPods: 20s\n").unwrap_err();
        assert!(
            e.to_string().contains("shutdownGracePeriodCriticalPods 20s must be <= shutdownGracePeriod 10s"),
            "{e}"
        );
        let e = resolve("shutdownGracePeriod: 500ms\n").unwrap_err();
        assert!(e.to_string().contains("must be either zero or otherwise >= 1 sec"), "{e}");
        let e = resolve(
            "shutdownGracePeriod: 10s\nshutdownGracePeriodByPodPriority: [{priority: 0, shutdownGracePeriodSeconds: 5}]\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("Cannot specify both shutdownGracePeriodByPodPriority and shutdownGracePeriod"));
        let e = resolve("shutdownGracePeriod: soon\n").unwrap_err();
        assert!(e.to_string().contains("shutdownGracePeriod"), "{e}");
    }

    #[test]
    fn invalid_duration_names_field() {
        let file =
            parse("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nfileCheckFrequency: soon\n")
                .unwrap();
        let err =
            KubeletConfig::resolve(Some((Path::new("/c.yaml"), file)), &FlagOverrides::default(), "h").unwrap_err();
        assert!(err.to_string().contains("fileCheckFrequency"), "{err}");
    }

    #[test]
    fn image_gc_settings_have_kubelets_defaults_and_validation() {
        let c = KubeletConfig::resolve(None, &FlagOverrides::default(), "h").unwrap();
        assert_eq!(
            (c.image_gc_high_threshold_percent, c.image_gc_low_threshold_percent, c.image_minimum_gc_age),
            (85, 80, Duration::from_secs(120))
        );
        let resolve = |extra: &str| {
            let text = format!("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n{extra}");
            KubeletConfig::resolve(Some((Path::new("/c.yaml"), parse(&text)?)), &FlagOverrides::default(), "h")
        };
        let c =
            resolve("imageGCHighThresholdPercent: 1\nimageGCLowThresholdPercent: 0\nimageMinimumGCAge: 1s\n").unwrap();
        assert_eq!(
            (c.image_gc_high_threshold_percent, c.image_gc_low_threshold_percent, c.image_minimum_gc_age),
            (1, 0, Duration::from_secs(1))
        );
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let e = resolve("imageGCHighThresholdPercent: 101\n").unwrap_err();
        assert!(e.to_string().contains("imageGCHighThresholdPercent") && e.to_string().contains("101"), "{e}");
        let e = resolve("imageGCHighThresholdPercent: 50\nimageGCLowThresholdPercent: 50\n").unwrap_err();
        assert!(e.to_string().contains("must be less than imageGCHighThresholdPercent 50"), "{e}");
        let e = resolve("imageMinimumGCAge: soon\n").unwrap_err();
        assert!(e.to_string().contains("imageMinimumGCAge"), "{e}");
    }
}

#[cfg(test)]
mod volume_stats_and_pressure_stall_tests {
    use super::*;

    fn resolve(yaml: &str) -> Result<KubeletConfig, ConfigError> {
        let text = format!("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n{yaml}");
        let file: KubeletConfigurationFile = serde_yaml::from_str(&text).unwrap();
        KubeletConfig::resolve(Some((Path::new("/c.yaml"), file)), &FlagOverrides::default(), "n")
    }

    fn shipped(text: &str) -> KubeletConfig {
        let file: KubeletConfigurationFile = serde_yaml::from_str(text).unwrap();
        KubeletConfig::resolve(Some((Path::new("/etc/rkubelet/config.yaml"), file)), &FlagOverrides::default(), "n")
            .unwrap()
    }

    #[test]
    fn the_shipped_node_config_serves_like_kubeadms_and_the_standalone_one_on_loopback() {
        let node = shipped(include_str!("../../systemd/config.yaml"));
        assert_eq!(node.address, IpAddr::from([0, 0, 0, 0]));
        assert_eq!(node.read_only_port, 0);
        assert_eq!(node.auth.client_ca_file, Some(PathBuf::from("/etc/kubernetes/pki/ca.crt")));
        assert!(node.auth.webhook_authentication && !node.auth.anonymous);
        assert_eq!(node.auth.authorization_mode, AuthorizationMode::Webhook);
        assert_eq!(node.static_pod_path, Some(PathBuf::from("/etc/kubernetes/manifests")));
        assert_eq!(node.sync_frequency, DEFAULT_SYNC_FREQUENCY);
        let standalone = shipped(include_str!("../../systemd/standalone.yaml"));
        assert_eq!(standalone.address, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(standalone.read_only_port, 10255);
    }

    #[test]
    fn zero_durations_from_kubeadms_kubelet_config_mean_kubelets_defaults() {
        let c = resolve(
            "syncFrequency: 0s\nfileCheckFrequency: 0s\nimageMinimumGCAge: 0s\nevictionPressureTransitionPeriod: 0s\n\
             shutdownGracePeriod: 0s\nauthentication: {webhook: {cacheTTL: 0s}}\n\
             authorization: {mode: Webhook, webhook: {cacheAuthorizedTTL: 0s, cacheUnauthorizedTTL: 0s}}\n",
        )
        .unwrap();
        assert_eq!(c.sync_frequency, DEFAULT_SYNC_FREQUENCY);
        assert_eq!(c.file_check_frequency, DEFAULT_FILE_CHECK_FREQUENCY);
        assert_eq!(c.image_minimum_gc_age, DEFAULT_IMAGE_MINIMUM_GC_AGE);
        assert_eq!(c.eviction.pressure_transition_period, DEFAULT_PRESSURE_TRANSITION_PERIOD);
        assert_eq!(c.shutdown_grace_period, Duration::ZERO, "zero turns graceful shutdown off");
        assert_eq!(c.auth.authentication_cache_ttl, Duration::from_secs(120));
    }

    #[test]
    fn node_status_and_lease_timing_follow_kubelets_defaulting() {
        let secs = Duration::from_secs;
        let c = resolve("").unwrap();
        assert_eq!(
            (c.node_status_update_frequency, c.node_status_report_frequency, c.node_lease_duration_seconds),
            (Duration::from_secs(10), Duration::from_secs(300), 40)
        );
        // An update frequency set alone is the report frequency too; zero means unset.
        let c = resolve("nodeStatusUpdateFrequency: 4s\n").unwrap();
        assert_eq!((c.node_status_update_frequency, c.node_status_report_frequency), (secs(4), secs(4)));
        let c = resolve("nodeStatusUpdateFrequency: 0s\n").unwrap();
        assert_eq!((c.node_status_update_frequency, c.node_status_report_frequency), (secs(10), secs(300)));
        let c = resolve("nodeStatusUpdateFrequency: 4s\nnodeStatusReportFrequency: 1m\n").unwrap();
        assert_eq!((c.node_status_update_frequency, c.node_status_report_frequency), (secs(4), secs(60)));
        assert_eq!(resolve("nodeLeaseDurationSeconds: 0\n").unwrap().node_lease_duration_seconds, 40);
        assert_eq!(resolve("nodeLeaseDurationSeconds: 12\n").unwrap().node_lease_duration_seconds, 12);
        let e = resolve("nodeLeaseDurationSeconds: -1\n").unwrap_err().to_string();
        assert!(e.contains("nodeLeaseDurationSeconds") && e.contains("greater than 0"), "{e}");
        assert!(resolve("nodeStatusReportFrequency: often\n").is_err());
        let c = resolve("providerID: aws:///eu-west-1a/i-0123\nregisterNode: false\n").unwrap();
        assert_eq!((c.provider_id.as_deref(), c.register_node), (Some("aws:///eu-west-1a/i-0123"), false));
        let c = resolve("").unwrap();
        assert_eq!((c.provider_id, c.register_node), (None, true));
    }

    #[test]
    fn volume_stats_agg_period_defaults_to_a_minute_also_at_zero_and_turns_off_below() {
        assert_eq!(resolve("").unwrap().volume_stats_agg_period, Some(Duration::from_secs(60)));
        assert_eq!(
            resolve("volumeStatsAggPeriod: 2s\n").unwrap().volume_stats_agg_period,
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            resolve("volumeStatsAggPeriod: 0s\n").unwrap().volume_stats_agg_period,
            Some(Duration::from_secs(60))
        );
        assert_eq!(resolve("volumeStatsAggPeriod: -1s\n").unwrap().volume_stats_agg_period, None);
        assert!(resolve("volumeStatsAggPeriod: soon\n").is_err());
    }

    #[test]
    fn eviction_pressure_stall_is_off_unless_set_and_checked_at_start() {
        assert!(resolve("").unwrap().eviction.pressure_stall.is_empty());
        let c = resolve("evictionPressureStall:\n  memory.some.avg10: \"20\"\n").unwrap();
        assert_eq!(c.eviction.pressure_stall.len(), 1);
        assert_eq!(c.eviction.pressure_stall[0].percent, 20.0);
        assert!(c.warnings.is_empty(), "a known key: {:?}", c.warnings);
        let e = resolve("evictionPressureStall:\n  cpu.some.avg10: \"20\"\n").unwrap_err();
        assert!(e.to_string().contains("evictionPressureStall: unknown signal \"cpu.some.avg10\""), "{e}");
    }
}
