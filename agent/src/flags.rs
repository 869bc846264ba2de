//! kubelet's command line as kubeadm, k3s and systemd drop-ins write it: every flag of the v1.28 kubelet is
//! accepted. Flags the agent honours reach it (those with a `KubeletConfiguration` field as that field, laid over
//! the config file as kubelet lays its flags over the file); the others are accepted with one warning each, naming
//! them. Flag names are normalised as kubelet's (`--cluster_dns` is `--cluster-dns`), booleans may go without a
//! value, and a flag kubelet does not have is an error, as in kubelet.

use serde_yaml::{Mapping, Value};

/// The kubelet release whose command line this follows; `--version` answers in its form so that kubeadm's
/// preflight (`^\s*Kubernetes v(\d+\.\d+\.\d+)([-\w.+]*)?\s*$`) reads it, the suffix naming the agent.
pub const KUBELET_FLAGS_VERSION: &str = "1.28.7";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A boolean: `--flag` is `--flag=true`.
    Switch,
    /// Takes a value: `--flag=v` or `--flag v`.
    Valued,
}

/// What becomes of a flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    /// Read by the agent's own command-line parser.
    Parser,
    /// Laid over the config file as this `KubeletConfiguration` field (a dotted path for nested fields).
    Field(&'static str, Conv),
    /// kubelet has it; it has no effect here.
    NoEffect,
}

/// How a flag's text becomes a config field's value, as kubelet's flag types parse it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conv {
    Str,
    Boolean,
    Int,
    /// `a,b,c` (pflag's `strings`).
    List,
    /// `k=v,k=v` (`mapStringString`).
    Map,
    /// `k=true,k=false` (`mapStringBool`, `--feature-gates`).
    BoolMap,
    /// `k<v,k<v` (kubelet's eviction thresholds, `LangleSeparatedMapStringString`).
    LangleMap,
    /// `key=value:Effect,key:Effect` (`--register-with-taints`).
    Taints,
}

use Conv::*;
use Kind::*;
use Use::*;

