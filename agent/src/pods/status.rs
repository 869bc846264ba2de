//! The pod's v1 status, computed purely from its spec, what the runtime holds and the waiting reasons of the last
//! sync, as kubelet's `generateAPIPodStatus` and `getPhase` compute it.

use std::collections::BTreeMap;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus,
    HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::kubetypes::kill::TerminalStatus;
use crate::kubetypes::probe::{ProbeKind, ProbeResult, ProbeResults};
use crate::kubetypes::qos::pod_qos_class;
use crate::kubetypes::spec::{self, RestartPolicy};
use crate::pods::plan::{is_sidecar, should_restart, Waiting, REASON_CONTAINER_CREATING, REASON_POD_INITIALIZING};
use crate::runtime::{ContainerRecord, ContainerRunState, ObservedPod};

pub const PHASE_PENDING: &str = "Pending";
pub const PHASE_RUNNING: &str = "Running";
pub const PHASE_SUCCEEDED: &str = "Succeeded";
pub const PHASE_FAILED: &str = "Failed";

/// Condition types and reasons (k8s.io/api/core/v1 and pkg/kubelet/status/generate.go).
pub const POD_READY_TO_START_CONTAINERS: &str = "PodReadyToStartContainers";
pub const POD_INITIALIZED: &str = "Initialized";
pub const POD_READY: &str = "Ready";
pub const CONTAINERS_READY: &str = "ContainersReady";
pub const POD_SCHEDULED: &str = "PodScheduled";
pub const REASON_CONTAINERS_NOT_READY: &str = "ContainersNotReady";
pub const REASON_CONTAINERS_NOT_INITIALIZED: &str = "ContainersNotInitialized";
pub const REASON_POD_COMPLETED: &str = "PodCompleted";
pub const REASON_POD_FAILED: &str = "PodFailed";
pub const REASON_READINESS_GATES_NOT_READY: &str = "ReadinessGatesNotReady";

pub struct StatusInput<'a> {
    pub pod: &'a Pod,
    pub observed: &'a ObservedPod,
    /// Waiting reasons from the last sync (back-off, pull and create errors), by container name.
    pub waiting: &'a BTreeMap<String, Waiting>,
    pub previous: Option<&'a PodStatus>,
    /// When the agent first saw the pod.
    pub start_time: SystemTime,
    pub host_ips: &'a [String],
    /// Prefix of container IDs, the runtime's name (`containerd`).
    pub runtime_name: &'a str,
    /// The latest readiness and startup results of the pod's containers.
    pub probes: &'a ProbeResults,
    /// The pod was active longer than its `activeDeadlineSeconds`: it is Failed, whatever its containers do.
    pub deadline_exceeded: bool,
    pub now: SystemTime,
}

pub fn to_time(t: SystemTime) -> Option<Time> {
    jiff::Timestamp::try_from(t).ok().map(Time)
}

fn terminated(c: &ContainerRecord, runtime_name: &str) -> ContainerState {
    // containerd fills the reason; kubelet falls back to these when a runtime does not.
    let reason = if !c.reason.is_empty() {
        c.reason.clone()
    } else if c.exit_code == 0 {
        "Completed".into()
    } else {
        "Error".into()
    };
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: c.exit_code,
            reason: Some(reason),
            message: (!c.message.is_empty()).then(|| c.message.clone()),
            started_at: c.started_at.and_then(to_time),
            finished_at: c.finished_at.and_then(to_time),
            container_id: Some(format!("{runtime_name}://{}", c.id)),
            signal: None,
        }),
        ..Default::default()
    }
}

fn waiting_state(reason: &str, message: Option<&str>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_owned()),
            message: message.filter(|m| !m.is_empty()).map(str::to_owned),
        }),
        ..Default::default()
    }
}

fn container_status(input: &StatusInput<'_>, container: &Container, default_waiting: &str) -> ContainerStatus {
    let mut instances = input.observed.container_instances(&container.name);
    let latest = instances.next();
    let previous = instances.next();
    let waiting = input.waiting.get(&container.name);
    // kubelet shows the last sync's error as the state only of a container it is going to restart
    // (`convertToAPIContainerStatuses`); one that stays exited keeps its terminated state.
    let policy =
        if is_sidecar(container) { RestartPolicy::Always } else { spec::restart_policy(spec::spec(input.pod)) };
    let restarts =
        |c: &ContainerRecord| input.pod.metadata.deletion_timestamp.is_none() && should_restart(Some(c), policy);
    let (state, last_state) = match (latest, waiting) {
        (Some(c), _) if c.state == ContainerRunState::Running => (
            ContainerState {
                running: Some(ContainerStateRunning { started_at: c.started_at.and_then(to_time) }),
                ..Default::default()
            },
            previous.filter(|p| p.state == ContainerRunState::Exited).map(|p| terminated(p, input.runtime_name)),
        ),
        // Exited and about to be restarted (or held in back-off): waiting, with the exit as the last state.
        (Some(c), Some(w)) if c.state == ContainerRunState::Exited && restarts(c) => {
            (waiting_state(&w.reason, Some(&w.message)), Some(terminated(c, input.runtime_name)))
        }
        (Some(c), _) if c.state == ContainerRunState::Exited => (
            terminated(c, input.runtime_name),
            previous.filter(|p| p.state == ContainerRunState::Exited).map(|p| terminated(p, input.runtime_name)),
        ),
        (latest, w) => (
            match w {
                Some(w) => waiting_state(&w.reason, Some(&w.message)),
                None => waiting_state(default_waiting, None),
            },
            latest
                .or(previous)
                .filter(|p| p.state == ContainerRunState::Exited)
                .map(|p| terminated(p, input.runtime_name)),
        ),
    };
    let running = state.running.is_some();
    // kubelet's prober manager: a container with a startup probe is started once that probe passed, and ready only
    // once started and, with a readiness probe, once that probe passed; neither probe has passed before it ran.
    let passed = |kind| latest.is_some_and(|c| input.probes.get(&c.id, kind) == Some(ProbeResult::Success));
    let started = running && (container.startup_probe.is_none() || passed(ProbeKind::Startup));
    let ready = started && (container.readiness_probe.is_none() || passed(ProbeKind::Readiness));
    ContainerStatus {
        name: container.name.clone(),
        image: spec::image_of(container).to_owned(),
        image_id: latest.map(|c| c.image_ref.clone()).unwrap_or_default(),
        container_id: latest.map(|c| format!("{}://{}", input.runtime_name, c.id)),
        restart_count: latest.map(|c| c.restart_count as i32).unwrap_or(0),
        ready,
        started: Some(started),
        state: Some(state),
        last_state: Some(last_state.unwrap_or_default()),
        ..Default::default()
    }
}

