//! The kubelet server's TLS: the serving certificate (`tlsCertFile`/`tlsPrivateKeyFile`, or kubelet's self-signed
//! `kubelet.crt`/`kubelet.key` in the cert dir) and client certificates verified against
//! `authentication.x509.clientCAFile`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

use crate::api::auth::UserInfo;

/// kubelet's names for the self-signed serving certificate and key in `--cert-dir`.
pub const SELF_SIGNED_CERT_FILE: &str = "kubelet.crt";
pub const SELF_SIGNED_KEY_FILE: &str = "kubelet.key";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("generate self-signed certificate: {0}")]
    Generate(String),
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// A serving certificate chain and its key.
pub struct ServingCert {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub cert_file: PathBuf,
}

fn read_pair(cert_file: &Path, key_file: &Path) -> Result<ServingCert, TlsError> {
    let err = |path: &Path, reason: String| TlsError::Read { path: path.to_owned(), reason };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| err(cert_file, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(cert_file, e.to_string()))?;
    if chain.is_empty() {
        return Err(err(cert_file, "no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| err(key_file, e.to_string()))?;
    Ok(ServingCert { chain, key, cert_file: cert_file.to_owned() })
}

/// kubelet's `InitializeTLS`: the configured files, else `kubelet.crt`/`kubelet.key` in the cert dir, generated
/// (self-signed for the hostname and node IPs, valid one year) when they cannot be read.
pub fn serving_cert(
    cert_file: Option<&Path>,
    key_file: Option<&Path>,
    cert_dir: &Path,
    hostname: &str,
    node_ips: &[String],
) -> Result<ServingCert, TlsError> {
    if let (Some(cert), Some(key)) = (cert_file, key_file) {
        return read_pair(cert, key);
    }
    let cert = cert_dir.join(SELF_SIGNED_CERT_FILE);
    let key = cert_dir.join(SELF_SIGNED_KEY_FILE);
    if let Ok(pair) = read_pair(&cert, &key) {
        return Ok(pair);
    }
    let (cert_pem, key_pem) = self_signed(hostname, node_ips)?;
    std::fs::create_dir_all(cert_dir).map_err(|source| TlsError::Write { path: cert_dir.to_owned(), source })?;
    write_file(&cert, &cert_pem, 0o644)?;
    write_file(&key, &key_pem, 0o600)?;
    tracing::info!(cert = %cert.display(), "generated a self-signed serving certificate");
    read_pair(&cert, &key)
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| TlsError::Write { path: path.to_owned(), source };
    let mut f =
        std::fs::OpenOptions::new().create(true).truncate(true).write(true).mode(mode).open(path).map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)
}

/// A self-signed certificate (PEM) and key (PEM) for `hostname@<unix time>`, with the hostname and the node IPs as
/// subject alternative names.
pub fn self_signed(hostname: &str, node_ips: &[String]) -> Result<(String, String), TlsError> {
    let gen = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let mut sans = vec![hostname.to_owned()];
    sans.extend(node_ips.iter().filter(|ip| ip.parse::<std::net::IpAddr>().is_ok()).cloned());
    sans.dedup();
    let mut params = rcgen::CertificateParams::new(sans).map_err(gen)?;
    let now = jiff::Zoned::now().with_time_zone(jiff::tz::TimeZone::UTC);
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, format!("{hostname}@{}", now.timestamp().as_second()));
    params.distinguished_name = dn;
    let (y, m, d) = (i32::from(now.year()), now.month() as u8, now.day() as u8);
    // One year, as kubelet's certutil; the 29th of February falls back to the 28th.
    params.not_before = rcgen::date_time_ymd(y, m, d.min(28));
    params.not_after = rcgen::date_time_ymd(y + 1, m, d.min(28));
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature, rcgen::KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate().map_err(gen)?;
    let cert = params.self_signed(&key).map_err(gen)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The serving certificate in use, replaced when a new one is issued (`serverTLSBootstrap` rotation); handshakes
/// fail while there is none yet, as kubelet's do while its first serving certificate is pending.
#[derive(Debug, Default)]
pub struct ServingCerts {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl ServingCerts {
    pub fn set(&self, cert: ServingCert) -> Result<(), TlsError> {
        let key = rustls::crypto::ring::sign::any_supported_type(&cert.key)
            .map_err(|e| TlsError::Config(format!("serving key: {e}")))?;
        let certified = Arc::new(CertifiedKey::new(cert.chain, key));
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(certified);
        Ok(())
    }
}

impl ResolvesServerCert for ServingCerts {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A certificate chain and key from one PEM text (kubelet's `*-current.pem`: certificate, then key).
pub fn pem_pair(text: &str, origin: &Path) -> Result<ServingCert, TlsError> {
    let err = |reason: String| TlsError::Read { path: origin.to_owned(), reason };
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(text.as_bytes()).collect::<Result<_, _>>().map_err(|e| err(e.to_string()))?;
    if chain.is_empty() {
        return Err(err("no certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(text.as_bytes()).map_err(|e| err(e.to_string()))?;
    Ok(ServingCert { chain, key, cert_file: origin.to_owned() })
}

/// The validity of a chain's first certificate.
pub fn validity(chain: &[CertificateDer<'_>]) -> Option<(SystemTime, SystemTime)> {
    let (_, parsed) = x509_parser::parse_x509_certificate(chain.first()?.as_ref()).ok()?;
    let at = |t: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    Some((at(parsed.validity().not_before.timestamp()), at(parsed.validity().not_after.timestamp())))
}

/// The server's rustls configuration: HTTP/2 and HTTP/1.1 (upgrades for exec, attach and port-forward need it), client
/// certificates requested and verified against the client CA when one is configured, but not required: callers
/// without one may still bring a bearer token.
pub fn server_config(
    certs: Arc<ServingCerts>,
    client_ca_file: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match client_ca_file {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| TlsError::Read { path: path.to_owned(), reason: e.to_string() })?;
            for c in certs {
                let c = c.map_err(|e| TlsError::Read { path: path.to_owned(), reason: e.to_string() })?;
                roots.add(c).map_err(|e| TlsError::Read { path: path.to_owned(), reason: e.to_string() })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The user of a verified client certificate, as the x509 authenticator names it: the subject's common name, its
/// organisations as groups.
pub fn certificate_user(cert: &CertificateDer<'_>) -> Option<UserInfo> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = parsed.subject();
    let name = subject.iter_common_name().next()?.as_str().ok()?.to_owned();
    let groups = subject.iter_organization().filter_map(|o| o.as_str().ok().map(str::to_owned)).collect();
    Some(UserInfo { name, groups, ..Default::default() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_self_signed_certificate_names_the_host_and_node_ips() {
        let (cert_pem, key_pem) = self_signed("node-1", &["192.0.2.7".into(), "fd00::7".into()]).unwrap();
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        let sans = parsed.subject_alternative_name().unwrap().unwrap().value.general_names.clone();
        let text: Vec<String> = sans.iter().map(|n| n.to_string()).collect();
        assert!(text.iter().any(|s| s.contains("node-1")), "{text:?}");
        assert!(text.iter().any(|s| s == "IPAddress(c0:00:02:07)"), "{text:?}");
        assert!(text.iter().any(|s| s.starts_with("IPAddress(fd:00:")), "{text:?}");
        assert!(certificate_user(&der).unwrap().name.starts_with("node-1@"));
        let validity = parsed.validity();
        let days = (validity.not_after.timestamp() - validity.not_before.timestamp()) / 86400;
        assert!((365..=366).contains(&days), "{days}");
        assert!(PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).is_ok());
    }

    #[test]
    fn a_self_signed_pair_is_written_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = serving_cert(None, None, dir.path(), "node-1", &[]).unwrap();
        assert!(dir.path().join("kubelet.crt").exists() && dir.path().join("kubelet.key").exists());
        let again = serving_cert(None, None, dir.path(), "node-1", &[]).unwrap();
        assert_eq!(first.chain, again.chain);
        let certs = Arc::new(ServingCerts::default());
        certs.set(again).unwrap();
        assert!(server_config(certs, None).is_ok());
    }

    #[test]
    fn a_pem_pair_reads_back_with_its_validity() {
        let (cert, key) = self_signed("node-1", &[]).unwrap();
        let pair = pem_pair(&format!("{cert}{key}"), Path::new("/x.pem")).unwrap();
        let (from, to) = validity(&pair.chain).unwrap();
        assert!(to > from);
        assert!(pem_pair(&key, Path::new("/x.pem")).is_err(), "a key alone is no pair");
    }

    #[test]
    fn client_certificate_subject_gives_user_and_groups() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::OrganizationName, "system:masters");
        dn.push(rcgen::DnType::CommonName, "kube-apiserver-kubelet-client");
        params.distinguished_name = dn;
        let cert = params.self_signed(&key).unwrap();
        let user = certificate_user(cert.der()).unwrap();
        assert_eq!(user.name, "kube-apiserver-kubelet-client");
        assert_eq!(user.groups, vec!["system:masters".to_string()]);
    }
}