/// Every flag of `kubelet --help` v1.28.7, with what the agent does with it.
const KUBELET_FLAGS: &[(&str, Kind, Use)] = &[
    ("address", Valued, Parser),
    ("allowed-unsafe-sysctls", Valued, Field("allowedUnsafeSysctls", List)),
    ("anonymous-auth", Switch, Parser),
    ("application-metrics-count-limit", Valued, NoEffect),
    ("authentication-token-webhook", Switch, Parser),
    ("authentication-token-webhook-cache-ttl", Valued, Field("authentication.webhook.cacheTTL", Str)),
    ("authorization-mode", Valued, Parser),
    ("authorization-webhook-cache-authorized-ttl", Valued, Field("authorization.webhook.cacheAuthorizedTTL", Str)),
    ("authorization-webhook-cache-unauthorized-ttl", Valued, Field("authorization.webhook.cacheUnauthorizedTTL", Str)),
    ("boot-id-file", Valued, NoEffect),
    ("bootstrap-kubeconfig", Valued, Parser),
    ("cert-dir", Valued, Parser),
    ("cgroup-driver", Valued, Field("cgroupDriver", Str)),
    ("cgroup-root", Valued, NoEffect),
    ("cgroups-per-qos", Switch, Field("cgroupsPerQOS", Boolean)),
    ("client-ca-file", Valued, Parser),
    ("cloud-config", Valued, NoEffect),
    ("cloud-provider", Valued, NoEffect),
    ("cluster-dns", Valued, Field("clusterDNS", List)),
    ("cluster-domain", Valued, Field("clusterDomain", Str)),
    ("config", Valued, Parser),
    ("config-dir", Valued, NoEffect),
    ("container-hints", Valued, NoEffect),
    ("container-log-max-files", Valued, Field("containerLogMaxFiles", Int)),
    ("container-log-max-size", Valued, Field("containerLogMaxSize", Str)),
    ("container-runtime-endpoint", Valued, Parser),
    ("containerd", Valued, NoEffect),
    ("containerd-namespace", Valued, NoEffect),
    ("contention-profiling", Switch, NoEffect),
    ("cpu-cfs-quota", Switch, NoEffect),
    ("cpu-cfs-quota-period", Valued, NoEffect),
    ("cpu-manager-policy", Valued, NoEffect),
    ("cpu-manager-policy-options", Valued, NoEffect),
    ("cpu-manager-reconcile-period", Valued, NoEffect),
    ("enable-controller-attach-detach", Switch, NoEffect),
    ("enable-debugging-handlers", Switch, NoEffect),
    ("enable-load-reader", Switch, NoEffect),
    ("enable-server", Switch, Field("enableServer", Boolean)),
    ("enforce-node-allocatable", Valued, Field("enforceNodeAllocatable", List)),
    ("event-burst", Valued, NoEffect),
    ("event-qps", Valued, NoEffect),
    ("event-storage-age-limit", Valued, NoEffect),
    ("event-storage-event-limit", Valued, NoEffect),
    ("eviction-hard", Valued, Field("evictionHard", LangleMap)),
    ("eviction-max-pod-grace-period", Valued, Field("evictionMaxPodGracePeriod", Int)),
    ("eviction-minimum-reclaim", Valued, Field("evictionMinimumReclaim", Map)),
    ("eviction-pressure-transition-period", Valued, Field("evictionPressureTransitionPeriod", Str)),
    ("eviction-soft", Valued, Field("evictionSoft", LangleMap)),
    ("eviction-soft-grace-period", Valued, Field("evictionSoftGracePeriod", Map)),
    ("exit-on-lock-contention", Switch, NoEffect),
    ("experimental-allocatable-ignore-eviction", Switch, NoEffect),
    ("experimental-mounter-path", Valued, NoEffect),
    ("fail-swap-on", Switch, NoEffect),
    ("feature-gates", Valued, Field("featureGates", BoolMap)),
    ("file-check-frequency", Valued, Field("fileCheckFrequency", Str)),
    ("global-housekeeping-interval", Valued, NoEffect),
    ("hairpin-mode", Valued, NoEffect),
    ("healthz-bind-address", Valued, Field("healthzBindAddress", Str)),
    ("healthz-port", Valued, Parser),
    ("help", Switch, Parser),
    ("hostname-override", Valued, Parser),
    ("housekeeping-interval", Valued, NoEffect),
    ("http-check-frequency", Valued, NoEffect),
    ("image-credential-provider-bin-dir", Valued, NoEffect),
    ("image-credential-provider-config", Valued, NoEffect),
    ("image-gc-high-threshold", Valued, Field("imageGCHighThresholdPercent", Int)),
    ("image-gc-low-threshold", Valued, Field("imageGCLowThresholdPercent", Int)),
    ("image-service-endpoint", Valued, NoEffect),
    ("keep-terminated-pod-volumes", Switch, NoEffect),
    ("kernel-memcg-notification", Switch, NoEffect),
    ("kube-api-burst", Valued, NoEffect),
    ("kube-api-content-type", Valued, NoEffect),
    ("kube-api-qps", Valued, NoEffect),
    ("kube-reserved", Valued, Field("kubeReserved", Map)),
    ("kube-reserved-cgroup", Valued, NoEffect),
    ("kubeconfig", Valued, Parser),
    ("kubelet-cgroups", Valued, NoEffect),
    ("local-storage-capacity-isolation", Switch, Field("localStorageCapacityIsolation", Boolean)),
    ("lock-file", Valued, NoEffect),
    ("log-cadvisor-usage", Switch, NoEffect),
    ("log-flush-frequency", Valued, NoEffect),
    ("log-json-info-buffer-size", Valued, NoEffect),
    ("log-json-split-stream", Switch, NoEffect),
    ("logging-format", Valued, NoEffect),
    ("machine-id-file", Valued, NoEffect),
    ("make-iptables-util-chains", Switch, NoEffect),
    ("manifest-url", Valued, NoEffect),
    ("manifest-url-header", Valued, NoEffect),
    ("max-open-files", Valued, NoEffect),
    ("max-pods", Valued, Field("maxPods", Int)),
    ("maximum-dead-containers", Valued, NoEffect),
    ("maximum-dead-containers-per-container", Valued, NoEffect),
    ("memory-manager-policy", Valued, NoEffect),
    ("minimum-container-ttl-duration", Valued, NoEffect),
    ("minimum-image-ttl-duration", Valued, Field("imageMinimumGCAge", Str)),
    ("node-ip", Valued, Parser),
    ("node-labels", Valued, Parser),
    ("node-status-max-images", Valued, NoEffect),
    ("node-status-update-frequency", Valued, Field("nodeStatusUpdateFrequency", Str)),
    ("oom-score-adj", Valued, NoEffect),
    ("pod-cidr", Valued, Parser),
    ("pod-infra-container-image", Valued, Parser),
    ("pod-manifest-path", Valued, Parser),
    ("pod-max-pids", Valued, Field("podPidsLimit", Int)),
    ("pods-per-core", Valued, NoEffect),
    ("port", Valued, Parser),
    ("protect-kernel-defaults", Switch, NoEffect),
    ("provider-id", Valued, Field("providerID", Str)),
    ("qos-reserved", Valued, NoEffect),
    ("read-only-port", Valued, Parser),
    ("register-node", Switch, Field("registerNode", Boolean)),
    ("register-schedulable", Switch, NoEffect),
    ("register-with-taints", Valued, Field("registerWithTaints", Taints)),
    ("registry-burst", Valued, NoEffect),
    ("registry-qps", Valued, NoEffect),
    ("reserved-cpus", Valued, NoEffect),
    ("reserved-memory", Valued, NoEffect),
    ("resolv-conf", Valued, Parser),
    ("root-dir", Valued, Parser),
    ("rotate-certificates", Switch, Field("rotateCertificates", Boolean)),
    ("rotate-server-certificates", Switch, Field("serverTLSBootstrap", Boolean)),
    ("runonce", Switch, NoEffect),
    ("runtime-cgroups", Valued, NoEffect),
    ("runtime-request-timeout", Valued, NoEffect),
    ("seccomp-default", Switch, Field("seccompDefault", Boolean)),
    ("serialize-image-pulls", Switch, Field("serializeImagePulls", Boolean)),
    ("storage-driver-buffer-duration", Valued, NoEffect),
    ("storage-driver-db", Valued, NoEffect),
    ("storage-driver-host", Valued, NoEffect),
    ("storage-driver-password", Valued, NoEffect),
    ("storage-driver-secure", Switch, NoEffect),
    ("storage-driver-table", Valued, NoEffect),
    ("storage-driver-user", Valued, NoEffect),
    ("streaming-connection-idle-timeout", Valued, NoEffect),
    ("sync-frequency", Valued, Field("syncFrequency", Str)),
    ("system-cgroups", Valued, NoEffect),
    ("system-reserved", Valued, Field("systemReserved", Map)),
    ("system-reserved-cgroup", Valued, NoEffect),
    ("tls-cert-file", Valued, Parser),
    ("tls-cipher-suites", Valued, NoEffect),
    ("tls-min-version", Valued, NoEffect),
    ("tls-private-key-file", Valued, Parser),
    ("topology-manager-policy", Valued, NoEffect),
    ("topology-manager-policy-options", Valued, NoEffect),
    ("topology-manager-scope", Valued, NoEffect),
    ("v", Valued, Parser),
    ("version", Switch, Parser),
    ("vmodule", Valued, NoEffect),
    ("volume-plugin-dir", Valued, NoEffect),
    ("volume-stats-agg-period", Valued, Field("volumeStatsAggPeriod", Str)),
];