/// kubelet's `getPhase`.
fn phase(pod: &Pod, init: &[ContainerStatus], containers: &[ContainerStatus]) -> &'static str {
    let policy = spec::restart_policy(spec::spec(pod));
    let sidecars: Vec<&str> =
        spec::init_containers(pod).iter().filter(|c| is_sidecar(c)).map(|c| c.name.as_str()).collect();
    let last_terminated =
        |s: &ContainerStatus| s.last_state.as_ref().and_then(|l| l.terminated.as_ref()).map(|t| t.exit_code);
    let mut pending_init = 0;
    let mut failed_init = 0;
    for s in init {
        let st = s.state.clone().unwrap_or_default();
        if sidecars.contains(&s.name.as_str()) {
            // A sidecar holds the pod pending only until it has started; its exits do not fail the pod.
            let restarting = st.waiting.is_some() && last_terminated(s).is_some();
            if !(s.started == Some(true) || st.terminated.is_some() || restarting) {
                pending_init += 1;
            }
            continue;
        }
        if st.running.is_some() {
            pending_init += 1;
        } else if let Some(t) = &st.terminated {
            if t.exit_code != 0 {
                failed_init += 1;
            }
        } else if st.waiting.is_some() {
            match last_terminated(s) {
                Some(code) if code != 0 => failed_init += 1,
                Some(_) => {}
                None => pending_init += 1,
            }
        } else {
            pending_init += 1;
        }
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for s in containers {
        let st = s.state.clone().unwrap_or_default();
        if st.running.is_some() {
            running += 1;
        } else if let Some(t) = &st.terminated {
            stopped += 1;
            if t.exit_code == 0 {
                succeeded += 1;
            }
        } else if last_terminated(s).is_some() {
            stopped += 1;
        } else {
            waiting += 1;
        }
    }
    if failed_init > 0 && policy == RestartPolicy::Never {
        return PHASE_FAILED;
    }
    if pending_init > 0 || waiting > 0 {
        return PHASE_PENDING;
    }
    if running > 0 {
        return PHASE_RUNNING;
    }
    if stopped > 0 {
        return match policy {
            RestartPolicy::Always => PHASE_RUNNING,
            _ if stopped == succeeded => PHASE_SUCCEEDED,
            RestartPolicy::Never => PHASE_FAILED,
            RestartPolicy::OnFailure => PHASE_RUNNING,
        };
    }
    PHASE_PENDING
}

pub fn condition(kind: &str, ok: bool, reason: Option<&str>, message: Option<String>) -> PodCondition {
    PodCondition {
        type_: kind.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.map(str::to_owned),
        message,
        ..Default::default()
    }
}

/// The `DisruptionTarget` condition type (`PodDisruptionConditions`, on in v1.28).
pub const DISRUPTION_TARGET: &str = "DisruptionTarget";

/// kubelet's `PodStatusFunc` of a kill by the node (eviction, node shutdown) applied to a computed status. While
/// the containers stop only the `DisruptionTarget` condition is added, and a terminal phase the computed status
/// reached on its own (a `restartPolicy: Never` pod whose containers the kill ended) is held back with its reason
/// and message at the `previous` ones, as kubelet's status manager holds it while containers could run
/// (`mergePodStatus`): the pod never shows `Failed` without the kill's reason. Once the containers are gone
/// (`finished`) the pod is `Failed` with the kill's reason and message.
pub fn apply_terminal_status(
    status: &mut PodStatus,
    kill: &TerminalStatus,
    previous: Option<&PodStatus>,
    finished: bool,
    now: SystemTime,
) {
    if let Some((reason, message)) = &kill.disruption {
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        if !conditions.iter().any(|c| c.type_ == DISRUPTION_TARGET && c.status == "True") {
            conditions.retain(|c| c.type_ != DISRUPTION_TARGET);
            let mut c = condition(DISRUPTION_TARGET, true, Some(reason), Some(message.clone()));
            c.last_transition_time = to_time(now);
            conditions.push(c);
        }
    }
    if finished {
        status.phase = Some(PHASE_FAILED.into());
        status.reason = Some(kill.reason.clone());
        status.message = Some(kill.message.clone());
    } else if is_terminal_phase(status.phase.as_deref())
        && !is_terminal_phase(previous.and_then(|p| p.phase.as_deref()))
    {
        status.phase = Some(previous.and_then(|p| p.phase.clone()).unwrap_or_else(|| PHASE_PENDING.into()));
        status.reason = previous.and_then(|p| p.reason.clone());
        status.message = previous.and_then(|p| p.message.clone());
    }
}

