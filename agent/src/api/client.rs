//! The API client: from `--kubeconfig`, or obtained through kubelet's TLS bootstrap with `--bootstrap-kubeconfig`
//! (a CertificateSigningRequest for `system:node:<name>`, signed by the cluster, saved under the root dir and reused
//! on restart).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestSpec};
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use kube::config::{
    AuthInfo, Cluster, Context, KubeConfigOptions, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext,
};
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use tokio::sync::watch;

/// The signer kubelet asks for its client certificate.
pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// kubelet's file holding the current client certificate and key: a symlink to the pair in use.
pub const CLIENT_CERT_FILE: &str = "kubelet-client-current.pem";
/// The name kubelet's client certificate store gives its files (`pkg/kubelet/certificate/kubelet.go`).
pub const CLIENT_PAIR_PREFIX: &str = "kubelet-client";
/// The subject of a node's client certificate: user `system:node:<name>` in group `system:nodes`.
pub const NODE_USER_PREFIX: &str = "system:node:";
pub const NODES_GROUP: &str = "system:nodes";
/// kubelet gives up waiting for its CSR after an hour and starts over.
const CSR_WAIT: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("kubeconfig {path}: {reason}")]
    Kubeconfig { path: PathBuf, reason: String },
    #[error("TLS bootstrap: {0}")]
    Bootstrap(String),
    #[error("TLS bootstrap: API request: {0}")]
    Api(#[from] kube::Error),
    #[error("TLS bootstrap: write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

async fn config_from_kubeconfig(path: &Path) -> Result<kube::Config, ClientError> {
    let err = |reason: String| ClientError::Kubeconfig { path: path.to_owned(), reason };
    let kubeconfig = Kubeconfig::read_from(path).map_err(|e| err(e.to_string()))?;
    kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| err(e.to_string()))
}

pub async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client, ClientError> {
    let config = config_from_kubeconfig(path).await?;
    kube::Client::try_from(config).map_err(|e| ClientError::Kubeconfig { path: path.to_owned(), reason: e.to_string() })
}

/// With `rotateCertificates`: [`client`]'s kubeconfig (bootstrapped when needed), and a client whose certificate the
/// [`crate::api::certificate::ClientCertificateManager`] rotates through the returned handle.
pub async fn rotating_client(
    kubeconfig: &Path,
    bootstrap_kubeconfig: Option<&Path>,
    pki_dir: &Path,
    node_name: &str,
) -> Result<(kube::Client, RotatingClient), ClientError> {
    client(kubeconfig, bootstrap_kubeconfig, pki_dir, node_name).await?;
    let config = config_from_kubeconfig(kubeconfig).await?;
    RotatingClient::new(config, &PairStore::client(pki_dir))
}

/// The client the agent runs with: `--kubeconfig` if it works, else a new one through TLS bootstrap. With a
/// bootstrap kubeconfig, a kubeconfig whose client certificate has expired (the node was down past its certificate's
/// life) does not work either, as kubelet's `isClientConfigStillValid` judges: the node bootstraps again.
pub async fn client(
    kubeconfig: &Path,
    bootstrap_kubeconfig: Option<&Path>,
    pki_dir: &Path,
    node_name: &str,
) -> Result<kube::Client, ClientError> {
    let existing = if !kubeconfig.exists() {
        None
    } else if bootstrap_kubeconfig.is_some() {
        Some(still_valid_client(kubeconfig).await)
    } else {
        Some(client_from_kubeconfig(kubeconfig).await)
    };
    match (existing, bootstrap_kubeconfig) {
        (Some(Ok(c)), _) => Ok(c),
        (Some(Err(e)), None) => Err(e),
        (None, None) => Err(ClientError::Kubeconfig {
            path: kubeconfig.to_owned(),
            reason: "does not exist, and no --bootstrap-kubeconfig was given".into(),
        }),
        (previous, Some(bootstrap)) => {
            if let Some(Err(e)) = previous {
                tracing::warn!(error = %e, "kubeconfig unusable; bootstrapping a new client certificate");
            }
            bootstrap_client_certificate(bootstrap, kubeconfig, pki_dir, node_name).await?;
            client_from_kubeconfig(kubeconfig).await
        }
    }
}

