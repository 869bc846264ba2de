//! An in-process Kubernetes API-server double for rkubelet's API tests.
//!
//! [`ApiServer::start`] serves HTTPS on `127.0.0.1:<random port>` from its own tokio
//! runtime, so plain `#[test]` functions can use it; clients are ordinary kube-rs clients
//! built from the kubeconfigs it writes. It follows the real API's semantics for what it
//! serves, so the same tests run against a real cluster through [`Cluster::from_env`]
//! (`RKUBELET_E2E_KUBECONFIG`).
//!
//! # What is served
//! * Resources: `core/v1` `namespaces` (+`/status`; `default`, `kube-system`,
//!   `kube-public`, `kube-node-lease` are seeded), `nodes` (+`/status`), `pods`
//!   (+`/status`, `/binding`), `events`; `events.k8s.io/v1` `events` (the same objects as
//!   core events, converted field by field); `coordination.k8s.io/v1` `leases`;
//!   `certificates.k8s.io/v1` `certificatesigningrequests` (+`/status`, `/approval`); `configmaps`, `secrets`
//!   (`stringData` folded into `data`), `services` (a ClusterIP is assigned; `default/kubernetes` is seeded) and
//!   `serviceaccounts` with `/token` (TokenRequest: an unsigned token shaped like a JWT, with
//!   `expirationTimestamp`). Every namespace gets the `default` ServiceAccount and the `kube-root-ca.crt` ConfigMap.
//!   Discovery: `/api`, `/apis`, `/api/v1`, `/apis/<group>`, `/apis/<group>/<version>`,
//!   `/version`, `/healthz`, `/livez`, `/readyz`.
//! * Verbs: get, list, watch, create, update (PUT), patch (JSON patch, JSON merge patch,
//!   strategic merge patch), delete (`DeleteOptions` body or query:
//!   `gracePeriodSeconds`, `preconditions.uid`/`resourceVersion`), `dryRun=All`.
//! * One global resourceVersion counter, stamped on every write; no-op updates are not
//!   written (no new RV, no event), as upstream. `uid`, `creationTimestamp`, `generation`
//!   (pods: 1 on create, +1 on spec change). Stale `metadata.resourceVersion` on
//!   update/patch → 409 Conflict; existing name on create → 409 AlreadyExists; errors are
//!   `Status` objects worded like upstream's.
//! * Strategies: the main resource ignores `.status` of pods, nodes, namespaces and CSRs;
//!   `/status` changes only status (nodes/status may also change metadata, as upstream;
//!   pods/status keeps spec, ownerReferences and `qosClass`). Pod spec updates are limited
//!   like `ValidatePodUpdate` (images, activeDeadlineSeconds, tolerations, grace period):
//!   `spec.nodeName` is set at create or through `pods/<name>/binding` only. Pod creation
//!   applies the API defaults and those of the stock admission plugins (ServiceAccount's
//!   `serviceAccountName: default` and the projected `kube-api-access-<random>` token volume mounted at
//!   `/var/run/secrets/kubernetes.io/serviceaccount`, except for mirror pods and pods with
//!   `automountServiceAccountToken: false`; Priority; DefaultTolerationSeconds)
//!   and sets `status: {phase: Pending, qosClass}`. Creating in a missing namespace → 404.
//! * Strategic merge patch list keys as declared in k8s.io/api: pod `status.conditions` by
//!   `type`, `podIPs`/`hostIPs` by `ip`, containers/volumes/env by `name`, ports by
//!   `containerPort`, volumeMounts by `mountPath`; node `status.conditions` and `addresses`
//!   by `type`; `finalizers` and `podCIDRs` as sets. `containerStatuses`,
//!   `initContainerStatuses` and `ephemeralContainerStatuses` have no merge key upstream
//!   (`+listType=atomic`), so a patch replaces them whole — here too. Directives:
//!   `$patch: replace|delete|merge`, `$setElementOrder/…`, `$deleteFromPrimitiveList/…`,
//!   `$retainKeys`.
//! * List: `labelSelector` (`=`, `==`, `!=`, `in`, `notin`, exists, `!key`),
//!   `fieldSelector` (`=`, `==`, `!=`; per-kind labels as upstream, e.g. pods:
//!   `spec.nodeName`, `metadata.name`, `metadata.namespace`, `status.phase`; unknown labels
//!   → 400); `metadata.resourceVersion` = the current global RV.
//! * Watch (`watch=1|true`): `resourceVersion` unset/""/"0" sends synthetic ADDED events
//!   for the current objects first; `resourceVersion=N` replays the changes after N from a
//!   bounded per-resource history ([`Options::history_limit`], default 1000) or, if N is
//!   older than that window, sends an `ERROR` event carrying a 410 `Expired` `Status` (as
//!   the watch cache does). Selectors apply to events, including objects entering the
//!   selection (ADDED) and leaving it (DELETED, with the previous state). With
//!   `allowWatchBookmarks=true` a BOOKMARK with the current RV is sent every
//!   [`Options::bookmark_interval`] (default 1 s); `sendInitialEvents=true` ends the initial
//!   events with the `k8s.io/initial-events-end` bookmark. `timeoutSeconds` ends the
//!   stream. One JSON event per line, chunked.
//! * Graceful pod deletion: DELETE sets `deletionTimestamp` (now + grace) and
//!   `deletionGracePeriodSeconds` (from the request, else `spec.terminationGracePeriodSeconds`,
//!   else 30) and keeps the pod (MODIFIED); grace 0, an unscheduled pod or a pod in a terminal
//!   phase is removed at once, after the write of `deletionTimestamp` with a grace of 0 as upstream
//!   (MODIFIED, then DELETED). A longer grace than the pending one changes
//!   nothing. Finalizers keep any object until they are removed. Other kinds are deleted
//!   at once; deleting a namespace deletes its objects with it.
//! * Authentication: client certificates signed by the double's CA (CN = user,
//!   O = groups) and bearer tokens ([`ApiServer::add_token`]; a bootstrap token
//!   `<id>.<secret>` for `system:bootstrap:<id>` in `system:bootstrappers` is
//!   registered). No credentials → `system:anonymous` (may read `/version` and health
//!   only); an unknown token → 401.
//! * Authorization: `system:masters` may do everything; node identities get the Node
//!   authorizer's rules (with `AuthorizeNodeWithSelectors`: pods may be listed/watched only
//!   with `fieldSelector=spec.nodeName=<self>`, and got only when bound to the node; configMaps and
//!   secrets got only when a pod bound to the node references them; services read; tokens only for the
//!   service accounts of its pods) and
//!   NodeRestriction admission (own Node only, no `node-restriction.kubernetes.io/` labels,
//!   no taint changes on update; mirror pods bound to itself only; pod status and delete
//!   for its own pods only; its own lease in `kube-node-lease` only; events; CSR
//!   create/get/list/watch). Bootstrappers may create/get/list/watch CSRs. Everything else
//!   is 403 with upstream-like messages.
//! * CSRs: `spec.username`/`groups` come from the requester. With auto-approve on (the
//!   default) a `kubernetes.io/kube-apiserver-client-kubelet` CSR is approved
//!   (`AutoApproved`) when its subject is `CN=system:node:<name>, O=system:nodes` with client
//!   usages and the requester is a bootstrapper, an admin or that same node, and denied
//!   (`AutoDenied`) when its subject or usages are wrong. `kubernetes.io/kubelet-serving`
//!   CSRs are approved only with [`ApiServer::set_auto_approve_serving`]. Approved CSRs of
//!   the kubelet-client, kubelet-serving and kube-apiserver-client signers are signed with
//!   the CA (`spec.expirationSeconds`, default one year) into `status.certificate`; one
//!   failing the signer's checks gets a `Failed` condition. Tests approve by PUT on
//!   `/approval`.
//! * Faults: [`ApiServer::inject_fault`] answers the next matching requests with a given error (409, 422, 429,
//!   500, …) instead of serving them, for the retry paths a real server rarely takes on cue.
//! * Outages: [`ApiServer::pause`] closes the listener and every open connection (watches
//!   included); [`ApiServer::resume`] listens again on the same address with the same state
//!   and history, so clients resume their watches.
//!
//! # Not implemented
//! * Server-side apply (`application/apply-patch+yaml`) → 415; `managedFields` are not kept.
//! * `limit`/`continue` (lists always return everything, no continue token),
//!   `resourceVersionMatch` (ignored), `deletecollection` (405), `propagationPolicy`
//!   (ignored; no garbage collector, no owner-reference cascading).
//! * The legacy `/api/v1/watch/…` paths, protobuf/YAML/CBOR bodies, `as=Table`,
//!   aggregated discovery (plain discovery documents are served), OpenAPI documents.
//! * Validation is limited to names, required pod container fields, pod spec immutability,
//!   CSR request/signer/usages and a few status rules; no other field validation.
//! * Tokens are not signed (TokenReview looks them up among the registered ones); no scheduler or other
//!   controllers (pods stay Pending until a test binds them or creates them with
//!   `spec.nodeName`), namespaces are deleted at once rather than going through
//!   `Terminating`.
//! * Only one `O` per client certificate issued by [`ApiServer::client_cert`] (incoming
//!   certificates may carry several).

