//! The double's CA, serving certificate, client certificates and CSR signing.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::prelude::FromDer;

pub(crate) struct Pki {
    ca_params: CertificateParams,
    ca_key: KeyPair,
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    serving_der: CertificateDer<'static>,
    serving_key_der: Vec<u8>,
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

impl Pki {
    pub fn new() -> anyhow::Result<Pki> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name = rcgen::DistinguishedName::new();
        ca_params.distinguished_name.push(DnType::CommonName, "rkubelet-apiserver-double-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        ca_params.not_before = now() - time::Duration::hours(1);
        ca_params.not_after = now() + time::Duration::days(3650);
        let ca_cert = ca_params.self_signed(&ca_key)?;

        let serving_key = KeyPair::generate()?;
        let mut sp = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string(), "::1".to_string()])?;
        sp.distinguished_name = rcgen::DistinguishedName::new();
        sp.distinguished_name.push(DnType::CommonName, "kube-apiserver");
        sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        sp.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        sp.not_before = now() - time::Duration::hours(1);
        sp.not_after = now() + time::Duration::days(3650);
        sp.use_authority_key_identifier_extension = true;
        let issuer = Issuer::from_params(&ca_params, &ca_key);
        let serving = sp.signed_by(&serving_key, &issuer)?;

        Ok(Pki {
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().clone(),
            ca_params,
            ca_key,
            serving_der: serving.der().clone(),
            serving_key_der: serving_key.serialize_der(),
        })
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A client certificate and PKCS#8 key (both PEM) for user `cn` in group `org`.
    pub fn client_cert(&self, cn: &str, org: Option<&str>, ttl: Duration) -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(o) = org {
            p.distinguished_name.push(DnType::OrganizationName, o);
        }
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        p.not_before = now() - time::Duration::minutes(5);
        p.not_after = now() + time::Duration::try_from(ttl)?;
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(&key, &Issuer::from_params(&self.ca_params, &self.ca_key))?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Sign a PEM `CERTIFICATE REQUEST` as the kube-controller-manager's signer would:
    /// subject and SANs from the request, usages from the CSR spec, backdated 5 minutes.
    pub fn sign_csr(&self, csr_pem: &str, usages: &[String], ttl: Duration) -> Result<String, String> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| format!("invalid CSR: {e}"))?;
        let p = &mut csr.params;
        p.is_ca = IsCa::NoCa;
        p.key_usages.clear();
        p.extended_key_usages.clear();
        for u in usages {
            match u.as_str() {
                "digital signature" => p.key_usages.push(KeyUsagePurpose::DigitalSignature),
                "key encipherment" => p.key_usages.push(KeyUsagePurpose::KeyEncipherment),
                "client auth" => p.extended_key_usages.push(ExtendedKeyUsagePurpose::ClientAuth),
                "server auth" => p.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth),
                _ => {}
            }
        }
        p.not_before = now() - time::Duration::minutes(5);
        let ttl = time::Duration::try_from(ttl).map_err(|e| e.to_string())?;
        p.not_after = (now() + ttl).min(self.ca_params.not_after);
        p.use_authority_key_identifier_extension = true;
        let cert = csr
            .signed_by(&Issuer::from_params(&self.ca_params, &self.ca_key))
            .map_err(|e| format!("signing failed: {e}"))?;
        Ok(cert.pem())
    }

    pub fn server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone())?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .allow_unauthenticated()
            .build()
            .context("client verifier")?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![self.serving_der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.serving_key_der.clone())),
            )?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

/// Subject of a DER certificate or CSR: (CN, [O...]).
fn subject(name: &x509_parser::x509::X509Name<'_>) -> (String, Vec<String>) {
    let cn = name.iter_common_name().next().and_then(|a| a.as_str().ok()).unwrap_or("").to_string();
    let orgs = name.iter_organization().filter_map(|a| a.as_str().ok().map(str::to_string)).collect();
    (cn, orgs)
}

/// The user (CN) and groups (O) of a verified client certificate.
pub(crate) fn cert_identity(der: &[u8]) -> Option<(String, Vec<String>)> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    Some(subject(cert.subject()))
}

/// Parse a PEM CSR: its subject (CN, O) — and whether its signature verifies.
pub(crate) fn csr_subject(pem_bytes: &[u8]) -> Result<(String, Vec<String>), String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem_bytes).map_err(|e| format!("PEM decode failed: {e}"))?;
    if pem.label != "CERTIFICATE REQUEST" {
        return Err("PEM block type must be CERTIFICATE REQUEST".into());
    }
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(&pem.contents)
        .map_err(|e| format!("invalid certificate request: {e}"))?;
    csr.verify_signature().map_err(|_| "invalid certificate request signature".to_string())?;
    Ok(subject(&csr.certification_request_info.subject))
}