/// The kubeconfig's client, unless a certificate of its client certificate file has expired.
async fn still_valid_client(path: &Path) -> Result<kube::Client, ClientError> {
    let config = config_from_kubeconfig(path).await?;
    let err = |reason: String| ClientError::Kubeconfig { path: path.to_owned(), reason };
    if let Some(file) = &config.auth_info.client_certificate {
        let pem = std::fs::read(file).map_err(|e| err(format!("client certificate {file}: {e}")))?;
        if let Some(not_after) = expired_certificate(&pem, std::time::SystemTime::now()) {
            return Err(err(format!(
                "part of the existing client certificate in {file} is expired: {}",
                jiff::Timestamp::try_from(not_after).unwrap_or_default()
            )));
        }
    }
    kube::Client::try_from(config).map_err(|e| err(e.to_string()))
}

/// The end of validity of the first certificate in `pem` that has expired by `now`.
fn expired_certificate(pem: &[u8], now: std::time::SystemTime) -> Option<std::time::SystemTime> {
    x509_parser::pem::Pem::iter_from_buffer(pem)
        .filter_map(Result::ok)
        .filter(|block| block.label == "CERTIFICATE")
        .filter_map(|block| {
            let cert = block.parse_x509().ok()?;
            let secs = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
            Some(std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
        })
        .find(|not_after| *not_after < now)
}

/// kubelet's `LoadClientCert` flow: key and CSR, wait for the signed certificate, store it with its key (as
/// `kubelet-client-<time>.pem` behind the `kubelet-client-current.pem` link) and write a kubeconfig that uses it.
pub async fn bootstrap_client_certificate(
    bootstrap: &Path,
    kubeconfig_out: &Path,
    pki_dir: &Path,
    node_name: &str,
) -> Result<(), ClientError> {
    let bootstrap_config = Kubeconfig::read_from(bootstrap)
        .map_err(|e| ClientError::Kubeconfig { path: bootstrap.to_owned(), reason: e.to_string() })?;
    let client = client_from_kubeconfig(bootstrap).await?;
    let (cert_pem, key_pem) = request_client_certificate(&client, node_name, CSR_WAIT).await?;
    let store = PairStore::client(pki_dir);
    store.update(&cert_pem, &key_pem)?;
    let pem_path = store.current_path();

    // The new kubeconfig keeps the bootstrap kubeconfig's server and CA, and authenticates with the certificate.
    let cluster = bootstrap_config
        .contexts
        .iter()
        .find(|c| Some(&c.name) == bootstrap_config.current_context.as_ref())
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .and_then(|name| bootstrap_config.clusters.iter().find(|c| c.name == name).cloned())
        .or_else(|| bootstrap_config.clusters.first().cloned())
        .and_then(|c| c.cluster)
        .ok_or_else(|| ClientError::Kubeconfig { path: bootstrap.to_owned(), reason: "no cluster".into() })?;
    let pem = pem_path.display().to_string();
    let config = Kubeconfig {
        clusters: vec![NamedCluster {
            name: "default-cluster".into(),
            cluster: Some(Cluster { ..cluster }),
            ..Default::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: "default-auth".into(),
            auth_info: Some(AuthInfo {
                client_certificate: Some(pem.clone()),
                client_key: Some(pem),
                ..Default::default()
            }),
            ..Default::default()
        }],
        contexts: vec![NamedContext {
            name: "default-context".into(),
            context: Some(Context {
                cluster: "default-cluster".into(),
                user: Some("default-auth".into()),
                namespace: Some("default".into()),
                ..Default::default()
            }),
            ..Default::default()
        }],
        current_context: Some("default-context".into()),
        ..Default::default()
    };
    let text = serde_yaml::to_string(&config).map_err(|e| ClientError::Bootstrap(format!("encode kubeconfig: {e}")))?;
    if let Some(dir) = kubeconfig_out.parent() {
        std::fs::create_dir_all(dir).map_err(|source| ClientError::Write { path: dir.to_owned(), source })?;
    }
    write_private(kubeconfig_out, &text)?;
    tracing::info!(kubeconfig = %kubeconfig_out.display(), cert = %pem_path.display(), "client certificate issued");
    Ok(())
}

/// A new key and kubelet's client CSR for it (signer `kubernetes.io/kube-apiserver-client-kubelet`, subject
/// `system:node:<name>` in `system:nodes`, usages as `DefaultKubeletClientGetUsages` gives them for an ECDSA key),
/// filed with `client`'s credentials and waited for at most `wait`. Returns the issued certificate and the key, in
/// PEM. TLS bootstrap files it with the bootstrap token; rotation with the node's current certificate.
pub async fn request_client_certificate(
    client: &kube::Client,
    node_name: &str,
    wait: Duration,
) -> Result<(String, String), ClientError> {
    // A P-256 key, as client-go's certificate manager generates for every request.
    let key = rcgen::KeyPair::generate().map_err(|e| ClientError::Bootstrap(format!("generate key: {e}")))?;
    let mut params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| ClientError::Bootstrap(e.to_string()))?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, NODES_GROUP);
    dn.push(rcgen::DnType::CommonName, format!("{NODE_USER_PREFIX}{node_name}"));
    params.distinguished_name = dn;
    let csr_pem = params
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .map_err(|e| ClientError::Bootstrap(format!("create certificate request: {e}")))?;

    let csrs: Api<CertificateSigningRequest> = Api::all(client.clone());
    let mut csr = CertificateSigningRequest::default();
    csr.metadata.generate_name = Some("csr-".into());
    csr.spec = CertificateSigningRequestSpec {
        request: ByteString(csr_pem.into_bytes()),
        signer_name: KUBELET_CLIENT_SIGNER.into(),
        usages: Some(vec!["digital signature".into(), "client auth".into()]),
        ..Default::default()
    };
    let created = csrs.create(&PostParams::default(), &csr).await?;
    let name = created.metadata.name.clone().unwrap_or_default();
    tracing::info!(csr = %name, "waiting for the client certificate to be approved and issued");
    let uid = created.metadata.uid.clone().unwrap_or_default();
    let cert_pem = wait_for_certificate_within(&csrs, &name, &uid, wait).await?;
    Ok((cert_pem, key.serialize_pem()))
}

