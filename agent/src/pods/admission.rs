//! Pod admission, as kubelet's predicate admit handler decides it (`pkg/kubelet/lifecycle/predicate.go`, which runs
//! the scheduler's `AdmissionCheck` from `pkg/scheduler/eventhandlers.go`): a new pod is admitted against the pods
//! already admitted and still active, and a pod that does not fit is rejected with phase `Failed` and the first
//! failing predicate as its reason. A critical pod short only of resources is admitted by preempting other pods
//! (`pkg/kubelet/preemption/preemption.go`). Pure: node facts in, verdict out.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    Container, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodCondition, PodStatus, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::pods::source::{CONFIG_MIRROR_ANNOTATION, CONFIG_SOURCE_ANNOTATION};
use crate::pods::spec;
use crate::resources::qos::{pod_qos_class, QosClass};
use crate::resources::quantity::parse_milli;

pub const OUT_OF_CPU: &str = "OutOfcpu";
pub const OUT_OF_MEMORY: &str = "OutOfmemory";
pub const OUT_OF_PODS: &str = "OutOfpods";
pub const OUT_OF_EPHEMERAL_STORAGE: &str = "OutOfephemeral-storage";
/// The scheduler plugins' names (`pkg/scheduler/framework/plugins/names`), kubelet's reasons for their failures.
pub const NODE_AFFINITY: &str = "NodeAffinity";
pub const NODE_NAME: &str = "NodeName";
pub const NODE_PORTS: &str = "NodePorts";
pub const TAINT_TOLERATION: &str = "TaintToleration";
pub const POD_OS_SELECTOR_NODE_LABEL_DOES_NOT_MATCH: &str = "PodOSSelectorNodeLabelDoesNotMatch";
pub const POD_OS_NOT_SUPPORTED: &str = "PodOSNotSupported";
/// predicate.go's reason when recovering from a failure (preemption for a critical pod) fails.
pub const UNEXPECTED_ADMISSION_ERROR: &str = "UnexpectedAdmissionError";
/// The victims' status reason and message (`events.PreemptContainer`, preemption.go's `message`).
pub const PREEMPTING: &str = "Preempting";
pub const PREEMPTED_MESSAGE: &str = "Preempted in order to admit critical pod";
/// The `DisruptionTarget` condition kubelet adds to a preempted pod (`PodDisruptionConditions`, on in v1.28).
pub const DISRUPTION_TARGET: &str = "DisruptionTarget";
pub const TERMINATION_BY_KUBELET: &str = "TerminationByKubelet";
pub const PREEMPTED_CONDITION_MESSAGE: &str = "Pod was preempted by Kubelet to accommodate a critical pod.";
/// The OS label kubelet compares with its own OS (`kubernetes.io/os`).
const LABEL_OS: &str = "kubernetes.io/os";
/// `kubetypes.ApiserverSource`: any other config source makes a pod static.
const API_SOURCE: &str = "api";
/// `scheduling.SystemCriticalPriority`: pods at or above it are critical.
const SYSTEM_CRITICAL_PRIORITY: i32 = 2_000_000_000;
/// `framework.DefaultBindAllHostIP`: a host port on it conflicts with the same port on every address.
const DEFAULT_BIND_ALL_HOST_IP: &str = "0.0.0.0";
const RESOURCE_CPU: &str = "cpu";
const RESOURCE_MEMORY: &str = "memory";
const RESOURCE_PODS: &str = "pods";
const RESOURCE_EPHEMERAL_STORAGE: &str = "ephemeral-storage";

/// Resource amounts as the scheduler's `framework.Resource` holds them: cpu in millicores, everything else in whole
/// units (bytes), and the scalar resources (extended, hugepages, `kubernetes.io/`-prefixed, attachable volumes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i128,
    pub memory: i128,
    pub ephemeral_storage: i128,
    pub allowed_pods: i128,
    pub scalar: BTreeMap<String, i128>,
}

impl Resources {
    /// `framework.NewResource`: a resource list (the Node's `status.allocatable`) as amounts.
    pub fn from_list(list: &BTreeMap<String, Quantity>) -> Self {
        let milli: BTreeMap<String, i128> =
            list.iter().filter_map(|(k, q)| parse_milli(&q.0).ok().map(|v| (k.clone(), v))).collect();
        Self::from_milli(&milli, true)
    }

    fn from_milli(list: &BTreeMap<String, i128>, with_pods: bool) -> Self {
        let mut r = Resources::default();
        for (name, &milli) in list {
            let value = value_of_milli(milli);
            match name.as_str() {
                RESOURCE_CPU => r.milli_cpu += milli,
                RESOURCE_MEMORY => r.memory += value,
                RESOURCE_EPHEMERAL_STORAGE => r.ephemeral_storage += value,
                RESOURCE_PODS if with_pods => r.allowed_pods += value,
                n if is_scalar_resource_name(n) => *r.scalar.entry(name.clone()).or_default() += value,
                _ => {}
            }
        }
        r
    }

    fn add(&mut self, other: &Resources) {
        self.milli_cpu += other.milli_cpu;
        self.memory += other.memory;
        self.ephemeral_storage += other.ephemeral_storage;
        for (k, v) in &other.scalar {
            *self.scalar.entry(k.clone()).or_default() += v;
        }
    }
}

/// `resource.Quantity.Value()`: whole units, rounded up.
fn value_of_milli(milli: i128) -> i128 {
    if milli >= 0 {
        (milli + 999) / 1000
    } else {
        milli / 1000
    }
}

/// What admission knows of the node: what kubelet reads from its Node object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The Node's `status.allocatable`; `allowed_pods` is `maxPods`.
    pub allocatable: Resources,
    /// The Node's `spec.taints`.
    pub taints: Vec<Taint>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Cow<'static, str>,
    pub message: String,
}

impl Rejection {
    /// kubelet's `rejectPod` status: Failed, the reason, and the message prefixed as kubelet does.
    pub fn status(&self, pod: &Pod) -> PodStatus {
        PodStatus {
            phase: Some("Failed".into()),
            reason: Some(self.reason.to_string()),
            message: Some(format!("Pod was rejected: {}", self.message)),
            qos_class: Some(pod_qos_class(spec::spec(pod)).as_str().to_owned()),
            ..Default::default()
        }
    }
}

/// The status kubelet gives a pod it preempted for a critical pod: Failed, `Preempting`, with the
/// `DisruptionTarget` condition.
pub fn preempted_status(pod: &Pod) -> PodStatus {
    PodStatus {
        phase: Some("Failed".into()),
        reason: Some(PREEMPTING.into()),
        message: Some(PREEMPTED_MESSAGE.into()),
        conditions: Some(vec![PodCondition {
            type_: DISRUPTION_TARGET.into(),
            status: "True".into(),
            reason: Some(TERMINATION_BY_KUBELET.into()),
            message: Some(PREEMPTED_CONDITION_MESSAGE.into()),
            last_transition_time: Some(Time(jiff::Timestamp::now())),
            ..Default::default()
        }]),
        qos_class: Some(pod_qos_class(spec::spec(pod)).as_str().to_owned()),
        ..Default::default()
    }
}

/// An admitted pod; for a critical pod admitted past a resource shortage, the UIDs of the pods kubelet preempts to
/// make room for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admitted {
    pub preempt: Vec<String>,
}

/// kubelet's `PredicateFailureReason`s: a resource short, or a predicate that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    Insufficient { resource: String, requested: i128, used: i128, capacity: i128 },
    Predicate(&'static str),
}

impl Failure {
    /// predicate.go's mapping of the first failure to the pod's reason and message.
    fn rejection(&self) -> Rejection {
        match self {
            Failure::Insufficient { resource, requested, used, capacity } => Rejection {
                reason: out_of(resource),
                message: format!(
                    "Node didn't have enough resource: {resource}, requested: {requested}, used: {used}, \
                     capacity: {capacity}"
                ),
            },
            Failure::Predicate(name) => {
                Rejection { reason: Cow::Borrowed(name), message: format!("Predicate {name} failed") }
            }
        }
    }
}