/// Short forms kubelet has.
const SHORT_FLAGS: &[(char, &str)] = &[('h', "help"), ('v', "v")];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FlagError {
    /// kubelet's words (`failed to parse kubelet flag: unknown flag: --foo`).
    #[error("failed to parse kubelet flag: unknown flag: --{0}")]
    Unknown(String),
    #[error("failed to parse kubelet flag: unknown shorthand flag: {0:?} in -{0}")]
    UnknownShort(char),
    #[error("failed to parse kubelet flag: flag needs an argument: --{0}")]
    NeedsArgument(String),
    #[error("failed to parse kubelet flag: invalid argument {value:?} for \"--{flag}\" flag: {reason}")]
    Invalid { flag: String, value: String, reason: String },
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
}

/// The command line sorted out.
#[derive(Debug, Default, PartialEq)]
pub struct CommandLine {
    /// What the agent's own parser reads (argv[0] first), every flag as `--name=value`.
    pub parser_args: Vec<String>,
    /// Config fields given by flags, laid over the config file.
    pub config_fields: Mapping,
    /// `--version`: `None`, or its value (`true`, `raw`).
    pub version: Option<String>,
    /// One per flag that has no effect here.
    pub warnings: Vec<String>,
}

/// pflag's `strconv.ParseBool`.
fn parse_go_bool(flag: &str, value: &str) -> Result<bool, FlagError> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(FlagError::Invalid {
            flag: flag.to_owned(),
            value: value.to_owned(),
            reason: format!("strconv.ParseBool: parsing {value:?}: invalid syntax"),
        }),
    }
}