/// `podutil.IsPodPhaseTerminal`.
pub fn is_terminal_phase(phase: Option<&str>) -> bool {
    matches!(phase, Some(PHASE_SUCCEEDED) | Some(PHASE_FAILED))
}

/// Go's `fmt.Sprint` of a string slice, as kubelet embeds container lists in condition messages: `[a b]`.
pub fn go_list(names: &[String]) -> String {
    format!("[{}]", names.join(" "))
}

/// kubelet's readiness-gate messages for each `spec.readinessGates` condition that is not True in the pod's status
/// as the API holds it (others set those conditions; the agent only reads them).
pub fn unready_readiness_gates(pod: &Pod) -> Vec<String> {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_deref()).unwrap_or_default();
    spec::spec(pod)
        .readiness_gates
        .iter()
        .flatten()
        .filter_map(|gate| match conditions.iter().find(|c| c.type_ == gate.condition_type) {
            None => {
                Some(format!("corresponding condition of pod readiness gate {:?} does not exist.", gate.condition_type))
            }
            Some(c) if c.status != "True" => Some(format!(
                "the status of pod readiness gate {:?} is not \"True\", but {}",
                gate.condition_type, c.status
            )),
            Some(_) => None,
        })
        .collect()
}

/// Whether a pod update changed a condition one of its readiness gates names: the pod's readiness must be computed
/// again, as kubelet reconciles it on such a status change.
pub fn readiness_gate_conditions_changed(existing: &Pod, update: &Pod) -> bool {
    let gated = |p: &Pod| -> Vec<PodCondition> {
        let conditions = p.status.as_ref().and_then(|s| s.conditions.as_deref()).unwrap_or_default();
        spec::spec(update)
            .readiness_gates
            .iter()
            .flatten()
            .filter_map(|g| conditions.iter().find(|c| c.type_ == g.condition_type).cloned())
            .collect()
    };
    gated(existing) != gated(update)
}

/// The pod's IPs: the sandbox's or, for a pod on the host's network (for which the runtime reports none), the
/// node's, as kubelet's `generateAPIPodStatus` gives them.
pub fn pod_ips(pod: &Pod, sandbox_ips: Vec<String>, host_ips: &[String]) -> Vec<String> {
    if spec::host_network(pod) && sandbox_ips.is_empty() {
        host_ips.to_vec()
    } else {
        sandbox_ips
    }
}

/// kubelet's `generateAPIPodStatus`: the containers' statuses, the ephemeral containers' too, and the phase, which
/// the active deadline overrides (kubelet's `activeDeadlineHandler` evicts the pod as Failed).
pub fn compute_pod_status(input: &StatusInput<'_>) -> PodStatus {
    let mut status = container_and_pod_status(input);
    status.ephemeral_container_statuses = crate::pods::ephemeral::ephemeral_container_statuses(
        input.pod,
        input.observed,
        input.waiting,
        input.runtime_name,
    );
    if input.deadline_exceeded {
        crate::pods::deadline::fail(&mut status);
    }
    status
}