/// `OutOf<resource>`: the four fixed reasons borrowed, any other resource's (extended resources are named by the pod
/// author) built for this rejection alone, so no name outlives the pod that asked for it.
fn out_of(resource: &str) -> Cow<'static, str> {
    match resource {
        RESOURCE_CPU => Cow::Borrowed(OUT_OF_CPU),
        RESOURCE_MEMORY => Cow::Borrowed(OUT_OF_MEMORY),
        RESOURCE_PODS => Cow::Borrowed(OUT_OF_PODS),
        RESOURCE_EPHEMERAL_STORAGE => Cow::Borrowed(OUT_OF_EPHEMERAL_STORAGE),
        other => Cow::Owned(format!("OutOf{other}")),
    }
}

/// `types.IsStaticPod`: the pod came from a source other than the API server.
pub fn is_static(pod: &Pod) -> bool {
    annotation(pod, CONFIG_SOURCE_ANNOTATION).is_some_and(|s| s != API_SOURCE)
}

/// `types.IsCriticalPod`: static, mirror, or at `system-cluster-critical` priority or above.
pub fn is_critical(pod: &Pod) -> bool {
    is_static(pod)
        || annotation(pod, CONFIG_MIRROR_ANNOTATION).is_some()
        || spec::spec(pod).priority.is_some_and(|p| p >= SYSTEM_CRITICAL_PRIORITY)
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata.annotations.as_ref().and_then(|a| a.get(key)).map(String::as_str)
}

/// predicate.go's `Admit` for `pod` against `active` (kubelet's active pods: admitted, and not terminated). A
/// critical pod whose only failures are resources gets the pods to preempt, as kubelet's
/// `CriticalPodAdmissionHandler` picks them.
pub fn admit(pod: &Pod, active: &[&Pod], node: &NodeInfo) -> Result<Admitted, Rejection> {
    let mut admitted = Admitted::default();
    let mut reasons = general_filter(pod, active, node);
    if !reasons.is_empty() && is_critical(pod) {
        // Resource shortages are not a reason to reject a critical pod when pods can be preempted for it.
        let (resources, others): (Vec<Failure>, Vec<Failure>) =
            reasons.into_iter().partition(|r| matches!(r, Failure::Insufficient { .. }));
        if others.is_empty() {
            let requirements = resources
                .iter()
                .filter_map(|r| match r {
                    Failure::Insufficient { resource, requested, used, capacity } => {
                        Some(Requirement { resource: resource.clone(), quantity: requested - (capacity - used) })
                    }
                    Failure::Predicate(_) => None,
                })
                .collect();
            match pods_to_preempt(pod, active, requirements) {
                Ok(victims) => admitted.preempt = victims.iter().map(|p| spec::uid(p).to_owned()).collect(),
                Err(e) => {
                    return Err(Rejection {
                        reason: UNEXPECTED_ADMISSION_ERROR.into(),
                        message: format!(
                            "Unexpected error while attempting to recover from admission failure: preemption: \
                             error finding a set of pods to preempt: {e}"
                        ),
                    })
                }
            }
        }
        reasons = others;
    }
    if let Some(first) = reasons.first() {
        return Err(first.rejection());
    }
    // After the predicates, the OS. The node's own OS label is taken to be the agent's OS whatever the Node says,
    // as kubelet's status reconcile would put it back.
    let os = std::env::consts::OS;
    if pod.metadata.labels.as_ref().and_then(|l| l.get(LABEL_OS)).is_some_and(|v| v != os) {
        return Err(Rejection {
            reason: POD_OS_SELECTOR_NODE_LABEL_DOES_NOT_MATCH.into(),
            message: "Failed to admit pod as the `kubernetes.io/os` label doesn't match node label".into(),
        });
    }
    if spec::spec(pod).os.as_ref().is_some_and(|o| o.name != os) {
        return Err(Rejection {
            reason: POD_OS_NOT_SUPPORTED.into(),
            message: "Failed to admit pod as the OS field doesn't match node OS".into(),
        });
    }
    Ok(admitted)
}

/// predicate.go's `generalFilter`: every failure, in the scheduler's order (resources, node affinity, node name,
/// host ports), then an untolerated `NoExecute` taint for pods that are not static.
fn general_filter(pod: &Pod, active: &[&Pod], node: &NodeInfo) -> Vec<Failure> {
    let mut reasons = fits(pod, active, node);
    if !matches_node_selector_and_affinity(pod, node) {
        reasons.push(Failure::Predicate(NODE_AFFINITY));
    }
    if spec::spec(pod).node_name.as_deref().is_some_and(|n| !n.is_empty() && n != node.name) {
        reasons.push(Failure::Predicate(NODE_NAME));
    }
    if !ports_fit(pod, active) {
        reasons.push(Failure::Predicate(NODE_PORTS));
    }
    if !is_static(pod) && has_untolerated_no_execute_taint(pod, &node.taints) {
        reasons.push(Failure::Predicate(TAINT_TOLERATION));
    }
    reasons
}

// ---- resources (`noderesources.Fits`) ----

/// A container's requests in thousandths of a unit, which adds quantities exactly before rounding.
fn container_requests(c: &Container) -> BTreeMap<String, i128> {
    c.resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .map(|l| l.iter().filter_map(|(k, q)| parse_milli(&q.0).ok().map(|v| (k.clone(), v))).collect())
        .unwrap_or_default()
}

fn add_list(into: &mut BTreeMap<String, i128>, from: &BTreeMap<String, i128>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

fn max_list(into: &mut BTreeMap<String, i128>, from: &BTreeMap<String, i128>) {
    for (k, v) in from {
        let e = into.entry(k.clone()).or_insert(*v);
        *e = (*e).max(*v);
    }
}

/// `resource.PodRequests`: app containers and sidecars summed, raised to what any init container needs while it
/// runs (itself plus the sidecars started before it), plus the pod overhead. `keep` filters app container requests.
fn pod_requests(pod: &Pod, keep: impl Fn(&str) -> bool) -> BTreeMap<String, i128> {
    let s = spec::spec(pod);
    let mut reqs = BTreeMap::new();
    for c in &s.containers {
        let mut r = container_requests(c);
        r.retain(|k, _| keep(k));
        add_list(&mut reqs, &r);
    }
    let mut sidecars = BTreeMap::new();
    let mut init = BTreeMap::new();
    for c in s.init_containers.iter().flatten() {
        let r = container_requests(c);
        if c.restart_policy.as_deref() == Some("Always") {
            add_list(&mut reqs, &r);
            add_list(&mut sidecars, &r);
            max_list(&mut init, &sidecars);
        } else {
            let mut running = r;
            add_list(&mut running, &sidecars);
            max_list(&mut init, &running);
        }
    }
    max_list(&mut reqs, &init);
    if let Some(overhead) = &s.overhead {
        let o = overhead.iter().filter_map(|(k, q)| parse_milli(&q.0).ok().map(|v| (k.clone(), v))).collect();
        add_list(&mut reqs, &o);
    }
    reqs
}

/// `v1helper.IsExtendedResourceName`: outside `kubernetes.io/`, with a domain, and valid as a quota name.
fn is_extended_resource_name(name: &str) -> bool {
    !is_native_resource(name) && !name.starts_with("requests.") && is_qualified_name(&format!("requests.{name}"))
}

fn is_native_resource(name: &str) -> bool {
    !name.contains('/') || name.contains("kubernetes.io/")
}

/// `schedutil.IsScalarResourceName`.
fn is_scalar_resource_name(name: &str) -> bool {
    is_extended_resource_name(name)
        || name.starts_with("hugepages-")
        || name.contains("kubernetes.io/")
        || name.starts_with("attachable-volumes-")
}

/// apimachinery's `IsQualifiedName`: an optional DNS-subdomain prefix and a name of at most 63 characters.
fn is_qualified_name(value: &str) -> bool {
    let (prefix, name) = match value.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, value),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && l.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && l.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            })
    });
    name_ok && prefix_ok
}

