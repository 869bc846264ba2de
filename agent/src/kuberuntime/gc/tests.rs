//! The cases of kubelet's kuberuntime_gc_test.go (`TestSandboxGC`, `TestContainerGC`, `TestPodLogDirectoryGC`) over
//! the pure decisions, and the pod store's answers.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{Pod, PodStatus};

use super::*;

/// kubelet's `fakePodStateProvider`: `removed` pods may lose all content, `terminated` ones their runtime objects.
#[derive(Default)]
struct FakePods {
    removed: BTreeSet<String>,
    terminated: BTreeSet<String>,
    sources_ready: bool,
}

impl PodStateProvider for FakePods {
    fn all_sources_ready(&self) -> bool {
        self.sources_ready
    }
    fn should_pod_content_be_removed(&self, uid: &str) -> bool {
        self.removed.contains(uid)
    }
    fn should_pod_runtime_be_removed(&self, uid: &str) -> bool {
        self.terminated.contains(uid)
    }
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// Well after every fixed creation time below, as kubelet's tests use `time.Now()`.
const NOW: u64 = 1_700_000_000;

/// kubelet's `makeGCContainer(podName, containerName, attempt, createdAt, state)`: the pod's UID is its name.
fn container(pod: &str, name: &str, attempt: u32, created: u64, state: ContainerRunState) -> ContainerListing {
    ContainerListing {
        id: format!("{pod}-{name}-{attempt}"),
        sandbox_id: format!("{pod}-sandbox-0"),
        pod_uid: pod.into(),
        name: name.into(),
        state,
        created_at: at(created),
        image_id: "sha256:busybox".into(),
        termination_grace_period: None,
    }
}

use ContainerRunState::{Exited, Running, Unknown};

/// The indexes of `containers` that remain after removing `removed`.
fn remaining(containers: &[ContainerListing], removed: &[&ContainerListing]) -> Vec<usize> {
    let gone: BTreeSet<&str> = removed.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(gone.len(), removed.len(), "a container is removed twice");
    (0..containers.len()).filter(|i| !gone.contains(containers[*i].id.as_str())).collect()
}

#[test]
fn container_gc_follows_kubelets_policy() {
    let default_policy = GcPolicy { min_age: Duration::from_secs(3600), max_per_pod_container: 2, max_containers: 6 };
    let minute = Duration::from_secs(60);
    struct Case {
        description: &'static str,
        containers: Vec<ContainerListing>,
        policy: Option<GcPolicy>,
        remain: Vec<usize>,
        evict_terminating_pods: bool,
        all_sources_ready: bool,
    }
    let c = container;
    let cases = vec![
        Case {
            description: "all containers should be removed when max container limit is 0",
            containers: vec![c("foo", "bar", 0, 0, Exited)],
            policy: Some(GcPolicy { min_age: minute, max_per_pod_container: 1, max_containers: 0 }),
            remain: vec![],
            evict_terminating_pods: false,
            all_sources_ready: true,
        },
        Case {
            description: "max containers should be complied when no max per pod container limit is set",
            containers: (0..5).rev().map(|i| c("foo", "bar", i, u64::from(i), Exited)).collect(),
            policy: Some(GcPolicy { min_age: minute, max_per_pod_container: -1, max_containers: 4 }),
            remain: vec![0, 1, 2, 3],
            evict_terminating_pods: false,
            all_sources_ready: true,
        },
        Case {
            description:
                "no containers should be removed if both max container and per pod container limits are not set",
            containers: (0..3).rev().map(|i| c("foo", "bar", i, u64::from(i), Exited)).collect(),
            policy: Some(GcPolicy { min_age: minute, max_per_pod_container: -1, max_containers: -1 }),
            remain: vec![0, 1, 2],
            evict_terminating_pods: false,
            all_sources_ready: true,
        },
        Case {
            description: "recently started containers should not be removed",
            containers: (0..3).rev().map(|i| c("foo", "bar", i, NOW, Exited)).collect(),
            policy: None,
            remain: vec![0, 1, 2],
            evict_terminating_pods: false,
            all_sources_ready: true,
        },
        Case {
            description: "oldest containers should be removed when per pod container limit exceeded",
            containers: (0..3).rev().map(|i| c("foo", "bar", i, u64::from(i), Exited)).collect(),
            policy: None,
            remain: vec![0, 1],
            evict_terminating_pods: false,
            all_sources_ready: true,
        },
        Case {
            description: "running containers should not be removed",
            containers: vec![
                c("foo", "bar", 2, 2, Exited),
                c("foo", "bar", 1, 1, Exited),
                c("foo", "bar", 0, 0, Running),
            ],
            policy: None,
            remain: vec![0, 1, 2],
            evict_terminating_pods: false,
            all_sources_ready: true,
        },
        Case {
            description: "no containers should be removed when limits are not exceeded",
            containers: vec![c("foo", "bar", 1, 1, Exited), c("foo", "bar", 0, 0, Exited)],
            policy: None,
            remain: vec![0, 1],
            evict_terminating_pods: false,
            all_sources_ready: true,
        },
        Case {
            description: "max container count should apply per (UID, container) pair",
            containers: [("foo", "bar"), ("foo1", "baz"), ("foo2", "bar")]
                .iter()
                .flat_map(|(p, n)| (0..3).rev().map(move |i| c(p, n, i, u64::from(i), Exited)))
                .collect(),
            policy: None,
            remain: vec![0, 1, 3, 4, 6, 7],
            evict_terminating_pods: false,
            all_sources_ready: true,
        },
        Case {
            description: "max limit should apply and try to keep from every pod",
            containers: (0..5)
                .flat_map(|p| {
                    let (pod, name) = if p == 0 {
                        ("foo".to_owned(), "bar".to_owned())
                    } else {
                        (format!("foo{p}"), format!("bar{p}"))
                    };
                    (0..2).rev().map(move |i| c(&pod, &name, i, u64::from(i), Exited))
                })
                .collect(),
            policy: None,
            remain: vec![0, 2, 4, 6, 8],
            evict_terminating_pods: false,
            all_sources_ready: true,
        },
        Case {
            description: "oldest pods should be removed if limit exceeded",
            containers: vec![
                c("foo", "bar", 2, 2, Exited),
                c("foo", "bar", 1, 1, Exited),
                c("foo1", "bar1", 2, 2, Exited),
                c("foo1", "bar1", 1, 1, Exited),
                c("foo2", "bar2", 1, 1, Exited),
                c("foo3", "bar3", 0, 0, Exited),
                c("foo4", "bar4", 1, 1, Exited),
                c("foo5", "bar5", 0, 0, Exited),
                c("foo6", "bar6", 2, 2, Exited),
                c("foo7", "bar7", 1, 1, Exited),
            ],
            policy: None,
            remain: vec![0, 2, 4, 6, 8, 9],
            evict_terminating_pods: false,
            all_sources_ready: true,
        },
        Case {
            description: "all non-running containers should be removed when evictTerminatingPods is set",
            containers: vec![
                c("foo", "bar", 2, 2, Exited),
                c("foo", "bar", 1, 1, Exited),
                c("foo1", "bar1", 2, 2, Exited),
                c("foo1", "bar1", 1, 1, Exited),
                c("running", "bar2", 1, 1, Exited),
                c("foo3", "bar3", 0, 0, Running),
            ],
            policy: None,
            remain: vec![4, 5],
            evict_terminating_pods: true,
            all_sources_ready: true,
        },
        Case {
            description: "containers for deleted pods should be removed",
            containers: vec![
                c("foo", "bar", 1, 1, Exited),
                c("foo", "bar", 0, 0, Exited),
                // deleted pods still respect MinAge.
                c("deleted", "bar1", 2, NOW, Exited),
                c("deleted", "bar1", 1, 1, Exited),
                c("deleted", "bar1", 0, 0, Exited),
            ],
            policy: None,
            remain: vec![0, 1, 2],
            evict_terminating_pods: false,
            all_sources_ready: true,
        },
        Case {
            description: "containers for deleted pods may not be removed if allSourcesReady is set false",
            containers: vec![c("deleted", "bar1", 0, 0, Exited)],
            policy: None,
            remain: vec![0],
            evict_terminating_pods: true,
            all_sources_ready: false,
        },
    ];
    for case in cases {
        let mut pods = FakePods::default();
        for c in &case.containers {
            if c.pod_uid == "deleted" {
                pods.removed.insert(c.pod_uid.clone());
            }
            if c.pod_uid != "running" {
                pods.terminated.insert(c.pod_uid.clone());
            }
        }
        let policy = case.policy.unwrap_or(default_policy);
        let removed = containers_to_remove(
            &case.containers,
            &policy,
            case.all_sources_ready,
            case.evict_terminating_pods,
            &pods,
            at(NOW),
        );
        assert_eq!(remaining(&case.containers, &removed), case.remain, "{}", case.description);
    }
}

#[test]
fn kubelets_defaults_keep_the_newest_dead_instance_of_each_container() {
    // MinAge 0, MaxPerPodContainer 1, MaxContainers -1: a crash-looping container keeps its running instance and
    // the newest dead one (`kubectl logs --previous`); a container just created (not started yet) is the newest
    // of its name and stays.
    let pods = FakePods { sources_ready: true, ..Default::default() };
    let containers = vec![
        container("web", "app", 3, 30, Running),
        container("web", "app", 2, 20, Exited),
        container("web", "app", 1, 10, Exited),
        container("web", "app", 0, 0, Exited),
        container("web", "init", 0, 0, Exited),
        container("web", "sidecar", 1, 25, ContainerRunState::Created),
        container("web", "sidecar", 0, 5, Exited),
    ];
    let removed = containers_to_remove(&containers, &GcPolicy::default(), true, false, &pods, at(NOW));
    let ids: Vec<&str> = removed.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["web-app-0", "web-app-1", "web-sidecar-0"], "oldest first");
    // Created at the very moment of the collection: MinAge 0 still lets it be looked at, and it is the newest.
    let fresh =
        vec![container("web", "app", 1, NOW, ContainerRunState::Created), container("web", "app", 0, 1, Exited)];
    let removed = containers_to_remove(&fresh, &GcPolicy::default(), true, false, &pods, at(NOW));
    assert_eq!(removed.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ["web-app-0"]);
}

