//! What to do for a pod, decided purely from its spec, what the runtime holds and the time: kubelet's
//! `computePodActions` plus the back-off checks its `SyncPod` makes before starting a container.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::pods::backoff::Backoff;
use crate::pods::spec::{self, RestartPolicy};
use crate::probes::{ProbeKind, ProbeResult, ProbeResults};
use crate::runtime::{ContainerRecord, ContainerRunState, ObservedPod};

/// kubelet keeps this many dead instances of each container (`MaxPerPodContainer`); older ones are removed.
pub const MAX_DEAD_PER_CONTAINER: usize = 1;

/// Waiting reasons kubelet reports (pkg/kubelet/container/sync_result.go, images/types.go).
pub const REASON_CRASH_LOOP_BACK_OFF: &str = "CrashLoopBackOff";
pub const REASON_IMAGE_PULL_BACK_OFF: &str = "ImagePullBackOff";
pub const REASON_ERR_IMAGE_PULL: &str = "ErrImagePull";
pub const REASON_ERR_IMAGE_NEVER_PULL: &str = "ErrImageNeverPull";
pub const REASON_CONTAINER_CREATING: &str = "ContainerCreating";
pub const REASON_POD_INITIALIZING: &str = "PodInitializing";
pub const REASON_CREATE_CONTAINER_CONFIG_ERROR: &str = "CreateContainerConfigError";
pub const REASON_CREATE_CONTAINER_ERROR: &str = "CreateContainerError";
pub const REASON_RUN_CONTAINER_ERROR: &str = "RunContainerError";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub reason: String,
    pub message: String,
}

/// A container to create and start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStart {
    pub name: String,
    pub init: bool,
    pub restart_count: u32,
    /// When the previous instance finished; starting again records a back-off step from that time.
    pub previous_finished_at: Option<SystemTime>,
    pub backoff_key: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerKill {
    pub id: String,
    pub name: String,
    pub reason: String,
    /// A failed probe's own `terminationGracePeriodSeconds`, which replaces the pod's.
    pub grace_period: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodActions {
    /// Stop every container and the sandbox.
    pub kill_pod: bool,
    /// Create a new sandbox with this attempt number.
    pub create_sandbox: Option<u32>,
    /// The ready sandbox to start containers in, when no new one is needed.
    pub sandbox_id: Option<String>,
    /// Containers to start, in order (at most one init container, which then comes alone).
    pub containers_to_start: Vec<ContainerStart>,
    pub containers_to_kill: Vec<ContainerKill>,
    /// Containers held back this sync, with the reason shown in their status.
    pub waiting: BTreeMap<String, Waiting>,
    /// Dead containers and sandboxes no longer needed.
    pub containers_to_remove: Vec<String>,
    pub sandboxes_to_remove: Vec<String>,
    /// When the earliest back-off ends, so the worker syncs again then.
    pub resync_after: Option<Duration>,
}

/// The back-off state a worker keeps in memory between syncs (as kubelet does: it is not persisted).
#[derive(Debug, Clone, Default)]
pub struct BackoffState {
    pub crash: Backoff,
    pub image_pull: Backoff,
    /// Failed attempts to create or start a container (config errors, runtime errors), keyed as `crash`: the next
    /// attempt waits out the back-off, so a container that cannot be created is not tried on every sync.
    pub start: Backoff,
}

pub fn crash_backoff_key(pod: &Pod, container: &Container) -> String {
    format!(
        "{}_{}_{}_{}_{}",
        spec::name(pod),
        spec::namespace(pod),
        spec::uid(pod),
        container.name,
        spec::container_hash(container)
    )
}

pub fn image_backoff_key(pod: &Pod, image: &str) -> String {
    format!("{}_{}", spec::uid(pod), image)
}

/// `ShouldContainerBeRestarted` for a container whose latest instance is not running.
pub fn should_restart(latest: Option<&ContainerRecord>, policy: RestartPolicy) -> bool {
    let Some(c) = latest else { return true };
    match c.state {
        ContainerRunState::Running => false,
        ContainerRunState::Created | ContainerRunState::Unknown => true,
        ContainerRunState::Exited => match policy {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => c.exit_code != 0,
            RestartPolicy::Always => true,
        },
    }
}

fn succeeded(latest: Option<&ContainerRecord>) -> bool {
    latest.is_some_and(|c| c.state == ContainerRunState::Exited && c.exit_code == 0)
}

fn start_of(pod: &Pod, container: &Container, init: bool, observed: &ObservedPod) -> ContainerStart {
    let latest = observed.latest_container(&container.name);
    ContainerStart {
        name: container.name.clone(),
        init,
        restart_count: latest.map(|c| c.restart_count + 1).unwrap_or(0),
        previous_finished_at: latest.filter(|c| c.state == ContainerRunState::Exited).and_then(|c| c.finished_at),
        backoff_key: crash_backoff_key(pod, container),
    }
}

/// Why the sandbox must be (re)created, and with which attempt number.
fn sandbox_change(pod: &Pod, observed: &ObservedPod) -> Option<u32> {
    let Some(latest) = observed.latest_sandbox() else { return Some(0) };
    let ready_count = observed.sandboxes.iter().filter(|s| s.ready).count();
    let lost_network = !spec::host_network(pod) && latest.ips.is_empty();
    if !latest.ready || ready_count > 1 || lost_network {
        return Some(latest.attempt + 1);
    }
    None
}

/// kubelet's `IsRestartableInitContainer`: an init container with `restartPolicy: Always` is a sidecar, started in
/// order with the init containers and kept running next to the app containers.
pub fn is_sidecar(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

/// A running container has started once its startup probe (if any) has passed.
pub fn has_started(c: &Container, running: &ContainerRecord, probes: &ProbeResults) -> bool {
    c.startup_probe.is_none() || probes.get(&running.id, ProbeKind::Startup) == Some(ProbeResult::Success)
}

/// The next init container to run, or `Ok(None)` when all have completed (sidecars: started); `Err(Failed)` when
/// one failed and the pod may not restart it (restartPolicy Never), which fails the pod. A sidecar that exited is
/// restarted whatever the pod's restart policy.
fn next_init_container<'a>(
    pod: &'a Pod,
    observed: &ObservedPod,
    probes: &ProbeResults,
) -> Result<Option<&'a Container>, InitBlocked> {
    let policy = spec::restart_policy(spec::spec(pod));
    for c in spec::init_containers(pod) {
        let latest = observed.latest_container(&c.name);
        if is_sidecar(c) {
            match latest {
                Some(l) if l.state == ContainerRunState::Running => {
                    if has_started(c, l, probes) {
                        continue;
                    }
                    return Err(InitBlocked::Running);
                }
                _ => return Ok(Some(c)),
            }
        }
        match latest.map(|l| (l.state, l.exit_code)) {
            None => return Ok(Some(c)),
            Some((ContainerRunState::Running, _)) => return Err(InitBlocked::Running),
            Some((ContainerRunState::Exited, 0)) => continue,
            Some((ContainerRunState::Exited, _)) if policy == RestartPolicy::Never => return Err(InitBlocked::Failed),
            Some(_) => return Ok(Some(c)),
        }
    }
    Ok(None)
}