/// `noderesources.Fits` on the pod kubelet admits: its app containers' requests of extended resources the node
/// does not have are dropped first (predicate.go's `removeMissingExtendedResources`: cluster-level resources).
fn fits(pod: &Pod, active: &[&Pod], node: &NodeInfo) -> Vec<Failure> {
    let alloc = &node.allocatable;
    let keep = |name: &str| !is_extended_resource_name(name) || alloc.scalar.contains_key(name);
    let request = Resources::from_milli(&pod_requests(pod, keep), false);
    let mut used = Resources::default();
    for p in active {
        used.add(&Resources::from_milli(&pod_requests(p, |_| true), false));
    }
    let mut out = Vec::new();
    let mut short = |resource: &str, requested, used, capacity| {
        out.push(Failure::Insufficient { resource: resource.to_owned(), requested, used, capacity })
    };
    let pods = active.len() as i128;
    if pods + 1 > alloc.allowed_pods {
        short(RESOURCE_PODS, 1, pods, alloc.allowed_pods);
    }
    if request.milli_cpu == 0 && request.memory == 0 && request.ephemeral_storage == 0 && request.scalar.is_empty() {
        return out;
    }
    if request.milli_cpu > 0 && request.milli_cpu > alloc.milli_cpu - used.milli_cpu {
        short(RESOURCE_CPU, request.milli_cpu, used.milli_cpu, alloc.milli_cpu);
    }
    if request.memory > 0 && request.memory > alloc.memory - used.memory {
        short(RESOURCE_MEMORY, request.memory, used.memory, alloc.memory);
    }
    if request.ephemeral_storage > 0 && request.ephemeral_storage > alloc.ephemeral_storage - used.ephemeral_storage {
        short(RESOURCE_EPHEMERAL_STORAGE, request.ephemeral_storage, used.ephemeral_storage, alloc.ephemeral_storage);
    }
    // The scheduler walks a Go map here, in no fixed order; by name is one of its orders.
    for (name, &want) in &request.scalar {
        if want == 0 {
            continue;
        }
        let have = alloc.scalar.get(name).copied().unwrap_or(0);
        let in_use = used.scalar.get(name).copied().unwrap_or(0);
        if want > have - in_use {
            short(name, want, in_use, have);
        }
    }
    out
}

// ---- host ports (`nodeports.Fits`, `framework.HostPortInfo`) ----

/// The host ports in use: by host IP, the (protocol, port) pairs. An empty IP is `0.0.0.0`, an empty protocol TCP.
#[derive(Debug, Default)]
struct HostPortInfo(BTreeMap<String, BTreeSet<(String, i32)>>);

fn sanitize(ip: Option<&str>, protocol: Option<&str>) -> (String, String) {
    let ip = ip.filter(|s| !s.is_empty()).unwrap_or(DEFAULT_BIND_ALL_HOST_IP);
    let protocol = protocol.filter(|s| !s.is_empty()).unwrap_or("TCP");
    (ip.to_owned(), protocol.to_owned())
}

impl HostPortInfo {
    fn add(&mut self, ip: Option<&str>, protocol: Option<&str>, port: i32) {
        if port <= 0 {
            return;
        }
        let (ip, protocol) = sanitize(ip, protocol);
        self.0.entry(ip).or_default().insert((protocol, port));
    }

    /// A port on `0.0.0.0` conflicts with that port on any IP; a port on one IP with it on that IP or `0.0.0.0`.
    fn conflicts(&self, ip: Option<&str>, protocol: Option<&str>, port: i32) -> bool {
        if port <= 0 {
            return false;
        }
        let (ip, protocol) = sanitize(ip, protocol);
        let pp = (protocol, port);
        if ip == DEFAULT_BIND_ALL_HOST_IP {
            return self.0.values().any(|m| m.contains(&pp));
        }
        [DEFAULT_BIND_ALL_HOST_IP, ip.as_str()].iter().any(|k| self.0.get(*k).is_some_and(|m| m.contains(&pp)))
    }
}

/// `nodeports.Fits`: the pod's host ports (app containers') against every port the active pods declare.
fn ports_fit(pod: &Pod, active: &[&Pod]) -> bool {
    let mut used = HostPortInfo::default();
    for p in active {
        for port in spec::spec(p).containers.iter().flat_map(|c| c.ports.iter().flatten()) {
            used.add(port.host_ip.as_deref(), port.protocol.as_deref(), port.host_port.unwrap_or(0));
        }
    }
    spec::spec(pod)
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.host_port.unwrap_or(0) > 0)
        .all(|p| !used.conflicts(p.host_ip.as_deref(), p.protocol.as_deref(), p.host_port.unwrap_or(0)))
}

// ---- taints (`corev1.FindMatchingUntoleratedTaint`, `Toleration.ToleratesTaint`) ----

/// kubelet only looks at `NoExecute` taints: the pod would be evicted right after starting.
fn has_untolerated_no_execute_taint(pod: &Pod, taints: &[Taint]) -> bool {
    let tolerations = spec::spec(pod).tolerations.as_deref().unwrap_or_default();
    taints.iter().filter(|t| t.effect == "NoExecute").any(|taint| {
        !tolerations.iter().any(|t| {
            let effect = t.effect.as_deref().unwrap_or_default();
            let key = t.key.as_deref().unwrap_or_default();
            if !effect.is_empty() && effect != taint.effect || !key.is_empty() && key != taint.key {
                return false;
            }
            match t.operator.as_deref().unwrap_or_default() {
                "" | "Equal" => t.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default(),
                "Exists" => true,
                _ => false,
            }
        })
    })
}

// ---- node affinity (`nodeaffinity.GetRequiredNodeAffinity(pod).Match(node)`) ----

/// `nodeSelector` (every pair present) and `requiredDuringSchedulingIgnoredDuringExecution` (any term matches).
fn matches_node_selector_and_affinity(pod: &Pod, node: &NodeInfo) -> bool {
    let spec = spec::spec(pod);
    if let Some(selector) = &spec.node_selector {
        if !selector.iter().all(|(k, v)| node.labels.get(k) == Some(v)) {
            return false;
        }
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| na.required_during_scheduling_ignored_during_execution.as_ref());
    match required {
        // An empty term list matches no node, as in the scheduler.
        Some(selector) => selector.node_selector_terms.iter().any(|t| term_matches(t, node)),
        None => true,
    }
}

/// One term: its expressions and fields ANDed. A term with no requirements, or one that does not parse, matches
/// nothing.
fn term_matches(term: &NodeSelectorTerm, node: &NodeInfo) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let labels_match = exprs.iter().map(|r| label_requirement(r, node.labels.get(&r.key).map(String::as_str)));
    let fields_match = fields.iter().map(|r| field_requirement(r, node));
    let mut all = true;
    for m in labels_match.chain(fields_match) {
        match m {
            None => return false,
            Some(m) => all &= m,
        }
    }
    all
}

/// A label requirement against the node's value of its key; `None` when the requirement does not parse
/// (`labels.NewRequirement`'s value counts).
fn label_requirement(r: &NodeSelectorRequirement, value: Option<&str>) -> Option<bool> {
    let values = r.values.as_deref().unwrap_or_default();
    let number = |s: &str| s.parse::<i64>().ok();
    Some(match r.operator.as_str() {
        "In" | "NotIn" if values.is_empty() => return None,
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" | "DoesNotExist" if !values.is_empty() => return None,
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let [bound] = values else { return None };
            let bound = number(bound)?;
            let Some(have) = value.and_then(number) else { return Some(false) };
            if r.operator == "Gt" {
                have > bound
            } else {
                have < bound
            }
        }
        _ => return None,
    })
}

/// A field requirement: `In`/`NotIn` with exactly one value; the node's only field is `metadata.name`.
fn field_requirement(r: &NodeSelectorRequirement, node: &NodeInfo) -> Option<bool> {
    let [value] = r.values.as_deref().unwrap_or_default() else { return None };
    let have = if r.key == "metadata.name" { node.name.as_str() } else { "" };
    match r.operator.as_str() {
        "In" => Some(have == value),
        "NotIn" => Some(have != value),
        _ => None,
    }
}

