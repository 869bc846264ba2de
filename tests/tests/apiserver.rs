//! Tests of the API-server double (`rkubelet_tests::apiserver`) through kube-rs.
//!
//! Tests taking a [`Cluster`] also run against a real cluster when
//! `RKUBELET_E2E_KUBECONFIG` names an admin kubeconfig; those needing double-only
//! features (node identities, CSR auto-approval, pause/resume, request log) start an
//! [`ApiServer`] directly. No root needed.

use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestCondition};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Binding, Event as CoreEvent, Node, ObjectReference, Pod};
use k8s_openapi::api::events::v1::Event as EventV1;
use k8s_openapi::ByteString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::core::Status;
use kube::runtime::{watcher, WatchStreamExt};
use rkubelet_tests::apiserver::{ApiServer, Cluster};
use serde_json::json;

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(f)
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// A pod no real scheduler picks up (unknown schedulerName), optionally already bound.
fn pod(name: &str, node: Option<&str>, labels: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "labels": labels },
        "spec": {
            "schedulerName": "rkubelet-test-no-scheduler",
            "nodeName": node,
            "terminationGracePeriodSeconds": 30,
            "containers": [{ "name": "c", "image": "registry.invalid/pause:3.10" }],
        },
    }))
    .expect("pod")
}

fn api_err<T>(r: Result<T, kube::Error>) -> Box<Status> {
    match r {
        Err(kube::Error::Api(s)) => s,
        Err(other) => panic!("expected an API error, got {other:?}"),
        Ok(_) => panic!("expected an API error, the call succeeded"),
    }
}

fn rv_of(p: &Pod) -> u64 {
    p.metadata.resource_version.as_deref().expect("rv").parse().expect("numeric rv")
}

/// The next non-bookmark watch event (10 s at most).
async fn next_event<K, S>(s: &mut S) -> WatchEvent<K>
where
    S: Stream<Item = kube::Result<WatchEvent<K>>> + Unpin,
{
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), s.next())
            .await
            .expect("watch event in time")
            .expect("watch stream open")
            .expect("watch event");
        if !matches!(ev, WatchEvent::Bookmark(_)) {
            return ev;
        }
    }
}

fn event_kind<K: kube::Resource>(ev: &WatchEvent<K>) -> (String, String) {
    match ev {
        WatchEvent::Added(o) => ("ADDED".into(), o.meta().name.clone().unwrap_or_default()),
        WatchEvent::Modified(o) => ("MODIFIED".into(), o.meta().name.clone().unwrap_or_default()),
        WatchEvent::Deleted(o) => ("DELETED".into(), o.meta().name.clone().unwrap_or_default()),
        WatchEvent::Bookmark(_) => ("BOOKMARK".into(), String::new()),
        WatchEvent::Error(e) => (format!("ERROR {}", e.code), e.reason.clone()),
    }
}

/// A pod deleted with grace period 0 is first written with `deletionTimestamp` and a grace of 0 (MODIFIED), then
/// removed (DELETED), as the real API server's graceful-deletion path does.
async fn expect_graceless_deletion<S>(w: &mut S, name: &str)
where
    S: Stream<Item = kube::Result<WatchEvent<Pod>>> + Unpin,
{
    match next_event(w).await {
        WatchEvent::Modified(p) => {
            assert!(p.metadata.deletion_timestamp.is_some(), "{:?}", p.metadata);
            assert_eq!(p.metadata.deletion_grace_period_seconds, Some(0));
        }
        other => panic!("expected MODIFIED with deletionTimestamp, got {:?}", event_kind(&other)),
    }
    assert_eq!(event_kind(&next_event(w).await), ("DELETED".into(), name.to_owned()));
}

#[test]
fn pod_crud_conflicts_and_errors() {
    let cluster = Cluster::from_env().unwrap();
    block_on(async {
        let pods: Api<Pod> = Api::namespaced(cluster.admin_client().await.unwrap(), "default");
        let pp = PostParams::default();
        let name = unique("crud");
        let created = pods.create(&pp, &pod(&name, None, json!({ "app": name }))).await.unwrap();
        assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
        let status = created.status.clone().unwrap();
        assert_eq!(status.phase.as_deref(), Some("Pending"));
        assert_eq!(status.qos_class.as_deref(), Some("BestEffort"));
        let spec = created.spec.clone().unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
        assert_eq!(spec.containers[0].image_pull_policy.as_deref(), Some("IfNotPresent"));

        let got = pods.get(&name).await.unwrap();
        assert_eq!(got.metadata.uid, created.metadata.uid);
        let list = pods.list(&ListParams::default().labels(&format!("app={name}"))).await.unwrap();
        assert_eq!(list.items.len(), 1);
        let list_rv: u64 = list.metadata.resource_version.unwrap().parse().unwrap();
        assert!(list_rv >= rv_of(&created));
        let by_name = pods.list(&ListParams::default().fields(&format!("metadata.name={name}"))).await.unwrap();
        assert_eq!(by_name.items.len(), 1);
        let none = pods.list(&ListParams::default().labels(&format!("app in ({name}-x),app"))).await.unwrap();
        assert!(none.items.is_empty());

        let mut upd = got.clone();
        upd.metadata.labels.get_or_insert_default().insert("tier".into(), "x".into());
        let updated = pods.replace(&name, &pp, &upd).await.unwrap();
        assert!(rv_of(&updated) > rv_of(&got));
        assert_eq!(updated.metadata.labels.as_ref().unwrap()["tier"], "x");

        // `upd` still carries the old resourceVersion
        let e = api_err(pods.replace(&name, &pp, &upd).await);
        assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
        assert!(e.message.contains("the object has been modified"), "{}", e.message);

        let e = api_err(pods.create(&pp, &pod(&name, None, json!({}))).await);
        assert_eq!((e.code, e.reason.as_str()), (409, "AlreadyExists"));
        assert_eq!(e.message, format!("pods \"{name}\" already exists"));

        let e = api_err(pods.get("no-such-pod-here").await);
        assert_eq!((e.code, e.reason.as_str()), (404, "NotFound"));
        assert_eq!(e.message, "pods \"no-such-pod-here\" not found");

        // spec.nodeName is only set through pods/binding
        let mut moved = updated.clone();
        moved.spec.as_mut().unwrap().node_name = Some("elsewhere".into());
        let e = api_err(pods.replace(&name, &pp, &moved).await);
        assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));

        // merge patch with a stale resourceVersion conflicts too
        let stale = json!({ "metadata": { "resourceVersion": got.metadata.resource_version, "labels": { "a": "b" } } });
        let e = api_err(pods.patch(&name, &PatchParams::default(), &Patch::Merge(&stale)).await);
        assert_eq!(e.code, 409);

        pods.delete(&name, &DeleteParams::default()).await.unwrap();
        assert_eq!(api_err(pods.get(&name).await).code, 404);
    });
}