mod auth;
mod handler;
mod kinds;
mod patch;
mod pki;
mod registry;
mod resources;
mod selectors;
mod server;
mod status;
mod store;
mod watch;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use serde_json::{json, Value};

use self::auth::UserInfo;
use self::server::{Running, Shared};
use self::store::{EventType, Store};

/// The environment variable naming a real cluster's kubeconfig for E2E runs.
pub const E2E_KUBECONFIG_ENV: &str = "RKUBELET_E2E_KUBECONFIG";

/// One HTTP request the double answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// `GET`, `PATCH`, …
    pub method: String,
    /// Path and query, e.g. `/api/v1/namespaces/default/pods/p/status`.
    pub path: String,
    /// Authenticated user name (empty when authentication failed).
    pub user: String,
    /// HTTP status code of the response (200 for watches that were started).
    pub status: u16,
    /// The request body (empty for none).
    pub body: String,
}

impl RequestRecord {
    /// The path without the query string.
    pub fn path_only(&self) -> &str {
        self.path.split('?').next().unwrap_or("")
    }
}

/// An error the double answers instead of serving a request ([`ApiServer::inject_fault`]): the next `times`
/// requests with `method` whose path (without query) ends with `path_suffix` get `code`/`reason`/`message` as a
/// `Status`, before authorization and without touching the store; with `user` set, only that user's requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub method: String,
    pub path_suffix: String,
    pub times: u32,
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    /// `details.retryAfterSeconds` (0: none), as the server sends with 429.
    pub retry_after_seconds: u32,
    pub user: Option<String>,
}