// ---- critical pod preemption (`pkg/kubelet/preemption/preemption.go`) ----

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    resource: String,
    quantity: i128,
}

fn requirements_string(reqs: &[Requirement]) -> String {
    let mut s = String::from("[");
    for r in reqs {
        s.push_str(&format!("(res: {}, q: {}), ", r.resource, r.quantity));
    }
    s + "]"
}

/// `resource.GetResourceRequest`: one for pods; app containers summed, raised to the largest init container, plus
/// the overhead when not zero; millicores for cpu, whole units otherwise.
fn resource_request(pod: &Pod, resource: &str) -> i128 {
    if resource == RESOURCE_PODS {
        return 1;
    }
    let s = spec::spec(pod);
    let get = |c: &Container| container_requests(c).get(resource).copied();
    let mut total: i128 = s.containers.iter().filter_map(get).sum();
    for v in s.init_containers.iter().flatten().filter_map(get) {
        total = total.max(v);
    }
    if total != 0 {
        if let Some(o) = s.overhead.as_ref().and_then(|o| o.get(resource)).and_then(|q| parse_milli(&q.0).ok()) {
            total += o;
        }
    }
    if resource == RESOURCE_CPU {
        total
    } else {
        value_of_milli(total)
    }
}

fn subtract(reqs: &[Requirement], pods: &[&Pod]) -> Vec<Requirement> {
    let mut out = Vec::new();
    for r in reqs {
        let mut q = r.quantity;
        for p in pods {
            q -= resource_request(p, &r.resource);
            if q <= 0 {
                break;
            }
        }
        if q > 0 {
            out.push(Requirement { resource: r.resource.clone(), quantity: q });
        }
    }
    out
}

/// The fraction of each requirement a pod leaves unmet, squared and summed.
fn distance(reqs: &[Requirement], pod: &Pod) -> f64 {
    reqs.iter()
        .map(|r| {
            let remaining = (r.quantity - resource_request(pod, &r.resource)) as f64;
            if remaining > 0.0 {
                (remaining / r.quantity as f64).powi(2)
            } else {
                0.0
            }
        })
        .sum()
}

/// Memory first, then cpu; equal requests count as smaller.
fn smaller_resource_request(a: &Pod, b: &Pod) -> bool {
    for res in [RESOURCE_MEMORY, RESOURCE_CPU] {
        let (x, y) = (resource_request(a, res), resource_request(b, res));
        if x != y {
            return x < y;
        }
    }
    true
}

fn no_set(reqs: &[Requirement]) -> String {
    format!("no set of running pods found to reclaim resources: {}", requirements_string(reqs))
}

/// `getPodsToPreemptByDistance`: repeatedly the pod closest to meeting what is left.
fn preempt_by_distance(mut pods: Vec<&Pod>, mut reqs: Vec<Requirement>) -> Result<Vec<&Pod>, String> {
    let mut out = Vec::new();
    while !reqs.is_empty() {
        if pods.is_empty() {
            return Err(no_set(&reqs));
        }
        let mut best_distance = (reqs.len() + 1) as f64;
        let mut best = 0;
        for (i, p) in pods.iter().enumerate() {
            let d = distance(&reqs, p);
            if d < best_distance || (d == best_distance && smaller_resource_request(p, pods[best])) {
                best_distance = d;
                best = i;
            }
        }
        reqs = subtract(&reqs, &[pods[best]]);
        out.push(pods.swap_remove(best));
    }
    Ok(out)
}

/// `types.Preemptable`.
fn preemptable(preemptor: &Pod, preemptee: &Pod) -> bool {
    if is_critical(preemptor) && !is_critical(preemptee) {
        return true;
    }
    match (spec::spec(preemptor).priority, spec::spec(preemptee).priority) {
        (Some(a), Some(b)) => a > b,
        _ => false,
    }
}