#[test]
fn watch_follows_selectors_and_binding() {
    let cluster = Cluster::from_env().unwrap();
    block_on(async {
        let pods: Api<Pod> = Api::namespaced(cluster.admin_client().await.unwrap(), "default");
        let pp = PostParams::default();
        let name = unique("sel");
        let rv = pods.list(&ListParams::default().labels("sel=none")).await.unwrap().metadata.resource_version.unwrap();

        // label selector: objects entering and leaving the selection
        let mut w = pods.watch(&WatchParams::default().labels(&format!("sel={name}")), &rv).await.unwrap().boxed();
        pods.create(&pp, &pod(&name, None, json!({ "sel": name }))).await.unwrap();
        assert_eq!(event_kind(&next_event(&mut w).await), ("ADDED".into(), name.clone()));
        let relabel = |v: &str| json!({ "metadata": { "labels": { "sel": v } } });
        pods.patch(&name, &PatchParams::default(), &Patch::Merge(relabel("other"))).await.unwrap();
        let left = next_event(&mut w).await;
        assert_eq!(event_kind(&left), ("DELETED".into(), name.clone()));
        if let WatchEvent::Deleted(p) = &left {
            // the previous state, at the change's resourceVersion
            assert_eq!(p.metadata.labels.as_ref().unwrap()["sel"], name);
        }
        pods.patch(&name, &PatchParams::default(), &Patch::Merge(relabel(&name))).await.unwrap();
        assert_eq!(event_kind(&next_event(&mut w).await), ("ADDED".into(), name.clone()));
        let annotate = json!({ "metadata": { "annotations": { "x": "y" } } });
        pods.patch(&name, &PatchParams::default(), &Patch::Merge(&annotate)).await.unwrap();
        assert_eq!(event_kind(&next_event(&mut w).await), ("MODIFIED".into(), name.clone()));

        // field selector spec.nodeName: the pod enters the selection when bound
        let node = unique("node");
        let rv = pods.get(&name).await.unwrap().metadata.resource_version.unwrap();
        let mut wn =
            pods.watch(&WatchParams::default().fields(&format!("spec.nodeName={node}")), &rv).await.unwrap().boxed();
        let binding = Binding {
            metadata: kube::api::ObjectMeta { name: Some(name.clone()), ..Default::default() },
            target: ObjectReference { kind: Some("Node".into()), name: Some(node.clone()), ..Default::default() },
        };
        let st: Status = pods.create_subresource("binding", &name, &pp, &binding).await.unwrap();
        assert!(st.is_success(), "{st:?}");
        match next_event(&mut wn).await {
            WatchEvent::Added(p) => {
                assert_eq!(p.spec.unwrap().node_name.as_deref(), Some(node.as_str()));
                let conds = p.status.unwrap().conditions.unwrap_or_default();
                assert!(conds.iter().any(|c| c.type_ == "PodScheduled" && c.status == "True"));
            }
            other => panic!("expected ADDED, got {:?}", event_kind(&other)),
        }
        // the label watch sees the binding as a change to an object it already selects
        assert_eq!(event_kind(&next_event(&mut w).await), ("MODIFIED".into(), name.clone()));
        let e = api_err(pods.create_subresource::<_, Status>("binding", &name, &pp, &binding).await);
        assert_eq!(e.code, 409);

        pods.delete(&name, &DeleteParams::default().grace_period(0)).await.unwrap();
        expect_graceless_deletion(&mut wn, &name).await;
        expect_graceless_deletion(&mut w, &name).await;
    });
}

