//! The kubelet server's certificate from the cluster (`serverTLSBootstrap`): a CSR for the
//! `kubernetes.io/kubelet-serving` signer as `system:node:<name>` with the node's hostname and addresses, waited for
//! until approved and issued, kept as `kubelet-server-current.pem` in the cert dir.

use std::path::Path;

use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestSpec};
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};

use crate::api::client::{wait_for_certificate, write_private, ClientError};

/// The signer kubelet asks for its serving certificate.
pub const KUBELET_SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
/// kubelet's file holding the current serving certificate and key.
pub const SERVING_CERT_FILE: &str = "kubelet-server-current.pem";

/// Requests a serving certificate and writes it with its key to `<cert_dir>/kubelet-server-current.pem`; returns
/// the PEM text (certificate, then key).
pub async fn request_serving_certificate(
    client: &kube::Client,
    node_name: &str,
    hostname: &str,
    ips: &[String],
    cert_dir: &Path,
) -> Result<String, ClientError> {
    let bootstrap = |e: rcgen::Error| ClientError::Bootstrap(e.to_string());
    let key = rcgen::KeyPair::generate().map_err(bootstrap)?;
    let mut sans = vec![hostname.to_owned()];
    sans.extend(ips.iter().filter(|ip| ip.parse::<std::net::IpAddr>().is_ok()).cloned());
    let mut params = rcgen::CertificateParams::new(sans).map_err(bootstrap)?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, "system:nodes");
    dn.push(rcgen::DnType::CommonName, format!("system:node:{node_name}"));
    params.distinguished_name = dn;
    let csr_pem = params.serialize_request(&key).and_then(|r| r.pem()).map_err(bootstrap)?;

    let csrs: Api<CertificateSigningRequest> = Api::all(client.clone());
    let mut csr = CertificateSigningRequest::default();
    csr.metadata.generate_name = Some("csr-".into());
    csr.spec = CertificateSigningRequestSpec {
        request: ByteString(csr_pem.into_bytes()),
        signer_name: KUBELET_SERVING_SIGNER.into(),
        usages: Some(vec!["digital signature".into(), "key encipherment".into(), "server auth".into()]),
        ..Default::default()
    };
    let created = csrs.create(&PostParams::default(), &csr).await?;
    let name = created.metadata.name.clone().unwrap_or_default();
    tracing::info!(csr = %name, "waiting for the serving certificate to be approved and issued");
    let uid = created.metadata.uid.clone().unwrap_or_default();
    let cert_pem = wait_for_certificate(&csrs, &name, &uid).await?;
    std::fs::create_dir_all(cert_dir).map_err(|source| ClientError::Write { path: cert_dir.to_owned(), source })?;
    let text = format!("{cert_pem}{}", key.serialize_pem());
    write_private(&cert_dir.join(SERVING_CERT_FILE), &text)?;
    tracing::info!(csr = %name, "serving certificate issued");
    Ok(text)
}