enum InitBlocked {
    Running,
    Failed,
}

/// Everything `compute_pod_actions` decides from, gathered by the pod worker.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    pub pod: &'a Pod,
    pub observed: &'a ObservedPod,
    pub backoff: &'a BackoffState,
    /// The latest liveness and startup results of the pod's running containers.
    pub probes: &'a ProbeResults,
    /// The pod's volumes are set up; containers are not started before (kubelet's `WaitForAttachAndMount`).
    pub volumes_ready: bool,
    pub now: SystemTime,
}

/// kubelet's `computePodActions` for one pod.
pub fn compute_pod_actions(input: &PlanInput<'_>) -> PodActions {
    let PlanInput { pod, observed, backoff, probes, volumes_ready, now } = *input;
    let mut actions = PodActions::default();
    if !volumes_ready {
        // Nothing is started before the volumes are there; dead instances may still be collected.
        collect_garbage(observed, &mut actions);
        return actions;
    }
    let policy = spec::restart_policy(spec::spec(pod));
    let containers = &spec::spec(pod).containers;
    collect_garbage(observed, &mut actions);

    if let Some(attempt) = sandbox_change(pod, observed) {
        actions.kill_pod = observed.latest_sandbox().is_some();
        // A pod that already ran and may not restart is not brought back in a new sandbox.
        if policy == RestartPolicy::Never && attempt != 0 && !observed.containers.is_empty() {
            return actions;
        }
        if let Some(first_init) = spec::init_containers(pod).first() {
            actions.create_sandbox = Some(attempt);
            actions.containers_to_start.push(start_of(pod, first_init, true, observed));
        } else {
            let to_start: Vec<ContainerStart> = containers
                .iter()
                .filter(|c| !(policy == RestartPolicy::OnFailure && succeeded(observed.latest_container(&c.name))))
                .map(|c| start_of(pod, c, false, observed))
                .collect();
            if to_start.is_empty() {
                return actions;
            }
            actions.create_sandbox = Some(attempt);
            actions.containers_to_start = to_start;
        }
        apply_backoff(pod, backoff, now, &mut actions);
        return actions;
    }
    actions.sandbox_id = observed.latest_sandbox().map(|s| s.id.clone());

    // Once every app container has finished for good, the sidecars are stopped with the pod, not restarted.
    let app_done = !containers.is_empty()
        && containers.iter().all(|c| {
            let latest = observed.latest_container(&c.name);
            latest.is_some_and(|l| l.state == ContainerRunState::Exited) && !should_restart(latest, policy)
        });
    if app_done && spec::init_containers(pod).iter().any(is_sidecar) {
        actions.kill_pod = true;
        actions.sandbox_id = None;
        return actions;
    }
    // Sidecars whose liveness or startup probe failed are killed; they are started again below, as init
    // containers are.
    for c in spec::init_containers(pod).iter().filter(|c| is_sidecar(c)) {
        let Some(l) = observed.latest_container(&c.name).filter(|l| l.state == ContainerRunState::Running) else {
            continue;
        };
        if let Some((probe, grace_period)) = failed_probe(c, l, probes) {
            actions.containers_to_kill.push(ContainerKill {
                id: l.id.clone(),
                name: c.name.clone(),
                reason: format!("Container {} failed {probe} probe", c.name),
                grace_period,
            });
        }
    }
    match next_init_container(pod, observed, probes) {
        Err(InitBlocked::Failed) => {
            actions.kill_pod = true;
            return actions;
        }
        Err(InitBlocked::Running) => return actions,
        Ok(Some(init)) => {
            actions.containers_to_start.push(start_of(pod, init, true, observed));
            apply_backoff(pod, backoff, now, &mut actions);
            return actions;
        }
        Ok(None) => {}
    }

    let mut keep = 0;
    for c in containers {
        let latest = observed.latest_container(&c.name);
        match latest {
            Some(l) if l.state == ContainerRunState::Running => {
                if l.spec_hash != spec::container_hash(c) {
                    actions.containers_to_kill.push(ContainerKill {
                        id: l.id.clone(),
                        name: c.name.clone(),
                        reason: format!("Container {} definition changed", c.name),
                        grace_period: None,
                    });
                    let mut start = start_of(pod, c, false, observed);
                    // The replaced instance did not fail: no back-off for a spec change.
                    start.previous_finished_at = None;
                    actions.containers_to_start.push(start);
                } else if let Some((probe, grace_period)) = failed_probe(c, l, probes) {
                    // Probes report, the planner decides: a failed liveness or startup probe kills the container,
                    // which restarts per the restart policy once it has exited.
                    actions.containers_to_kill.push(ContainerKill {
                        id: l.id.clone(),
                        name: c.name.clone(),
                        reason: format!("Container {} failed {probe} probe", c.name),
                        grace_period,
                    });
                    if should_restart_after_kill(policy) {
                        keep += 1;
                    }
                } else {
                    keep += 1;
                }
            }
            _ => {
                if should_restart(latest, policy) {
                    actions.containers_to_start.push(start_of(pod, c, false, observed));
                }
            }
        }
    }
    // Nothing runs and nothing will: stop the sandbox too (the pod is done).
    if keep == 0 && actions.containers_to_start.is_empty() {
        actions.kill_pod = true;
        actions.sandbox_id = None;
        return actions;
    }
    apply_backoff(pod, backoff, now, &mut actions);
    actions
}