#[test]
fn watch_resumes_from_resource_version_and_expires() {
    let cluster = Cluster::from_env().unwrap();
    block_on(async {
        let pods: Api<Pod> = Api::namespaced(cluster.admin_client().await.unwrap(), "default");
        let label = unique("resume");
        let rv0 =
            pods.list(&ListParams::default().labels("sel=none")).await.unwrap().metadata.resource_version.unwrap();
        let names: Vec<String> = (0..3).map(|i| format!("{label}-{i}")).collect();
        for n in &names {
            pods.create(&PostParams::default(), &pod(n, None, json!({ "resume": label }))).await.unwrap();
        }
        // a watch from before the creations replays them, in order
        let wp = WatchParams::default().labels(&format!("resume={label}"));
        let mut w = pods.watch(&wp, &rv0).await.unwrap().boxed();
        for n in &names {
            assert_eq!(event_kind(&next_event(&mut w).await), ("ADDED".into(), n.clone()));
        }
        // resourceVersion "0": synthetic ADDED for the current objects
        let mut w0 = pods.watch(&wp, "0").await.unwrap().boxed();
        let mut seen: Vec<String> = Vec::new();
        for _ in 0..3 {
            seen.push(event_kind(&next_event(&mut w0).await).1);
        }
        seen.sort();
        assert_eq!(seen, names);

        // too old: 410 Expired as an ERROR event
        let too_old = match cluster.double() {
            Some(d) => {
                d.set_history_limit(2);
                rv0.clone()
            }
            None => "1".to_string(),
        };
        let mut wg = pods.watch(&wp, &too_old).await.unwrap().boxed();
        match next_event(&mut wg).await {
            WatchEvent::Error(e) => {
                assert_eq!((e.code, e.reason.as_str()), (410, "Expired"), "{e:?}");
                assert!(e.message.contains("too old resource version"), "{}", e.message);
            }
            other => panic!("expected a 410 ERROR event, got {:?}", event_kind(&other)),
        }
        for n in &names {
            pods.delete(n, &DeleteParams::default().grace_period(0)).await.unwrap();
        }
    });
}

#[test]
fn bookmarks_arrive_and_timeout_ends_watch() {
    let cluster = Cluster::from_env().unwrap();
    block_on(async {
        let pods: Api<Pod> = Api::namespaced(cluster.admin_client().await.unwrap(), "default");
        let rv = pods.list(&ListParams::default().labels("sel=none")).await.unwrap().metadata.resource_version.unwrap();
        // A real server sends its bookmark 2 s before the watch's deadline, and none when the watch is registered
        // later than that: a short timeout is flaky on a busy machine.
        let timeout: u32 = if cluster.is_real() { 8 } else { 3 };
        let start = Instant::now();
        let mut w = pods.watch(&WatchParams::default().labels("sel=none").timeout(timeout), &rv).await.unwrap().boxed();
        let mut bookmarks = Vec::new();
        while let Some(ev) = tokio::time::timeout(Duration::from_secs(u64::from(timeout) + 7), w.next())
            .await
            .expect("stream ends in time")
        {
            if let WatchEvent::Bookmark(b) = ev.unwrap() {
                bookmarks.push(b.metadata.resource_version);
            }
        }
        // The API promises bookmarks only as a hint ("clients must not assume bookmarks are returned at any specific
        // interval"): the double sends one, a real server may not within a short watch.
        if cluster.is_real() && bookmarks.is_empty() {
            println!("note: the real API server sent no bookmark within {timeout} s (allowed: bookmarks are a hint)");
        } else {
            assert!(!bookmarks.is_empty(), "no bookmark");
        }
        assert!(bookmarks.iter().all(|b| b.parse::<u64>().unwrap() >= rv.parse::<u64>().unwrap()));
        let took = start.elapsed();
        let limit = Duration::from_secs(u64::from(timeout));
        assert!(took >= limit - Duration::from_secs(1) && took < limit + Duration::from_secs(5), "{took:?}");
    });
}

#[test]
fn status_subresource_is_isolated() {
    let cluster = Cluster::from_env().unwrap();
    block_on(async {
        let pods: Api<Pod> = Api::namespaced(cluster.admin_client().await.unwrap(), "default");
        let name = unique("status");
        let node = unique("node");
        let created = pods.create(&PostParams::default(), &pod(&name, Some(&node), json!({}))).await.unwrap();
        let pp = PatchParams::default();

        // the main resource ignores status
        let p = pods.patch(&name, &pp, &Patch::Merge(json!({ "status": { "phase": "Running" } }))).await.unwrap();
        assert_eq!(p.status.unwrap().phase.as_deref(), Some("Pending"));

        // /status ignores spec; conditions merge by type
        let patch = json!({
            "spec": { "activeDeadlineSeconds": 5 },
            "status": { "phase": "Running", "conditions": [{ "type": "Ready", "status": "False" }] },
        });
        let p = pods.patch_status(&name, &pp, &Patch::Strategic(&patch)).await.unwrap();
        assert_eq!(p.spec.as_ref().unwrap().active_deadline_seconds, None);
        assert_eq!(p.spec, created.spec);
        assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Running"));
        let patch = json!({ "status": { "conditions": [{ "type": "ContainersReady", "status": "True" }] } });
        let p = pods.patch_status(&name, &pp, &Patch::Strategic(&patch)).await.unwrap();
        let mut types: Vec<String> =
            p.status.as_ref().unwrap().conditions.iter().flatten().map(|c| c.type_.clone()).collect();
        types.sort();
        assert_eq!(types, ["ContainersReady", "Ready"]);

        // a no-op status patch writes nothing
        let again = pods.patch_status(&name, &pp, &Patch::Strategic(&patch)).await.unwrap();
        assert_eq!(again.metadata.resource_version, p.metadata.resource_version);

        // PUT /status keeps spec
        let mut put = again.clone();
        put.spec.as_mut().unwrap().containers[0].image = Some("registry.invalid/other:1".into());
        put.status.as_mut().unwrap().message = Some("hello".into());
        let r = pods.replace_status(&name, &PostParams::default(), &put).await.unwrap();
        assert_eq!(r.spec, created.spec);
        assert_eq!(r.status.unwrap().message.as_deref(), Some("hello"));

        pods.delete(&name, &DeleteParams::default().grace_period(0)).await.unwrap();
    });
}