impl Fault {
    pub fn new(method: &str, path_suffix: &str, times: u32, code: u16, reason: &'static str, message: &str) -> Fault {
        Fault {
            method: method.to_owned(),
            path_suffix: path_suffix.to_owned(),
            times,
            code,
            reason,
            message: message.to_owned(),
            retry_after_seconds: 0,
            user: None,
        }
    }

    /// Only requests authenticated as `user` get the error.
    pub fn for_user(mut self, user: &str) -> Fault {
        self.user = Some(user.to_owned());
        self
    }
}

/// Tunables of [`ApiServer::start_with`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Changes kept per resource for watch resumption (older RVs get 410 Gone).
    pub history_limit: usize,
    /// How often watches with `allowWatchBookmarks=true` get a BOOKMARK.
    pub bookmark_interval: Duration,
    /// Approve and sign valid kubelet client CSRs automatically.
    pub auto_approve: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { history_limit: 1000, bookmark_interval: Duration::from_secs(1), auto_approve: true }
    }
}

/// The API-server double. Dropping it stops the server.
pub struct ApiServer {
    rt: Option<tokio::runtime::Runtime>,
    shared: Arc<Shared>,
    tls: Arc<rustls::ServerConfig>,
    running: Mutex<Option<Running>>,
    bootstrap_token: String,
}

