//! Ephemeral containers (`kubectl debug`): kubelet's `computePodActions` starts each one that has never run, once,
//! in the pod's running sandbox and before any init container; they are never restarted, never ready, and reported in
//! `ephemeralContainerStatuses`. Pure, like `plan` and `status`.

use std::collections::BTreeMap;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus,
    EphemeralContainer, Pod,
};

use crate::pods::plan::{crash_backoff_key, ContainerStart, PodActions, Waiting, REASON_CONTAINER_CREATING};
use crate::pods::spec;
use crate::runtime::{ContainerRunState, ObservedPod};

/// The container an ephemeral container runs as (the same fields, without the target).
pub fn as_container(e: &EphemeralContainer) -> Container {
    Container {
        name: e.name.clone(),
        image: e.image.clone(),
        command: e.command.clone(),
        args: e.args.clone(),
        working_dir: e.working_dir.clone(),
        env: e.env.clone(),
        env_from: e.env_from.clone(),
        image_pull_policy: e.image_pull_policy.clone(),
        security_context: e.security_context.clone(),
        stdin: e.stdin,
        stdin_once: e.stdin_once,
        tty: e.tty,
        termination_message_path: e.termination_message_path.clone(),
        termination_message_policy: e.termination_message_policy.clone(),
        volume_mounts: e.volume_mounts.clone(),
        volume_devices: e.volume_devices.clone(),
        resources: e.resources.clone(),
        ..Default::default()
    }
}

pub fn ephemeral_containers(pod: &Pod) -> &[EphemeralContainer] {
    spec::spec(pod).ephemeral_containers.as_deref().unwrap_or_default()
}

/// The pod's ephemeral container of that name, as a container.
pub fn find(pod: &Pod, name: &str) -> Option<Container> {
    ephemeral_containers(pod).iter().find(|e| e.name == name).map(as_container)
}

/// kubelet's `getTargetID`: the runtime ID of the running container whose PID namespace the named ephemeral
/// container joins, `None` without a target; an error when the target is not running, which fails the start as a
/// `CreateContainerConfigError`.
pub fn target_id(pod: &Pod, name: &str, observed: &ObservedPod) -> Result<Option<String>, String> {
    let Some(target) = ephemeral_containers(pod)
        .iter()
        .find(|e| e.name == name)
        .and_then(|e| e.target_container_name.as_deref())
        .filter(|t| !t.is_empty())
    else {
        return Ok(None);
    };
    match observed.latest_container(target) {
        Some(c) if c.state == ContainerRunState::Running => Ok(Some(c.id.clone())),
        _ => Err(format!("unable to find target container {target}")),
    }
}

/// Adds the ephemeral containers to start to `actions`: those without any instance, when the pod's sandbox runs and
/// stays (not while it is being created or killed), first in the start order.
pub fn add_ephemeral_starts(pod: &Pod, observed: &ObservedPod, actions: &mut PodActions) {
    if actions.kill_pod || actions.create_sandbox.is_some() || actions.sandbox_id.is_none() {
        return;
    }
    let starts: Vec<ContainerStart> = ephemeral_containers(pod)
        .iter()
        .filter(|e| observed.latest_container(&e.name).is_none())
        .map(|e| ContainerStart {
            name: e.name.clone(),
            init: false,
            restart_count: 0,
            previous_finished_at: None,
            backoff_key: crash_backoff_key(pod, &as_container(e)),
        })
        .collect();
    actions.containers_to_start.splice(0..0, starts);
}

fn time(t: Option<SystemTime>) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time> {
    t.and_then(crate::pods::status::to_time)
}