#[test]
fn graceful_pod_deletion() {
    let cluster = Cluster::from_env().unwrap();
    block_on(async {
        let pods: Api<Pod> = Api::namespaced(cluster.admin_client().await.unwrap(), "default");
        let name = unique("grace");
        let node = unique("node");
        let created = pods.create(&PostParams::default(), &pod(&name, Some(&node), json!({}))).await.unwrap();
        let wp = WatchParams::default().fields(&format!("metadata.name={name}"));
        let mut w = pods.watch(&wp, created.metadata.resource_version.as_deref().unwrap()).await.unwrap().boxed();

        let deleted = pods.delete(&name, &DeleteParams::default()).await.unwrap();
        let p = deleted.left().expect("a pod being deleted gracefully is returned");
        assert!(p.metadata.deletion_timestamp.is_some());
        assert_eq!(p.metadata.deletion_grace_period_seconds, Some(30));
        let still = pods.get(&name).await.unwrap();
        assert!(still.metadata.deletion_timestamp.is_some());
        match next_event(&mut w).await {
            WatchEvent::Modified(p) => assert!(p.metadata.deletion_timestamp.is_some()),
            other => panic!("expected MODIFIED, got {:?}", event_kind(&other)),
        }
        // a longer grace period changes nothing
        let again = pods.delete(&name, &DeleteParams::default().grace_period(60)).await.unwrap().left().unwrap();
        assert_eq!(again.metadata.deletion_grace_period_seconds, Some(30));

        pods.delete(&name, &DeleteParams::default().grace_period(0)).await.unwrap();
        expect_graceless_deletion(&mut w, &name).await;
        assert_eq!(api_err(pods.get(&name).await).code, 404);

        // unscheduled pods go at once; preconditions are checked
        let un = unique("unsched");
        let p = pods.create(&PostParams::default(), &pod(&un, None, json!({}))).await.unwrap();
        let mut dp = DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid: Some("00000000-0000-0000-0000-000000000000".into()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        assert_eq!(api_err(pods.delete(&un, &dp).await).code, 409);
        dp.preconditions = Some(kube::api::Preconditions { uid: p.metadata.uid.clone(), resource_version: None });
        pods.delete(&un, &dp).await.unwrap();
        assert_eq!(api_err(pods.get(&un).await).code, 404);
    });
}

#[test]
fn discovery_events_and_leases() {
    let cluster = Cluster::from_env().unwrap();
    block_on(async {
        let client = cluster.admin_client().await.unwrap();
        let v = client.apiserver_version().await.unwrap();
        assert_eq!(v.major, "1");
        let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
        for (group, kind) in [
            ("", "Pod"),
            ("", "Node"),
            ("coordination.k8s.io", "Lease"),
            ("certificates.k8s.io", "CertificateSigningRequest"),
            ("events.k8s.io", "Event"),
        ] {
            let found = discovery
                .groups()
                .any(|g| g.name() == group && g.recommended_resources().iter().any(|(r, _)| r.kind == kind));
            assert!(found, "{group}/{kind} not discovered");
        }

        // a core/v1 event is visible through events.k8s.io/v1, converted
        let name = unique("ev");
        let ev: CoreEvent = serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": "default" },
            "involvedObject": { "kind": "Pod", "name": "some-pod", "namespace": "default", "apiVersion": "v1" },
            "reason": "Testing",
            "message": "hello",
            "type": "Normal",
            "source": { "component": "rkubelet-test" },
            "firstTimestamp": "2025-01-01T00:00:00Z",
            "lastTimestamp": "2025-01-01T00:00:00Z",
            "count": 1,
        }))
        .unwrap();
        let core: Api<CoreEvent> = Api::namespaced(client.clone(), "default");
        core.create(&PostParams::default(), &ev).await.unwrap();
        let v1: Api<EventV1> = Api::namespaced(client.clone(), "default");
        let got = v1.get(&name).await.unwrap();
        assert_eq!(got.note.as_deref(), Some("hello"));
        assert_eq!(got.regarding.as_ref().unwrap().name.as_deref(), Some("some-pod"));
        assert_eq!(got.deprecated_count, Some(1));
        let listed = core.list(&ListParams::default().fields("involvedObject.name=some-pod")).await.unwrap();
        assert!(listed.items.iter().any(|e| e.metadata.name.as_deref() == Some(name.as_str())));
        core.delete(&name, &DeleteParams::default()).await.unwrap();

        // leases
        let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
        let lname = unique("lease");
        let lease: Lease = serde_json::from_value(json!({
            "metadata": { "name": lname },
            "spec": { "holderIdentity": lname, "leaseDurationSeconds": 40, "renewTime": "2025-01-01T00:00:00.000000Z" },
        }))
        .unwrap();
        let l = leases.create(&PostParams::default(), &lease).await.unwrap();
        let renew = json!({ "spec": { "renewTime": "2025-01-01T00:00:10.000000Z" } });
        let l2 = leases.patch(&lname, &PatchParams::default(), &Patch::Merge(&renew)).await.unwrap();
        assert_ne!(l.metadata.resource_version, l2.metadata.resource_version);
        leases.delete(&lname, &DeleteParams::default()).await.unwrap();
    });
}