fn random_chars(n: usize) -> String {
    const ALPHA: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::new();
    while out.len() < n {
        for b in uuid::Uuid::new_v4().as_bytes() {
            if out.len() < n {
                out.push(ALPHA[*b as usize % ALPHA.len()] as char);
            }
        }
    }
    out
}

impl ApiServer {
    /// Start on 127.0.0.1 with a random free port and default [`Options`].
    pub fn start() -> anyhow::Result<ApiServer> {
        Self::start_with(Options::default())
    }

    pub fn start_with(opts: Options) -> anyhow::Result<ApiServer> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("apiserver-double")
            .enable_all()
            .build()
            .context("building the API-server runtime")?;
        let pki = pki::Pki::new().context("generating the CA")?;
        let tls = pki.server_config()?;
        let listener = server::listen(rt.handle(), "127.0.0.1:0".parse()?)?;
        let addr = listener.local_addr()?;

        let mut store = Store::new(opts.history_limit);
        let nsdef = resources::by_store("", "namespaces");
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let mut obj = json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": ns, "uid": kinds::new_uid(), "creationTimestamp": kinds::now_rfc3339()},
            });
            kinds::default_namespace(&mut obj);
            store.commit(nsdef, EventType::Added, obj, None);
            kinds::seed_namespace(&mut store, ns, pki.ca_pem());
        }
        // The API server's own Service, whose variables every pod gets.
        let mut kubernetes = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": "kubernetes", "namespace": "default", "uid": kinds::new_uid(),
                "creationTimestamp": kinds::now_rfc3339() },
            "spec": { "clusterIP": "10.96.0.1", "ports": [{ "name": "https", "port": 443, "targetPort": 6443 }] },
        });
        kinds::prepare_service(&mut kubernetes, 0);
        store.commit(resources::by_store("", "services"), EventType::Added, kubernetes, None);
        let bootstrap_id = random_chars(6);
        let bootstrap_token = format!("{bootstrap_id}.{}", random_chars(16));
        let mut tokens = HashMap::new();
        tokens.insert(
            bootstrap_token.clone(),
            UserInfo::new(&format!("system:bootstrap:{bootstrap_id}"), &["system:bootstrappers"]),
        );
        let (changed, _) = tokio::sync::watch::channel(store.rv);
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            changed,
            pki,
            tokens: Mutex::new(tokens),
            auto_approve: AtomicBool::new(opts.auto_approve),
            auto_approve_serving: AtomicBool::new(false),
            bookmark_interval: Mutex::new(opts.bookmark_interval),
            requests: Mutex::new(Vec::new()),
            faults: Mutex::new(Vec::new()),
            addr,
        });
        let running = server::serve(rt.handle(), listener, shared.clone(), tls.clone());
        Ok(ApiServer { rt: Some(rt), shared, tls, running: Mutex::new(Some(running)), bootstrap_token })
    }

    /// `https://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("https://{}", self.shared.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The CA that signs the serving certificate, client certificates and CSRs.
    pub fn ca_pem(&self) -> String {
        self.shared.pki.ca_pem().to_string()
    }

    /// A client certificate and key (PEM) for `user` in `group`, signed by the CA, valid 1 year.
    pub fn client_cert(&self, user: &str, group: Option<&str>) -> anyhow::Result<(String, String)> {
        self.shared.pki.client_cert(user, group, Duration::from_secs(365 * 24 * 3600))
    }

    fn kubeconfig_yaml(&self, user_name: &str, user: Value) -> anyhow::Result<String> {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let cfg = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "apiserver-double", "cluster": {
                "server": self.url(),
                "certificate-authority-data": b64(self.shared.pki.ca_pem()),
            }}],
            "users": [{"name": user_name, "user": user}],
            "contexts": [{"name": "default", "context": {"cluster": "apiserver-double", "user": user_name}}],
            "current-context": "default",
        });
        Ok(serde_yaml::to_string(&cfg)?)
    }

    fn cert_kubeconfig_yaml(&self, user_name: &str, cert_pem: &str, key_pem: &str) -> anyhow::Result<String> {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        self.kubeconfig_yaml(
            user_name,
            json!({"client-certificate-data": b64(cert_pem), "client-key-data": b64(key_pem)}),
        )
    }

    /// Write a kubeconfig authenticating with a client certificate and key (PEM).
    pub fn write_cert_kubeconfig(&self, path: &Path, cert_pem: &str, key_pem: &str) -> anyhow::Result<PathBuf> {
        let yaml = self.cert_kubeconfig_yaml("user", cert_pem, key_pem)?;
        std::fs::write(path, yaml).with_context(|| format!("writing {}", path.display()))?;
        Ok(path.to_path_buf())
    }

    /// Write a kubeconfig authenticating with a bearer token.
    pub fn write_token_kubeconfig(&self, path: &Path, token: &str) -> anyhow::Result<PathBuf> {
        let yaml = self.kubeconfig_yaml("user", json!({ "token": token }))?;
        std::fs::write(path, yaml).with_context(|| format!("writing {}", path.display()))?;
        Ok(path.to_path_buf())
    }

    /// `<dir>/admin.kubeconfig`: client certificate CN=admin, O=system:masters.
    pub fn admin_kubeconfig(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let (c, k) = self.client_cert("admin", Some("system:masters"))?;
        self.write_cert_kubeconfig(&dir.join("admin.kubeconfig"), &c, &k)
    }

    /// `<dir>/node-<node>.kubeconfig`: client certificate CN=system:node:<node>, O=system:nodes.
    pub fn node_kubeconfig(&self, dir: &Path, node: &str) -> anyhow::Result<PathBuf> {
        let (c, k) = self.client_cert(&format!("system:node:{node}"), Some("system:nodes"))?;
        self.write_cert_kubeconfig(&dir.join(format!("node-{node}.kubeconfig")), &c, &k)
    }

    /// `<dir>/bootstrap.kubeconfig`: the bootstrap token (see [`ApiServer::bootstrap_token`]).
    pub fn bootstrap_kubeconfig(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        self.write_token_kubeconfig(&dir.join("bootstrap.kubeconfig"), &self.bootstrap_token)
    }

    /// The registered bootstrap token `<id>.<secret>` (user `system:bootstrap:<id>`).
    pub fn bootstrap_token(&self) -> String {
        self.bootstrap_token.clone()
    }

    /// Register a static bearer token for `user` in `groups` (`system:authenticated` is implied).
    pub fn add_token(&self, token: &str, user: &str, groups: &[&str]) {
        self.shared
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.to_string(), UserInfo::new(user, groups));
    }

    async fn client_for(&self, yaml: &str) -> anyhow::Result<kube::Client> {
        let kc = kube::config::Kubeconfig::from_yaml(yaml)?;
        let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await?;
        Ok(kube::Client::try_from(cfg)?)
    }

    /// A kube client as CN=admin, O=system:masters (call within a tokio runtime).
    pub async fn admin_client(&self) -> anyhow::Result<kube::Client> {
        let (c, k) = self.client_cert("admin", Some("system:masters"))?;
        self.client_for(&self.cert_kubeconfig_yaml("admin", &c, &k)?).await
    }

    /// A kube client as node `node` (call within a tokio runtime).
    pub async fn node_client(&self, node: &str) -> anyhow::Result<kube::Client> {
        let (c, k) = self.client_cert(&format!("system:node:{node}"), Some("system:nodes"))?;
        self.client_for(&self.cert_kubeconfig_yaml("node", &c, &k)?).await
    }

    /// A kube client with a client certificate and key (PEM) (call within a tokio runtime).
    pub async fn cert_client(&self, cert_pem: &str, key_pem: &str) -> anyhow::Result<kube::Client> {
        self.client_for(&self.cert_kubeconfig_yaml("user", cert_pem, key_pem)?).await
    }

    /// A kube client with a bearer token (call within a tokio runtime).
    pub async fn token_client(&self, token: &str) -> anyhow::Result<kube::Client> {
        self.client_for(&self.kubeconfig_yaml("user", json!({ "token": token }))?).await
    }

    /// Approve and sign valid kubelet client CSRs automatically (default on).
    pub fn set_auto_approve(&self, on: bool) {
        self.shared.auto_approve.store(on, Ordering::SeqCst);
    }

    /// Approve valid `kubernetes.io/kubelet-serving` CSRs requested by the node itself
    /// (default off, as no stock controller does).
    pub fn set_auto_approve_serving(&self, on: bool) {
        self.shared.auto_approve_serving.store(on, Ordering::SeqCst);
    }

    /// Bookmark interval for watches started from now on.
    pub fn set_bookmark_interval(&self, every: Duration) {
        *self.shared.bookmark_interval.lock().unwrap_or_else(|e| e.into_inner()) = every;
    }

    /// Shrink or grow the per-resource watch history (older RVs get 410 Gone).
    pub fn set_history_limit(&self, changes: usize) {
        self.shared.lock_store().set_history_limit(changes);
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock_store().rv
    }

    /// Stop serving: close the listener (connections are refused) and every open
    /// connection, watches included. State and history are kept.
    pub fn pause(&self) {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(r) = running {
            r.shutdown();
        }
    }

    /// Serve again on the same address and port after [`ApiServer::pause`].
    pub fn resume(&self) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if running.is_some() {
            return;
        }
        let handle = self.rt.as_ref().expect("runtime").handle();
        let listener = server::listen(handle, self.shared.addr).expect("re-binding the API-server double's address");
        *running = Some(server::serve(handle, listener, self.shared.clone(), self.tls.clone()));
    }

    pub fn is_paused(&self) -> bool {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).is_none()
    }

    /// Answer matching requests with an error from now on (see [`Fault`]).
    pub fn inject_fault(&self, fault: Fault) {
        self.shared.faults.lock().unwrap_or_else(|e| e.into_inner()).push(fault);
    }

    /// How many injected errors are still to be answered.
    pub fn faults_left(&self) -> u32 {
        self.shared.faults.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|f| f.times).sum()
    }

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.requests.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn clear_requests(&self) {
        self.shared.requests.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// The environment variable naming the control-plane kit's directory (`up.sh`, `node-kubeconfig.sh`, …).
pub const K8S_KIT_ENV: &str = "RKUBELET_K8S_KIT";
/// The environment variable naming a real cluster's bootstrap-token kubeconfig (TLS bootstrap tests).
pub const E2E_BOOTSTRAP_KUBECONFIG_ENV: &str = "RKUBELET_E2E_BOOTSTRAP_KUBECONFIG";

/// Where API tests run: the in-process double, or a real cluster when `RKUBELET_E2E_KUBECONFIG` names its admin
/// kubeconfig.
///
/// On a real cluster the agent runs as a node identity (`system:node:<node>` in `system:nodes`, limited by the Node
/// authorizer and NodeRestriction as in production) made by the kit's `node-kubeconfig.sh` when `RKUBELET_K8S_KIT`
/// names the kit; without the kit it gets the admin kubeconfig, whose RBAC allows everything a node needs.
/// Double-only features ([`ApiServer::pause`], [`ApiServer::requests`], [`ApiServer::inject_fault`], CSR
/// auto-approval settings) are unavailable there: tests check [`Cluster::double`] first.
pub enum Cluster {
    Double(ApiServer),
    Real { kubeconfig: PathBuf, kit: Option<PathBuf> },
}

impl Cluster {
    pub fn from_env() -> anyhow::Result<Cluster> {
        match std::env::var_os(E2E_KUBECONFIG_ENV) {
            Some(p) if !p.is_empty() => {
                let kubeconfig = PathBuf::from(p);
                anyhow::ensure!(kubeconfig.exists(), "{E2E_KUBECONFIG_ENV}={} does not exist", kubeconfig.display());
                let kit = std::env::var_os(K8S_KIT_ENV).filter(|v| !v.is_empty()).map(PathBuf::from);
                if let Some(k) = &kit {
                    anyhow::ensure!(
                        k.join("node-kubeconfig.sh").exists(),
                        "{K8S_KIT_ENV}={} is not the kit",
                        k.display()
                    );
                }
                Ok(Cluster::Real { kubeconfig, kit })
            }
            _ => {
                // One identical line from every test that falls back: the suite's skip summary shows it once.
                crate::containerd::print_skip(
                    "API tests on a real kube-apiserver",
                    &format!("{E2E_KUBECONFIG_ENV} is not set: they ran against the in-process API-server double"),
                );
                Ok(Cluster::Double(ApiServer::start()?))
            }
        }
    }

    pub fn is_real(&self) -> bool {
        matches!(self, Cluster::Real { .. })
    }

    pub fn double(&self) -> Option<&ApiServer> {
        match self {
            Cluster::Double(d) => Some(d),
            Cluster::Real { .. } => None,
        }
    }

    /// The kit's directory, on a real cluster started from it.
    pub fn kit(&self) -> Option<&Path> {
        match self {
            Cluster::Real { kit, .. } => kit.as_deref(),
            Cluster::Double(_) => None,
        }
    }

    /// An admin kubeconfig: written into `dir` for the double, the given one for a real cluster.
    pub fn admin_kubeconfig(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        match self {
            Cluster::Double(d) => d.admin_kubeconfig(dir),
            Cluster::Real { kubeconfig, .. } => Ok(kubeconfig.clone()),
        }
    }

    /// The kubeconfig the agent for `node` should use: a node identity on the double and on the kit's cluster, the
    /// admin kubeconfig on another real cluster.
    pub fn node_kubeconfig(&self, dir: &Path, node: &str) -> anyhow::Result<PathBuf> {
        match self {
            Cluster::Double(d) => d.node_kubeconfig(dir, node),
            Cluster::Real { kit: Some(kit), .. } => {
                let out = std::process::Command::new("bash")
                    .arg(kit.join("node-kubeconfig.sh"))
                    .arg(node)
                    .stderr(std::process::Stdio::inherit())
                    .output()
                    .context("running the kit's node-kubeconfig.sh")?;
                anyhow::ensure!(out.status.success(), "node-kubeconfig.sh {node}: {}", out.status);
                let text = String::from_utf8_lossy(&out.stdout);
                let path = text.lines().last().map(str::trim).unwrap_or_default();
                anyhow::ensure!(!path.is_empty(), "node-kubeconfig.sh {node} printed no path");
                Ok(PathBuf::from(path))
            }
            Cluster::Real { kubeconfig, kit: None } => Ok(kubeconfig.clone()),
        }
    }

    /// A bootstrap-token kubeconfig for TLS bootstrap: the double's, or `RKUBELET_E2E_BOOTSTRAP_KUBECONFIG` on a real
    /// cluster (`None` when it is not set).
    pub fn bootstrap_kubeconfig(&self, dir: &Path) -> anyhow::Result<Option<PathBuf>> {
        match self {
            Cluster::Double(d) => d.bootstrap_kubeconfig(dir).map(Some),
            Cluster::Real { .. } => {
                Ok(std::env::var_os(E2E_BOOTSTRAP_KUBECONFIG_ENV).filter(|v| !v.is_empty()).map(PathBuf::from))
            }
        }
    }

    /// An admin kube client (call within a tokio runtime).
    pub async fn admin_client(&self) -> anyhow::Result<kube::Client> {
        match self {
            Cluster::Double(d) => d.admin_client().await,
            Cluster::Real { kubeconfig, .. } => {
                let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
                let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await?;
                Ok(kube::Client::try_from(cfg)?)
            }
        }
    }
}