/// `getPodsToPreempt`: the fewest, smallest pods to free `reqs`, Guaranteed pods spared the most, then Burstable.
fn pods_to_preempt<'a>(pod: &Pod, active: &[&'a Pod], reqs: Vec<Requirement>) -> Result<Vec<&'a Pod>, String> {
    let (mut best_effort, mut burstable, mut guaranteed) = (Vec::new(), Vec::new(), Vec::new());
    for p in active.iter().copied().filter(|p| preemptable(pod, p)) {
        match pod_qos_class(spec::spec(p)) {
            QosClass::BestEffort => best_effort.push(p),
            QosClass::Burstable => burstable.push(p),
            QosClass::Guaranteed => guaranteed.push(p),
        }
    }
    let all: Vec<&Pod> = best_effort.iter().chain(&burstable).chain(&guaranteed).copied().collect();
    let unmet = subtract(&reqs, &all);
    if !unmet.is_empty() {
        return Err(no_set(&unmet));
    }
    let not_guaranteed: Vec<&Pod> = best_effort.iter().chain(&burstable).copied().collect();
    let guaranteed_out = preempt_by_distance(guaranteed, subtract(&reqs, &not_guaranteed))?;
    let before_burstable: Vec<&Pod> = best_effort.iter().chain(&guaranteed_out).copied().collect();
    let burstable_out = preempt_by_distance(burstable, subtract(&reqs, &before_burstable))?;
    let before_best_effort: Vec<&Pod> = burstable_out.iter().chain(&guaranteed_out).copied().collect();
    let best_effort_out = preempt_by_distance(best_effort, subtract(&reqs, &before_best_effort))?;
    Ok(best_effort_out.into_iter().chain(burstable_out).chain(guaranteed_out).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn from_json(v: Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    /// A pod with one container per request list (`{}` for none), like the Go tests' `newResourcePod`.
    fn resource_pod(name: &str, containers: &[Value]) -> Pod {
        let containers: Vec<Value> = containers
            .iter()
            .enumerate()
            .map(|(i, r)| json!({ "name": format!("c{i}"), "resources": { "requests": r } }))
            .collect();
        from_json(json!({ "metadata": { "name": name, "uid": name }, "spec": { "containers": containers } }))
    }

    /// `newResourceInitPod`: the same pod with init containers requesting `inits`.
    fn with_init(mut pod: Pod, inits: &[Value]) -> Pod {
        let inits: Vec<Value> = inits
            .iter()
            .enumerate()
            .map(|(i, r)| json!({ "name": format!("i{i}"), "resources": { "requests": r } }))
            .collect();
        if let Some(s) = pod.spec.as_mut() {
            s.init_containers = serde_json::from_value(json!(inits)).unwrap();
        }
        pod
    }

    /// The node ports tests' `newPod`: "PROTOCOL/hostIP/hostPort" each.
    fn port_pod(ports: &[&str]) -> Pod {
        let ports: Vec<Value> = ports
            .iter()
            .map(|p| {
                let parts: Vec<&str> = p.split('/').collect();
                json!({ "containerPort": 80, "protocol": parts[0], "hostIP": parts[1],
                        "hostPort": parts[2].parse::<i32>().unwrap() })
            })
            .collect();
        from_json(json!({ "metadata": { "name": "p", "uid": "p" },
                          "spec": { "containers": [{ "name": "c", "ports": ports }] } }))
    }

    /// `makeAllocatableResources(milliCPU, memory, pods, extendedA, storage, hugePageA)`.
    fn node(milli_cpu: i64, memory: i64, pods: i64, extended_a: i64, storage: i64, huge_a: i64) -> NodeInfo {
        let list: BTreeMap<String, Quantity> = serde_json::from_value(json!({
            "cpu": format!("{milli_cpu}m"), "memory": memory.to_string(), "pods": pods.to_string(),
            "example.com/aaa": extended_a.to_string(), "ephemeral-storage": storage.to_string(),
            "hugepages-2Mi": huge_a.to_string(),
        }))
        .unwrap();
        NodeInfo {
            name: "machine1".into(),
            labels: [("kubernetes.io/hostname", "machine1"), ("disk", "ssd"), ("gen", "5")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            allocatable: Resources::from_list(&list),
            taints: vec![],
        }
    }

    /// Name, pod, active pods, node, failures.
    type FilterCase = (&'static str, Pod, Vec<Pod>, NodeInfo, Vec<Failure>);
    /// Name, preemptor, active pods, requirements, the pods preempted (`None`: an error).
    type PreemptCase = (&'static str, &'static str, Vec<&'static str>, Vec<Requirement>, Option<Vec<&'static str>>);

    fn ins(resource: &str, requested: i128, used: i128, capacity: i128) -> Failure {
        Failure::Insufficient { resource: resource.into(), requested, used, capacity }
    }

    fn filter(pod: &Pod, active: &[Pod], node: &NodeInfo) -> Vec<Failure> {
        let refs: Vec<&Pod> = active.iter().collect();
        general_filter(pod, &refs, node)
    }

    fn taints(list: Value) -> Vec<Taint> {
        serde_json::from_value(list).unwrap()
    }

    #[test]
    fn general_predicates_as_kubelets_table() {
        let n = node(10, 20, 32, 0, 0, 0);
        let with_taints = |t: Value| NodeInfo { taints: taints(t), ..n.clone() };
        let empty = from_json(json!({ "metadata": { "name": "e", "uid": "e" }, "spec": { "containers": [] } }));
        let cases: Vec<FilterCase> = vec![
            (
                "no resources/port/host requested always fits",
                empty.clone(),
                vec![resource_pod("a", &[json!({"cpu": "9m", "memory": "19"})])],
                n.clone(),
                vec![],
            ),
            (
                "not enough cpu and memory resource",
                resource_pod("p", &[json!({"cpu": "8m", "memory": "10"})]),
                vec![resource_pod("a", &[json!({"cpu": "5m", "memory": "19"})])],
                n.clone(),
                vec![ins("cpu", 8, 5, 10), ins("memory", 10, 19, 20)],
            ),
            (
                "host not match",
                from_json(json!({ "spec": { "containers": [], "nodeName": "machine2" } })),
                vec![],
                n.clone(),
                vec![Failure::Predicate(NODE_NAME)],
            ),
            (
                "hostport conflict",
                port_pod(&["//123"]),
                vec![port_pod(&["//123"])],
                n.clone(),
                vec![Failure::Predicate(NODE_PORTS)],
            ),
            (
                "taint/toleration match",
                from_json(json!({ "spec": { "containers": [], "tolerations": [{ "key": "foo" }, { "key": "bar" }] } })),
                vec![],
                with_taints(json!([{ "key": "foo", "effect": "NoSchedule" }, { "key": "bar", "effect": "NoExecute" }])),
                vec![],
            ),
            (
                "NoSchedule taint/toleration not match",
                empty.clone(),
                vec![],
                with_taints(json!([{ "key": "foo", "effect": "NoSchedule" }])),
                vec![],
            ),
            (
                "NoExecute taint/toleration not match",
                empty.clone(),
                vec![],
                with_taints(json!([{ "key": "bar", "effect": "NoExecute" }])),
                vec![Failure::Predicate(TAINT_TOLERATION)],
            ),
            (
                "PreferNoSchedule taint/toleration not match",
                empty.clone(),
                vec![],
                with_taints(json!([{ "key": "baz", "effect": "PreferNoSchedule" }])),
                vec![],
            ),
            (
                "static pods ignore taints",
                from_json(json!({ "metadata": { "annotations": { "kubernetes.io/config.source": "file" } },
                                  "spec": { "containers": [] } })),
                vec![],
                with_taints(json!([{ "key": "foo", "effect": "NoSchedule" }, { "key": "bar", "effect": "NoExecute" }])),
                vec![],
            ),
        ];
        for (name, pod, active, node, want) in cases {
            assert_eq!(filter(&pod, &active, &node), want, "{name}");
        }
    }

    #[test]
    fn tolerations_match_taints_by_key_value_effect_and_operator() {
        let n = NodeInfo {
            taints: taints(json!([{ "key": "k", "value": "v", "effect": "NoExecute" }])),
            ..node(10, 20, 32, 0, 0, 0)
        };
        let tolerating = |t: Value| {
            let p = from_json(json!({ "spec": { "containers": [], "tolerations": [t] } }));
            filter(&p, &[], &n).is_empty()
        };
        assert!(tolerating(json!({ "key": "k", "value": "v" })));
        assert!(tolerating(json!({ "key": "k", "operator": "Equal", "value": "v", "effect": "NoExecute" })));
        assert!(tolerating(json!({ "key": "k", "operator": "Exists" })));
        assert!(tolerating(json!({ "operator": "Exists" })));
        assert!(!tolerating(json!({ "key": "k", "value": "w" })));
        assert!(!tolerating(json!({ "key": "k", "operator": "Exists", "effect": "NoSchedule" })));
        assert!(!tolerating(json!({ "key": "other", "operator": "Exists" })));
        assert!(!tolerating(json!({ "key": "k", "operator": "Gt", "value": "v" })));
    }

    #[test]
    fn enough_requests_as_the_schedulers_table() {
        let n = node(10, 20, 32, 5, 20, 5);
        let rp = |c: &[Value]| resource_pod("p", c);
        let used = |c: &[Value]| vec![resource_pod("a", c)];
        let cm = |cpu: i64, mem: i64| json!({ "cpu": format!("{cpu}m"), "memory": mem.to_string() });
        let with = |cpu: i64, mem: i64, extra: (&str, i64)| {
            let mut v = cm(cpu, mem);
            v[extra.0] = json!(extra.1.to_string());
            v
        };
        let (ext_a, ext_b, k8s_a, k8s_b, huge) = (
            "example.com/aaa",
            "example.com/bbb",
            "kubernetes.io/something",
            "subdomain.kubernetes.io/something",
            "hugepages-2Mi",
        );
        let cases: Vec<(&str, Pod, Vec<Pod>, Vec<Failure>)> = vec![
            ("no resources requested always fits", rp(&[]), used(&[cm(10, 20)]), vec![]),
            (
                "too many resources fails",
                rp(&[cm(1, 1)]),
                used(&[cm(10, 20)]),
                vec![ins("cpu", 1, 10, 10), ins("memory", 1, 20, 20)],
            ),
            (
                "too many resources fails due to init container cpu",
                with_init(rp(&[cm(1, 1)]), &[cm(3, 1)]),
                used(&[cm(8, 19)]),
                vec![ins("cpu", 3, 8, 10)],
            ),
            (
                "too many resources fails due to highest init container cpu",
                with_init(rp(&[cm(1, 1)]), &[cm(3, 1), cm(2, 1)]),
                used(&[cm(8, 19)]),
                vec![ins("cpu", 3, 8, 10)],
            ),
            (
                "too many resources fails due to init container memory",
                with_init(rp(&[cm(1, 1)]), &[cm(1, 3)]),
                used(&[cm(9, 19)]),
                vec![ins("memory", 3, 19, 20)],
            ),
            (
                "init container fits because it's the max, not sum, of containers and init containers",
                with_init(rp(&[cm(1, 1)]), &[cm(1, 1), cm(1, 1)]),
                used(&[cm(9, 19)]),
                vec![],
            ),
            ("both resources fit", rp(&[cm(1, 1)]), used(&[cm(5, 5)]), vec![]),
            ("one resource memory fits", rp(&[cm(2, 1)]), used(&[cm(9, 5)]), vec![ins("cpu", 2, 9, 10)]),
            ("one resource cpu fits", rp(&[cm(1, 2)]), used(&[cm(5, 19)]), vec![ins("memory", 2, 19, 20)]),
            ("equal edge case", rp(&[cm(5, 1)]), used(&[cm(5, 19)]), vec![]),
            ("equal edge case for init container", with_init(rp(&[cm(4, 1)]), &[cm(5, 1)]), used(&[cm(5, 19)]), vec![]),
            ("extended resource fits", rp(&[json!({ ext_a: "1" })]), used(&[json!({})]), vec![]),
            (
                "extended resource fits for init container",
                with_init(rp(&[json!({})]), &[json!({ ext_a: "1" })]),
                used(&[json!({})]),
                vec![],
            ),
            (
                "extended resource capacity enforced",
                rp(&[with(1, 1, (ext_a, 10))]),
                used(&[with(0, 0, (ext_a, 0))]),
                vec![ins(ext_a, 10, 0, 5)],
            ),
            (
                "extended resource capacity enforced for init container",
                with_init(rp(&[json!({})]), &[with(1, 1, (ext_a, 10))]),
                used(&[with(0, 0, (ext_a, 0))]),
                vec![ins(ext_a, 10, 0, 5)],
            ),
            (
                "extended resource allocatable enforced",
                rp(&[with(1, 1, (ext_a, 1))]),
                used(&[with(0, 0, (ext_a, 5))]),
                vec![ins(ext_a, 1, 5, 5)],
            ),
            (
                "extended resource allocatable enforced for multiple containers",
                rp(&[with(1, 1, (ext_a, 3)), with(1, 1, (ext_a, 3))]),
                used(&[with(0, 0, (ext_a, 2))]),
                vec![ins(ext_a, 6, 2, 5)],
            ),
            (
                "extended resource allocatable admits multiple init containers",
                with_init(rp(&[json!({})]), &[with(1, 1, (ext_a, 3)), with(1, 1, (ext_a, 3))]),
                used(&[with(0, 0, (ext_a, 2))]),
                vec![],
            ),
            (
                "extended resource allocatable enforced for multiple init containers",
                with_init(rp(&[json!({})]), &[with(1, 1, (ext_a, 6)), with(1, 1, (ext_a, 3))]),
                used(&[with(0, 0, (ext_a, 2))]),
                vec![ins(ext_a, 6, 2, 5)],
            ),
            // kubelet drops an app container's request of an extended resource the node does not have
            // (removeMissingExtendedResources), where the scheduler alone reports it...
            (
                "extended resource unknown to the node is a cluster-level resource",
                rp(&[with(1, 1, (ext_b, 1))]),
                used(&[cm(0, 0)]),
                vec![],
            ),
            // ...but not an init container's.
            (
                "extended resource allocatable enforced for unknown resource for init container",
                with_init(rp(&[json!({})]), &[with(1, 1, (ext_b, 1))]),
                used(&[cm(0, 0)]),
                vec![ins(ext_b, 1, 0, 0)],
            ),
            (
                "kubernetes.io resource capacity enforced",
                rp(&[with(1, 1, (k8s_a, 10))]),
                used(&[cm(0, 0)]),
                vec![ins(k8s_a, 10, 0, 0)],
            ),
            (
                "kubernetes.io resource capacity enforced for init container",
                with_init(rp(&[json!({})]), &[with(1, 1, (k8s_b, 10))]),
                used(&[cm(0, 0)]),
                vec![ins(k8s_b, 10, 0, 0)],
            ),
            (
                "hugepages resource capacity enforced",
                rp(&[with(1, 1, (huge, 10))]),
                used(&[with(0, 0, (huge, 0))]),
                vec![ins(huge, 10, 0, 5)],
            ),
            (
                "hugepages resource capacity enforced for init container",
                with_init(rp(&[json!({})]), &[with(1, 1, (huge, 10))]),
                used(&[with(0, 0, (huge, 0))]),
                vec![ins(huge, 10, 0, 5)],
            ),
            (
                "hugepages resource allocatable enforced for multiple containers",
                rp(&[with(1, 1, (huge, 3)), with(1, 1, (huge, 3))]),
                used(&[with(0, 0, (huge, 2))]),
                vec![ins(huge, 6, 2, 5)],
            ),
            (
                "skip checking extended resource request with quantity zero",
                rp(&[with(1, 1, (ext_a, 0))]),
                used(&[with(0, 0, (ext_a, 6))]),
                vec![],
            ),
            (
                "skip checking resource request with quantity zero",
                rp(&[json!({ ext_a: "1" })]),
                used(&[with(20, 30, (ext_a, 1))]),
                vec![],
            ),
        ];
        for (name, pod, active, want) in cases {
            assert_eq!(filter(&pod, &active, &n), want, "{name}");
        }
    }

    #[test]
    fn pod_overhead_and_sidecars_count_towards_requests() {
        let n = node(10, 20, 32, 5, 20, 5);
        let used = [resource_pod("a", &[json!({"cpu": "5m", "memory": "5"})])];
        let overhead = |cpu: &str, mem: &str| {
            let mut p = resource_pod("p", &[json!({"cpu": "1m", "memory": "1"})]);
            if let Some(s) = p.spec.as_mut() {
                s.overhead = serde_json::from_value(json!({ "cpu": cpu, "memory": mem })).unwrap();
            }
            p
        };
        assert_eq!(filter(&overhead("3m", "13"), &used, &n), vec![], "resources + pod overhead fits");
        assert_eq!(
            filter(&overhead("1m", "15"), &used, &n),
            vec![ins("memory", 16, 5, 20)],
            "requests + overhead does not fit for memory"
        );
        // A sidecar (an init container that keeps running) adds to the app containers, and to every init container
        // started after it.
        let mut p =
            with_init(resource_pod("p", &[json!({"cpu": "2m"})]), &[json!({"cpu": "2m"}), json!({"cpu": "4m"})]);
        if let Some(s) = p.spec.as_mut() {
            s.init_containers.as_mut().unwrap()[0].restart_policy = Some("Always".into());
        }
        assert_eq!(filter(&p, &used, &n), vec![ins("cpu", 6, 5, 10)]);
    }

    #[test]
    fn pods_and_ephemeral_storage_are_enforced() {
        let full = NodeInfo {
            allocatable: Resources { allowed_pods: 1, ..node(10, 20, 1, 0, 20, 0).allocatable },
            ..node(10, 20, 1, 0, 20, 0)
        };
        let used = [resource_pod("a", &[json!({"cpu": "5m", "memory": "5"})])];
        assert_eq!(filter(&resource_pod("p", &[]), &used, &full), vec![ins("pods", 1, 1, 1)]);
        assert_eq!(filter(&resource_pod("p", &[json!({"cpu": "1m"})]), &used, &full), vec![ins("pods", 1, 1, 1)]);
        let n = node(10, 20, 32, 0, 20, 0);
        let storage = |v: &str| resource_pod("p", &[json!({ "ephemeral-storage": v })]);
        let used = [resource_pod("a", &[json!({ "ephemeral-storage": "10" })])];
        assert_eq!(filter(&storage("10"), &used, &n), vec![]);
        assert_eq!(filter(&storage("11"), &used, &n), vec![ins("ephemeral-storage", 11, 10, 20)]);
        let r = admit(&storage("25"), &[], &n).unwrap_err();
        assert_eq!(
            (&*r.reason, r.message.as_str()),
            (
                "OutOfephemeral-storage",
                "Node didn't have enough resource: ephemeral-storage, requested: 25, used: 0, capacity: 20"
            )
        );
    }

    #[test]
    fn requests_in_limits_are_ignored() {
        let n = node(10, 20, 32, 0, 0, 0);
        let p = from_json(json!({ "spec": { "containers": [{ "name": "c",
            "resources": { "limits": { "foo.com/bar": "1", "cpu": "1" } } }] } }));
        assert_eq!(filter(&p, &[], &n), vec![]);
    }

    #[test]
    fn the_first_failure_becomes_reason_and_message_as_kubelet_writes_them() {
        let n = node(10, 20, 32, 5, 20, 5);
        let used = [resource_pod("a", &[json!({"cpu": "5m", "memory": "19"})])];
        let r = admit(&resource_pod("p", &[json!({"cpu": "8m", "memory": "10"})]), &[&used[0]], &n).unwrap_err();
        assert_eq!(
            (&*r.reason, r.message.as_str()),
            ("OutOfcpu", "Node didn't have enough resource: cpu, requested: 8, used: 5, capacity: 10")
        );
        let r = admit(&resource_pod("p", &[json!({"example.com/aaa": "6"})]), &[], &n).unwrap_err();
        assert_eq!(
            (&*r.reason, r.message.as_str()),
            (
                "OutOfexample.com/aaa",
                "Node didn't have enough resource: example.com/aaa, requested: 6, used: 0, capacity: 5"
            )
        );
        assert_eq!(
            admit(&resource_pod("p", &[json!({"hugepages-2Mi": "6"})]), &[], &n).unwrap_err().reason,
            "OutOfhugepages-2Mi"
        );
        let conflict = [port_pod(&["TCP//8080"])];
        let r = admit(&port_pod(&["TCP//8080"]), &[&conflict[0]], &n).unwrap_err();
        assert_eq!((&*r.reason, r.message.as_str()), ("NodePorts", "Predicate NodePorts failed"));
        let s = r.status(&conflict[0]);
        assert_eq!(
            (s.phase.as_deref(), s.reason.as_deref(), s.message.as_deref()),
            (Some("Failed"), Some("NodePorts"), Some("Pod was rejected: Predicate NodePorts failed"))
        );
        let tainted = NodeInfo { taints: taints(json!([{ "key": "k", "effect": "NoExecute" }])), ..n.clone() };
        let r = admit(&resource_pod("p", &[]), &[], &tainted).unwrap_err();
        assert_eq!((&*r.reason, r.message.as_str()), ("TaintToleration", "Predicate TaintToleration failed"));
        let r = admit(&from_json(json!({ "spec": { "containers": [], "nodeName": "other" } })), &[], &n).unwrap_err();
        assert_eq!((&*r.reason, r.message.as_str()), ("NodeName", "Predicate NodeName failed"));
    }

    #[test]
    fn host_ports_as_the_schedulers_table() {
        let cases: [(&str, &[&str], &[&str], bool); 13] = [
            ("other port", &["UDP/127.0.0.1/8080"], &["UDP/127.0.0.1/9090"], false),
            ("same udp port", &["UDP/127.0.0.1/8080"], &["UDP/127.0.0.1/8080"], true),
            ("same tcp port", &["TCP/127.0.0.1/8080"], &["TCP/127.0.0.1/8080"], true),
            ("different host ip", &["TCP/127.0.0.1/8080"], &["TCP/127.0.0.2/8080"], false),
            ("different protocol", &["UDP/127.0.0.1/8080"], &["TCP/127.0.0.1/8080"], false),
            ("second udp port conflict", &["UDP/127.0.0.1/8000", "UDP/127.0.0.1/8080"], &["UDP/127.0.0.1/8080"], true),
            (
                "first tcp port conflict",
                &["TCP/127.0.0.1/8001", "UDP/127.0.0.1/8080"],
                &["TCP/127.0.0.1/8001", "UDP/127.0.0.1/8081"],
                true,
            ),
            ("first tcp port conflict due to 0.0.0.0 hostIP", &["TCP/0.0.0.0/8001"], &["TCP/127.0.0.1/8001"], true),
            (
                "TCP hostPort conflict due to 0.0.0.0 hostIP",
                &["TCP/10.0.10.10/8001", "TCP/0.0.0.0/8001"],
                &["TCP/127.0.0.1/8001"],
                true,
            ),
            ("second tcp port conflict to 0.0.0.0 hostIP", &["TCP/127.0.0.1/8001"], &["TCP/0.0.0.0/8001"], true),
            ("second different protocol", &["UDP/127.0.0.1/8001"], &["TCP/0.0.0.0/8001"], false),
            (
                "UDP hostPort conflict due to 0.0.0.0 hostIP",
                &["UDP/127.0.0.1/8001"],
                &["TCP/0.0.0.0/8001", "UDP/0.0.0.0/8001"],
                true,
            ),
            // No protocol is TCP and no host IP is 0.0.0.0, on either side.
            ("defaults", &["//8001"], &["TCP/127.0.0.1/8001"], true),
        ];
        let n = node(10, 20, 32, 0, 0, 0);
        for (name, want, have, conflict) in cases {
            let want_nodeports = if conflict { vec![Failure::Predicate(NODE_PORTS)] } else { vec![] };
            assert_eq!(filter(&port_pod(want), &[port_pod(have)], &n), want_nodeports, "{name}");
        }
        // Container ports without a host port take none.
        let no_host =
            from_json(json!({ "spec": { "containers": [{ "name": "c", "ports": [{ "containerPort": 80 }] }] } }));
        assert_eq!(filter(&no_host, std::slice::from_ref(&no_host), &n), vec![]);
    }

    #[test]
    fn os_is_checked_after_the_predicates_by_label_then_by_field() {
        let n = node(1000, 1 << 30, 32, 0, 0, 0);
        let mut p = from_json(json!({ "spec": { "containers": [], "os": { "name": "windows" } } }));
        let r = admit(&p, &[], &n).unwrap_err();
        assert_eq!(
            (&*r.reason, r.message.as_str()),
            ("PodOSNotSupported", "Failed to admit pod as the OS field doesn't match node OS")
        );
        p.metadata.labels = Some([("kubernetes.io/os".to_owned(), "dummyOS".to_owned())].into());
        let r = admit(&p, &[], &n).unwrap_err();
        assert_eq!(
            (&*r.reason, r.message.as_str()),
            (
                "PodOSSelectorNodeLabelDoesNotMatch",
                "Failed to admit pod as the `kubernetes.io/os` label doesn't match node label"
            )
        );
        let mut big = resource_pod("p", &[json!({"cpu": "100"})]);
        big.metadata.labels = p.metadata.labels.clone();
        assert_eq!(admit(&big, &[], &n).unwrap_err().reason, "OutOfcpu");
        let linux = from_json(json!({ "metadata": { "labels": { "kubernetes.io/os": "linux" } },
                                      "spec": { "containers": [], "os": { "name": "linux" } } }));
        assert_eq!(admit(&linux, &[], &n), Ok(Admitted::default()));
    }

    fn critical(mut p: Pod) -> Pod {
        p.metadata.annotations = Some([("kubernetes.io/config.source".to_owned(), "file".to_owned())].into());
        p
    }

    #[test]
    fn a_critical_pod_short_of_resources_preempts_or_fails_as_kubelet_does() {
        let n = node(1000, 1 << 30, 32, 0, 0, 0);
        let r = admit(&critical(resource_pod("s", &[json!({"cpu": "8"})])), &[], &n).unwrap_err();
        assert_eq!(
            (&*r.reason, r.message.as_str()),
            (
                "UnexpectedAdmissionError",
                "Unexpected error while attempting to recover from admission failure: preemption: error finding a \
                 set of pods to preempt: no set of running pods found to reclaim resources: [(res: cpu, q: 7000), ]"
            )
        );
        let active = [resource_pod("be", &[json!({})]), resource_pod("b500", &[json!({"cpu": "500m"})])];
        let refs: Vec<&Pod> = active.iter().collect();
        let s = critical(resource_pod("s", &[json!({"cpu": "600m"})]));
        assert_eq!(admit(&s, &refs, &n), Ok(Admitted { preempt: vec!["b500".into()] }));
        // The same pod from the API is not critical.
        let mut api = s.clone();
        api.metadata.annotations = Some([("kubernetes.io/config.source".to_owned(), "api".to_owned())].into());
        assert_eq!(admit(&api, &refs, &n).unwrap_err().reason, "OutOfcpu");
        // Anything but resources still rejects it.
        let mut conflicting = critical(port_pod(&["TCP//80"]));
        if let Some(s) = conflicting.spec.as_mut() {
            s.containers[0].resources = serde_json::from_value(json!({ "requests": { "cpu": "600m" } })).unwrap();
        }
        let mut holder = port_pod(&["TCP//80"]);
        holder.spec.as_mut().unwrap().containers[0].resources =
            serde_json::from_value(json!({ "requests": { "cpu": "500m" } })).unwrap();
        assert_eq!(admit(&conflicting, &[&holder], &n).unwrap_err().reason, "NodePorts");
        // Priority makes a pod critical, but only a static pod ignores taints.
        let mut high = resource_pod("h", &[]);
        high.spec.as_mut().unwrap().priority = Some(2_000_000_000);
        assert!(is_critical(&high) && !is_static(&high));
        let tainted = NodeInfo { taints: taints(json!([{ "key": "k", "effect": "NoExecute" }])), ..n.clone() };
        assert_eq!(admit(&high, &[], &tainted).unwrap_err().reason, "TaintToleration");
        assert_eq!(admit(&critical(resource_pod("s", &[])), &[], &tainted), Ok(Admitted::default()));
    }

    /// kubelet's preemption tests' pods: name, requests, limits, priority.
    fn preemption_pods() -> BTreeMap<&'static str, Pod> {
        let mk = |name: &'static str, req: Option<(&str, &str)>, guaranteed: bool, priority: Option<i32>| {
            let mut resources = json!({});
            if let Some((cpu, mem)) = req {
                resources["requests"] = json!({ "cpu": cpu, "memory": mem });
                if guaranteed {
                    resources["limits"] = json!({ "cpu": cpu, "memory": mem });
                }
            }
            let mut p = from_json(json!({ "metadata": { "name": name, "uid": name },
                "spec": { "containers": [{ "name": "c", "resources": resources }] } }));
            p.spec.as_mut().unwrap().priority = priority;
            (name, p)
        };
        [
            mk("tinyBurstable", Some(("1m", "1Mi")), false, None),
            mk("bestEffort", None, false, None),
            mk("clusterCritical", Some(("100m", "100Mi")), false, Some(SYSTEM_CRITICAL_PRIORITY)),
            mk("nodeCritical", Some(("100m", "100Mi")), false, Some(SYSTEM_CRITICAL_PRIORITY + 100)),
            mk("burstable", Some(("100m", "100Mi")), false, None),
            mk("guaranteed", Some(("100m", "100Mi")), true, None),
            mk("highRequestBurstable", Some(("300m", "300Mi")), false, None),
            mk("highRequestGuaranteed", Some(("300m", "300Mi")), true, None),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn pods_to_preempt_as_kubelets_table() {
        let all = preemption_pods();
        let reqs = |cpu: i128, mem_mi: i128, pods: i128| {
            let mut r = Vec::new();
            if cpu > 0 {
                r.push(Requirement { resource: "cpu".into(), quantity: cpu });
            }
            if mem_mi > 0 {
                r.push(Requirement { resource: "memory".into(), quantity: mem_mi << 20 });
            }
            if pods > 0 {
                r.push(Requirement { resource: "pods".into(), quantity: pods });
            }
            r
        };
        let cases: Vec<PreemptCase> = vec![
            ("no requirements", "clusterCritical", vec![], reqs(0, 0, 0), Some(vec![])),
            ("no pods", "clusterCritical", vec![], reqs(0, 0, 1), None),
            (
                "equal pods and resources requirements",
                "clusterCritical",
                vec!["burstable"],
                reqs(100, 100, 1),
                Some(vec!["burstable"]),
            ),
            ("higher requirements than pod requests", "clusterCritical", vec!["burstable"], reqs(200, 200, 2), None),
            (
                "choose between bestEffort and burstable",
                "clusterCritical",
                vec!["burstable", "bestEffort"],
                reqs(0, 0, 1),
                Some(vec!["bestEffort"]),
            ),
            (
                "choose between burstable and guaranteed",
                "clusterCritical",
                vec!["burstable", "guaranteed"],
                reqs(0, 0, 1),
                Some(vec!["burstable"]),
            ),
            (
                "choose lower request burstable if it meets requirements",
                "clusterCritical",
                vec!["bestEffort", "highRequestBurstable", "burstable"],
                reqs(100, 100, 0),
                Some(vec!["burstable"]),
            ),
            (
                "choose higher request burstable if lower does not meet requirements",
                "clusterCritical",
                vec!["bestEffort", "burstable", "highRequestBurstable"],
                reqs(150, 150, 0),
                Some(vec!["highRequestBurstable"]),
            ),
            (
                "multiple pods required",
                "clusterCritical",
                vec!["bestEffort", "burstable", "highRequestBurstable", "guaranteed", "highRequestGuaranteed"],
                reqs(350, 350, 0),
                Some(vec!["burstable", "highRequestBurstable"]),
            ),
            (
                "evict guaranteed when we have to, and dont evict the extra burstable",
                "clusterCritical",
                vec!["bestEffort", "burstable", "highRequestBurstable", "guaranteed", "highRequestGuaranteed"],
                reqs(0, 550, 0),
                Some(vec!["highRequestBurstable", "highRequestGuaranteed"]),
            ),
            (
                "evict cluster critical pod for node critical pod",
                "nodeCritical",
                vec!["clusterCritical"],
                reqs(100, 0, 0),
                Some(vec!["clusterCritical"]),
            ),
            (
                "can not evict node critical pod for cluster critical pod",
                "clusterCritical",
                vec!["nodeCritical"],
                reqs(100, 0, 0),
                None,
            ),
        ];
        for (name, preemptor, input, requirements, want) in cases {
            let input: Vec<&Pod> = input.iter().map(|n| &all[n]).collect();
            let got = pods_to_preempt(&all[preemptor], &input, requirements)
                .map(|v| v.iter().map(|p| spec::name(p).to_owned()).collect::<BTreeSet<_>>());
            let want = want.map(|w| w.into_iter().map(str::to_owned).collect::<BTreeSet<_>>());
            assert_eq!(got.ok(), want, "{name}");
        }
    }

    #[test]
    fn node_selector_mismatch_is_node_affinity() {
        let n = node(10, 20, 32, 0, 0, 0);
        let sel = |s: Value| from_json(json!({ "spec": { "containers": [], "nodeSelector": s } }));
        assert_eq!(filter(&sel(json!({ "disk": "ssd" })), &[], &n), vec![]);
        let r = admit(&sel(json!({ "disk": "ssd", "zone": "a" })), &[], &n).unwrap_err();
        assert_eq!((&*r.reason, r.message.as_str()), ("NodeAffinity", "Predicate NodeAffinity failed"));
    }

    #[test]
    fn required_node_affinity_terms_are_ored_and_expressions_anded() {
        let n = node(10, 20, 32, 0, 0, 0);
        let verdict = |terms: Value| {
            let p = from_json(json!({ "spec": { "containers": [], "affinity": { "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": { "nodeSelectorTerms": terms } } } } }));
            filter(&p, &[], &n).is_empty()
        };
        assert!(verdict(json!([
            { "matchExpressions": [{ "key": "disk", "operator": "In", "values": ["hdd"] }] },
            { "matchExpressions": [{ "key": "gen", "operator": "Gt", "values": ["4"] },
                                   { "key": "gpu", "operator": "DoesNotExist" }] }
        ])));
        assert!(!verdict(json!([{ "matchExpressions": [{ "key": "gen", "operator": "Lt", "values": ["5"] }] }])));
        assert!(!verdict(json!([{ "matchExpressions": [{ "key": "disk", "operator": "NotIn", "values": ["ssd"] }] }])));
        assert!(verdict(
            json!([{ "matchFields": [{ "key": "metadata.name", "operator": "In", "values": ["machine1"] }] }])
        ));
        assert!(!verdict(
            json!([{ "matchFields": [{ "key": "metadata.name", "operator": "NotIn", "values": ["machine1"] }] }])
        ));
        // A field requirement needs exactly one value; a term that does not parse matches nothing.
        assert!(!verdict(
            json!([{ "matchFields": [{ "key": "metadata.name", "operator": "In", "values": ["machine1", "x"] }] }])
        ));
        assert!(!verdict(json!([{ "matchExpressions": [{ "key": "disk", "operator": "NotIn", "values": [] }] }])));
        assert!(!verdict(
            json!([{ "matchExpressions": [{ "key": "disk", "operator": "Exists", "values": ["ssd"] }] }])
        ));
        assert!(verdict(json!([
            { "matchExpressions": [{ "key": "disk", "operator": "In", "values": [] }] },
            { "matchExpressions": [{ "key": "disk", "operator": "Exists" }] }
        ])));
        assert!(!verdict(json!([{}])));
        assert!(!verdict(json!([])));
    }
}