#[test]
fn node_identity_is_restricted() {
    let api = ApiServer::start().unwrap();
    block_on(async {
        let admin = api.admin_client().await.unwrap();
        let n1 = api.node_client("n1").await.unwrap();
        let node = |name: &str| -> Node { serde_json::from_value(json!({ "metadata": { "name": name } })).unwrap() };
        let pp = PostParams::default();
        let nodes1: Api<Node> = Api::all(n1.clone());
        nodes1.create(&pp, &node("n1")).await.unwrap();
        let e = api_err(nodes1.create(&pp, &node("n2")).await);
        assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden"));
        assert_eq!(e.message, "nodes \"n2\" is forbidden: node \"n1\" is not allowed to modify node \"n2\"");
        Api::<Node>::all(admin.clone()).create(&pp, &node("n2")).await.unwrap();

        let status = json!({ "status": { "conditions": [{ "type": "Ready", "status": "True" }] } });
        nodes1.patch_status("n1", &PatchParams::default(), &Patch::Strategic(&status)).await.unwrap();
        let e = api_err(nodes1.patch_status("n2", &PatchParams::default(), &Patch::Strategic(&status)).await);
        assert_eq!(e.code, 403);
        let e = api_err(
            nodes1
                .patch(
                    "n1",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": {"node-restriction.kubernetes.io/x": "y"}}})),
                )
                .await,
        );
        assert_eq!(e.code, 403);
        assert_eq!(nodes1.list(&ListParams::default()).await.unwrap().items.len(), 2);

        // pods: list/watch only with spec.nodeName=<self>
        let pods1: Api<Pod> = Api::all(n1.clone());
        let e = api_err(pods1.list(&ListParams::default()).await);
        assert_eq!(e.code, 403);
        assert!(
            e.message.starts_with("pods is forbidden: User \"system:node:n1\" cannot list resource \"pods\""),
            "{}",
            e.message
        );
        assert_eq!(api_err(pods1.watch(&WatchParams::default(), "0").await).code, 403);
        assert_eq!(api_err(pods1.list(&ListParams::default().fields("spec.nodeName=n2")).await).code, 403);
        pods1.list(&ListParams::default().fields("spec.nodeName=n1")).await.unwrap();
        let _stream = pods1.watch(&WatchParams::default().fields("spec.nodeName=n1"), "0").await.unwrap();

        let admin_pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
        admin_pods.create(&pp, &pod("on-n1", Some("n1"), json!({}))).await.unwrap();
        admin_pods.create(&pp, &pod("on-n2", Some("n2"), json!({}))).await.unwrap();
        let ns_pods1: Api<Pod> = Api::namespaced(n1.clone(), "default");
        ns_pods1.get("on-n1").await.unwrap();
        assert_eq!(api_err(ns_pods1.get("on-n2").await).code, 403);
        let st = json!({ "status": { "phase": "Running" } });
        ns_pods1.patch_status("on-n1", &PatchParams::default(), &Patch::Merge(&st)).await.unwrap();
        assert_eq!(
            api_err(ns_pods1.patch_status("on-n2", &PatchParams::default(), &Patch::Merge(&st)).await).code,
            403
        );
        assert_eq!(
            api_err(
                ns_pods1
                    .patch("on-n1", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})))
                    .await
            )
            .code,
            403
        );
        assert_eq!(api_err(ns_pods1.delete("on-n2", &DeleteParams::default()).await).code, 403);

        // mirror pods bound to itself only
        assert_eq!(api_err(ns_pods1.create(&pp, &pod("plain", Some("n1"), json!({}))).await).code, 403);
        let mut mirror = pod("static-web-n1", Some("n1"), json!({}));
        mirror.metadata.annotations = Some([("kubernetes.io/config.mirror".to_string(), "abc".to_string())].into());
        let m = ns_pods1.create(&pp, &mirror).await.unwrap();
        assert_eq!(m.spec.unwrap().service_account_name, None);
        mirror.metadata.name = Some("static-web-n2".into());
        mirror.spec.as_mut().unwrap().node_name = Some("n2".into());
        assert_eq!(api_err(ns_pods1.create(&pp, &mirror).await).code, 403);
        ns_pods1.delete("static-web-n1", &DeleteParams::default().grace_period(0)).await.unwrap();

        // its own lease only
        let leases1: Api<Lease> = Api::namespaced(n1.clone(), "kube-node-lease");
        let lease = |n: &str| -> Lease {
            serde_json::from_value(json!({ "metadata": { "name": n }, "spec": { "holderIdentity": n } })).unwrap()
        };
        leases1.create(&pp, &lease("n1")).await.unwrap();
        leases1.get("n1").await.unwrap();
        assert_eq!(api_err(leases1.create(&pp, &lease("n2")).await).code, 403);
        assert_eq!(api_err(leases1.get("n2").await).code, 403);

        // anonymous and bad tokens
        assert_eq!(api_err(api.token_client("nope").await.unwrap().apiserver_version().await).code, 401);
    });
}

fn node_csr(cn: &str, org: &str) -> (rcgen::KeyPair, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::OrganizationName, org);
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    let pem = params.serialize_request(&key).unwrap().pem().unwrap();
    (key, pem)
}

fn csr_object(name: &str, pem: &str) -> CertificateSigningRequest {
    serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "request": ByteString(pem.as_bytes().to_vec()),
            "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
            "usages": ["digital signature", "client auth"],
            "expirationSeconds": 3600,
        },
    }))
    .unwrap()
}

