//! The API client: from `--kubeconfig`, or obtained through kubelet's TLS bootstrap with `--bootstrap-kubeconfig`
//! (a CertificateSigningRequest for `system:node:<name>`, signed by the cluster, saved under the root dir and reused
//! on restart).

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestSpec};
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use kube::config::{
    AuthInfo, Cluster, Context, KubeConfigOptions, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext,
};
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;

/// The signer kubelet asks for its client certificate.
pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// kubelet's file holding the current client certificate and key.
pub const CLIENT_CERT_FILE: &str = "kubelet-client-current.pem";
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

pub async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client, ClientError> {
    let err = |reason: String| ClientError::Kubeconfig { path: path.to_owned(), reason };
    let kubeconfig = Kubeconfig::read_from(path).map_err(|e| err(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| err(e.to_string()))?;
    kube::Client::try_from(config).map_err(|e| err(e.to_string()))
}

/// The client the agent runs with: `--kubeconfig` if it works, else a new one through TLS bootstrap.
pub async fn client(
    kubeconfig: &Path,
    bootstrap_kubeconfig: Option<&Path>,
    pki_dir: &Path,
    node_name: &str,
) -> Result<kube::Client, ClientError> {
    let existing = if kubeconfig.exists() { Some(client_from_kubeconfig(kubeconfig).await) } else { None };
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

/// kubelet's `LoadClientCert` flow: key and CSR, wait for the signed certificate, write it with its key and a
/// kubeconfig that uses them.
pub async fn bootstrap_client_certificate(
    bootstrap: &Path,
    kubeconfig_out: &Path,
    pki_dir: &Path,
    node_name: &str,
) -> Result<(), ClientError> {
    let bootstrap_config = Kubeconfig::read_from(bootstrap)
        .map_err(|e| ClientError::Kubeconfig { path: bootstrap.to_owned(), reason: e.to_string() })?;
    let client = client_from_kubeconfig(bootstrap).await?;

    let key = rcgen::KeyPair::generate().map_err(|e| ClientError::Bootstrap(format!("generate key: {e}")))?;
    let mut params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| ClientError::Bootstrap(e.to_string()))?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, "system:nodes");
    dn.push(rcgen::DnType::CommonName, format!("system:node:{node_name}"));
    params.distinguished_name = dn;
    let csr_pem = params
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .map_err(|e| ClientError::Bootstrap(format!("create certificate request: {e}")))?;

    let csrs: Api<CertificateSigningRequest> = Api::all(client);
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
    let cert_pem = wait_for_certificate(&csrs, &name, &uid).await?;

    std::fs::create_dir_all(pki_dir).map_err(|source| ClientError::Write { path: pki_dir.to_owned(), source })?;
    let pem_path = pki_dir.join(CLIENT_CERT_FILE);
    write_private(&pem_path, &format!("{cert_pem}{}", key.serialize_pem()))?;

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

/// kubelet's `csr.WaitForCertificate`: a watch of the one CSR (relisting with a back-off when it breaks), until it
/// carries a certificate or is denied, failed or deleted, for at most [`CSR_WAIT`]. Approval may come at any time, from a
/// controller or by hand, and costs no request while nothing changes.
pub(crate) async fn wait_for_certificate(
    csrs: &Api<CertificateSigningRequest>,
    name: &str,
    uid: &str,
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
    tokio::time::timeout(CSR_WAIT, wait).await.map_err(|_| {
        ClientError::Bootstrap(format!("certificate signing request {name} not issued within {CSR_WAIT:?}"))
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
    fn a_denied_failed_or_replaced_csr_ends_the_wait() {
        for t in ["Denied", "Failed"] {
            let r = certificate_outcome(&csr("u", &[(t, "True")], ""), "n", "u");
            let msg = r.and_then(Result::err).map(|e| e.to_string()).unwrap_or_default();
            assert!(msg.contains(&t.to_lowercase()), "{msg}");
        }
        assert!(matches!(certificate_outcome(&csr("other", &[], ""), "n", "u"), Some(Err(_))));
    }
}