#[test]
fn a_container_in_an_unknown_state_counts_as_dead() {
    // TestUnknownStateContainerGC: it is considered (and stopped before removal by the executor).
    let pods = FakePods::default();
    let containers = vec![container("foo", "bar", 0, 0, Unknown)];
    let policy = GcPolicy { min_age: Duration::from_secs(3600), max_per_pod_container: 0, max_containers: 0 };
    let removed = containers_to_remove(&containers, &policy, true, false, &pods, at(NOW));
    assert_eq!(removed.len(), 1);
}

fn sandbox(pod: &str, attempt: u32, ready: bool, created: u64) -> SandboxRecord {
    SandboxRecord {
        id: format!("{pod}-sandbox-{attempt}"),
        pod_uid: pod.into(),
        namespace: "new".into(),
        name: pod.into(),
        attempt,
        ready,
        created_at: at(created),
        ips: Vec::new(),
    }
}

#[test]
fn sandbox_gc_follows_kubelets_rules() {
    struct Case {
        description: &'static str,
        sandboxes: Vec<SandboxRecord>,
        /// Containers by (pod, sandbox attempt).
        containers: Vec<(&'static str, u32)>,
        terminating: Vec<&'static str>,
        remain: Vec<usize>,
        evict_terminating_pods: bool,
    }
    let s = sandbox;
    let cases = vec![
        Case {
            description: "notready sandboxes without containers for deleted pods should be garbage collected.",
            sandboxes: vec![s("deleted", 0, false, 0)],
            containers: vec![],
            terminating: vec![],
            remain: vec![],
            evict_terminating_pods: false,
        },
        Case {
            description: "ready sandboxes without containers for deleted pods should not be garbage collected.",
            sandboxes: vec![s("deleted", 0, true, 0)],
            containers: vec![],
            terminating: vec![],
            remain: vec![0],
            evict_terminating_pods: false,
        },
        Case {
            description: "sandboxes for existing pods should not be garbage collected.",
            sandboxes: vec![s("foo1", 0, true, 0), s("foo2", 0, false, 0)],
            containers: vec![],
            terminating: vec![],
            remain: vec![0, 1],
            evict_terminating_pods: false,
        },
        Case {
            description: "older exited sandboxes without containers for existing pods should be garbage collected if there are more than one exited sandboxes.",
            sandboxes: vec![s("foo1", 1, false, 1), s("foo1", 0, false, 0)],
            containers: vec![],
            terminating: vec![],
            remain: vec![0],
            evict_terminating_pods: false,
        },
        Case {
            description: "older exited sandboxes with containers for existing pods should not be garbage collected even if there are more than one exited sandboxes.",
            sandboxes: vec![s("foo1", 1, false, 1), s("foo1", 0, false, 0)],
            containers: vec![("foo1", 0)],
            terminating: vec![],
            remain: vec![0, 1],
            evict_terminating_pods: false,
        },
        Case {
            description: "non-running sandboxes for existing pods should be garbage collected if evictTerminatingPods is set.",
            sandboxes: vec![s("foo1", 0, true, 0), s("foo2", 0, false, 0)],
            containers: vec![],
            terminating: vec!["foo1", "foo2"],
            remain: vec![0],
            evict_terminating_pods: true,
        },
        Case {
            description: "sandbox with containers should not be garbage collected.",
            sandboxes: vec![s("foo1", 0, false, 0)],
            containers: vec![("foo1", 0)],
            terminating: vec![],
            remain: vec![0],
            evict_terminating_pods: false,
        },
        Case {
            description: "multiple sandboxes should be handled properly.",
            sandboxes: vec![
                s("foo1", 1, true, 1),
                s("foo1", 0, false, 0),
                s("foo2", 1, false, 1),
                s("foo2", 0, false, 0),
                s("deleted", 0, false, 0),
            ],
            containers: vec![("foo2", 1)],
            terminating: vec!["deleted"],
            remain: vec![0, 2],
            evict_terminating_pods: false,
        },
    ];
    for case in cases {
        let pods = FakePods {
            removed: ["deleted".to_owned()].into(),
            terminated: case.terminating.iter().map(|p| (*p).to_owned()).collect(),
            sources_ready: true,
        };
        let containers: Vec<ContainerListing> = case
            .containers
            .iter()
            .map(|(pod, attempt)| {
                let mut c = container(pod, "bar", 0, 0, Exited);
                c.sandbox_id = format!("{pod}-sandbox-{attempt}");
                c
            })
            .collect();
        let removed = sandboxes_to_remove(&case.sandboxes, &containers, case.evict_terminating_pods, &pods);
        let gone: BTreeSet<&str> = removed.iter().map(|s| s.id.as_str()).collect();
        let remain: Vec<usize> =
            (0..case.sandboxes.len()).filter(|i| !gone.contains(case.sandboxes[*i].id.as_str())).collect();
        assert_eq!(remain, case.remain, "{}", case.description);
    }
}

#[test]
fn pod_log_folders_of_pods_that_are_gone_go_once_every_source_reported() {
    // TestPodLogDirectoryGC.
    let dirs: Vec<String> = ["123", "456", "789", "012", "name_namespace_321", "name_namespace_654"]
        .iter()
        .map(|d| (*d).to_owned())
        .collect();
    let pods =
        FakePods { removed: ["012", "789", "654"].iter().map(|u| (*u).to_owned()).collect(), ..Default::default() };
    assert_eq!(pod_log_dirs_to_remove(&dirs, true, &pods), ["789", "012", "name_namespace_654"]);
    assert!(pod_log_dirs_to_remove(&dirs, false, &pods).is_empty());
    assert_eq!(pod_uid_from_logs_directory("default_web_0b6d1c2e-aaaa"), "0b6d1c2e-aaaa");
}

fn stored_pod(uid: &str, phase: Option<&str>) -> Arc<Pod> {
    let mut pod = Pod::default();
    pod.metadata.uid = Some(uid.into());
    pod.metadata.name = Some(format!("pod-{uid}"));
    pod.metadata.namespace = Some("default".into());
    pod.status = phase.map(|p| PodStatus { phase: Some(p.into()), ..Default::default() });
    Arc::new(pod)
}

#[test]
fn the_pod_store_answers_as_kubelets_pod_workers() {
    let store = PodStore::default();
    let (ready_tx, ready_rx) = watch::channel(false);
    let state = PodStoreState { store: store.clone(), sources_ready: ready_rx };
    store.upsert_pod("running", stored_pod("running", Some("Running")));
    store.set_status("running", PodStatus { phase: Some("Running".into()), ..Default::default() });
    store.upsert_pod("done", stored_pod("done", None));
    store.set_status("done", PodStatus { phase: Some("Succeeded".into()), ..Default::default() });
    store.upsert_pod("new", stored_pod("new", None));

    // Before every source reported, a pod the store does not know may just not have been seen yet.
    assert!(!state.all_sources_ready());
    assert!(!state.should_pod_content_be_removed("gone"));
    assert!(!state.should_pod_runtime_be_removed("gone"));
    ready_tx.send_replace(true);
    assert!(state.should_pod_content_be_removed("gone"));
    assert!(state.should_pod_runtime_be_removed("gone"));
    // Pods the pod manager holds keep their content; a terminal one may lose its runtime objects under pressure.
    for uid in ["running", "done", "new"] {
        assert!(!state.should_pod_content_be_removed(uid), "{uid}");
    }
    assert!(state.should_pod_runtime_be_removed("done"));
    assert!(!state.should_pod_runtime_be_removed("running"));
    assert!(!state.should_pod_runtime_be_removed("new"), "a pod being created is not terminated");
}