fn pairs<'a>(flag: &str, text: &'a str, sep: char) -> Result<Vec<(&'a str, &'a str)>, FlagError> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once(sep).map(|(k, v)| (k.trim(), v.trim())).ok_or_else(|| FlagError::Invalid {
                flag: flag.to_owned(),
                value: text.to_owned(),
                reason: format!("malformed pair, expect string{sep}string"),
            })
        })
        .collect()
}

fn convert(flag: &str, conv: Conv, text: &str) -> Result<Value, FlagError> {
    let invalid = |reason: String| FlagError::Invalid { flag: flag.to_owned(), value: text.to_owned(), reason };
    Ok(match conv {
        Str => Value::String(text.to_owned()),
        Boolean => Value::Bool(parse_go_bool(flag, text)?),
        Int => Value::Number(
            text.trim().parse::<i64>().map_err(|e| invalid(format!("strconv.ParseInt: parsing {text:?}: {e}")))?.into(),
        ),
        List => Value::Sequence(
            text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| Value::String(s.to_owned())).collect(),
        ),
        BoolMap => {
            let mut map = Mapping::new();
            for (k, v) in pairs(flag, text, '=')? {
                map.insert(Value::String(k.to_owned()), Value::Bool(parse_go_bool(flag, v)?));
            }
            Value::Mapping(map)
        }
        Map | LangleMap => {
            let sep = if conv == LangleMap { '<' } else { '=' };
            let mut map = Mapping::new();
            for (k, v) in pairs(flag, text, sep)? {
                map.insert(Value::String(k.to_owned()), Value::String(v.to_owned()));
            }
            Value::Mapping(map)
        }
        Taints => {
            let mut taints = Vec::new();
            for spec in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let (kv, effect) =
                    spec.rsplit_once(':').ok_or_else(|| invalid(format!("invalid taint spec: {spec}")))?;
                let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
                if key.is_empty() || !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
                    return Err(invalid(format!("invalid taint spec: {spec}")));
                }
                let mut taint = Mapping::new();
                taint.insert("key".into(), key.into());
                if !value.is_empty() {
                    taint.insert("value".into(), value.into());
                }
                taint.insert("effect".into(), effect.into());
                taints.push(Value::Mapping(taint));
            }
            Value::Sequence(taints)
        }
    })
}

/// Sets `path` (dotted) in `fields`, making the mappings on the way.
fn set_field(fields: &mut Mapping, path: &str, value: Value) {
    let mut parts = path.split('.').peekable();
    let mut at = fields;
    while let Some(part) = parts.next() {
        let key = Value::String(part.to_owned());
        if parts.peek().is_none() {
            at.insert(key, value);
            return;
        }
        let next = at.entry(key).or_insert_with(|| Value::Mapping(Mapping::new()));
        if !next.is_mapping() {
            *next = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(m) = next else { return };
        at = m;
    }
}

fn lookup(name: &str) -> Option<(Kind, Use)> {
    KUBELET_FLAGS.iter().find(|(n, _, _)| *n == name).map(|(_, k, u)| (*k, *u))
}

/// Sorts the command line out. `args[0]` is the program.
pub fn parse(args: &[String]) -> Result<CommandLine, FlagError> {
    let mut out = CommandLine { parser_args: args.iter().take(1).cloned().collect(), ..Default::default() };
    let mut warned = std::collections::BTreeSet::new();
    let mut rest = args.iter().skip(1);
    while let Some(arg) = rest.next() {
        let (name, inline) = if let Some(long) = arg.strip_prefix("--") {
            if long.is_empty() {
                // pflag: everything after `--` is an argument, and kubelet takes none.
                return match rest.next() {
                    Some(a) => Err(FlagError::UnknownCommand(a.clone())),
                    None => Ok(out),
                };
            }
            let (n, v) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (long, None),
            };
            // kubelet's `WordSepNormalizeFunc`.
            (n.replace('_', "-"), v)
        } else if let Some(short) = arg.strip_prefix('-').filter(|s| !s.is_empty()) {
            let mut chars = short.chars();
            let c = chars.next().unwrap_or('-');
            let Some((_, long)) = SHORT_FLAGS.iter().find(|(s, _)| *s == c) else {
                return Err(FlagError::UnknownShort(c));
            };
            let tail: String = chars.collect();
            let inline = match tail.strip_prefix('=') {
                Some(v) => Some(v.to_owned()),
                None if tail.is_empty() => None,
                None => Some(tail),
            };
            ((*long).to_owned(), inline)
        } else {
            return Err(FlagError::UnknownCommand(arg.clone()));
        };
        let Some((kind, use_)) = lookup(&name) else {
            return Err(FlagError::Unknown(name));
        };
        let value = match (kind, inline) {
            (Kind::Switch, None) => "true".to_owned(),
            (Kind::Switch, Some(v)) if name == "version" => v,
            (Kind::Switch, Some(v)) => parse_go_bool(&name, &v)?.to_string(),
            (Kind::Valued, Some(v)) => v,
            (Kind::Valued, None) => rest.next().cloned().ok_or_else(|| FlagError::NeedsArgument(name.clone()))?,
        };
        match use_ {
            Parser if name == "version" => out.version = Some(value),
            Parser if name == "help" => {
                if value == "true" {
                    out.parser_args.push("--help".into());
                }
            }
            Parser => out.parser_args.push(format!("--{name}={value}")),
            Field(path, conv) => {
                let value = convert(&name, conv, &value)?;
                set_field(&mut out.config_fields, path, value);
            }
            NoEffect => {
                if warned.insert(name.clone()) {
                    out.warnings.push(format!("flag --{name} is accepted as kubelet's but has no effect on this node"));
                }
            }
        }
    }
    Ok(out)
}