/// kubelet's certificate file store (client-go `certificate.NewFileStore`) for the client pair: each pair goes into a
/// new `kubelet-client-<time>.pem`, and `kubelet-client-current.pem` is a symlink to the one in use, replaced by a
/// rename, so that a reader (the kubeconfig's `client-certificate` and `client-key` name it) sees the old pair or the
/// new one, never half of each. Earlier pairs stay, as kubelet leaves them.
#[derive(Debug, Clone)]
pub struct PairStore {
    dir: PathBuf,
    prefix: &'static str,
}

/// client-go's `certificate_store.go` names: `<prefix>-current.pem`, `<prefix>-updated.pem`, and the pair files'
/// time stamps in Go's `2006-01-02-15-04-05` layout.
const CURRENT_PAIR: &str = "current";
const UPDATED_PAIR: &str = "updated";
const PAIR_TIME_FORMAT: &str = "%Y-%m-%d-%H-%M-%S";

impl PairStore {
    /// The store of the node's client certificate, `kubelet-client-*.pem` in the cert dir.
    pub fn client(dir: &Path) -> Self {
        Self { dir: dir.to_owned(), prefix: CLIENT_PAIR_PREFIX }
    }

    fn file(&self, what: &str) -> PathBuf {
        self.dir.join(format!("{}-{what}.pem", self.prefix))
    }

    /// `kubelet-client-current.pem`.
    pub fn current_path(&self) -> PathBuf {
        self.file(CURRENT_PAIR)
    }

    /// The current pair's text, `None` when there is none yet.
    pub fn current(&self) -> Option<String> {
        std::fs::read_to_string(self.current_path()).ok()
    }