async fn wait_csr(
    api: &Api<CertificateSigningRequest>,
    name: &str,
    done: impl Fn(&CertificateSigningRequest) -> bool,
) -> CertificateSigningRequest {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = api.get(name).await.unwrap();
        if done(&c) {
            return c;
        }
        assert!(Instant::now() < deadline, "CSR {name} not done: {:?}", c.status);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn has_condition(c: &CertificateSigningRequest, t: &str) -> bool {
    c.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| cs.iter().any(|x| x.type_ == t))
}

#[test]
fn csr_bootstrap_approval_and_signing() {
    let api = ApiServer::start().unwrap();
    block_on(async {
        let boot = api.token_client(&api.bootstrap_token()).await.unwrap();
        let csrs: Api<CertificateSigningRequest> = Api::all(boot.clone());
        let (key, pem) = node_csr("system:node:n3", "system:nodes");
        let created = csrs.create(&PostParams::default(), &csr_object("node-csr-n3", &pem)).await.unwrap();
        assert!(created.spec.username.as_deref().unwrap().starts_with("system:bootstrap:"));
        let signed =
            wait_csr(&csrs, "node-csr-n3", |c| c.status.as_ref().and_then(|s| s.certificate.as_ref()).is_some()).await;
        assert!(has_condition(&signed, "Approved"));
        let cert_pem = String::from_utf8(signed.status.unwrap().certificate.unwrap().0).unwrap();
        assert!(cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));

        // bootstrappers can do nothing else
        assert_eq!(api_err(Api::<Node>::all(boot.clone()).list(&ListParams::default()).await).code, 403);

        // the signed certificate is a working node identity
        let n3 = api.cert_client(&cert_pem, &key.serialize_pem()).await.unwrap();
        let nodes: Api<Node> = Api::all(n3);
        nodes
            .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "n3"}})).unwrap())
            .await
            .unwrap();
        assert_eq!(
            api_err(
                nodes
                    .create(
                        &PostParams::default(),
                        &serde_json::from_value(json!({"metadata": {"name": "n4"}})).unwrap()
                    )
                    .await
            )
            .code,
            403
        );
        let dir = tempfile::tempdir().unwrap();
        let kc = api.write_cert_kubeconfig(&dir.path().join("n3.kubeconfig"), &cert_pem, &key.serialize_pem()).unwrap();
        assert!(std::fs::read_to_string(kc).unwrap().contains("client-certificate-data"));

        // a CSR for someone else's identity is denied
        let (_, bad) = node_csr("admin", "system:masters");
        csrs.create(&PostParams::default(), &csr_object("bad-csr", &bad)).await.unwrap();
        let denied = wait_csr(&csrs, "bad-csr", |c| has_condition(c, "Denied")).await;
        assert!(denied.status.unwrap().certificate.is_none());

        // manual approval through /approval
        api.set_auto_approve(false);
        let (_, pem5) = node_csr("system:node:n5", "system:nodes");
        csrs.create(&PostParams::default(), &csr_object("node-csr-n5", &pem5)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let admin_csrs: Api<CertificateSigningRequest> = Api::all(api.admin_client().await.unwrap());
        let mut pending = admin_csrs.get("node-csr-n5").await.unwrap();
        assert!(!has_condition(&pending, "Approved"));
        let mut cond: CertificateSigningRequestCondition = serde_json::from_value(json!({
            "type": "Approved", "status": "True", "reason": "TestApproved", "message": "approved by the test",
        }))
        .unwrap();
        cond.last_update_time = None;
        pending.status.get_or_insert_default().conditions.get_or_insert_default().push(cond);
        // bootstrappers may not approve
        assert_eq!(
            api_err(csrs.replace_subresource("approval", "node-csr-n5", &PostParams::default(), &pending).await).code,
            403
        );
        admin_csrs.replace_subresource("approval", "node-csr-n5", &PostParams::default(), &pending).await.unwrap();
        let s =
            wait_csr(&admin_csrs, "node-csr-n5", |c| c.status.as_ref().and_then(|s| s.certificate.as_ref()).is_some())
                .await;
        assert!(has_condition(&s, "Approved"));
    });
}

#[test]
fn pause_resume_keeps_state_and_watchers_resume() {
    let api = ApiServer::start().unwrap();
    block_on(async {
        let client = api.admin_client().await.unwrap();
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let p1 = pods.create(&PostParams::default(), &pod("p1", None, json!({}))).await.unwrap();

        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let w = watcher(pods.clone(), watcher::Config::default()).default_backoff();
        tokio::spawn(async move {
            let mut w = std::pin::pin!(w);
            while let Some(ev) = w.next().await {
                if let Ok(ev) = ev {
                    if tx.send(ev).is_err() {
                        return;
                    }
                }
            }
        });
        loop {
            if let watcher::Event::InitDone = recv_event(&mut rx).await {
                break;
            }
        }

        api.pause();
        assert!(api.is_paused());
        let down = tokio::time::timeout(Duration::from_secs(5), pods.get("p1")).await.expect("fails fast");
        assert!(!matches!(down, Ok(_) | Err(kube::Error::Api(_))), "{down:?}");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        api.clear_requests();
        api.resume();

        let got = pods.get("p1").await.unwrap();
        assert_eq!(got.metadata.uid, p1.metadata.uid);
        pods.create(&PostParams::default(), &pod("p2", None, json!({}))).await.unwrap();
        loop {
            match recv_event(&mut rx).await {
                watcher::Event::Apply(p) if p.metadata.name.as_deref() == Some("p2") => break,
                watcher::Event::Apply(_)
                | watcher::Event::InitApply(_)
                | watcher::Event::Init
                | watcher::Event::InitDone
                | watcher::Event::Delete(_) => {}
            }
        }
        // the watcher re-watched from its last resourceVersion instead of re-listing
        let reqs = api.requests();
        let pod_collection: Vec<_> =
            reqs.iter().filter(|r| r.path_only() == "/api/v1/namespaces/default/pods" && r.method == "GET").collect();
        assert!(
            pod_collection.iter().any(|r| r.path.contains("watch=true") && r.path.contains("resourceVersion=")),
            "{reqs:#?}"
        );
        assert!(pod_collection.iter().all(|r| r.path.contains("watch=true")), "relisted: {reqs:#?}");
    });
}