/// What `--version` prints: kubelet's form, the suffix naming this agent.
pub fn version_line(value: &str) -> String {
    let ours = env!("CARGO_PKG_VERSION");
    match value {
        "raw" => format!(
            "version.Info{{Major:\"1\", Minor:\"28\", GitVersion:\"v{KUBELET_FLAGS_VERSION}-rkubelet.{ours}\", \
             Compiler:\"rustc\", Platform:\"linux/{}\"}}",
            std::env::consts::ARCH
        ),
        _ => format!("Kubernetes v{KUBELET_FLAGS_VERSION}-rkubelet.{ours}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        std::iter::once("kubelet").chain(line.split_whitespace()).map(str::to_owned).collect()
    }

    #[test]
    fn kubeadms_command_line_is_accepted() {
        // kubeadm's drop-in and its kubeadm-flags.env on a v1.28 node.
        let line = "--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf \
                    --kubeconfig=/etc/kubernetes/kubelet.conf --config=/var/lib/kubelet/config.yaml \
                    --container-runtime-endpoint=unix:///var/run/containerd/containerd.sock \
                    --pod-infra-container-image=registry.k8s.io/pause:3.9";
        let cl = parse(&args(line)).unwrap();
        // Every flag of that line is honoured: the sandbox image is the one image garbage collection keeps.
        assert_eq!(cl.parser_args, args(line));
        assert!(cl.warnings.is_empty(), "{:?}", cl.warnings);
    }

    #[test]
    fn every_kubelet_flag_is_accepted_and_unknown_ones_fail_as_in_kubelet() {
        for (name, kind, _) in KUBELET_FLAGS {
            let line = match (kind, *name) {
                (_, "help" | "version") => continue,
                (Kind::Switch, _) => format!("--{name}"),
                (Kind::Valued, "register-with-taints") => format!("--{name}=a=b:NoSchedule"),
                (Kind::Valued, "eviction-hard" | "eviction-soft") => format!("--{name}=memory.available<1Gi"),
                (Kind::Valued, n) if n.starts_with("eviction-") && n != "eviction-max-pod-grace-period" => {
                    format!("--{name}=memory.available=1m")
                }
                (Kind::Valued, "kube-reserved" | "system-reserved") => format!("--{name}=cpu=1"),
                (Kind::Valued, "feature-gates") => format!("--{name}=EventedPLEG=true"),
                (Kind::Valued, _) => format!("--{name}=1"),
            };
            assert!(parse(&args(&line)).is_ok(), "{line}");
        }
        assert_eq!(parse(&args("--foo")), Err(FlagError::Unknown("foo".into())));
        assert_eq!(
            parse(&args("--foo")).unwrap_err().to_string(),
            "failed to parse kubelet flag: unknown flag: --foo",
            "kubelet's message"
        );
        assert_eq!(parse(&args("-x")), Err(FlagError::UnknownShort('x')));
        assert_eq!(parse(&args("run")), Err(FlagError::UnknownCommand("run".into())));
        assert_eq!(parse(&args("--kubeconfig")), Err(FlagError::NeedsArgument("kubeconfig".into())));
    }

    #[test]
    fn underscores_are_normalised_and_booleans_go_without_a_value() {
        let cl = parse(&args("--cluster_dns=10.96.0.10 --anonymous-auth --authentication-token-webhook=false -v 4"))
            .unwrap();
        assert_eq!(cl.parser_args, args("--anonymous-auth=true --authentication-token-webhook=false --v=4"));
        assert_eq!(cl.config_fields.get("clusterDNS"), Some(&Value::Sequence(vec!["10.96.0.10".into()])));
        assert!(matches!(parse(&args("--anonymous-auth=maybe")), Err(FlagError::Invalid { .. })));
        assert_eq!(parse(&args("-v=2")).unwrap().parser_args, args("--v=2"));
    }

    #[test]
    fn config_flags_become_the_fields_kubelet_lays_over_the_file() {
        let cl = parse(&args(
            "--eviction-hard=memory.available<200Mi,nodefs.available<5% --max-pods 50 \
             --register-with-taints=dedicated=infra:NoSchedule,gpu:NoExecute --cgroup-driver=systemd \
             --authentication-token-webhook-cache-ttl=1m --system-reserved=cpu=100m,memory=100Mi",
        ))
        .unwrap();
        let yaml = serde_yaml::to_string(&cl.config_fields).unwrap();
        let expected = "evictionHard:\n  memory.available: 200Mi\n  nodefs.available: 5%\nmaxPods: 50\n\
                        registerWithTaints:\n- key: dedicated\n  value: infra\n  effect: NoSchedule\n- key: gpu\n  effect: NoExecute\n\
                        cgroupDriver: systemd\nauthentication:\n  webhook:\n    cacheTTL: 1m\n\
                        systemReserved:\n  cpu: 100m\n  memory: 100Mi\n";
        assert_eq!(yaml, expected);
        assert!(matches!(parse(&args("--max-pods=many")), Err(FlagError::Invalid { .. })));
        assert!(matches!(parse(&args("--register-with-taints=a=b:Sometimes")), Err(FlagError::Invalid { .. })));
        assert!(matches!(parse(&args("--eviction-hard=memory.available")), Err(FlagError::Invalid { .. })));
    }

    #[test]
    fn the_version_reads_as_kubeletss_for_kubeadm() {
        let cl = parse(&args("--version")).unwrap();
        assert_eq!(cl.version.as_deref(), Some("true"));
        let line = version_line("true");
        // kubeadm's preflight pattern.
        let rest = line.strip_prefix("Kubernetes v1.28.7").expect("kubelet's form");
        assert!(rest.starts_with("-rkubelet."), "{line}");
        assert!(rest.chars().all(|c| c.is_ascii_alphanumeric() || "-_.+".contains(c)), "{line}");
    }

    #[test]
    fn feature_gates_are_a_map_of_go_booleans() {
        let cl = parse(&args("--feature-gates=EventedPLEG=true,Foo=F")).unwrap();
        assert_eq!(
            serde_yaml::to_string(&cl.config_fields).unwrap(),
            "featureGates:\n  EventedPLEG: true\n  Foo: false\n"
        );
        assert!(matches!(parse(&args("--feature-gates=EventedPLEG=yes")), Err(FlagError::Invalid { .. })));
        assert!(matches!(parse(&args("--feature-gates=EventedPLEG")), Err(FlagError::Invalid { .. })));
    }

    #[test]
    fn warnings_name_each_flag_once() {
        let cl = parse(&args("--fail-swap-on=false --fail-swap-on --register-schedulable")).unwrap();
        assert_eq!(cl.warnings.len(), 2);
        assert!(cl.warnings[0].contains("--fail-swap-on"));
    }

    #[test]
    fn node_status_provider_and_registration_flags_reach_the_config() {
        let cl =
            parse(&args("--node-status-update-frequency=4s --provider-id=kind://docker/kind/n1 --register-node=false"))
                .unwrap();
        assert!(cl.warnings.is_empty(), "{:?}", cl.warnings);
        assert_eq!(
            serde_yaml::to_string(&cl.config_fields).unwrap(),
            "nodeStatusUpdateFrequency: 4s\nproviderID: kind://docker/kind/n1\nregisterNode: false\n"
        );
    }

    #[test]
    fn rotate_certificates_reaches_the_config() {
        let cl = parse(&args("--rotate-certificates")).unwrap();
        assert!(cl.warnings.is_empty(), "{:?}", cl.warnings);
        assert_eq!(serde_yaml::to_string(&cl.config_fields).unwrap(), "rotateCertificates: true\n");
        let cl = parse(&args("--rotate-certificates=false")).unwrap();
        assert_eq!(serde_yaml::to_string(&cl.config_fields).unwrap(), "rotateCertificates: false\n");
    }
}