    /// client-go's `fileStore.Update`: the pair into a new time-stamped file, then `<prefix>-current.pem` pointed at
    /// it. Returns the new file.
    pub fn update(&self, cert_pem: &str, key_pem: &str) -> Result<PathBuf, ClientError> {
        let err = |path: &Path| {
            let path = path.to_owned();
            move |source| ClientError::Write { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(err(&self.dir))?;
        let stamp = jiff::Zoned::now().strftime(PAIR_TIME_FORMAT).to_string();
        let pair = std::path::absolute(self.file(&stamp)).map_err(err(&self.dir))?;
        let cert = cert_pem.trim_end();
        write_private(&pair, &format!("{cert}\n{}", key_pem.trim_start()))?;
        // `updated` points at the new pair first and is renamed over `current`: rename(2) replaces the old link in
        // one step. client-go removes `current` before its rename; a `current` that is a plain file (written by an
        // earlier version of this agent) is replaced the same way instead of refused.
        let updated = self.file(UPDATED_PAIR);
        match std::fs::remove_file(&updated) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(ClientError::Write { path: updated, source }),
        }
        std::os::unix::fs::symlink(&pair, &updated).map_err(err(&updated))?;
        std::fs::rename(&updated, self.current_path()).map_err(err(&updated))?;
        Ok(pair)
    }
}

/// The node's API client while its client certificate rotates (kubelet's `UpdateTransport`): the [`kube::Client`]
/// every part of the agent holds sends each request through an inner client built from the current pair; after a
/// rotation [`RotatingClient::reload`] builds a new inner client, so new requests open connections with the new
/// certificate, while requests under way finish on the old one (no status write is lost). The old client's pooled
/// connections close with it once its last request is done, and open watches end at once (kubelet's `closeAllConns`),
/// so that their watchers, which resume from their last resource version, reconnect with the new certificate.
#[derive(Clone)]
pub struct RotatingClient {
    shared: Arc<RotatingShared>,
}

struct RotatingShared {
    current: RwLock<kube::Client>,
    /// The kubeconfig's server, CA and settings; identity from the pair file.
    config: kube::Config,
    /// Counts reloads; watches under way end when it changes.
    generation: watch::Sender<u64>,
}

impl RotatingClient {
    /// The shared client and its handle. With a current pair in `store`, the client authenticates with it (anonymous
    /// but for the certificate, as kubelet's `AnonymousClientConfig`), whatever identity the kubeconfig names; without
    /// one, with the kubeconfig's identity until the first rotation.
    pub fn new(mut config: kube::Config, store: &PairStore) -> Result<(kube::Client, Self), ClientError> {
        let pair = store.current_path();
        let build = |config: kube::Config| {
            kube::Client::try_from(config)
                .map_err(|e| ClientError::Kubeconfig { path: pair.clone(), reason: e.to_string() })
        };
        let default_ns = config.default_namespace.clone();
        let initial = if store.current().is_some() {
            config.auth_info = pair_identity(&pair);
            build(config.clone())?
        } else {
            let initial = build(config.clone())?;
            config.auth_info = pair_identity(&pair);
            initial
        };
        let shared =
            Arc::new(RotatingShared { current: RwLock::new(initial), config, generation: watch::Sender::new(0) });
        let facade = kube::Client::new(RotatingService { shared: shared.clone() }, default_ns);
        Ok((facade, Self { shared }))
    }

