//! Probe results written straight into a pod's stored status, as kubelet's `SetContainerReadiness` and
//! `SetContainerStartup` do (pkg/kubelet/status/status_manager.go): a readiness or startup result changes the
//! container's `ready`/`started` and the pod's `ContainersReady` and `Ready` conditions (generated as
//! pkg/kubelet/status/generate.go does) without a sync of the pod.

use std::time::SystemTime;

use k8s_openapi::api::core::v1::{Container, ContainerStatus, Pod, PodCondition, PodStatus};

use crate::kubetypes::probe::{ProbeKind, ProbeResult, ProbeResults};
use crate::kubetypes::spec;
use crate::pods::plan::is_sidecar;
use crate::pods::status::{
    condition, go_list, to_time, unready_readiness_gates, CONTAINERS_READY, PHASE_FAILED, PHASE_SUCCEEDED, POD_READY,
    REASON_CONTAINERS_NOT_READY, REASON_POD_COMPLETED, REASON_POD_FAILED, REASON_READINESS_GATES_NOT_READY,
};

/// The runtime's container ID without its `<runtime>://` prefix, as probe results are keyed.
fn bare_id(container_id: &str) -> &str {
    container_id.split_once("://").map_or(container_id, |(_, id)| id)
}

/// kubelet's `findContainerStatus`: the status of the container instance `container_id` (bare or prefixed).
fn find_container_status<'a>(status: &'a mut PodStatus, container_id: &str) -> Option<&'a mut ContainerStatus> {
    let wanted = bare_id(container_id);
    let init = status.init_container_statuses.iter_mut().flatten();
    let app = status.container_statuses.iter_mut().flatten();
    init.chain(app).find(|c| c.container_id.as_deref().map(bare_id) == Some(wanted))
}

/// kubelet's `GenerateContainersReadyCondition`: sidecars and app containers must all be ready; a pod that has
/// finished is not ready whatever its containers say.
fn containers_ready_condition(pod: &Pod, status: &PodStatus) -> PodCondition {
    match status.phase.as_deref() {
        Some(PHASE_SUCCEEDED) => return condition(CONTAINERS_READY, false, Some(REASON_POD_COMPLETED), None),
        Some(PHASE_FAILED) => return condition(CONTAINERS_READY, false, Some(REASON_POD_FAILED), None),
        _ => {}
    }
    let sidecars: Vec<&str> =
        spec::init_containers(pod).iter().filter(|c| is_sidecar(c)).map(|c| c.name.as_str()).collect();
    let init = status.init_container_statuses.iter().flatten().filter(|s| sidecars.contains(&s.name.as_str()));
    let unready: Vec<String> =
        init.chain(status.container_statuses.iter().flatten()).filter(|s| !s.ready).map(|s| s.name.clone()).collect();
    if unready.is_empty() {
        return condition(CONTAINERS_READY, true, None, None);
    }
    let message = format!("containers with unready status: {}", go_list(&unready));
    condition(CONTAINERS_READY, false, Some(REASON_CONTAINERS_NOT_READY), Some(message))
}

/// kubelet's `GeneratePodReadyCondition`: ready when the containers are and every readiness gate's condition is True.
fn pod_ready_condition(pod: &Pod, containers_ready: &PodCondition) -> PodCondition {
    if containers_ready.status != "True" {
        return PodCondition { type_: POD_READY.into(), ..containers_ready.clone() };
    }
    let gates = unready_readiness_gates(pod);
    if gates.is_empty() {
        condition(POD_READY, true, None, None)
    } else {
        condition(POD_READY, false, Some(REASON_READINESS_GATES_NOT_READY), Some(gates.join(", ")))
    }
}

/// Puts `new` in place of the condition of its type, keeping the old transition time while its status is the same
/// (kubelet's `updateLastTransitionTime`).
fn replace_condition(status: &mut PodStatus, mut new: PodCondition, now: SystemTime) {
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            new.last_transition_time =
                if old.status == new.status { old.last_transition_time.clone() } else { to_time(now) };
            *old = new;
        }
        None => {
            new.last_transition_time = to_time(now);
            conditions.push(new);
        }
    }
}

/// A condition whose status is the same as in the status stored before keeps that one's transition time (kubelet's
/// `updateLastTransitionTime` against the cached status): a status computed before a probe result landed may carry
/// another time for a condition the result had flipped already.
pub fn keep_transition_times(status: &mut PodStatus, old: Option<&PodStatus>) {
    let Some(old) = old.and_then(|o| o.conditions.as_ref()) else { return };
    for c in status.conditions.iter_mut().flatten() {
        if let Some(o) = old.iter().find(|o| o.type_ == c.type_ && o.status == c.status) {
            c.last_transition_time = o.last_transition_time.clone();
        }
    }
}