fn container_and_pod_status(input: &StatusInput<'_>) -> PodStatus {
    let pod = input.pod;
    let init_specs = spec::init_containers(pod);
    let mut init_statuses: Vec<ContainerStatus> =
        init_specs.iter().map(|c| container_status(input, c, REASON_POD_INITIALIZING)).collect();
    // An init container that completed is ready (kubelet's prober manager); a sidecar is ready as its probes say.
    for (c, s) in init_specs.iter().zip(init_statuses.iter_mut()) {
        if !is_sidecar(c) {
            s.ready = s.state.as_ref().and_then(|st| st.terminated.as_ref()).is_some_and(|t| t.exit_code == 0);
        }
    }
    // Done: regular init containers completed, sidecars started.
    let init_complete = |c: &Container, s: &ContainerStatus| {
        if is_sidecar(c) {
            s.state.as_ref().is_some_and(|st| st.running.is_some()) && s.started == Some(true)
        } else {
            s.state.as_ref().and_then(|st| st.terminated.as_ref()).is_some_and(|t| t.exit_code == 0)
        }
    };
    // kubelet's default waiting reason for a container not created yet: PodInitializing in any pod with init
    // containers, for its init and app containers alike.
    let app_default = if init_specs.is_empty() { REASON_CONTAINER_CREATING } else { REASON_POD_INITIALIZING };
    let statuses: Vec<ContainerStatus> =
        spec::spec(pod).containers.iter().map(|c| container_status(input, c, app_default)).collect();

    let mut phase = phase(pod, &init_statuses, &statuses);
    // A terminal phase is final: a pod never goes back from Succeeded or Failed.
    if let Some(prev) = input.previous.and_then(|p| p.phase.as_deref()) {
        if prev == PHASE_SUCCEEDED || prev == PHASE_FAILED {
            phase = if prev == PHASE_SUCCEEDED { PHASE_SUCCEEDED } else { PHASE_FAILED };
        }
    }

    let sandbox = input.observed.latest_sandbox().filter(|s| s.ready);
    let incomplete: Vec<String> = init_specs
        .iter()
        .zip(&init_statuses)
        .filter(|(c, s)| !init_complete(c, s))
        .map(|(c, _)| c.name.clone())
        .collect();
    let initialized = if phase == PHASE_SUCCEEDED || incomplete.is_empty() {
        condition(
            POD_INITIALIZED,
            true,
            // kubelet's GeneratePodInitializedCondition: PodCompleted for a Succeeded pod, init containers or not.
            (phase == PHASE_SUCCEEDED).then_some(REASON_POD_COMPLETED),
            None,
        )
    } else {
        condition(
            POD_INITIALIZED,
            false,
            Some(REASON_CONTAINERS_NOT_INITIALIZED),
            Some(format!("containers with incomplete status: {}", go_list(&incomplete))),
        )
    };
    // Sidecars count for readiness, before the app containers (kubelet's `GenerateContainersReadyCondition`).
    let sidecar_statuses = init_specs.iter().zip(&init_statuses).filter(|(c, _)| is_sidecar(c)).map(|(_, s)| s);
    let unready: Vec<String> =
        sidecar_statuses.chain(statuses.iter()).filter(|s| !s.ready).map(|s| s.name.clone()).collect();
    // A terminal pod is not ready whatever its containers say: they may still be terminating.
    let terminal = match phase {
        PHASE_SUCCEEDED => Some(REASON_POD_COMPLETED),
        PHASE_FAILED => Some(REASON_POD_FAILED),
        _ => None,
    };
    let (containers_ready, ready) = if let Some(reason) = terminal {
        (condition(CONTAINERS_READY, false, Some(reason), None), condition(POD_READY, false, Some(reason), None))
    } else if unready.is_empty() {
        let gates = unready_readiness_gates(pod);
        let ready = if gates.is_empty() {
            condition(POD_READY, true, None, None)
        } else {
            condition(POD_READY, false, Some(REASON_READINESS_GATES_NOT_READY), Some(gates.join(", ")))
        };
        (condition(CONTAINERS_READY, true, None, None), ready)
    } else {
        let message = format!("containers with unready status: {}", go_list(&unready));
        (
            condition(CONTAINERS_READY, false, Some(REASON_CONTAINERS_NOT_READY), Some(message.clone())),
            condition(POD_READY, false, Some(REASON_CONTAINERS_NOT_READY), Some(message)),
        )
    };
    // PodReadyToStartContainers is behind an alpha feature gate in kubelet 1.28 (off by default): not reported.
    let mut conditions = vec![initialized, ready, containers_ready, condition(POD_SCHEDULED, true, None, None)];
    // A condition keeps its transition time until its status changes.
    let now = to_time(input.now);
    for c in &mut conditions {
        let previous =
            input.previous.and_then(|p| p.conditions.as_ref()).and_then(|cs| cs.iter().find(|p| p.type_ == c.type_));
        c.last_transition_time = match previous {
            Some(p) if p.status == c.status => p.last_transition_time.clone(),
            _ => now.clone(),
        };
    }

    let mut pod_ips = pod_ips(pod, sandbox.map(|s| s.ips.clone()).unwrap_or_default(), input.host_ips);
    // kubelet's PLEG keeps a pod's IPs once its sandboxes are all gone or stopped (an exited pod keeps the IP it
    // ran with), so that the IP stays the same over the pod's whole life.
    if pod_ips.is_empty() && sandbox.is_none() {
        let previous = input.previous.and_then(|p| p.pod_ips.as_ref());
        pod_ips = previous.into_iter().flatten().map(|ip| ip.ip.clone()).collect();
    }
    PodStatus {
        phase: Some(phase.into()),
        conditions: Some(conditions),
        host_ip: input.host_ips.first().cloned(),
        host_ips: (!input.host_ips.is_empty())
            .then(|| input.host_ips.iter().map(|ip| HostIP { ip: ip.clone() }).collect()),
        pod_ip: pod_ips.first().cloned(),
        pod_ips: (!pod_ips.is_empty()).then(|| pod_ips.iter().map(|ip| PodIP { ip: ip.clone() }).collect()),
        start_time: input.previous.and_then(|p| p.start_time.clone()).or_else(|| to_time(input.start_time)),
        qos_class: Some(pod_qos_class(spec::spec(pod)).as_str().into()),
        init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
        container_statuses: Some(statuses),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::plan::REASON_ERR_IMAGE_PULL;
    use crate::runtime::SandboxRecord;
    use k8s_openapi::api::core::v1::PodSpec;
    use std::time::{Duration, UNIX_EPOCH};

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn pod(policy: &str, init: &[&str], containers: &[&str]) -> Pod {
        let c = |n: &&str| Container {
            name: n.to_string(),
            image: Some("127.0.0.1:5000/busybox:1.36".into()),
            ..Default::default()
        };
        let mut p = Pod::default();
        p.metadata.name = Some("web-node".into());
        p.metadata.namespace = Some("default".into());
        p.metadata.uid = Some("uid-1".into());
        p.spec = Some(PodSpec {
            restart_policy: Some(policy.into()),
            init_containers: if init.is_empty() { None } else { Some(init.iter().map(c).collect()) },
            containers: containers.iter().map(c).collect(),
            ..Default::default()
        });
        p
    }

    fn record(name: &str, id: &str, restart: u32, state: ContainerRunState, exit: i32, at: u64) -> ContainerRecord {
        ContainerRecord {
            id: id.into(),
            sandbox_id: "sb1".into(),
            pod_uid: "uid-1".into(),
            name: name.into(),
            restart_count: restart,
            spec_hash: String::new(),
            state,
            created_at: t(at),
            started_at: Some(t(at)),
            finished_at: (state == ContainerRunState::Exited).then(|| t(at + 1)),
            exit_code: exit,
            reason: match (state, exit) {
                (ContainerRunState::Exited, 0) => "Completed".into(),
                (ContainerRunState::Exited, 137) => "OOMKilled".into(),
                (ContainerRunState::Exited, _) => "Error".into(),
                _ => String::new(),
            },
            message: String::new(),
            image: String::new(),
            image_ref: "sha256:abc".into(),
            termination_grace_period: None,
        }
    }

    fn sandbox(ready: bool) -> SandboxRecord {
        SandboxRecord {
            id: "sb1".into(),
            pod_uid: "uid-1".into(),
            namespace: "default".into(),
            name: "web-node".into(),
            attempt: 0,
            ready,
            created_at: t(0),
            ips: if ready { vec!["10.88.0.5".into()] } else { vec![] },
        }
    }

    fn status(
        pod: &Pod,
        containers: Vec<ContainerRecord>,
        waiting: &[(&str, &str, &str)],
        previous: Option<&PodStatus>,
    ) -> PodStatus {
        let mut observed = ObservedPod { sandboxes: vec![sandbox(true)], containers };
        observed.sort();
        let waiting: BTreeMap<String, Waiting> = waiting
            .iter()
            .map(|(n, r, m)| (n.to_string(), Waiting { reason: r.to_string(), message: m.to_string() }))
            .collect();
        let host_ips = vec!["192.0.2.10".to_string()];
        compute_pod_status(&StatusInput {
            pod,
            observed: &observed,
            waiting: &waiting,
            previous,
            start_time: t(0),
            host_ips: &host_ips,
            runtime_name: "containerd",
            probes: &ProbeResults::default(),
            deadline_exceeded: false,
            now: t(100),
        })
    }

    fn cond<'a>(s: &'a PodStatus, kind: &str) -> &'a PodCondition {
        s.conditions.as_ref().unwrap().iter().find(|c| c.type_ == kind).unwrap()
    }

    fn cstatus<'a>(s: &'a PodStatus, name: &str) -> &'a ContainerStatus {
        s.container_statuses.as_ref().unwrap().iter().find(|c| c.name == name).unwrap()
    }

    #[test]
    fn fresh_pod_is_pending_with_container_creating() {
        let p = pod("Always", &[], &["app"]);
        let s = status(&p, vec![], &[], None);
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        let c = cstatus(&s, "app");
        assert_eq!(c.state.as_ref().unwrap().waiting.as_ref().unwrap().reason.as_deref(), Some("ContainerCreating"));
        assert!(!c.ready);
        assert_eq!(cond(&s, "Ready").reason.as_deref(), Some("ContainersNotReady"));
        assert_eq!(cond(&s, "Ready").message.as_deref(), Some("containers with unready status: [app]"));
        assert_eq!(s.qos_class.as_deref(), Some("BestEffort"));
        assert_eq!(s.pod_ip.as_deref(), Some("10.88.0.5"));
        assert_eq!(s.host_ip.as_deref(), Some("192.0.2.10"));
    }

    #[test]
    fn readiness_and_startup_probes_hold_ready_and_started_until_they_pass() {
        let mut p = pod("Always", &[], &["app"]);
        let app = &mut p.spec.as_mut().unwrap().containers[0];
        app.readiness_probe = Some(Default::default());
        app.startup_probe = Some(Default::default());
        let mut observed = ObservedPod {
            sandboxes: vec![sandbox(true)],
            containers: vec![record("app", "abc", 0, ContainerRunState::Running, 0, 1)],
        };
        observed.sort();
        let host_ips = vec!["192.0.2.10".to_string()];
        let waiting = BTreeMap::new();
        let compute = |probes: &ProbeResults| {
            compute_pod_status(&StatusInput {
                pod: &p,
                observed: &observed,
                waiting: &waiting,
                previous: None,
                start_time: t(0),
                host_ips: &host_ips,
                runtime_name: "containerd",
                probes,
                deadline_exceeded: false,
                now: t(100),
            })
        };
        let mut probes = ProbeResults::default();
        let s = compute(&probes);
        assert_eq!((cstatus(&s, "app").started, cstatus(&s, "app").ready), (Some(false), false));
        assert_eq!(cond(&s, "Ready").status, "False");
        assert_eq!(cond(&s, "ContainersReady").reason.as_deref(), Some("ContainersNotReady"));
        // Readiness passing before the startup probe does not make the container ready.
        probes.set("abc", ProbeKind::Readiness, ProbeResult::Success);
        assert!(!cstatus(&compute(&probes), "app").ready);
        probes.set("abc", ProbeKind::Startup, ProbeResult::Success);
        let s = compute(&probes);
        assert_eq!((cstatus(&s, "app").started, cstatus(&s, "app").ready), (Some(true), true));
        assert_eq!(cond(&s, "Ready").status, "True");
        probes.set("abc", ProbeKind::Readiness, ProbeResult::Failure);
        let s = compute(&probes);
        assert!(!cstatus(&s, "app").ready);
        assert_eq!(s.phase.as_deref(), Some("Running"), "readiness never changes the phase");
    }

    #[test]
    fn readiness_gates_hold_ready_until_their_conditions_are_true() {
        use k8s_openapi::api::core::v1::PodReadinessGate;
        let mut p = pod("Always", &[], &["app"]);
        p.spec.as_mut().unwrap().readiness_gates = Some(vec![
            PodReadinessGate { condition_type: "example.com/lb".into() },
            PodReadinessGate { condition_type: "example.com/dns".into() },
        ]);
        let running = || vec![record("app", "abc", 0, ContainerRunState::Running, 0, 1)];
        let s = status(&p, running(), &[], None);
        assert_eq!(cond(&s, "ContainersReady").status, "True");
        let ready = cond(&s, "Ready");
        assert_eq!((ready.status.as_str(), ready.reason.as_deref()), ("False", Some("ReadinessGatesNotReady")));
        assert_eq!(
            ready.message.as_deref(),
            Some(
                "corresponding condition of pod readiness gate \"example.com/lb\" does not exist., \
                 corresponding condition of pod readiness gate \"example.com/dns\" does not exist."
            )
        );
        let gate = |t: &str, v: &str| PodCondition { type_: t.into(), status: v.into(), ..Default::default() };
        let before = p.clone();
        p.status = Some(PodStatus {
            conditions: Some(vec![gate("example.com/lb", "True"), gate("example.com/dns", "False")]),
            ..Default::default()
        });
        assert!(readiness_gate_conditions_changed(&before, &p));
        let s = status(&p, running(), &[], None);
        assert_eq!(
            cond(&s, "Ready").message.as_deref(),
            Some("the status of pod readiness gate \"example.com/dns\" is not \"True\", but False")
        );
        let before = p.clone();
        p.status = Some(PodStatus {
            conditions: Some(vec![gate("example.com/lb", "True"), gate("example.com/dns", "True")]),
            ..Default::default()
        });
        assert!(readiness_gate_conditions_changed(&before, &p));
        let s = status(&p, running(), &[], None);
        assert_eq!(cond(&s, "Ready").status, "True");
        assert!(
            s.conditions.as_ref().unwrap().iter().all(|c| !c.type_.starts_with("example.com/")),
            "the gates' conditions are not ours to write"
        );
        assert!(!readiness_gate_conditions_changed(&p, &p.clone()));
    }

    #[test]
    fn the_status_carries_the_ephemeral_containers_and_the_deadline_failure() {
        let mut p = pod("Always", &[], &["app"]);
        p.spec.as_mut().unwrap().ephemeral_containers = Some(vec![k8s_openapi::api::core::v1::EphemeralContainer {
            name: "debugger".into(),
            ..Default::default()
        }]);
        let running = vec![record("app", "abc", 0, ContainerRunState::Running, 0, 1)];
        let s = status(&p, running.clone(), &[], None);
        let eph = s.ephemeral_container_statuses.as_ref().expect("ephemeral statuses come with the pod's status");
        assert_eq!(eph[0].name, "debugger");
        assert_eq!(
            eph[0].state.as_ref().unwrap().waiting.as_ref().unwrap().reason.as_deref(),
            Some("ContainerCreating")
        );
        assert_eq!(s.phase.as_deref(), Some("Running"));

        let mut observed = ObservedPod { sandboxes: vec![sandbox(true)], containers: running };
        observed.sort();
        let host_ips = vec!["192.0.2.10".to_string()];
        let failed = compute_pod_status(&StatusInput {
            pod: &p,
            observed: &observed,
            waiting: &BTreeMap::new(),
            previous: None,
            start_time: t(0),
            host_ips: &host_ips,
            runtime_name: "containerd",
            probes: &ProbeResults::default(),
            deadline_exceeded: true,
            now: t(100),
        });
        assert_eq!(failed.phase.as_deref(), Some("Failed"), "past the deadline whatever its containers do");
        assert_eq!(failed.reason.as_deref(), Some("DeadlineExceeded"));
        assert_eq!(failed.message.as_deref(), Some("Pod was active on the node longer than the specified deadline"));
    }

    #[test]
    fn running_pod_is_ready() {
        let p = pod("Always", &[], &["app"]);
        let s = status(&p, vec![record("app", "abc", 0, ContainerRunState::Running, 0, 1)], &[], None);
        assert_eq!(s.phase.as_deref(), Some("Running"));
        let c = cstatus(&s, "app");
        assert!(c.ready);
        assert_eq!(c.container_id.as_deref(), Some("containerd://abc"));
        assert_eq!(c.image_id, "sha256:abc");
        assert_eq!(cond(&s, "Ready").status, "True");
        assert_eq!(cond(&s, "ContainersReady").status, "True");
        assert!(s.conditions.iter().flatten().all(|c| c.type_ != "PodReadyToStartContainers"));
        assert_eq!(cond(&s, "PodScheduled").status, "True");
    }

    #[test]
    fn crash_loop_shows_waiting_with_last_termination_and_stays_running_phase() {
        let p = pod("Always", &[], &["app"]);
        let containers = vec![
            record("app", "c2", 2, ContainerRunState::Exited, 3, 20),
            record("app", "c1", 1, ContainerRunState::Exited, 3, 10),
        ];
        let s = status(
            &p,
            containers,
            &[("app", "CrashLoopBackOff", "back-off 20s restarting failed container=app")],
            None,
        );
        let c = cstatus(&s, "app");
        assert_eq!(c.restart_count, 2);
        assert_eq!(c.state.as_ref().unwrap().waiting.as_ref().unwrap().reason.as_deref(), Some("CrashLoopBackOff"));
        let last = c.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!(last.exit_code, 3);
        assert_eq!(last.container_id.as_deref(), Some("containerd://c2"));
        assert_eq!(s.phase.as_deref(), Some("Running"));
    }

    #[test]
    fn a_sync_error_shows_as_waiting_only_for_a_container_that_will_be_restarted() {
        let exited = || vec![record("app", "c1", 0, ContainerRunState::Exited, 137, 1)];
        let hook = [("app", "PostStartHookError", "Exec lifecycle hook failed")];
        let s = status(&pod("Never", &[], &["app"]), exited(), &hook, None);
        let state = cstatus(&s, "app").state.clone().unwrap();
        assert_eq!(state.terminated.map(|t| t.exit_code), Some(137));
        assert_eq!(cstatus(&s, "app").last_state, Some(ContainerState::default()));
        let s = status(&pod("Always", &[], &["app"]), exited(), &hook, None);
        let c = cstatus(&s, "app");
        assert_eq!(c.state.as_ref().unwrap().waiting.as_ref().unwrap().reason.as_deref(), Some("PostStartHookError"));
        assert_eq!(c.last_state.as_ref().unwrap().terminated.as_ref().map(|t| t.exit_code), Some(137));
    }

    #[test]
    fn exit_codes_and_phases_under_each_policy() {
        for (policy, exit, phase, reason) in [
            ("Never", 0, "Succeeded", "Completed"),
            ("Never", 7, "Failed", "Error"),
            ("OnFailure", 0, "Succeeded", "Completed"),
            ("Never", 137, "Failed", "OOMKilled"),
        ] {
            let p = pod(policy, &[], &["app"]);
            let s = status(&p, vec![record("app", "c1", 0, ContainerRunState::Exited, exit, 1)], &[], None);
            assert_eq!(s.phase.as_deref(), Some(phase), "{policy} {exit}");
            let term = cstatus(&s, "app").state.clone().unwrap().terminated.unwrap();
            assert_eq!(term.exit_code, exit);
            assert_eq!(term.reason.as_deref(), Some(reason));
        }
        let p = pod("Never", &[], &["app"]);
        let s = status(&p, vec![record("app", "c1", 0, ContainerRunState::Exited, 0, 1)], &[], None);
        assert_eq!(cond(&s, "Ready").reason.as_deref(), Some("PodCompleted"));
        assert_eq!(cond(&s, "Initialized").reason.as_deref(), Some("PodCompleted"));
        // Failed: not ready with reason PodFailed and no message, as kubelet's GenerateContainersReadyCondition.
        let s = status(&p, vec![record("app", "c1", 0, ContainerRunState::Exited, 7, 1)], &[], None);
        for kind in ["Ready", "ContainersReady"] {
            assert_eq!(cond(&s, kind).reason.as_deref(), Some("PodFailed"), "{kind}");
            assert_eq!(cond(&s, kind).message, None, "{kind}");
        }
    }

    #[test]
    fn image_pull_errors_are_waiting_reasons() {
        let p = pod("Always", &[], &["app"]);
        let s = status(&p, vec![], &[("app", REASON_ERR_IMAGE_PULL, "failed to pull image: not found")], None);
        let w = cstatus(&s, "app").state.clone().unwrap().waiting.unwrap();
        assert_eq!(w.reason.as_deref(), Some("ErrImagePull"));
        assert_eq!(w.message.as_deref(), Some("failed to pull image: not found"));
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        let s = status(&p, vec![], &[("app", "ImagePullBackOff", "Back-off pulling image \"x\"")], None);
        assert_eq!(
            cstatus(&s, "app").state.clone().unwrap().waiting.unwrap().reason.as_deref(),
            Some("ImagePullBackOff")
        );
    }

    #[test]
    fn init_containers_gate_initialized_and_phase() {
        let p = pod("Always", &["init"], &["app"]);
        let s = status(&p, vec![record("init", "i1", 0, ContainerRunState::Running, 0, 1)], &[], None);
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        assert_eq!(cond(&s, "Initialized").status, "False");
        assert_eq!(cond(&s, "Initialized").message.as_deref(), Some("containers with incomplete status: [init]"));
        let app = cstatus(&s, "app").state.clone().unwrap().waiting.unwrap();
        assert_eq!(app.reason.as_deref(), Some("PodInitializing"));
        let p = pod("Never", &["init"], &["app"]);
        let s = status(&p, vec![record("init", "i1", 0, ContainerRunState::Exited, 1, 1)], &[], None);
        assert_eq!(s.phase.as_deref(), Some("Failed"));
        // Not created yet: PodInitializing for the init and app containers of a pod with init containers.
        let p = pod("Always", &["init1", "init2"], &["app"]);
        let s = status(&p, vec![record("init1", "i1", 0, ContainerRunState::Running, 0, 1)], &[], None);
        let init2 = &s.init_container_statuses.as_ref().unwrap()[1];
        assert_eq!(init2.state.as_ref().unwrap().waiting.as_ref().unwrap().reason.as_deref(), Some("PodInitializing"));
    }

    #[test]
    fn a_running_sidecar_initializes_the_pod_and_counts_for_readiness() {
        let mut p = pod("Never", &["side", "init"], &["app"]);
        let side = &mut p.spec.as_mut().unwrap().init_containers.as_mut().unwrap()[0];
        side.restart_policy = Some("Always".into());
        side.readiness_probe = Some(Default::default());
        let containers = || {
            vec![
                record("side", "s1", 0, ContainerRunState::Running, 0, 1),
                record("init", "i1", 0, ContainerRunState::Exited, 0, 2),
                record("app", "a1", 0, ContainerRunState::Running, 0, 4),
            ]
        };
        let s = status(&p, containers(), &[], None);
        assert_eq!(cond(&s, "Initialized").status, "True");
        assert_eq!(s.phase.as_deref(), Some("Running"));
        let init = s.init_container_statuses.as_ref().unwrap();
        assert!(init[1].ready, "a completed init container is ready");
        assert!(!init[0].ready, "the sidecar's readiness probe has not passed");
        assert_eq!(cond(&s, "ContainersReady").message.as_deref(), Some("containers with unready status: [side]"));
        // The app completes and the sidecar is killed: the pod succeeded, the sidecar's exit does not fail it.
        let done = vec![
            record("side", "s1", 0, ContainerRunState::Exited, 137, 1),
            record("init", "i1", 0, ContainerRunState::Exited, 0, 2),
            record("app", "a1", 0, ContainerRunState::Exited, 0, 4),
        ];
        assert_eq!(status(&p, done, &[], None).phase.as_deref(), Some("Succeeded"));
        // Before the sidecar runs, the pod is initializing.
        let s = status(&p, vec![], &[], None);
        assert_eq!(cond(&s, "Initialized").message.as_deref(), Some("containers with incomplete status: [side init]"));
        assert_eq!(s.phase.as_deref(), Some("Pending"));
    }

    #[test]
    fn terminal_phase_never_goes_back_and_transition_times_are_kept() {
        let p = pod("Never", &[], &["app"]);
        let done = status(&p, vec![record("app", "c1", 0, ContainerRunState::Exited, 0, 1)], &[], None);
        assert_eq!(done.phase.as_deref(), Some("Succeeded"));
        // Even if the runtime no longer shows the container, the pod stays Succeeded.
        let later = status(&p, vec![], &[], Some(&done));
        assert_eq!(later.phase.as_deref(), Some("Succeeded"));
        let mut prev = status(&pod("Always", &[], &["app"]), vec![], &[], None);
        for c in prev.conditions.as_mut().unwrap() {
            c.last_transition_time = to_time(t(5));
        }
        let s = status(
            &pod("Always", &[], &["app"]),
            vec![record("app", "c", 0, ContainerRunState::Running, 0, 1)],
            &[],
            Some(&prev),
        );
        assert_eq!(cond(&s, "PodScheduled").last_transition_time, to_time(t(5)), "unchanged condition keeps its time");
        assert_eq!(cond(&s, "Ready").last_transition_time, to_time(t(100)), "changed condition gets now");
    }

    #[test]
    fn a_host_network_pod_has_the_nodes_ips() {
        let pod = |host_network| Pod {
            spec: Some(PodSpec { host_network: Some(host_network), ..Default::default() }),
            ..Default::default()
        };
        let host = vec!["192.0.2.10".to_owned(), "2001:db8::10".to_owned()];
        assert_eq!(pod_ips(&pod(true), vec![], &host), host);
        assert_eq!(pod_ips(&pod(false), vec![], &host), Vec::<String>::new());
        assert_eq!(pod_ips(&pod(false), vec!["10.88.0.5".into()], &host), vec!["10.88.0.5"]);
    }

    #[test]
    fn an_exited_pod_keeps_the_ip_it_ran_with() {
        let p = pod("Never", &[], &["app"]);
        let exited = vec![record("app", "c", 0, ContainerRunState::Exited, 0, 1)];
        let running = status(&p, exited.clone(), &[], None);
        assert_eq!(running.pod_ip.as_deref(), Some("10.88.0.5"));
        // The sandbox stopped: the runtime reports no IP any more.
        let mut observed = ObservedPod { sandboxes: vec![sandbox(false)], containers: exited };
        observed.sort();
        let (waiting, host_ips, probes) = (BTreeMap::new(), vec!["192.0.2.10".to_string()], ProbeResults::default());
        let input = |previous| StatusInput {
            pod: &p,
            observed: &observed,
            waiting: &waiting,
            previous,
            start_time: t(0),
            host_ips: &host_ips,
            runtime_name: "containerd",
            probes: &probes,
            deadline_exceeded: false,
            now: t(100),
        };
        let stopped = compute_pod_status(&input(Some(&running)));
        assert_eq!(stopped.pod_ip.as_deref(), Some("10.88.0.5"));
        assert_eq!(stopped.pod_ips, running.pod_ips);
        assert_eq!(compute_pod_status(&input(None)).pod_ip, None, "nothing to keep");
    }

    #[test]
    fn a_kill_by_the_node_shows_its_disruption_condition_at_once_and_its_phase_when_finished() {
        let kill = TerminalStatus {
            reason: "Evicted".into(),
            message: "The node was low on resource: memory. ".into(),
            disruption: Some(("TerminationByKubelet".into(), "The node was low on resource: memory. ".into())),
        };
        let mut status = PodStatus { phase: Some("Running".into()), ..Default::default() };
        apply_terminal_status(&mut status, &kill, None, false, t(10));
        assert_eq!(status.phase.as_deref(), Some("Running"), "no terminal phase while containers could run");
        assert_eq!(status.reason, None);
        let c = cond(&status, DISRUPTION_TARGET);
        assert_eq!((c.status.as_str(), c.reason.as_deref()), ("True", Some("TerminationByKubelet")));
        assert_eq!(c.last_transition_time, to_time(t(10)));
        apply_terminal_status(&mut status, &kill, None, true, t(20));
        assert_eq!(status.phase.as_deref(), Some("Failed"));
        assert_eq!(status.reason.as_deref(), Some("Evicted"));
        assert_eq!(status.message.as_deref(), Some("The node was low on resource: memory. "));
        let conditions = status.conditions.as_deref().unwrap_or_default();
        assert_eq!(conditions.iter().filter(|c| c.type_ == DISRUPTION_TARGET).count(), 1);
        assert_eq!(cond(&status, DISRUPTION_TARGET).last_transition_time, to_time(t(10)), "keeps its time");
    }

    #[test]
    fn a_pod_whose_containers_the_kill_ended_stays_in_its_phase_until_the_kill_is_done() {
        // restartPolicy Never: the killed containers make the computed phase Failed before the kill is done.
        let kill = TerminalStatus { reason: "Evicted".into(), message: "m".into(), disruption: None };
        let previous = PodStatus { phase: Some("Running".into()), ..Default::default() };
        let mut status = PodStatus { phase: Some("Failed".into()), ..Default::default() };
        apply_terminal_status(&mut status, &kill, Some(&previous), false, t(10));
        assert_eq!((status.phase.as_deref(), status.reason.as_deref()), (Some("Running"), None));
        let mut status = PodStatus { phase: Some("Failed".into()), ..Default::default() };
        apply_terminal_status(&mut status, &kill, Some(&previous), true, t(20));
        assert_eq!((status.phase.as_deref(), status.reason.as_deref()), (Some("Failed"), Some("Evicted")));
        // A pod that had ended before is not moved back from its terminal phase.
        let ended = PodStatus { phase: Some("Succeeded".into()), ..Default::default() };
        let mut status = ended.clone();
        apply_terminal_status(&mut status, &kill, Some(&ended), false, t(10));
        assert_eq!(status.phase.as_deref(), Some("Succeeded"));
    }
}