    /// New requests go out with the pair the store holds now; open watches end.
    pub fn reload(&self) -> Result<(), ClientError> {
        let client = kube::Client::try_from(self.shared.config.clone()).map_err(|e| ClientError::Kubeconfig {
            path: self.shared.config.auth_info.client_certificate.clone().unwrap_or_default().into(),
            reason: e.to_string(),
        })?;
        *self.shared.current.write().unwrap_or_else(|e| e.into_inner()) = client;
        self.shared.generation.send_modify(|g| *g += 1);
        tracing::info!(
            "Certificate rotation detected, shutting down client connections to start using new credentials"
        );
        Ok(())
    }
}

/// An identity of the client pair alone.
fn pair_identity(pair: &Path) -> AuthInfo {
    let path = pair.display().to_string();
    AuthInfo { client_certificate: Some(path.clone()), client_key: Some(path), ..Default::default() }
}

/// Forwards each request to the current inner client.
#[derive(Clone)]
struct RotatingService {
    shared: Arc<RotatingShared>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<hyper::Request<kube::client::Body>> for RotatingService {
    type Response = hyper::Response<EndsOnRotation<kube::client::Body>>;
    type Error = BoxError;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: hyper::Request<kube::client::Body>) -> Self::Future {
        let client = self.shared.current.read().unwrap_or_else(|e| e.into_inner()).clone();
        let rotated = is_watch(req.uri()).then(|| self.shared.generation.subscribe());
        Box::pin(async move {
            let response = client.send(req).await?;
            Ok(response.map(|body| EndsOnRotation::new(body, rotated)))
        })
    }
}

/// A watch request (`?watch=true`): its response streams until the server or the client ends it.
fn is_watch(uri: &hyper::Uri) -> bool {
    uri.query().is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"))
}

/// A response body that ends when the client's certificate is rotated (for watches; other bodies pass through).
pub struct EndsOnRotation<B> {
    inner: B,
    rotated: Option<futures::future::BoxFuture<'static, ()>>,
    ended: bool,
}

impl<B> EndsOnRotation<B> {
    fn new(inner: B, rotated: Option<watch::Receiver<u64>>) -> Self {
        let rotated = rotated.map(|mut rx| {
            rx.mark_unchanged();
            let fut: futures::future::BoxFuture<'static, ()> = Box::pin(async move {
                // A dropped sender (the agent shutting down) is no rotation.
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            });
            fut
        });
        Self { inner, rotated, ended: false }
    }
}

impl<B> hyper::body::Body for EndsOnRotation<B>
where
    B: hyper::body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        if self.ended {
            return std::task::Poll::Ready(None);
        }
        if let Some(rotated) = self.rotated.as_mut() {
            if rotated.poll_unpin(cx).is_ready() {
                // Ended as a server ends a watch: the watcher starts a new one from its last resource version.
                self.rotated = None;
                self.ended = true;
                return std::task::Poll::Ready(None);
            }
        }
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }
}

/// kubelet's `csr.WaitForCertificate`: a watch of the one CSR (relisting with a back-off when it breaks), until it
/// carries a certificate or is denied, failed or deleted, for at most [`CSR_WAIT`]. Approval may come at any time, from a
/// controller or by hand, and costs no request while nothing changes.
pub(crate) async fn wait_for_certificate(
    csrs: &Api<CertificateSigningRequest>,
    name: &str,
    uid: &str,
) -> Result<String, ClientError> {
    wait_for_certificate_within(csrs, name, uid, CSR_WAIT).await
}

/// [`wait_for_certificate`] for at most `limit`.
pub(crate) async fn wait_for_certificate_within(
    csrs: &Api<CertificateSigningRequest>,
    name: &str,
    uid: &str,
    limit: Duration,
) -> Result<String, ClientError> {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher::watcher(csrs.clone(), config).default_backoff().boxed();
    let wait = async {
        while let Some(event) = stream.next().await {
            let csr = match event {
                Ok(watcher::Event::Apply(csr) | watcher::Event::InitApply(csr)) => csr,
                Ok(watcher::Event::Delete(_)) => {
                    return Err(ClientError::Bootstrap(format!("certificate signing request {name} was deleted")));
                }
                Ok(watcher::Event::Init | watcher::Event::InitDone) => continue,
                Err(e) => {
                    tracing::warn!(csr = %name, error = %e, "watch of the certificate signing request failed; retrying");
                    continue;
                }
            };
            if let Some(outcome) = certificate_outcome(&csr, name, uid) {
                return outcome;
            }
        }
        Err(ClientError::Bootstrap(format!("watch of certificate signing request {name} ended")))
    };
    tokio::time::timeout(limit, wait).await.map_err(|_| {
        ClientError::Bootstrap(format!("certificate signing request {name} not issued within {limit:?}"))
    })?
}