/// kubelet's `SetContainerReadiness`: sets the container's `ready` and regenerates `Ready` and `ContainersReady`.
/// A container not in the status (an instance the status has not shown yet) is ignored. True when it changed.
pub fn set_container_readiness(
    pod: &Pod,
    status: &mut PodStatus,
    container_id: &str,
    ready: bool,
    now: SystemTime,
) -> bool {
    let Some(container) = find_container_status(status, container_id) else { return false };
    if container.ready == ready {
        return false;
    }
    container.ready = ready;
    let containers_ready = containers_ready_condition(pod, status);
    let pod_ready = pod_ready_condition(pod, &containers_ready);
    replace_condition(status, pod_ready, now);
    replace_condition(status, containers_ready, now);
    true
}

/// kubelet's `SetContainerStartup`: sets the container's `started`. True when it changed.
pub fn set_container_startup(status: &mut PodStatus, container_id: &str, started: bool) -> bool {
    let Some(container) = find_container_status(status, container_id) else { return false };
    if container.started == Some(started) {
        return false;
    }
    container.started = Some(started);
    true
}

/// Brings the status in line with the pod's latest readiness and startup results, as `compute_pod_status` derives
/// them (a container is started once its startup probe passed, ready once started and its readiness probe passed).
/// Only running containers with a startup or readiness probe are touched. True when the status changed.
pub fn apply_probe_results(pod: &Pod, status: &mut PodStatus, results: &ProbeResults, now: SystemTime) -> bool {
    let probed = |c: &Container| c.startup_probe.is_some() || c.readiness_probe.is_some();
    let sidecars = spec::init_containers(pod).iter().filter(|c| is_sidecar(c));
    let containers: Vec<&Container> = sidecars.chain(spec::spec(pod).containers.iter()).filter(|c| probed(c)).collect();
    let instances: Vec<(&Container, String)> = containers
        .into_iter()
        .filter_map(|c| {
            let init = status.init_container_statuses.iter().flatten();
            let s = init.chain(status.container_statuses.iter().flatten()).find(|s| s.name == c.name)?;
            let running = s.state.as_ref().is_some_and(|st| st.running.is_some());
            Some((c, bare_id(s.container_id.as_deref().filter(|_| running)?).to_owned()))
        })
        .collect();
    let mut changed = false;
    for (container, id) in instances {
        let passed = |kind| results.get(&id, kind) == Some(ProbeResult::Success);
        if container.startup_probe.is_some() {
            changed |= set_container_startup(status, &id, passed(ProbeKind::Startup));
        }
        let started = find_container_status(status, &id).is_some_and(|s| s.started == Some(true));
        let ready = started && (container.readiness_probe.is_none() || passed(ProbeKind::Readiness));
        changed |= set_container_readiness(pod, status, &id, ready, now);
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::{Duration, UNIX_EPOCH};

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn pod(gates: bool) -> Pod {
        let mut pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u"},
            "spec": {"containers": [
                {"name": "web", "image": "i", "readinessProbe": {"exec": {"command": ["true"]}}},
                {"name": "side", "image": "i"},
            ]},
        }))
        .expect("a valid pod literal");
        if gates {
            pod.spec.as_mut().expect("spec").readiness_gates =
                Some(vec![serde_json::from_value(json!({"conditionType": "example.com/gate"})).expect("a gate")]);
        }
        pod
    }

    fn running(name: &str, id: &str, ready: bool) -> Value {
        json!({"name": name, "image": "i", "imageID": "", "restartCount": 0, "ready": ready, "started": true,
               "containerID": format!("containerd://{id}"), "state": {"running": {}}})
    }

    use serde_json::Value;

    /// A running pod whose `web` container is not ready yet, as `compute_pod_status` gives it at t(0).
    fn status() -> PodStatus {
        serde_json::from_value(json!({
            "phase": "Running",
            "conditions": [
                {"type": "Initialized", "status": "True", "lastTransitionTime": "2023-11-14T22:13:20Z"},
                {"type": "Ready", "status": "False", "reason": "ContainersNotReady",
                 "message": "containers with unready status: [web]", "lastTransitionTime": "2023-11-14T22:13:20Z"},
                {"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady",
                 "message": "containers with unready status: [web]", "lastTransitionTime": "2023-11-14T22:13:20Z"},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2023-11-14T22:13:20Z"},
            ],
            "containerStatuses": [running("web", "c1", false), running("side", "c2", true)],
        }))
        .expect("a valid status literal")
    }

    fn cond<'a>(s: &'a PodStatus, kind: &str) -> &'a PodCondition {
        s.conditions.iter().flatten().find(|c| c.type_ == kind).expect("condition present")
    }

    #[test]
    fn a_readiness_flip_sets_ready_and_both_conditions_with_their_transition_times() {
        let pod = pod(false);
        let mut s = status();
        let before = s.clone();
        assert!(set_container_readiness(&pod, &mut s, "containerd://c1", true, t(10)));
        assert!(s.container_statuses.as_ref().expect("statuses")[0].ready);
        for kind in [POD_READY, CONTAINERS_READY] {
            let c = cond(&s, kind);
            assert_eq!((c.status.as_str(), c.reason.as_deref(), c.message.as_deref()), ("True", None, None), "{kind}");
            assert_eq!(c.last_transition_time, to_time(t(10)), "{kind} flipped at t(10)");
        }
        assert_eq!(cond(&s, "Initialized"), cond(&before, "Initialized"), "other conditions untouched");
        assert!(!set_container_readiness(&pod, &mut s, "c1", true, t(15)), "unchanged: no edit");
        assert_eq!(cond(&s, POD_READY).last_transition_time, to_time(t(10)));

        assert!(set_container_readiness(&pod, &mut s, "c1", false, t(20)));
        let ready = cond(&s, POD_READY);
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason.as_deref(), Some(REASON_CONTAINERS_NOT_READY));
        assert_eq!(ready.message.as_deref(), Some("containers with unready status: [web]"));
        assert_eq!(ready.last_transition_time, to_time(t(20)));
        assert_eq!(cond(&s, CONTAINERS_READY).last_transition_time, to_time(t(20)));

        assert!(set_container_readiness(&pod, &mut s, "c1", true, t(30)));
        assert_eq!(cond(&s, POD_READY).status, "True");
        assert_eq!(cond(&s, POD_READY).last_transition_time, to_time(t(30)));
        // The order of the conditions is kept, so a patch does not reorder them.
        let order: Vec<&str> = s.conditions.iter().flatten().map(|c| c.type_.as_str()).collect();
        assert_eq!(order, ["Initialized", "Ready", "ContainersReady", "PodScheduled"]);
    }

    #[test]
    fn readiness_gates_keep_the_pod_unready_while_its_containers_are_ready() {
        let pod = pod(true);
        let mut s = status();
        assert!(set_container_readiness(&pod, &mut s, "c1", true, t(10)));
        assert_eq!(cond(&s, CONTAINERS_READY).status, "True");
        let ready = cond(&s, POD_READY);
        assert_eq!((ready.status.as_str(), ready.reason.as_deref()), ("False", Some(REASON_READINESS_GATES_NOT_READY)));
        assert_eq!(ready.last_transition_time, to_time(t(0)), "Ready stayed False: its time is kept");
    }

    #[test]
    fn an_unknown_container_or_a_status_not_computed_yet_is_ignored() {
        let pod = pod(false);
        let mut s = status();
        let before = s.clone();
        assert!(!set_container_readiness(&pod, &mut s, "containerd://gone", true, t(10)));
        assert!(!set_container_startup(&mut s, "gone", true));
        assert_eq!(s, before);
        let mut empty = PodStatus::default();
        assert!(!set_container_readiness(&pod, &mut empty, "c1", true, t(10)));
        assert!(!apply_probe_results(&pod, &mut empty, &ProbeResults::default(), t(10)));
        assert_eq!(empty, PodStatus::default());
    }

    #[test]
    fn probe_results_are_applied_as_compute_pod_status_derives_them() {
        let mut pod = pod(false);
        pod.spec.as_mut().expect("spec").containers[1].startup_probe =
            Some(serde_json::from_value(json!({"exec": {"command": ["true"]}})).expect("a probe"));
        let mut s = status();
        s.container_statuses.as_mut().expect("statuses")[1].started = Some(false);
        s.container_statuses.as_mut().expect("statuses")[1].ready = false;
        let mut results = ProbeResults::default();
        results.set("c1", ProbeKind::Readiness, ProbeResult::Success);
        assert!(apply_probe_results(&pod, &mut s, &results, t(10)));
        assert_eq!(cond(&s, POD_READY).status, "False", "side has not started");
        results.set("c2", ProbeKind::Startup, ProbeResult::Success);
        assert!(apply_probe_results(&pod, &mut s, &results, t(20)));
        let side = &s.container_statuses.as_ref().expect("statuses")[1];
        assert_eq!((side.started, side.ready), (Some(true), true), "started, and ready without a readiness probe");
        assert_eq!(cond(&s, POD_READY).status, "True");
        assert!(!apply_probe_results(&pod, &mut s, &results, t(30)), "nothing new");
        results.set("c1", ProbeKind::Readiness, ProbeResult::Failure);
        assert!(apply_probe_results(&pod, &mut s, &results, t(40)));
        assert_eq!(cond(&s, POD_READY).last_transition_time, to_time(t(40)));
    }
}