/// The probe that failed for a running container: startup until it has passed, liveness after (kubelet's
/// `computePodActions` checks both results the same way).
/// With the probe's own grace period, if it has one.
fn failed_probe(
    c: &Container,
    running: &ContainerRecord,
    probes: &ProbeResults,
) -> Option<(&'static str, Option<i64>)> {
    let failed = |kind| probes.get(&running.id, kind) == Some(ProbeResult::Failure);
    if let Some(p) = c.startup_probe.as_ref().filter(|_| failed(ProbeKind::Startup)) {
        return Some(("startup", p.termination_grace_period_seconds));
    }
    if let Some(p) = c.liveness_probe.as_ref().filter(|_| failed(ProbeKind::Liveness)) {
        return Some(("liveness", p.termination_grace_period_seconds));
    }
    None
}

/// A killed container comes back only when its pod's restart policy restarts it.
fn should_restart_after_kill(policy: RestartPolicy) -> bool {
    policy != RestartPolicy::Never
}

/// Holds back containers whose restart or image pull is in back-off, as kubelet's `doBackOff` and image puller do.
fn apply_backoff(pod: &Pod, backoff: &BackoffState, now: SystemTime, actions: &mut PodActions) {
    let all: Vec<&Container> = spec::init_containers(pod).iter().chain(spec::spec(pod).containers.iter()).collect();
    let mut resync: Option<Duration> = None;
    let mut keep_for_later = |d: Duration| resync = Some(resync.map_or(d, |r: Duration| r.min(d)));
    let mut waiting = BTreeMap::new();
    actions.containers_to_start.retain(|start| {
        let Some(container) = all.iter().find(|c| c.name == start.name) else { return false };
        // A container that exited (a start that failed in the runtime leaves one, StartError) is in crash back-off
        // first, as kubelet's doBackOff sees only the last exited instance.
        if let Some(finished) = start.previous_finished_at {
            if let Some(left) = backoff.crash.remaining_since(&start.backoff_key, finished, now) {
                let period = backoff.crash.get(&start.backoff_key).unwrap_or_default();
                waiting.insert(
                    start.name.clone(),
                    Waiting {
                        reason: REASON_CRASH_LOOP_BACK_OFF.into(),
                        message: format!(
                            "back-off {} restarting failed container={} pod={}",
                            go_duration(period),
                            start.name,
                            spec::format_pod(pod)
                        ),
                    },
                );
                keep_for_later(left);
                return false;
            }
        }
        if let Some(left) = backoff.start.remaining_since_update(&start.backoff_key, now) {
            // The waiting reason of the failed attempt stays in the status until the next one.
            keep_for_later(left);
            return false;
        }
        let image = spec::image_of(container);
        if let Some(left) = backoff.image_pull.remaining_since_update(&image_backoff_key(pod, image), now) {
            waiting.insert(
                start.name.clone(),
                Waiting {
                    reason: REASON_IMAGE_PULL_BACK_OFF.into(),
                    message: format!("Back-off pulling image {image:?}"),
                },
            );
            keep_for_later(left);
            return false;
        }
        true
    });
    actions.waiting = waiting;
    actions.resync_after = resync;
}