/// The issued certificate, the refusal, or `None` while the CSR waits for approval or, approved, for the signer.
fn certificate_outcome(csr: &CertificateSigningRequest, name: &str, uid: &str) -> Option<Result<String, ClientError>> {
    // A CSR recreated under the same name is not ours.
    if !uid.is_empty() && csr.metadata.uid.as_deref().is_some_and(|u| u != uid) {
        return Some(Err(ClientError::Bootstrap(format!(
            "certificate signing request {name} was replaced by another object"
        ))));
    }
    let status = csr.status.as_ref()?;
    for c in status.conditions.iter().flatten() {
        if (c.type_ == "Denied" || c.type_ == "Failed") && c.status == "True" {
            return Some(Err(ClientError::Bootstrap(format!(
                "certificate signing request {name} was {}: {}",
                c.type_.to_lowercase(),
                c.message.clone().unwrap_or_default()
            ))));
        }
    }
    let approved = status.conditions.iter().flatten().any(|c| c.type_ == "Approved" && c.status == "True");
    match &status.certificate {
        Some(cert) if approved && !cert.0.is_empty() => Some(Ok(String::from_utf8_lossy(&cert.0).into_owned())),
        _ => None,
    }
}

/// Writes a file readable by root only, replacing it atomically.
pub(crate) fn write_private(path: &Path, text: &str) -> Result<(), ClientError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| ClientError::Write { path: path.to_owned(), source };
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut f =
            std::fs::OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(&tmp).map_err(err)?;
        f.write_all(text.as_bytes()).map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::certificates::v1::{CertificateSigningRequestCondition, CertificateSigningRequestStatus};

    fn csr(uid: &str, conditions: &[(&str, &str)], cert: &str) -> CertificateSigningRequest {
        let mut c = CertificateSigningRequest::default();
        c.metadata.uid = Some(uid.into());
        c.status = Some(CertificateSigningRequestStatus {
            conditions: Some(
                conditions
                    .iter()
                    .map(|(t, s)| CertificateSigningRequestCondition {
                        type_: (*t).into(),
                        status: (*s).into(),
                        message: Some("by test".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            certificate: (!cert.is_empty()).then(|| ByteString(cert.as_bytes().to_vec())),
        });
        c
    }

    #[test]
    fn a_csr_is_waited_for_until_approved_and_signed() {
        assert!(certificate_outcome(&CertificateSigningRequest::default(), "n", "").is_none());
        assert!(certificate_outcome(&csr("u", &[], ""), "n", "u").is_none());
        // Approved, but the signer has not issued it yet.
        assert!(certificate_outcome(&csr("u", &[("Approved", "True")], ""), "n", "u").is_none());
        let issued = certificate_outcome(&csr("u", &[("Approved", "True")], "PEM"), "n", "u");
        assert_eq!(issued.and_then(Result::ok).as_deref(), Some("PEM"));
    }

    #[test]
    fn a_new_pair_replaces_the_current_link_in_one_step() {
        let dir = tempfile::tempdir().unwrap();
        let store = PairStore::client(&dir.path().join("pki"));
        assert!(store.current().is_none());
        // A plain file from an earlier version is replaced too.
        std::fs::create_dir_all(dir.path().join("pki")).unwrap();
        std::fs::write(store.current_path(), "old plain file").unwrap();
        let first = store.update("CERT1\n", "KEY1\n").unwrap();
        let name = first.file_name().unwrap().to_string_lossy().into_owned();
        // kubelet-client-2006-01-02-15-04-05.pem
        assert!(name.starts_with("kubelet-client-") && name.ends_with(".pem") && name.len() == 38, "{name}");
        assert!(std::fs::symlink_metadata(store.current_path()).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_link(store.current_path()).unwrap(), first);
        assert_eq!(store.current().as_deref(), Some("CERT1\nKEY1\n"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&first).unwrap().permissions().mode() & 0o777, 0o600);

        // A reader holding the old pair open keeps reading it whole while the link moves.
        let mut open_old = std::fs::File::open(store.current_path()).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        let second = store.update("CERT2", "KEY2").unwrap();
        assert_ne!(first, second);
        assert_eq!(std::fs::read_link(store.current_path()).unwrap(), second);
        assert_eq!(store.current().as_deref(), Some("CERT2\nKEY2"));
        let mut old = String::new();
        std::io::Read::read_to_string(&mut open_old, &mut old).unwrap();
        assert_eq!(old, "CERT1\nKEY1\n");
        // No `updated` link or temporary file is left; the earlier pair stays, as kubelet leaves it.
        let mut names: Vec<String> = std::fs::read_dir(dir.path().join("pki"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(names.iter().all(|n| !n.contains("updated") && !n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn an_expired_client_certificate_is_told() {
        let cert = |from: (i32, u8, u8), to: (i32, u8, u8)| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
            params.not_after = rcgen::date_time_ymd(to.0, to.1, to.2);
            format!("{}{}", params.self_signed(&key).unwrap().pem(), key.serialize_pem())
        };
        let now = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000); // 2027-01-15
        let valid = cert((2026, 1, 1), (2028, 1, 1));
        let expired = cert((2020, 1, 1), (2021, 1, 1));
        assert_eq!(expired_certificate(valid.as_bytes(), now), None);
        let end = expired_certificate(expired.as_bytes(), now).unwrap();
        assert_eq!(jiff::Timestamp::try_from(end).unwrap().to_string(), "2021-01-01T00:00:00Z");
        // Any certificate of a chain counts.
        assert!(expired_certificate(format!("{valid}{expired}").as_bytes(), now).is_some());
        assert_eq!(expired_certificate(b"no certificate", now), None);
    }

    #[test]
    fn watch_requests_are_told_from_others() {
        let uri = |s: &str| s.parse::<hyper::Uri>().unwrap();
        assert!(is_watch(&uri("/api/v1/pods?fieldSelector=spec.nodeName%3Dn&watch=true&resourceVersion=5")));
        assert!(is_watch(&uri("/api/v1/pods?watch=1")));
        assert!(!is_watch(&uri("/api/v1/pods?fieldSelector=spec.nodeName%3Dn")));
        assert!(!is_watch(&uri("/api/v1/namespaces/default/pods/p/status")));
        assert!(!is_watch(&uri("/api/v1/pods?watch=false")));
    }

    #[tokio::test]
    async fn an_open_watch_ends_when_the_certificate_rotates() {
        use http_body_util::BodyExt;
        // A body that never ends by itself, as a watch with no events.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<hyper::body::Frame<hyper::body::Bytes>, std::io::Error>>(1);
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let generation = watch::Sender::new(0u64);
        let mut body = EndsOnRotation::new(http_body_util::StreamBody::new(stream), Some(generation.subscribe()));
        tx.send(Ok(hyper::body::Frame::data(hyper::body::Bytes::from_static(b"event\n")))).await.unwrap();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "event\n");
        let pending = tokio::time::timeout(Duration::from_millis(50), body.frame()).await;
        assert!(pending.is_err(), "the watch goes on while the certificate stays");
        generation.send_modify(|g| *g += 1);
        let ended = tokio::time::timeout(Duration::from_secs(1), body.frame()).await.unwrap();
        assert!(ended.is_none(), "the watch ends");
        assert!(body.frame().await.is_none() && hyper::body::Body::is_end_stream(&body));

        // Other bodies pass through whatever happens.
        let mut other = EndsOnRotation::new(http_body_util::Full::new(hyper::body::Bytes::from_static(b"ok")), None);
        generation.send_modify(|g| *g += 1);
        assert_eq!(other.frame().await.unwrap().unwrap().into_data().unwrap(), "ok");
    }

    #[test]
    fn a_denied_failed_or_replaced_csr_ends_the_wait() {
        for t in ["Denied", "Failed"] {
            let r = certificate_outcome(&csr("u", &[(t, "True")], ""), "n", "u");
            let msg = r.and_then(Result::err).map(|e| e.to_string()).unwrap_or_default();
            assert!(msg.contains(&t.to_lowercase()), "{msg}");
        }
        assert!(matches!(certificate_outcome(&csr("other", &[], ""), "n", "u"), Some(Err(_))));
    }
}