async fn recv_event(rx: &mut tokio::sync::mpsc::UnboundedReceiver<watcher::Event<Pod>>) -> watcher::Event<Pod> {
    tokio::time::timeout(Duration::from_secs(15), rx.recv())
        .await
        .expect("watcher event in time")
        .expect("watcher alive")
}

#[test]
fn status_that_revives_a_terminated_container_is_invalid() {
    let cluster = Cluster::from_env().unwrap();
    block_on(async {
        let pods: Api<Pod> = Api::namespaced(cluster.admin_client().await.unwrap(), "default");
        let pp = PatchParams::default();
        let state = |s: serde_json::Value| {
            json!({ "status": { "containerStatuses": [{
                "name": "c", "image": "registry.invalid/pause:3.10", "imageID": "", "ready": false, "restartCount": 0,
                "state": s,
            }]}})
        };
        let running = json!({ "running": { "startedAt": "2024-01-01T00:00:00Z" } });
        let exited = |code: i32| json!({ "terminated": { "exitCode": code, "startedAt": "2024-01-01T00:00:00Z", "finishedAt": "2024-01-01T00:00:01Z" } });
        for (policy, code, allowed) in [
            ("Never", 0, false),
            ("Never", 1, false),
            ("OnFailure", 0, false),
            ("OnFailure", 1, true),
            ("Always", 0, true),
        ] {
            let name = unique("revive");
            let mut p = pod(&name, Some(&unique("node")), json!({}));
            p.spec.as_mut().unwrap().restart_policy = Some(policy.into());
            pods.create(&PostParams::default(), &p).await.unwrap();
            pods.patch_status(&name, &pp, &Patch::Merge(state(running.clone()))).await.unwrap();
            pods.patch_status(&name, &pp, &Patch::Merge(state(exited(code)))).await.unwrap();
            let again = pods.patch_status(&name, &pp, &Patch::Merge(state(running.clone()))).await;
            if allowed {
                again.unwrap_or_else(|e| panic!("{policy}, exit {code}: {e}"));
            } else {
                let e = api_err(again);
                assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"), "{policy}, exit {code}");
                assert_eq!(
                    e.message,
                    format!(
                        "Pod \"{name}\" is invalid: status.containerStatuses[0].state: Forbidden: may not be \
                         transitioned to non-terminated state"
                    )
                );
            }
            pods.delete(&name, &DeleteParams::default().grace_period(0)).await.unwrap();
        }
    });
}

#[test]
fn injected_faults_answer_matching_requests_then_stop() {
    use rkubelet_tests::apiserver::Fault;
    let api = ApiServer::start().unwrap();
    block_on(async {
        let admin = api.admin_client().await.unwrap();
        let leases: Api<Lease> = Api::namespaced(admin.clone(), "kube-node-lease");
        let lease: Lease = serde_json::from_value(json!({ "metadata": { "name": "n1" }, "spec": {} })).unwrap();
        leases.create(&PostParams::default(), &lease).await.unwrap();
        let mut throttled = Fault::new("PUT", "/leases/n1", 1, 429, "TooManyRequests", "slow down");
        throttled.retry_after_seconds = 2;
        api.inject_fault(Fault::new("PUT", "/leases/n1", 2, 409, "Conflict", "the object has been modified"));
        api.inject_fault(throttled);
        api.inject_fault(Fault::new("GET", "/leases/n1", 1, 500, "InternalError", "boom").for_user("someone-else"));
        let current = leases.get("n1").await.unwrap();
        for expected in [409, 409] {
            assert_eq!(api_err(leases.replace("n1", &PostParams::default(), &current).await).code, expected);
        }
        // kube's client retries a 429 after the server's Retry-After by itself (as client-go's REST client does);
        // the fault is used up, so the retry is served from the unchanged store.
        let t0 = Instant::now();
        leases.replace("n1", &PostParams::default(), &current).await.unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(1500), "Retry-After not honoured: {:?}", t0.elapsed());
        assert_eq!(api.faults_left(), 1, "the fault for another user was not left alone");
        let codes: Vec<u16> = api.requests().iter().filter(|r| r.method == "PUT").map(|r| r.status).collect();
        assert_eq!(codes, [409, 409, 429, 200]);
    });
}