/// `ephemeralContainerStatuses`: running, terminated (kept, not restarted) or waiting with the start's reason.
pub fn ephemeral_container_statuses(
    pod: &Pod,
    observed: &ObservedPod,
    waiting: &BTreeMap<String, Waiting>,
    runtime_name: &str,
) -> Option<Vec<ContainerStatus>> {
    let all = ephemeral_containers(pod);
    if all.is_empty() {
        return None;
    }
    let statuses = all
        .iter()
        .map(|e| {
            let latest = observed.latest_container(&e.name);
            let state = match (latest, waiting.get(&e.name)) {
                (Some(c), _) if c.state == ContainerRunState::Running => ContainerState {
                    running: Some(ContainerStateRunning { started_at: time(c.started_at) }),
                    ..Default::default()
                },
                (Some(c), _) if c.state == ContainerRunState::Exited => ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: c.exit_code,
                        reason: Some(if !c.reason.is_empty() {
                            c.reason.clone()
                        } else if c.exit_code == 0 {
                            "Completed".into()
                        } else {
                            "Error".into()
                        }),
                        message: (!c.message.is_empty()).then(|| c.message.clone()),
                        started_at: time(c.started_at),
                        finished_at: time(c.finished_at),
                        container_id: Some(format!("{runtime_name}://{}", c.id)),
                        signal: None,
                    }),
                    ..Default::default()
                },
                (_, w) => ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some(w.map(|w| w.reason.clone()).unwrap_or_else(|| REASON_CONTAINER_CREATING.into())),
                        message: w.map(|w| w.message.clone()).filter(|m| !m.is_empty()),
                    }),
                    ..Default::default()
                },
            };
            let running = state.running.is_some();
            ContainerStatus {
                name: e.name.clone(),
                image: e.image.clone().unwrap_or_default(),
                image_id: latest.map(|c| c.image_ref.clone()).unwrap_or_default(),
                container_id: latest.map(|c| format!("{runtime_name}://{}", c.id)),
                restart_count: 0,
                ready: false,
                started: Some(running),
                state: Some(state),
                last_state: Some(ContainerState::default()),
                ..Default::default()
            }
        })
        .collect();
    Some(statuses)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{ContainerRecord, SandboxRecord};
    use std::time::UNIX_EPOCH;

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "d", "uid": "u"},
            "spec": {
                "containers": [{"name": "app", "image": "busybox"}],
                "ephemeralContainers": [{"name": "debugger", "image": "busybox", "stdin": true, "tty": true}],
            }
        }))
        .unwrap()
    }

    fn record(name: &str, state: ContainerRunState) -> ContainerRecord {
        ContainerRecord {
            id: format!("{name}-id"),
            sandbox_id: "s".into(),
            pod_uid: "u".into(),
            name: name.into(),
            restart_count: 0,
            spec_hash: String::new(),
            state,
            created_at: UNIX_EPOCH,
            started_at: Some(UNIX_EPOCH),
            finished_at: None,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            image: "busybox".into(),
            image_ref: "sha256:1".into(),
            termination_grace_period: None,
        }
    }

    fn running_sandbox() -> ObservedPod {
        ObservedPod {
            sandboxes: vec![SandboxRecord {
                id: "s".into(),
                pod_uid: "u".into(),
                namespace: "d".into(),
                name: "p".into(),
                attempt: 0,
                ready: true,
                created_at: UNIX_EPOCH,
                ips: vec![],
            }],
            containers: vec![record("app", ContainerRunState::Running)],
        }
    }

    #[test]
    fn a_new_ephemeral_container_starts_first_in_the_running_sandbox_and_only_once() {
        let observed = running_sandbox();
        let mut actions = PodActions { sandbox_id: Some("s".into()), ..Default::default() };
        actions.containers_to_start.push(ContainerStart {
            name: "init".into(),
            init: true,
            restart_count: 0,
            previous_finished_at: None,
            backoff_key: String::new(),
        });
        add_ephemeral_starts(&pod(), &observed, &mut actions);
        assert_eq!(actions.containers_to_start[0].name, "debugger");
        assert_eq!(actions.containers_to_start[1].name, "init");

        // Once it ran, even exited, it is not started again.
        let mut ran = running_sandbox();
        ran.containers.push(record("debugger", ContainerRunState::Exited));
        let mut actions = PodActions { sandbox_id: Some("s".into()), ..Default::default() };
        add_ephemeral_starts(&pod(), &ran, &mut actions);
        assert!(actions.containers_to_start.is_empty());

        // Not into a sandbox being created or killed.
        for mut actions in [
            PodActions { create_sandbox: Some(1), ..Default::default() },
            PodActions { kill_pod: true, sandbox_id: Some("s".into()), ..Default::default() },
            PodActions::default(),
        ] {
            add_ephemeral_starts(&pod(), &observed, &mut actions);
            assert!(actions.containers_to_start.is_empty(), "{actions:?}");
        }
    }

    #[test]
    fn statuses_report_waiting_running_and_terminated_never_ready() {
        let p = pod();
        let s = ephemeral_container_statuses(&p, &running_sandbox(), &BTreeMap::new(), "containerd").unwrap();
        assert_eq!(s[0].state.as_ref().unwrap().waiting.as_ref().unwrap().reason.as_deref(), Some("ContainerCreating"));
        let mut observed = running_sandbox();
        observed.containers.push(record("debugger", ContainerRunState::Running));
        let s = ephemeral_container_statuses(&p, &observed, &BTreeMap::new(), "containerd").unwrap();
        assert!(s[0].state.as_ref().unwrap().running.is_some() && !s[0].ready);
        assert_eq!(s[0].container_id.as_deref(), Some("containerd://debugger-id"));
        observed.containers[1].state = ContainerRunState::Exited;
        observed.containers[1].exit_code = 2;
        let s = ephemeral_container_statuses(&p, &observed, &BTreeMap::new(), "containerd").unwrap();
        assert_eq!(s[0].state.as_ref().unwrap().terminated.as_ref().unwrap().reason.as_deref(), Some("Error"));
        let plain: Pod = serde_json::from_value(serde_json::json!({"spec": {"containers": []}})).unwrap();
        assert_eq!(ephemeral_container_statuses(&plain, &observed, &BTreeMap::new(), "containerd"), None);
    }

    #[test]
    fn a_target_joins_the_running_target_containers_pid_namespace() {
        let mut p = pod();
        assert_eq!(target_id(&p, "debugger", &running_sandbox()), Ok(None));
        p.spec.as_mut().unwrap().ephemeral_containers.as_mut().unwrap()[0].target_container_name = Some("app".into());
        assert_eq!(target_id(&p, "debugger", &running_sandbox()), Ok(Some("app-id".into())));
        let mut exited = running_sandbox();
        exited.containers[0].state = ContainerRunState::Exited;
        assert_eq!(target_id(&p, "debugger", &exited), Err("unable to find target container app".into()));
        assert_eq!(target_id(&p, "app", &running_sandbox()), Ok(None));
    }
}