/// Removes dead containers beyond the newest per name, and sandboxes that are neither the newest nor ready and no
/// longer hold a kept container.
fn collect_garbage(observed: &ObservedPod, actions: &mut PodActions) {
    let mut dead_seen: BTreeMap<&str, usize> = BTreeMap::new();
    let mut kept_sandboxes = std::collections::BTreeSet::new();
    for c in &observed.containers {
        let dead =
            matches!(c.state, ContainerRunState::Exited | ContainerRunState::Created | ContainerRunState::Unknown);
        if dead {
            let n = dead_seen.entry(c.name.as_str()).or_default();
            *n += 1;
            if *n > MAX_DEAD_PER_CONTAINER {
                actions.containers_to_remove.push(c.id.clone());
                continue;
            }
        }
        kept_sandboxes.insert(c.sandbox_id.as_str());
    }
    for s in observed.sandboxes.iter().skip(1) {
        if !s.ready && !kept_sandboxes.contains(s.id.as_str()) {
            actions.sandboxes_to_remove.push(s.id.clone());
        }
    }
}

/// Go's `time.Duration.String()` for whole seconds ("10s", "5m0s"), as kubelet prints back-off periods.
pub fn go_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 60 {
        format!("{}m{}s", secs / 60, secs % 60)
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::SandboxRecord;
    use k8s_openapi::api::core::v1::PodSpec;
    use std::time::UNIX_EPOCH;

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(2_000_000 + secs)
    }

    fn plan(pod: &Pod, observed: &ObservedPod, backoff: &BackoffState, now: SystemTime) -> PodActions {
        let probes = ProbeResults::default();
        compute_pod_actions(&PlanInput { pod, observed, backoff, probes: &probes, volumes_ready: true, now })
    }

    fn container(name: &str) -> Container {
        Container { name: name.into(), image: Some(format!("127.0.0.1:5000/{name}:1")), ..Default::default() }
    }

    fn pod(policy: &str, init: &[&str], containers: &[&str]) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some("web-node".into());
        p.metadata.namespace = Some("default".into());
        p.metadata.uid = Some("uid-1".into());
        p.spec = Some(PodSpec {
            restart_policy: Some(policy.into()),
            init_containers: if init.is_empty() { None } else { Some(init.iter().map(|n| container(n)).collect()) },
            containers: containers.iter().map(|n| container(n)).collect(),
            ..Default::default()
        });
        p
    }

    fn sandbox(id: &str, attempt: u32, ready: bool, created: u64) -> SandboxRecord {
        SandboxRecord {
            id: id.into(),
            pod_uid: "uid-1".into(),
            namespace: "default".into(),
            name: "web-node".into(),
            attempt,
            ready,
            created_at: t(created),
            ips: if ready { vec!["10.0.0.2".into()] } else { vec![] },
        }
    }

    fn record(
        pod: &Pod,
        name: &str,
        id: &str,
        restart: u32,
        state: ContainerRunState,
        exit: i32,
        at: u64,
    ) -> ContainerRecord {
        let c = spec::init_containers(pod).iter().chain(&spec::spec(pod).containers).find(|c| c.name == name).unwrap();
        ContainerRecord {
            id: id.into(),
            sandbox_id: "sb1".into(),
            pod_uid: "uid-1".into(),
            name: name.into(),
            restart_count: restart,
            spec_hash: spec::container_hash(c),
            state,
            created_at: t(at),
            started_at: Some(t(at)),
            finished_at: (state == ContainerRunState::Exited).then(|| t(at + 1)),
            exit_code: exit,
            reason: String::new(),
            message: String::new(),
            image: String::new(),
            image_ref: String::new(),
            termination_grace_period: Some(30),
        }
    }

    fn observed(sandboxes: Vec<SandboxRecord>, containers: Vec<ContainerRecord>) -> ObservedPod {
        let mut o = ObservedPod { sandboxes, containers };
        o.sort();
        o
    }

    fn names(a: &PodActions) -> Vec<&str> {
        a.containers_to_start.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn fresh_pod_creates_sandbox_and_starts_all_containers() {
        let p = pod("Always", &[], &["app", "side"]);
        let a = plan(&p, &ObservedPod::default(), &BackoffState::default(), t(0));
        assert_eq!(a.create_sandbox, Some(0));
        assert!(!a.kill_pod, "nothing to kill yet");
        assert_eq!(names(&a), vec!["app", "side"]);
        assert!(a.containers_to_start.iter().all(|s| s.restart_count == 0 && s.previous_finished_at.is_none()));
    }

    #[test]
    fn running_pod_needs_nothing() {
        let p = pod("Always", &[], &["app"]);
        let o = observed(
            vec![sandbox("sb1", 0, true, 0)],
            vec![record(&p, "app", "c1", 0, ContainerRunState::Running, 0, 1)],
        );
        let a = plan(&p, &o, &BackoffState::default(), t(10));
        assert_eq!(a, PodActions { sandbox_id: Some("sb1".into()), ..Default::default() });
    }

    #[test]
    fn failed_liveness_kills_the_running_container_and_other_results_do_not() {
        let mut p = pod("Always", &[], &["app"]);
        p.spec.as_mut().unwrap().containers[0].liveness_probe = Some(Default::default());
        let o = observed(
            vec![sandbox("sb1", 0, true, 0)],
            vec![record(&p, "app", "c1", 0, ContainerRunState::Running, 0, 1)],
        );
        let decide = |probes: &ProbeResults| {
            let b = BackoffState::default();
            compute_pod_actions(&PlanInput {
                pod: &p,
                observed: &o,
                backoff: &b,
                probes,
                volumes_ready: true,
                now: t(10),
            })
        };
        let mut probes = ProbeResults::default();
        assert!(decide(&probes).containers_to_kill.is_empty(), "no result yet: nothing to kill");
        probes.set("c1", ProbeKind::Liveness, ProbeResult::Success);
        assert!(decide(&probes).containers_to_kill.is_empty());
        probes.set("c1", ProbeKind::Readiness, ProbeResult::Failure);
        assert!(decide(&probes).containers_to_kill.is_empty(), "readiness never kills");
        probes.set("c1", ProbeKind::Liveness, ProbeResult::Failure);
        let a = decide(&probes);
        assert_eq!(
            a.containers_to_kill,
            vec![ContainerKill {
                id: "c1".into(),
                name: "app".into(),
                reason: "Container app failed liveness probe".into(),
                grace_period: None,
            }]
        );
        assert!(!a.kill_pod, "the sandbox stays for the restart");
        // A result for another instance (an earlier container) does not touch this one.
        let mut other = ProbeResults::default();
        other.set("c0", ProbeKind::Liveness, ProbeResult::Failure);
        assert!(decide(&other).containers_to_kill.is_empty());
    }

    #[test]
    fn failed_startup_probe_kills_and_liveness_without_a_probe_in_the_spec_is_ignored() {
        let mut p = pod("Always", &[], &["app"]);
        p.spec.as_mut().unwrap().containers[0].startup_probe = Some(Default::default());
        let o = observed(
            vec![sandbox("sb1", 0, true, 0)],
            vec![record(&p, "app", "c1", 0, ContainerRunState::Running, 0, 1)],
        );
        let b = BackoffState::default();
        let kills = |probes: &ProbeResults| {
            let input = PlanInput { pod: &p, observed: &o, backoff: &b, probes, volumes_ready: true, now: t(10) };
            compute_pod_actions(&input).containers_to_kill
        };
        let mut probes = ProbeResults::default();
        probes.set("c1", ProbeKind::Liveness, ProbeResult::Failure);
        assert!(kills(&probes).is_empty(), "no livenessProbe in the spec");
        probes.set("c1", ProbeKind::Startup, ProbeResult::Failure);
        let kills = kills(&probes);
        assert_eq!(kills.len(), 1);
        assert_eq!(kills[0].reason, "Container app failed startup probe");
    }

    #[test]
    fn nothing_starts_before_volumes_are_ready() {
        let p = pod("Always", &["init"], &["app"]);
        let b = BackoffState::default();
        let probes = ProbeResults::default();
        let o = ObservedPod::default();
        let input = PlanInput { pod: &p, observed: &o, backoff: &b, probes: &probes, volumes_ready: false, now: t(0) };
        let a = compute_pod_actions(&input);
        assert_eq!(a.create_sandbox, None);
        assert!(a.containers_to_start.is_empty());
        let a = compute_pod_actions(&PlanInput { volumes_ready: true, ..input });
        assert_eq!(a.create_sandbox, Some(0));
    }

    #[test]
    fn sandbox_gone_recreates_everything_with_next_attempt() {
        let p = pod("Always", &[], &["app"]);
        let o = observed(
            vec![sandbox("sb1", 0, false, 0)],
            vec![record(&p, "app", "c1", 0, ContainerRunState::Exited, 137, 1)],
        );
        let a = plan(&p, &o, &BackoffState::default(), t(10));
        assert!(a.kill_pod);
        assert_eq!(a.create_sandbox, Some(1));
        assert_eq!(names(&a), vec!["app"]);
        assert_eq!(a.containers_to_start[0].restart_count, 1);
    }

    #[test]
    fn never_policy_does_not_recreate_a_sandbox_for_a_pod_that_ran() {
        let p = pod("Never", &[], &["app"]);
        let o = observed(
            vec![sandbox("sb1", 0, false, 0)],
            vec![record(&p, "app", "c1", 0, ContainerRunState::Exited, 1, 1)],
        );
        let a = plan(&p, &o, &BackoffState::default(), t(10));
        assert_eq!(a.create_sandbox, None);
        assert!(a.containers_to_start.is_empty());
    }

    #[test]
    fn exit_under_each_restart_policy() {
        for (policy, exit, restart) in [
            ("Always", 0, true),
            ("Always", 1, true),
            ("OnFailure", 0, false),
            ("OnFailure", 2, true),
            ("Never", 0, false),
            ("Never", 2, false),
        ] {
            let p = pod(policy, &[], &["app"]);
            let o = observed(
                vec![sandbox("sb1", 0, true, 0)],
                vec![record(&p, "app", "c1", 0, ContainerRunState::Exited, exit, 1)],
            );
            let a = plan(&p, &o, &BackoffState::default(), t(10));
            assert_eq!(!a.containers_to_start.is_empty(), restart, "{policy} exit {exit}");
            // When nothing restarts and nothing runs, the sandbox is stopped.
            assert_eq!(a.kill_pod, !restart, "{policy} exit {exit}");
        }
    }

    #[test]
    fn only_the_exited_container_restarts_while_others_keep_running() {
        let p = pod("Always", &[], &["app", "side"]);
        let o = observed(
            vec![sandbox("sb1", 0, true, 0)],
            vec![
                record(&p, "app", "c1", 3, ContainerRunState::Exited, 1, 5),
                record(&p, "side", "c2", 0, ContainerRunState::Running, 0, 1),
            ],
        );
        let a = plan(&p, &o, &BackoffState::default(), t(10));
        assert!(!a.kill_pod);
        assert_eq!(a.sandbox_id.as_deref(), Some("sb1"));
        assert_eq!(names(&a), vec!["app"]);
        assert_eq!(a.containers_to_start[0].restart_count, 4);
        assert_eq!(a.containers_to_start[0].previous_finished_at, Some(t(6)));
    }

    #[test]
    fn crash_loop_back_off_timing() {
        let p = pod("Always", &[], &["app"]);
        let key = crash_backoff_key(&p, &spec::spec(&p).containers[0]);
        let mut b = BackoffState::default();
        // First failure: restarted at once, and the worker records a 10 s back-off from its finish (t=6).
        let o = observed(
            vec![sandbox("sb1", 0, true, 0)],
            vec![record(&p, "app", "c1", 0, ContainerRunState::Exited, 1, 5)],
        );
        assert_eq!(names(&plan(&p, &o, &b, t(6))), vec!["app"]);
        b.crash.next(&key, t(6));
        // It fails again at t=8: held back until t=18.
        let o = observed(
            vec![sandbox("sb1", 0, true, 0)],
            vec![
                record(&p, "app", "c2", 1, ContainerRunState::Exited, 1, 7),
                record(&p, "app", "c1", 0, ContainerRunState::Exited, 1, 5),
            ],
        );
        let a = plan(&p, &o, &b, t(12));
        assert!(a.containers_to_start.is_empty());
        assert!(!a.kill_pod, "a container in back-off still counts as restarting");
        let w = &a.waiting["app"];
        assert_eq!(w.reason, "CrashLoopBackOff");
        assert_eq!(w.message, "back-off 10s restarting failed container=app pod=web-node_default(uid-1)");
        assert_eq!(a.resync_after, Some(Duration::from_secs(6)));
        // The old instance beyond the newest dead one is garbage.
        assert_eq!(a.containers_to_remove, vec!["c1".to_string()]);
        let a = plan(&p, &o, &b, t(18));
        assert_eq!(names(&a), vec!["app"]);
        b.crash.next(&key, t(8));
        assert_eq!(b.crash.get(&key), Some(Duration::from_secs(20)));
    }

    #[test]
    fn a_start_that_failed_in_the_runtime_shows_crash_loop_back_off_while_held_back() {
        let p = pod("Always", &[], &["app"]);
        let key = crash_backoff_key(&p, &spec::spec(&p).containers[0]);
        let mut b = BackoffState::default();
        // StartError leaves an exited instance; both the crash and the start back-off hold the next attempt.
        b.crash.next(&key, t(6));
        b.start.next(&key, t(6));
        let o = observed(
            vec![sandbox("sb1", 0, true, 0)],
            vec![record(&p, "app", "c1", 1, ContainerRunState::Exited, 128, 5)],
        );
        let a = plan(&p, &o, &b, t(8));
        assert!(a.containers_to_start.is_empty());
        assert_eq!(a.waiting["app"].reason, "CrashLoopBackOff");
    }

    #[test]
    fn spec_change_restarts_only_that_container_without_back_off() {
        let p = pod("Always", &[], &["app"]);
        let mut running = record(&p, "app", "c1", 0, ContainerRunState::Running, 0, 1);
        running.spec_hash = "deadbeef".into();
        let o = observed(vec![sandbox("sb1", 0, true, 0)], vec![running]);
        let a = plan(&p, &o, &BackoffState::default(), t(10));
        assert_eq!(a.containers_to_kill.len(), 1);
        assert_eq!(a.containers_to_kill[0].reason, "Container app definition changed");
        assert_eq!(names(&a), vec!["app"]);
        assert_eq!(a.containers_to_start[0].restart_count, 1);
        assert_eq!(a.containers_to_start[0].previous_finished_at, None);
        assert!(!a.kill_pod);
    }

    #[test]
    fn a_container_that_failed_to_create_or_start_waits_out_a_doubling_back_off() {
        let p = pod("Always", &[], &["app"]);
        let key = crash_backoff_key(&p, &spec::spec(&p).containers[0]);
        let o = observed(vec![sandbox("sb1", 0, true, 0)], vec![]);
        let mut b = BackoffState::default();
        // Count the attempts a worker syncing every second for 60 s would make, failing each time.
        let mut attempts = vec![];
        for s in 0..60 {
            let a = plan(&p, &o, &b, t(s));
            if names(&a) == vec!["app"] {
                attempts.push(s);
                b.start.next(&key, t(s));
            } else {
                assert!(a.resync_after.is_some(), "the worker is told when to try again");
                assert!(a.waiting.is_empty(), "the failed attempt's reason stays shown");
            }
        }
        assert_eq!(attempts, vec![0, 10, 30], "10 s, then 20 s, then 40 s");
        // Once it starts, the back-off is forgotten.
        b.start.forget(&key);
        assert_eq!(names(&plan(&p, &o, &b, t(61))), vec!["app"]);
    }

    #[test]
    fn image_pull_back_off_holds_the_container() {
        let p = pod("Always", &[], &["app"]);
        let mut b = BackoffState::default();
        b.image_pull.next(&image_backoff_key(&p, "127.0.0.1:5000/app:1"), t(0));
        let o = observed(vec![sandbox("sb1", 0, true, 0)], vec![]);
        let a = plan(&p, &o, &b, t(3));
        assert!(a.containers_to_start.is_empty());
        assert_eq!(a.waiting["app"].reason, "ImagePullBackOff");
        assert_eq!(a.waiting["app"].message, "Back-off pulling image \"127.0.0.1:5000/app:1\"");
        assert_eq!(a.resync_after, Some(Duration::from_secs(7)));
        // After the back-off the pull is tried again.
        assert_eq!(names(&plan(&p, &o, &b, t(11))), vec!["app"]);
    }

    #[test]
    fn init_containers_run_one_at_a_time_before_app_containers() {
        let p = pod("Always", &["init1", "init2"], &["app"]);
        let a = plan(&p, &ObservedPod::default(), &BackoffState::default(), t(0));
        assert_eq!(names(&a), vec!["init1"]);
        assert!(a.containers_to_start[0].init);
        let sb = || vec![sandbox("sb1", 0, true, 0)];
        let o = observed(sb(), vec![record(&p, "init1", "i1", 0, ContainerRunState::Running, 0, 1)]);
        assert!(plan(&p, &o, &BackoffState::default(), t(2)).containers_to_start.is_empty());
        let o = observed(sb(), vec![record(&p, "init1", "i1", 0, ContainerRunState::Exited, 0, 1)]);
        assert_eq!(names(&plan(&p, &o, &BackoffState::default(), t(3))), vec!["init2"]);
        let o = observed(
            sb(),
            vec![
                record(&p, "init1", "i1", 0, ContainerRunState::Exited, 0, 1),
                record(&p, "init2", "i2", 0, ContainerRunState::Exited, 0, 3),
            ],
        );
        assert_eq!(names(&plan(&p, &o, &BackoffState::default(), t(5))), vec!["app"]);
    }

    #[test]
    fn sidecars_start_in_order_gate_on_started_restart_on_exit_and_stop_with_the_pod() {
        let mut p = pod("Never", &["side", "init2"], &["app"]);
        let side = &mut p.spec.as_mut().unwrap().init_containers.as_mut().unwrap()[0];
        side.restart_policy = Some("Always".into());
        side.startup_probe = Some(Default::default());
        let sb = || vec![sandbox("sb1", 0, true, 0)];
        let b = BackoffState::default();
        let mut probes = ProbeResults::default();
        let decide = |o: &ObservedPod, probes: &ProbeResults| {
            compute_pod_actions(&PlanInput {
                pod: &p,
                observed: o,
                backoff: &b,
                probes,
                volumes_ready: true,
                now: t(20),
            })
        };
        let running_side = || record(&p, "side", "s1", 0, ContainerRunState::Running, 0, 1);
        // Running but not started (startup probe pending): the next init container waits.
        let o = observed(sb(), vec![running_side()]);
        assert!(decide(&o, &probes).containers_to_start.is_empty());
        probes.set("s1", ProbeKind::Startup, ProbeResult::Success);
        assert_eq!(names(&decide(&o, &probes)), vec!["init2"]);
        // Regular init done: the app starts while the sidecar keeps running.
        let o = observed(sb(), vec![running_side(), record(&p, "init2", "i2", 0, ContainerRunState::Exited, 0, 3)]);
        let a = decide(&o, &probes);
        assert_eq!(names(&a), vec!["app"]);
        assert!(!a.kill_pod);
        // The sidecar exits: restarted although the pod's policy is Never.
        let o = observed(
            sb(),
            vec![
                record(&p, "side", "s1", 0, ContainerRunState::Exited, 1, 1),
                record(&p, "init2", "i2", 0, ContainerRunState::Exited, 0, 3),
                record(&p, "app", "a1", 0, ContainerRunState::Running, 0, 5),
            ],
        );
        let a = decide(&o, &probes);
        assert_eq!(names(&a), vec!["side"]);
        assert!(a.containers_to_start[0].init);
        // The app container completes for good: the pod is stopped, sidecar included.
        let o = observed(
            sb(),
            vec![
                running_side(),
                record(&p, "init2", "i2", 0, ContainerRunState::Exited, 0, 3),
                record(&p, "app", "a1", 0, ContainerRunState::Exited, 0, 5),
            ],
        );
        let a = decide(&o, &probes);
        assert!(a.kill_pod && a.containers_to_start.is_empty(), "{a:?}");
    }

    #[test]
    fn failed_init_container_fails_a_never_pod_and_restarts_otherwise() {
        for (policy, restarts) in [("Never", false), ("OnFailure", true), ("Always", true)] {
            let p = pod(policy, &["init1"], &["app"]);
            let o = observed(
                vec![sandbox("sb1", 0, true, 0)],
                vec![record(&p, "init1", "i1", 0, ContainerRunState::Exited, 1, 1)],
            );
            let a = plan(&p, &o, &BackoffState::default(), t(5));
            assert_eq!(a.kill_pod, !restarts, "{policy}");
            assert_eq!(names(&a), if restarts { vec!["init1"] } else { vec![] }, "{policy}");
        }
    }

    #[test]
    fn old_sandboxes_without_containers_are_removed() {
        let p = pod("Always", &[], &["app"]);
        let mut c = record(&p, "app", "c2", 1, ContainerRunState::Running, 0, 20);
        c.sandbox_id = "sb2".into();
        let o = observed(vec![sandbox("sb2", 1, true, 10), sandbox("sb1", 0, false, 0)], vec![c]);
        let a = plan(&p, &o, &BackoffState::default(), t(30));
        assert_eq!(a.sandboxes_to_remove, vec!["sb1".to_string()]);
        assert!(a.containers_to_start.is_empty() && !a.kill_pod);
    }

    #[test]
    fn go_duration_format() {
        assert_eq!(go_duration(Duration::from_secs(10)), "10s");
        assert_eq!(go_duration(Duration::from_secs(300)), "5m0s");
        assert_eq!(go_duration(Duration::from_secs(160)), "2m40s");
    }
}