#[test]
fn service_account_admission_mounts_the_token_volume_unless_the_pod_opts_out() {
    let cluster = Cluster::from_env().unwrap();
    block_on(async {
        let pods: Api<Pod> = Api::namespaced(cluster.admin_client().await.unwrap(), "default");
        let name = unique("satoken");
        let mut p = pod(&name, None, json!({}));
        p.spec.as_mut().unwrap().init_containers = Some(vec![p.spec.as_ref().unwrap().containers[0].clone()]);
        p.spec.as_mut().unwrap().init_containers.as_mut().unwrap()[0].name = "init".into();
        let created = pods.create(&PostParams::default(), &p).await.unwrap();
        let spec = created.spec.unwrap();
        assert_eq!(spec.service_account_name.as_deref(), Some("default"));
        let volumes = spec.volumes.unwrap_or_default();
        assert_eq!(volumes.len(), 1, "{volumes:?}");
        let v = &volumes[0];
        let suffix = v.name.strip_prefix("kube-api-access-").unwrap_or_else(|| panic!("{}", v.name));
        assert_eq!(suffix.len(), 5, "{}", v.name);
        let projected = serde_json::to_value(v.projected.as_ref().unwrap()).unwrap();
        assert_eq!(
            projected,
            json!({
                "defaultMode": 420,
                "sources": [
                    { "serviceAccountToken": { "expirationSeconds": 3607, "path": "token" } },
                    { "configMap": { "name": "kube-root-ca.crt", "items": [{ "key": "ca.crt", "path": "ca.crt" }] } },
                    { "downwardAPI": { "items": [{ "path": "namespace",
                        "fieldRef": { "apiVersion": "v1", "fieldPath": "metadata.namespace" } }] } },
                ],
            })
        );
        for c in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
            let mounts = serde_json::to_value(c.volume_mounts.clone().unwrap_or_default()).unwrap();
            assert_eq!(
                mounts,
                json!([{ "name": v.name, "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount" }]),
                "container {}",
                c.name
            );
        }
        pods.delete(&name, &DeleteParams::default().grace_period(0)).await.unwrap();

        let opted_out = unique("nosatoken");
        let mut p = pod(&opted_out, None, json!({}));
        p.spec.as_mut().unwrap().automount_service_account_token = Some(false);
        let created = pods.create(&PostParams::default(), &p).await.unwrap();
        let spec = created.spec.unwrap();
        assert!(spec.volumes.unwrap_or_default().is_empty());
        assert!(spec.containers[0].volume_mounts.clone().unwrap_or_default().is_empty());
        pods.delete(&opted_out, &DeleteParams::default().grace_period(0)).await.unwrap();
    });
}

#[test]
fn a_node_reads_only_the_objects_its_pods_reference_and_gets_tokens_for_their_service_accounts() {
    use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
    let api = ApiServer::start().unwrap();
    block_on(async {
        let admin = api.admin_client().await.unwrap();
        let n1 = api.node_client("n1").await.unwrap();
        let pp = PostParams::default();
        let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), "default");
        for name in ["used", "unused"] {
            let cm: ConfigMap =
                serde_json::from_value(json!({ "metadata": { "name": name }, "data": { "k": "v" } })).unwrap();
            cms.create(&pp, &cm).await.unwrap();
        }
        let secret: Secret =
            serde_json::from_value(json!({ "metadata": { "name": "creds" }, "stringData": { "pw": "hunter2" } }))
                .unwrap();
        let created = Api::<Secret>::namespaced(admin.clone(), "default").create(&pp, &secret).await.unwrap();
        assert_eq!(created.data.unwrap()["pw"], ByteString(b"hunter2".to_vec()), "stringData folds into data");
        let mut p = pod("user", Some("n1"), json!({}));
        let spec = p.spec.as_mut().unwrap();
        spec.volumes =
            Some(vec![serde_json::from_value(json!({ "name": "cfg", "configMap": { "name": "used" } })).unwrap()]);
        spec.containers[0].env = Some(vec![serde_json::from_value(
            json!({ "name": "PW", "valueFrom": { "secretKeyRef": { "name": "creds", "key": "pw" } } }),
        )
        .unwrap()]);
        let p = Api::<Pod>::namespaced(admin.clone(), "default").create(&pp, &p).await.unwrap();

        let node_cms: Api<ConfigMap> = Api::namespaced(n1.clone(), "default");
        assert_eq!(node_cms.get("used").await.unwrap().data.unwrap()["k"], "v");
        assert_eq!(node_cms.get("kube-root-ca.crt").await.unwrap().data.unwrap()["ca.crt"], api.ca_pem());
        let e = api_err(node_cms.get("unused").await);
        assert_eq!(e.code, 403);
        assert!(e.message.contains("no relationship found between node 'n1' and this object"), "{}", e.message);
        assert_eq!(api_err(node_cms.list(&ListParams::default()).await).code, 403);
        Api::<Secret>::namespaced(n1.clone(), "default").get("creds").await.unwrap();
        let services = Api::<Service>::all(n1.clone()).list(&ListParams::default()).await.unwrap();
        assert!(services.items.iter().any(|s| s.metadata.name.as_deref() == Some("kubernetes")), "default/kubernetes");

        let request = |name: &str| TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![],
                expiration_seconds: Some(3607),
                bound_object_ref: Some(BoundObjectReference {
                    kind: Some("Pod".into()),
                    api_version: Some("v1".into()),
                    name: Some(name.into()),
                    uid: p.metadata.uid.clone(),
                }),
            },
            ..Default::default()
        };
        let sas: Api<ServiceAccount> = Api::namespaced(n1.clone(), "default");
        let token = sas.create_token_request("default", &pp, &request("user")).await.unwrap();
        let status = token.status.unwrap();
        assert_eq!(status.token.split('.').count(), 3);
        assert_eq!(token.spec.expiration_seconds, Some(3607));
        let admin_sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), "default");
        assert_eq!(api_err(admin_sas.create_token_request("nobody", &pp, &request("user")).await).code, 404);
        let n2 = api.node_client("n2").await.unwrap();
        let e = api_err(
            Api::<ServiceAccount>::namespaced(n2, "default")
                .create_token_request("default", &pp, &request("user"))
                .await,
        );
        assert_eq!(e.code, 403, "no pod of n2 uses the account");
    });
}
