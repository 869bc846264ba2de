//! `rkubelet join`: joins this host to a kubeadm-made cluster without kubeadm. Discovery is kubeadm v1.28's token
//! discovery (cmd/kubeadm/app/discovery/token/token.go): an unverified, anonymous GET of `kube-public/cluster-info`,
//! its kubeconfig checked against the detached JWS the bootstrap signer published for the token id, the CA in it
//! checked against the pinned public keys, then a second GET that verifies TLS with that CA and must return the same
//! kubeconfig. What kubeadm's join writes for the kubelet is then written for rkubelet: the bootstrap kubeconfig, the
//! cluster CA, the KubeletConfiguration (`kube-system/kubelet-config` when the token may read it) and the unit's
//! environment file; the service is (re)started where systemd runs.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine;
use clap::Parser;
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::ConfigMap;

/// k8s.io/cluster-bootstrap/token/api: ConfigMapClusterInfo, KubeConfigKey, JWSSignatureKeyPrefix,
/// BootstrapTokenPattern.
const CLUSTER_INFO: &str = "cluster-info";
/// A ConfigMap holds at most 1 MiB of data (the API server refuses more); its JSON, with metadata, stays well below
/// this.
const MAX_CONFIG_MAP_RESPONSE_BYTES: usize = 3 << 20;
const KUBECONFIG_KEY: &str = "kubeconfig";
const JWS_SIGNATURE_KEY_PREFIX: &str = "jws-kubeconfig-";
const BOOTSTRAP_TOKEN_PATTERN: &str = r"\A([a-z0-9]{6})\.([a-z0-9]{16})\z";
/// cmd/kubeadm/app/constants: KubeletBaseConfigurationConfigMap and its key, DiscoveryRetryInterval.
const KUBELET_CONFIG_MAP: &str = "kubelet-config";
const KUBELET_CONFIG_KEY: &str = "kubelet";
const DISCOVERY_RETRY_INTERVAL: Duration = Duration::from_secs(5);
/// kubeadm's v1beta3 DefaultClusterName and discovery.TokenUser: the names in the bootstrap kubeconfig kubeadm writes.
const DEFAULT_CLUSTER_NAME: &str = "kubernetes";
const TOKEN_USER: &str = "tls-bootstrap-token-user";
/// kubeconfigutil.ToClientSet's request timeout ("10s").
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// pubkeypin's only format.
const FORMAT_SHA256: &str = "sha256";
/// The configuration written when the token may not read kube-system/kubelet-config: the packaged default.
const DEFAULT_CONFIG: &str = include_str!("../../systemd/config.yaml");
/// The environment variable of the unit's EnvironmentFile that carries the kubeconfig flags.
const ENV_KUBECONFIG_ARGS: &str = "RKUBELET_KUBECONFIG_ARGS";

/// Joins this host to a cluster as kubeadm join does, for hosts without kubeadm: discovers the API server with a
/// bootstrap token and the CA's public key hash, writes the bootstrap kubeconfig, the KubeletConfiguration and the
/// unit's environment file, and (re)starts the rkubelet service where systemd runs.
#[derive(Debug, Parser)]
#[command(name = "rkubelet join", bin_name = "rkubelet join")]
pub struct JoinArgs {
    /// The API server: host:port, as `kubeadm join` takes it, or https://host:port.
    server: String,
    /// Bootstrap token <id>.<secret> (`kubeadm token create`), for discovery and TLS bootstrap.
    #[arg(long)]
    token: String,
    /// sha256:<hex> of the cluster CA's public key (SubjectPublicKeyInfo); repeat or comma-separate for several.
    #[arg(long = "discovery-token-ca-cert-hash", value_delimiter = ',')]
    ca_cert_hashes: Vec<String>,
    /// Trust the CA in cluster-info without a --discovery-token-ca-cert-hash (only the token's signature is checked).
    #[arg(long)]
    discovery_token_unsafe_skip_ca_verification: bool,
    /// How long discovery retries an unreachable server or a cluster-info without the token's signature (kubeadm's
    /// discovery.timeout).
    #[arg(long, default_value = "5m0s")]
    discovery_timeout: String,
    /// Write every file under this folder instead of /; paths inside the files stay as seen from that root, and
    /// the service is not started.
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Where the bootstrap kubeconfig (server, CA, token) is written.
    #[arg(long, default_value = "/etc/kubernetes/bootstrap-kubelet.conf")]
    bootstrap_kubeconfig: PathBuf,
    /// The kubeconfig the agent writes after TLS bootstrap; the join refuses to run when it already exists.
    #[arg(long, default_value = "/etc/kubernetes/kubelet.conf")]
    kubeconfig: PathBuf,
    /// Where the KubeletConfiguration is written (the unit's --config).
    #[arg(long, default_value = "/etc/rkubelet/config.yaml")]
    config: PathBuf,
    /// Where the cluster CA is written when absent (kubeadm's caCertPath; kubeadm's KubeletConfiguration names it as
    /// the client CA of the :10250 server).
    #[arg(long, default_value = "/etc/kubernetes/pki/ca.crt")]
    ca_cert_path: PathBuf,
    /// The unit's environment file; its RKUBELET_KUBECONFIG_ARGS line is set, other lines are kept.
    #[arg(long, default_value = "/etc/default/rkubelet")]
    env_file: PathBuf,
    /// Write the files but do not reload, enable or restart the rkubelet service.
    #[arg(long)]
    no_start: bool,
}

/// A bootstrap token, `<id>.<secret>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    id: String,
    secret: String,
}

impl BootstrapToken {
    /// kubeadm's NewBootstrapTokenString: the token must match BootstrapTokenPattern.
    pub fn parse(token: &str) -> Result<BootstrapToken, String> {
        let lower_alnum = |s: &str| s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        match token.split_once('.') {
            Some((id, secret)) if id.len() == 6 && secret.len() == 16 && lower_alnum(id) && lower_alnum(secret) => {
                Ok(BootstrapToken { id: id.to_owned(), secret: secret.to_owned() })
            }
            _ => Err(format!("the bootstrap token {token:?} was not of the form {BOOTSTRAP_TOKEN_PATTERN:?}")),
        }
    }

    fn as_string(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }
}

/// The pinned public keys (kubeadm's pubkeypin.Set): lowercase hex SHA-256 hashes of SubjectPublicKeyInfo DER.
#[derive(Debug, Default, Clone)]
pub struct PinSet(BTreeSet<String>);

impl PinSet {
    /// pubkeypin.Set.Allow, with its messages.
    pub fn allow(&mut self, pub_key_hash: &str) -> Result<(), String> {
        let parts: Vec<&str> = pub_key_hash.split(':').collect();
        let [format, value] = parts[..] else {
            return Err(format!("invalid hash, expected \"format:hex-value\". Known format(s) are: {FORMAT_SHA256}"));
        };
        if !format.eq_ignore_ascii_case(FORMAT_SHA256) {
            return Err(format!("unknown hash format {format:?}. Known format(s) are: {FORMAT_SHA256}"));
        }
        // Go's hex.DecodedLen: half the length, rounded down.
        let bytes = value.len() / 2;
        if bytes != 32 {
            return Err(format!("invalid hash {pub_key_hash:?}, expected a 32 byte SHA-256 hash, found {bytes} bytes"));
        }
        if hex::decode(value).is_err() {
            return Err(format!("invalid hash {pub_key_hash:?}, could not decode SHA-256 from hex"));
        }
        self.0.insert(value.to_ascii_lowercase());
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// pubkeypin.Set.CheckAny: at least one certificate's public key is pinned.
    pub fn check_any(&self, certificates_der: &[Vec<u8>]) -> Result<(), String> {
        let mut hashes = Vec::new();
        for der in certificates_der {
            let hash = spki_sha256_hex(der)?;
            if self.0.contains(&hash) {
                return Ok(());
            }
            hashes.push(format!("{FORMAT_SHA256}:{hash}"));
        }
        Err(format!("none of the public keys {:?} are pinned", hashes.join(":")))
    }
}

/// The lowercase hex SHA-256 of a certificate's SubjectPublicKeyInfo (pubkeypin.Hash without its prefix).
pub fn spki_sha256_hex(certificate_der: &[u8]) -> Result<String, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(certificate_der)
        .map_err(|e| format!("failed to parse certificate: {e}"))?;
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.tbs_certificate.subject_pki.raw);
    Ok(hex::encode(digest.as_ref()))
}

/// bootstrap.ComputeDetachedSignature (cluster-bootstrap/token/jws): the compact HS256 JWS of `content` with the
/// token secret as key and the token id as `kid`, its payload part left out (RFC 7515 Appendix F). The protected
/// header is go-jose's serialisation: its keys sorted, no spaces.
pub fn compute_detached_signature(content: &str, token_id: &str, token_secret: &str) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let kid = serde_json::Value::String(token_id.to_owned());
    let header = b64.encode(format!("{{\"alg\":\"HS256\",\"kid\":{kid}}}"));
    let signing_input = format!("{header}.{}", b64.encode(content));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, token_secret.as_bytes());
    let tag = ring::hmac::sign(&key, signing_input.as_bytes());
    format!("{header}..{}", b64.encode(tag.as_ref()))
}

/// bootstrap.DetachedTokenIsValid.
pub fn detached_token_is_valid(detached_token: &str, content: &str, token_id: &str, token_secret: &str) -> bool {
    compute_detached_signature(content, token_id, token_secret) == detached_token
}

/// What discovery learnt from a cluster-info ConfigMap whose signature (and CA, when pinned) checked out.
#[derive(Debug, Clone)]
pub struct ClusterInfo {
    /// The kubeconfig text, as signed.
    pub kubeconfig: String,
    /// The API server the cluster-info kubeconfig names.
    pub server: String,
    /// The cluster CA, PEM, as in the kubeconfig (empty when it has none).
    pub ca_pem: Vec<u8>,
    /// The CA's certificates, DER.
    pub ca_der: Vec<Vec<u8>>,
}

#[derive(Debug, serde::Deserialize)]
struct KubeconfigFile {
    #[serde(default)]
    clusters: Option<Vec<NamedCluster>>,
}

#[derive(Debug, serde::Deserialize)]
struct NamedCluster {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    cluster: Option<ClusterEntry>,
}

#[derive(Debug, Default, Clone, serde::Deserialize)]
struct ClusterEntry {
    #[serde(default)]
    server: Option<String>,
    #[serde(default, rename = "certificate-authority-data")]
    certificate_authority_data: Option<String>,
}

/// certutil.ParseCertsPEM: every CERTIFICATE block, each a valid certificate; at least one.
fn parse_certs_pem(pem: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let Ok(block) = block else { break };
        if block.label != "CERTIFICATE" {
            continue;
        }
        x509_parser::parse_x509_certificate(&block.contents)
            .map_err(|e| format!("failed to parse certificate: {e}"))?;
        out.push(block.contents);
    }
    if out.is_empty() {
        return Err("data does not contain any valid RSA or ECDSA certificates".to_owned());
    }
    Ok(out)
}

/// validateClusterInfoToken, clientcmd.Load of the kubeconfig, the single-cluster check and validateClusterCA of
/// kubeadm's token discovery, on the data of a cluster-info ConfigMap fetched without TLS verification.
pub fn validate_cluster_info(
    data: &BTreeMap<String, String>,
    token: &BootstrapToken,
    pins: &PinSet,
) -> Result<ClusterInfo, String> {
    let kubeconfig = match data.get(KUBECONFIG_KEY) {
        Some(k) if !k.is_empty() => k,
        _ => {
            return Err(format!(
                "there is no {KUBECONFIG_KEY} key in the {CLUSTER_INFO} ConfigMap. This API Server isn't set up for \
                 token bootstrapping, can't connect"
            ))
        }
    };
    let detached = match data.get(&format!("{JWS_SIGNATURE_KEY_PREFIX}{}", token.id)) {
        Some(d) if !d.is_empty() => d,
        _ => return Err(invalid_token_id(token)),
    };
    if !detached_token_is_valid(detached, kubeconfig, &token.id, &token.secret) {
        return Err(
            "failed to verify JWS signature of received cluster info object, can't trust this API Server".to_owned()
        );
    }
    let parsed: KubeconfigFile = serde_yaml::from_str(kubeconfig)
        .map_err(|e| format!("couldn't parse the kubeconfig file in the {CLUSTER_INFO} ConfigMap: {e}"))?;
    // clientcmd keeps clusters in a map by name.
    let clusters: BTreeMap<String, ClusterEntry> = parsed
        .clusters
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.name.unwrap_or_default(), c.cluster.unwrap_or_default()))
        .collect();
    if clusters.len() != 1 {
        return Err(format!(
            "expected the kubeconfig file in the {CLUSTER_INFO} ConfigMap to have a single cluster, but it had {}",
            clusters.len()
        ));
    }
    let cluster = clusters.into_values().next().unwrap_or_default();
    let ca_pem = match cluster.certificate_authority_data.as_deref().map(str::trim) {
        Some(b64) if !b64.is_empty() => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("couldn't parse the kubeconfig file in the {CLUSTER_INFO} ConfigMap: {e}"))?,
        _ => Vec::new(),
    };
    let server = cluster.server.unwrap_or_default();
    let ca_der = if pins.is_empty() {
        parse_certs_pem(&ca_pem).unwrap_or_default()
    } else {
        let certs = parse_certs_pem(&ca_pem)
            .map_err(|e| format!("failed to parse cluster CA from the {CLUSTER_INFO} ConfigMap: {e}"))?;
        pins.check_any(&certs).map_err(|e| format!("cluster CA found in {CLUSTER_INFO} ConfigMap is invalid: {e}"))?;
        certs
    };
    Ok(ClusterInfo { kubeconfig: kubeconfig.clone(), server, ca_pem, ca_der })
}

fn invalid_token_id(token: &BootstrapToken) -> String {
    format!(
        "token id {:?} is invalid for this cluster or it has expired. Use \"kubeadm token create\" on the \
         control-plane node to create a new valid token",
        token.id
    )
}

/// The endpoint as kubeadm takes it (host:port) or as a URL (https://host:port), as the https URL discovery uses.
pub fn endpoint_url(server: &str) -> Result<String, String> {
    let host_port = server.strip_prefix("https://").unwrap_or(server).trim_end_matches('/');
    let invalid = || format!("invalid API server endpoint {server:?}: expected host:port or https://host:port");
    if host_port.is_empty() || host_port.contains(['/', '@', '?', '#']) || host_port.contains("://") {
        return Err(invalid());
    }
    let (host, port) = host_port.rsplit_once(':').ok_or_else(invalid)?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(invalid());
    }
    let url = format!("https://{host_port}");
    url.parse::<hyper::Uri>().map_err(|_| invalid())?;
    Ok(url)
}

/// A Go duration as kubeadm's discovery.timeout takes it ("5m0s", "30s", "1h", "1500ms").
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("invalid duration {text:?}: want e.g. 5m0s, 30s, 1500ms");
    let mut rest = text.trim();
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(invalid());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(invalid)?;
        let number: f64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(invalid()),
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| invalid())
}

/// How a fetch trusts the server.
enum Trust<'a> {
    /// No verification: the first cluster-info fetch, whose content is checked by its signature instead.
    Insecure,
    /// These CA certificates (DER).
    Ca(&'a [Vec<u8>]),
}

#[derive(Debug)]
enum FetchError {
    /// The API server answered with this status (code, message, the URL asked).
    Status(u16, String, String),
    /// No answer: connection, TLS, timeout.
    Transport(String),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Status(code, message, url) if message.is_empty() => write!(f, "Get {url:?}: HTTP {code}"),
            FetchError::Status(code, message, _) => write!(f, "{message} (HTTP {code})"),
            FetchError::Transport(message) => f.write_str(message),
        }
    }
}

/// The error and its sources on one line, each once (kube's messages repeat their source's).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    // kube's wrapper names its own error variant, which says nothing to the user.
    let text = parts.join(": ").replace('\n', " ");
    text.strip_prefix("ServiceError: ").map(str::to_owned).unwrap_or(text)
}

/// GET of one ConfigMap, as anonymous or with a bearer token, within `timeout`.
async fn get_config_map(
    server: &str,
    namespace: &str,
    name: &str,
    trust: &Trust<'_>,
    bearer: Option<&str>,
    timeout: Duration,
) -> Result<ConfigMap, FetchError> {
    let url = format!("{server}/api/v1/namespaces/{namespace}/configmaps/{name}");
    let transport = |e: String| FetchError::Transport(format!("Get {url:?}: {e}"));
    let uri: hyper::Uri = server.parse().map_err(|e| transport(format!("{e}")))?;
    let mut config = kube::Config::new(uri);
    config.connect_timeout = Some(timeout);
    config.read_timeout = Some(timeout);
    config.write_timeout = Some(timeout);
    config.default_retry = false;
    match trust {
        Trust::Insecure => config.accept_invalid_certs = true,
        Trust::Ca(ders) => config.root_cert = Some(ders.to_vec()),
    }
    if let Some(token) = bearer {
        let value = hyper::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| transport("the token is not a valid header value".to_owned()))?;
        config.headers.push((hyper::header::AUTHORIZATION, value));
    }
    let client = kube::Client::try_from(config).map_err(|e| transport(error_chain(&e)))?;
    let request = hyper::Request::get(format!("/api/v1/namespaces/{namespace}/configmaps/{name}"))
        .header(hyper::header::ACCEPT, "application/json")
        .body(kube::client::Body::from(Vec::new()))
        .map_err(|e| transport(e.to_string()))?;
    let fetch = async {
        let response = client.send(request).await.map_err(|e| transport(error_chain(&e)))?;
        let code = response.status().as_u16();
        // The first fetch trusts no one: an answer longer than any ConfigMap can be is refused, not read.
        let body = http_body_util::Limited::new(response.into_body(), MAX_CONFIG_MAP_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| transport(format!("reading the answer: {e}")))?
            .to_bytes();
        if !(200..300).contains(&code) {
            let message = serde_json::from_slice::<kube::core::Status>(&body).map(|s| s.message).unwrap_or_default();
            return Err(FetchError::Status(code, message, url.clone()));
        }
        serde_json::from_slice::<ConfigMap>(&body).map_err(|e| transport(format!("not a ConfigMap: {e}")))
    };
    match tokio::time::timeout(timeout, fetch).await {
        Err(_) => Err(transport(format!("no answer in {timeout:?}"))),
        Ok(result) => result,
    }
}

enum AttemptError {
    Fetch(FetchError),
    NoSignature,
}

/// getClusterInfo: fetches cluster-info until it carries the token's signature (the bootstrap signer adds it a
/// moment after the token is made), retrying every DiscoveryRetryInterval until `timeout`; the last error otherwise.
async fn get_cluster_info(
    server: &str,
    trust: &Trust<'_>,
    token: &BootstrapToken,
    timeout: Duration,
) -> Result<BTreeMap<String, String>> {
    let deadline = Instant::now() + timeout;
    let interval = DISCOVERY_RETRY_INTERVAL.min(timeout);
    loop {
        // kubeadm's 10 s request timeout, cut to what is left of the discovery timeout.
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
        let fetched = get_config_map(server, "kube-public", CLUSTER_INFO, trust, None, REQUEST_TIMEOUT.min(left)).await;
        let err = match fetched {
            Ok(cm) => {
                let data = cm.data.unwrap_or_default();
                if data.contains_key(&format!("{JWS_SIGNATURE_KEY_PREFIX}{}", token.id)) {
                    return Ok(data);
                }
                let id = &token.id;
                eprintln!(
                    "[discovery] The cluster-info ConfigMap does not yet contain a JWS signature for token ID {id:?}, \
                     will try again"
                );
                AttemptError::NoSignature
            }
            Err(e) => {
                eprintln!("[discovery] Failed to request cluster-info, will try again: {e}");
                AttemptError::Fetch(e)
            }
        };
        if Instant::now() + interval > deadline {
            match err {
                AttemptError::NoSignature => bail!(invalid_token_id(token)),
                AttemptError::Fetch(e) => bail!("{e}"),
            }
        }
        tokio::time::sleep(interval).await;
    }
}

/// retrieveValidatedConfigInfo: the insecure fetch, the signature and pin checks, and (with pins) the verified
/// second fetch that must return the same kubeconfig.
async fn discover(endpoint: &str, token: &BootstrapToken, pins: &PinSet, timeout: Duration) -> Result<ClusterInfo> {
    println!("[discovery] Requesting cluster-info from {endpoint:?}");
    let insecure = get_cluster_info(endpoint, &Trust::Insecure, token, timeout).await?;
    let info = validate_cluster_info(&insecure, token, pins).map_err(anyhow::Error::msg)?;
    if pins.is_empty() {
        println!(
            "[discovery] Cluster info signature and contents are valid and no TLS pinning was specified, will use \
             API Server {endpoint:?}"
        );
        return Ok(info);
    }
    println!("[discovery] Requesting info from {endpoint:?} again to validate TLS against the pinned public key");
    let secure = get_cluster_info(endpoint, &Trust::Ca(&info.ca_der), token, timeout).await?;
    if secure.get(KUBECONFIG_KEY) != Some(&info.kubeconfig) {
        bail!(
            "the second kubeconfig from the {CLUSTER_INFO} ConfigMap (using validated TLS) was different from the first"
        );
    }
    println!(
        "[discovery] Cluster info signature and contents are valid and TLS certificate validates against pinned \
         roots, will use API Server {endpoint:?}"
    );
    Ok(info)
}

/// Where the KubeletConfiguration came from.
#[derive(Debug, PartialEq, Eq)]
enum KubeletConfigSource {
    Cluster,
    Default(String),
}

/// The KubeletConfiguration kubeadm distributes (kube-system/kubelet-config, readable by bootstrap tokens through
/// kubeadm's kubeadm:kubelet-config Role), else the packaged default when the cluster has none or the token may not
/// read it.
async fn kubelet_config(info: &ClusterInfo, token: &BootstrapToken) -> Result<(String, KubeletConfigSource)> {
    let trust = Trust::Ca(&info.ca_der);
    let secret = token.as_string();
    match get_config_map(&info.server, "kube-system", KUBELET_CONFIG_MAP, &trust, Some(&secret), REQUEST_TIMEOUT).await
    {
        Ok(cm) => match cm.data.unwrap_or_default().remove(KUBELET_CONFIG_KEY) {
            Some(text) if !text.trim().is_empty() => Ok((text, KubeletConfigSource::Cluster)),
            _ => Ok((
                DEFAULT_CONFIG.to_owned(),
                KubeletConfigSource::Default(format!(
                    "kube-system/{KUBELET_CONFIG_MAP} has no {KUBELET_CONFIG_KEY:?} key"
                )),
            )),
        },
        Err(e @ FetchError::Status(403 | 404, ..)) => {
            Ok((DEFAULT_CONFIG.to_owned(), KubeletConfigSource::Default(e.to_string())))
        }
        Err(e @ FetchError::Status(401, ..)) => {
            bail!("the API server at {} does not accept the bootstrap token: {e}", info.server)
        }
        Err(e) => bail!("couldn't read kube-system/{KUBELET_CONFIG_MAP}: {e}"),
    }
}

/// kubeconfigutil.CreateWithToken as kubeadm's discovery.For calls it: the cluster-info server and CA, the token.
pub fn bootstrap_kubeconfig(info: &ClusterInfo, token: &BootstrapToken) -> String {
    let context = format!("{TOKEN_USER}@{DEFAULT_CLUSTER_NAME}");
    let mut cluster = serde_json::json!({ "server": info.server });
    if !info.ca_pem.is_empty() {
        cluster["certificate-authority-data"] = base64::engine::general_purpose::STANDARD.encode(&info.ca_pem).into();
    }
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": DEFAULT_CLUSTER_NAME, "cluster": cluster }],
        "contexts": [{ "name": context, "context": { "cluster": DEFAULT_CLUSTER_NAME, "user": TOKEN_USER } }],
        "current-context": context,
        "preferences": {},
        "users": [{ "name": TOKEN_USER, "user": { "token": token.as_string() } }],
    });
    serde_yaml::to_string(&doc).unwrap_or_default()
}

/// The unit's environment file with its RKUBELET_KUBECONFIG_ARGS line set to `args`, the other lines kept.
pub fn env_file_text(existing: Option<&str>, args: &str) -> String {
    let line = format!("{ENV_KUBECONFIG_ARGS}=\"{args}\"");
    let Some(existing) = existing else {
        return format!(
            "# The rkubelet unit's environment: RKUBELET_KUBECONFIG_ARGS is set by `rkubelet join`;\n\
             # RKUBELET_EXTRA_ARGS holds more flags for the agent.\n{line}\n"
        );
    };
    let mut out = String::new();
    let mut replaced = false;
    for l in existing.lines() {
        let key = l.trim_start().strip_prefix("export ").unwrap_or(l.trim_start());
        if key.starts_with(&format!("{ENV_KUBECONFIG_ARGS}=")) {
            if !replaced {
                out.push_str(&line);
                out.push('\n');
                replaced = true;
            }
            continue;
        }
        out.push_str(l);
        out.push('\n');
    }
    if !replaced {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// `path` as written under `root`.
fn under_root(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// Writes `text` to `path` through a temporary file and a rename, so a reader never sees half a file.
fn write_file(path: &Path, text: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.rkubelet-join"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("write {}", tmp.display()))?;
    f.write_all(text).and_then(|()| f.sync_all()).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))
}

fn systemctl(args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("systemctl").args(args).output().context("run systemctl")?;
    if !out.status.success() {
        bail!(
            "systemctl {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim().replace('\n', " ")
        );
    }
    Ok(())
}

async fn run(args: JoinArgs) -> Result<()> {
    let token = BootstrapToken::parse(&args.token).map_err(anyhow::Error::msg)?;
    let mut pins = PinSet::default();
    for hash in &args.ca_cert_hashes {
        pins.allow(hash).map_err(|e| anyhow::anyhow!("invalid discovery token CA certificate hash: {e}"))?;
    }
    // kubeadm's ValidateDiscoveryBootstrapToken.
    if pins.is_empty() && !args.discovery_token_unsafe_skip_ca_verification {
        bail!(
            "discovery.bootstrapToken.caCertHashes: Invalid value: \"\": using token-based discovery without \
             caCertHashes can be unsafe. Set unsafeSkipCAVerification as true in your kubeadm config file or pass \
             --discovery-token-unsafe-skip-ca-verification flag to continue"
        );
    }
    let endpoint = endpoint_url(&args.server).map_err(anyhow::Error::msg)?;
    let timeout = parse_duration(&args.discovery_timeout).map_err(|e| anyhow::anyhow!("--discovery-timeout: {e}"))?;
    let root = args.root.as_path();
    // kubeadm's preflight FileAvailable check: a node that already has its kubeconfig would never use the token.
    let kubeconfig = under_root(root, &args.kubeconfig);
    if kubeconfig.exists() {
        bail!("{} already exists: this node has joined a cluster; remove it to join anew", kubeconfig.display());
    }

    let info = discover(&endpoint, &token, &pins, timeout)
        .await
        .map_err(|e| anyhow::anyhow!("couldn't validate the identity of the API Server: {e:#}"))?;
    let (config, source) = kubelet_config(&info, &token).await?;

    let bootstrap = under_root(root, &args.bootstrap_kubeconfig);
    println!("[kubelet-start] Writing the bootstrap kubeconfig to file {:?}", bootstrap.display().to_string());
    write_file(&bootstrap, bootstrap_kubeconfig(&info, &token).as_bytes(), 0o600)?;
    let ca = under_root(root, &args.ca_cert_path);
    if !info.ca_pem.is_empty() && !ca.exists() {
        println!("[kubelet-start] Writing CA certificate at {:?}", ca.display().to_string());
        write_file(&ca, &info.ca_pem, 0o644)?;
    }
    let config_path = under_root(root, &args.config);
    match &source {
        KubeletConfigSource::Cluster => println!(
            "[kubelet-start] Writing kubelet configuration from kube-system/{KUBELET_CONFIG_MAP} to file {:?}",
            config_path.display().to_string()
        ),
        KubeletConfigSource::Default(why) => println!(
            "[kubelet-start] kube-system/{KUBELET_CONFIG_MAP} is not readable ({why}): writing rkubelet's default \
             configuration to file {:?}",
            config_path.display().to_string()
        ),
    }
    write_file(&config_path, config.as_bytes(), 0o644)?;
    let env_path = under_root(root, &args.env_file);
    let existing = std::fs::read_to_string(&env_path).ok();
    let flags = format!(
        "--bootstrap-kubeconfig={} --kubeconfig={}",
        args.bootstrap_kubeconfig.display(),
        args.kubeconfig.display()
    );
    println!(
        "[kubelet-start] Writing kubelet environment file with flags to file {:?}",
        env_path.display().to_string()
    );
    write_file(&env_path, env_file_text(existing.as_deref(), &flags).as_bytes(), 0o644)?;

    let systemd = Path::new("/run/systemd/system").is_dir();
    if args.no_start || root != Path::new("/") || !systemd {
        let why = if args.no_start {
            "--no-start"
        } else if root != Path::new("/") {
            "--root"
        } else {
            "systemd is not running"
        };
        println!("[kubelet-start] Not starting the rkubelet service ({why})");
    } else {
        println!("[kubelet-start] Starting the rkubelet service");
        systemctl(&["daemon-reload"])?;
        systemctl(&["enable", "rkubelet"])?;
        systemctl(&["restart", "rkubelet"])?;
    }
    println!(
        "\nThis node will join the cluster at {} once the agent has done its TLS bootstrap.\n\
         Run 'kubectl get nodes' on the control-plane to see this node join the cluster.",
        info.server
    );
    Ok(())
}

/// `rkubelet join ...`: `args[0]` is "join".
pub async fn main(args: &[String]) -> ExitCode {
    let args = match JoinArgs::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::FAILURE } else { ExitCode::SUCCESS };
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // cluster-bootstrap/token/jws/jws_test.go.
    const JWS_CONTENT: &str = "Hello from the other side. I must have called a thousand times.";
    const JWS_SECRET: &str = "my voice is my passcode";
    const JWS_ID: &str = "joshua";

    #[test]
    fn detached_signatures_are_those_of_cluster_bootstrap() {
        assert_eq!(
            compute_detached_signature(JWS_CONTENT, JWS_ID, JWS_SECRET),
            "eyJhbGciOiJIUzI1NiIsImtpZCI6Impvc2h1YSJ9..VShe2taLd-YTrmWuRkcL_8QTNDHYxQIEBsAYYiIj1_8"
        );
        assert_eq!(
            compute_detached_signature("", JWS_ID, JWS_SECRET),
            "eyJhbGciOiJIUzI1NiIsImtpZCI6Impvc2h1YSJ9..7Ui1ALizW4jXphVUB7xUqC9vLYLL9RZeOFfVLoB7Tgk"
        );
        assert_eq!(
            compute_detached_signature(JWS_CONTENT, JWS_ID, ""),
            "eyJhbGciOiJIUzI1NiIsImtpZCI6Impvc2h1YSJ9..UfkqvDGiIFxrMnFseDj9LYJOLNrvjW8aHhF71mvvAs8"
        );
        let sig = "eyJhbGciOiJIUzI1NiIsImtpZCI6Impvc2h1YSJ9..VShe2taLd-YTrmWuRkcL_8QTNDHYxQIEBsAYYiIj1_8";
        assert!(detached_token_is_valid(sig, JWS_CONTENT, JWS_ID, JWS_SECRET));
        assert!(!detached_token_is_valid(&format!("{sig}foo"), JWS_CONTENT, JWS_ID, JWS_SECRET));
        assert!(!detached_token_is_valid(sig, JWS_CONTENT, JWS_ID, "another secret"));
    }

    /// The signature built here from RFC 7515's definition, with ring's HMAC directly.
    #[test]
    fn a_detached_signature_is_hs256_over_header_and_content() {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(br#"{"alg":"HS256","kid":"abcdef"}"#);
        let input = format!("{header}.{}", b64.encode("some kubeconfig"));
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"0123456789abcdef");
        let expected = format!("{header}..{}", b64.encode(ring::hmac::sign(&key, input.as_bytes())));
        assert_eq!(compute_detached_signature("some kubeconfig", "abcdef", "0123456789abcdef"), expected);
    }

    // cmd/kubeadm/app/util/pubkeypin/pubkeypin_test.go: testCertPEM and its expectedHash.
    const KUBEADM_TEST_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIDRDCCAiygAwIBAgIJAJgVaCXvC6HkMA0GCSqGSIb3DQEBBQUAMB8xHTAbBgNV
BAMTFGt1YmVhZG0ta2V5cGlucy10ZXN0MCAXDTE3MDcwNTE3NDMxMFoYDzIxMTcw
NjExMTc0MzEwWjAfMR0wGwYDVQQDExRrdWJlYWRtLWtleXBpbnMtdGVzdDCCASIw
DQYJKoZIhvcNAQEBBQADggEPADCCAQoCggEBAK0ba8mHU9UtYlzM1Own2Fk/XGjR
J4uJQvSeGLtz1hID1IA0dLwruvgLCPadXEOw/f/IWIWcmT+ZmvIHZKa/woq2iHi5
+HLhXs7aG4tjKGLYhag1hLjBI7icqV7ovkjdGAt9pWkxEzhIYClFMXDjKpMSynu+
YX6nZ9tic1cOkHmx2yiZdMkuriRQnpTOa7bb03OC1VfGl7gHlOAIYaj4539WCOr8
+ACTUMJUFEHcRZ2o8a/v6F9GMK+7SC8SJUI+GuroXqlMAdhEv4lX5Co52enYaClN
+D9FJLRpBv2YfiCQdJRaiTvCBSxEFz6BN+PtP5l2Hs703ZWEkOqCByM6HV8CAwEA
AaOBgDB+MB0GA1UdDgQWBBRQgUX8MhK2rWBWQiPHWcKzoWDH5DBPBgNVHSMESDBG
gBRQgUX8MhK2rWBWQiPHWcKzoWDH5KEjpCEwHzEdMBsGA1UEAxMUa3ViZWFkbS1r
ZXlwaW5zLXRlc3SCCQCYFWgl7wuh5DAMBgNVHRMEBTADAQH/MA0GCSqGSIb3DQEB
BQUAA4IBAQCaAUif7Pfx3X0F08cxhx8/Hdx4jcJw6MCq6iq6rsXM32ge43t8OHKC
pJW08dk58a3O1YQSMMvD6GJDAiAfXzfwcwY6j258b1ZlI9Ag0VokvhMl/XfdCsdh
AWImnL1t4hvU5jLaImUUMlYxMcSfHBGAm7WJIZ2LdEfg6YWfZh+WGbg1W7uxLxk6
y4h5rWdNnzBHWAGf7zJ0oEDV6W6RSwNXtC0JNnLaeIUm/6xdSddJlQPwUv8YH4jX
c1vuFqTnJBPcb7W//R/GI2Paicm1cmns9NLnPR35exHxFTy+D1yxmGokpoPMdife
aH+sfuxT8xeTPb3kjzF9eJTlnEquUDLM
-----END CERTIFICATE-----
";
    const KUBEADM_TEST_HASH: &str = "sha256:345959acb2c3b2feb87d281961c893f62a314207ef02599f1cc4a5fb255480b3";

    #[test]
    fn the_pin_is_kubeadms_hash_of_the_public_key() {
        let certs = parse_certs_pem(KUBEADM_TEST_CERT.as_bytes()).unwrap();
        assert_eq!(format!("sha256:{}", spki_sha256_hex(&certs[0]).unwrap()), KUBEADM_TEST_HASH);
        let mut pins = PinSet::default();
        pins.allow(&KUBEADM_TEST_HASH.to_uppercase().replace("SHA256", "sha256")).unwrap();
        assert_eq!(pins.check_any(&certs), Ok(()));

        // A key rcgen made: its SubjectPublicKeyInfo from rcgen itself, hashed here.
        let made = rcgen::generate_simple_self_signed(vec!["ca".to_owned()]).unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&made.signing_key);
        let expected = hex::encode(ring::digest::digest(&ring::digest::SHA256, &spki));
        assert_eq!(spki_sha256_hex(made.cert.der()).unwrap(), expected);
        let err = pins.check_any(&[made.cert.der().to_vec()]).unwrap_err();
        assert_eq!(err, format!("none of the public keys \"sha256:{expected}\" are pinned"));
    }

    #[test]
    fn malformed_tokens_and_hashes_are_refused_with_kubeadms_messages() {
        assert_eq!(
            BootstrapToken::parse("abcdef.0123456789abcdef"),
            Ok(BootstrapToken { id: "abcdef".into(), secret: "0123456789abcdef".into() })
        );
        for bad in ["", "abcdef", "abcdef.0123456789abcde", "ABCDEF.0123456789abcdef", "abcdef:0123456789abcdef"] {
            assert_eq!(
                BootstrapToken::parse(bad).unwrap_err(),
                format!(
                    r#"the bootstrap token {bad:?} was not of the form "\\A([a-z0-9]{{6}})\\.([a-z0-9]{{16}})\\z""#
                )
            );
        }
        let mut pins = PinSet::default();
        assert_eq!(
            pins.allow("345959acb2c3b2feb87d281961c893f62a314207ef02599f1cc4a5fb255480b3").unwrap_err(),
            "invalid hash, expected \"format:hex-value\". Known format(s) are: sha256"
        );
        assert_eq!(pins.allow("md5:00").unwrap_err(), "unknown hash format \"md5\". Known format(s) are: sha256");
        assert_eq!(
            pins.allow("sha256:abcd").unwrap_err(),
            "invalid hash \"sha256:abcd\", expected a 32 byte SHA-256 hash, found 2 bytes"
        );
        let not_hex = format!("sha256:{}", "g".repeat(64));
        assert_eq!(
            pins.allow(&not_hex).unwrap_err(),
            format!("invalid hash {not_hex:?}, could not decode SHA-256 from hex")
        );
        assert!(pins.is_empty());
    }

    fn cluster_info(kubeconfig: &str, id: &str, secret: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (KUBECONFIG_KEY.to_owned(), kubeconfig.to_owned()),
            (format!("{JWS_SIGNATURE_KEY_PREFIX}{id}"), compute_detached_signature(kubeconfig, id, secret)),
        ])
    }

    fn kubeconfig_with_ca(pem: &str) -> String {
        let ca = base64::engine::general_purpose::STANDARD.encode(pem);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: \"\"\n  cluster: {{certificate-authority-data: {ca}, \
             server: \"https://10.0.0.1:6443\"}}\ncontexts: []\ncurrent-context: \"\"\nusers: []\n"
        )
    }

    #[test]
    fn cluster_info_is_trusted_only_with_the_tokens_signature_and_a_pinned_ca() {
        let token = BootstrapToken::parse("abcdef.0123456789abcdef").unwrap();
        let mut pins = PinSet::default();
        pins.allow(KUBEADM_TEST_HASH).unwrap();
        let kc = kubeconfig_with_ca(KUBEADM_TEST_CERT);

        let info = validate_cluster_info(&cluster_info(&kc, "abcdef", "0123456789abcdef"), &token, &pins).unwrap();
        assert_eq!(info.server, "https://10.0.0.1:6443");
        assert_eq!(info.ca_pem, KUBEADM_TEST_CERT.as_bytes());
        assert_eq!(info.ca_der.len(), 1);

        let other_id = validate_cluster_info(&cluster_info(&kc, "ghijkl", "0123456789abcdef"), &token, &pins);
        assert_eq!(
            other_id.unwrap_err(),
            "token id \"abcdef\" is invalid for this cluster or it has expired. Use \"kubeadm token create\" on the \
             control-plane node to create a new valid token"
        );
        let wrong_secret = validate_cluster_info(&cluster_info(&kc, "abcdef", "fedcba9876543210"), &token, &pins);
        assert_eq!(
            wrong_secret.unwrap_err(),
            "failed to verify JWS signature of received cluster info object, can't trust this API Server"
        );
        let mut other_pin = PinSet::default();
        other_pin.allow(&format!("sha256:{}", "0".repeat(64))).unwrap();
        let wrong_ca = validate_cluster_info(&cluster_info(&kc, "abcdef", "0123456789abcdef"), &token, &other_pin);
        assert_eq!(
            wrong_ca.unwrap_err(),
            format!("cluster CA found in cluster-info ConfigMap is invalid: none of the public keys \"{KUBEADM_TEST_HASH}\" are pinned")
        );
        // Without pins (--discovery-token-unsafe-skip-ca-verification) the signature alone decides.
        assert!(
            validate_cluster_info(&cluster_info(&kc, "abcdef", "0123456789abcdef"), &token, &PinSet::default()).is_ok()
        );

        let mut no_kubeconfig = cluster_info(&kc, "abcdef", "0123456789abcdef");
        no_kubeconfig.remove(KUBECONFIG_KEY);
        assert!(validate_cluster_info(&no_kubeconfig, &token, &pins)
            .unwrap_err()
            .starts_with("there is no kubeconfig key"));
        let two = "clusters:\n- {name: a, cluster: {server: x}}\n- {name: b, cluster: {server: y}}\n";
        assert_eq!(
            validate_cluster_info(&cluster_info(two, "abcdef", "0123456789abcdef"), &token, &pins).unwrap_err(),
            "expected the kubeconfig file in the cluster-info ConfigMap to have a single cluster, but it had 2"
        );
        let no_ca = "clusters:\n- {name: a, cluster: {server: x}}\n";
        assert_eq!(
            validate_cluster_info(&cluster_info(no_ca, "abcdef", "0123456789abcdef"), &token, &pins).unwrap_err(),
            "failed to parse cluster CA from the cluster-info ConfigMap: data does not contain any valid RSA or ECDSA certificates"
        );
    }

    #[test]
    fn the_bootstrap_kubeconfig_is_kubeadms() {
        let token = BootstrapToken::parse("abcdef.0123456789abcdef").unwrap();
        let info = ClusterInfo {
            kubeconfig: String::new(),
            server: "https://10.0.0.1:6443".into(),
            ca_pem: KUBEADM_TEST_CERT.as_bytes().to_vec(),
            ca_der: Vec::new(),
        };
        let text = bootstrap_kubeconfig(&info, &token);
        let kc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(kc["current-context"], "tls-bootstrap-token-user@kubernetes");
        assert_eq!(kc["clusters"][0]["name"], "kubernetes");
        assert_eq!(kc["clusters"][0]["cluster"]["server"], "https://10.0.0.1:6443");
        let ca = kc["clusters"][0]["cluster"]["certificate-authority-data"].as_str().unwrap();
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(ca).unwrap(), KUBEADM_TEST_CERT.as_bytes());
        assert_eq!(kc["users"][0]["name"], "tls-bootstrap-token-user");
        assert_eq!(kc["users"][0]["user"]["token"], "abcdef.0123456789abcdef");
        assert_eq!(kc["contexts"][0]["context"]["user"], "tls-bootstrap-token-user");
    }

    #[test]
    fn the_env_file_keeps_other_lines_and_sets_the_kubeconfig_args_once() {
        let args = "--bootstrap-kubeconfig=/b --kubeconfig=/k";
        let fresh = env_file_text(None, args);
        assert!(fresh.ends_with("RKUBELET_KUBECONFIG_ARGS=\"--bootstrap-kubeconfig=/b --kubeconfig=/k\"\n"));
        let existing =
            "# extra\nRKUBELET_EXTRA_ARGS=\"--v=2\"\nRKUBELET_KUBECONFIG_ARGS=\"--old\"\nRKUBELET_KUBECONFIG_ARGS=x\n";
        assert_eq!(
            env_file_text(Some(existing), args),
            "# extra\nRKUBELET_EXTRA_ARGS=\"--v=2\"\nRKUBELET_KUBECONFIG_ARGS=\"--bootstrap-kubeconfig=/b --kubeconfig=/k\"\n"
        );
        assert_eq!(
            env_file_text(Some("RKUBELET_EXTRA_ARGS=\n"), args),
            "RKUBELET_EXTRA_ARGS=\nRKUBELET_KUBECONFIG_ARGS=\"--bootstrap-kubeconfig=/b --kubeconfig=/k\"\n"
        );
    }

    #[test]
    fn endpoints_and_durations_parse_as_kubeadm_takes_them() {
        assert_eq!(endpoint_url("10.0.0.1:6443").unwrap(), "https://10.0.0.1:6443");
        assert_eq!(endpoint_url("https://cp.example:6443/").unwrap(), "https://cp.example:6443");
        assert_eq!(endpoint_url("[::1]:6443").unwrap(), "https://[::1]:6443");
        for bad in ["", "10.0.0.1", "http://10.0.0.1:6443", "10.0.0.1:6443/x", "10.0.0.1:port", ":6443"] {
            assert!(endpoint_url(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_duration("5m0s").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("1500ms").unwrap(), Duration::from_millis(1500));
        for bad in ["", "5", "5x", "m", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn several_pins_are_allowed_and_any_one_matching_suffices() {
        let zero = format!("sha256:{}", "0".repeat(64));
        let args = JoinArgs::try_parse_from([
            "join",
            "10.0.0.1:6443",
            "--token=abcdef.0123456789abcdef",
            &format!("--discovery-token-ca-cert-hash={zero},{KUBEADM_TEST_HASH}"),
            "--discovery-token-ca-cert-hash",
            &zero,
        ])
        .unwrap();
        assert_eq!(args.ca_cert_hashes, [zero.as_str(), KUBEADM_TEST_HASH, zero.as_str()]);
        let mut pins = PinSet::default();
        for h in &args.ca_cert_hashes {
            pins.allow(h).unwrap();
        }
        let certs = parse_certs_pem(KUBEADM_TEST_CERT.as_bytes()).unwrap();
        assert_eq!(pins.check_any(&certs), Ok(()));
        assert_eq!(args.root, Path::new("/"));
        assert_eq!(args.env_file, Path::new("/etc/default/rkubelet"));
        assert_eq!(args.bootstrap_kubeconfig, Path::new("/etc/kubernetes/bootstrap-kubelet.conf"));
    }

    /// A closed port and a server that accepts and never answers both end in an error within the discovery
    /// timeout (kubeadm retries until its timeout; nothing waits longer).
    #[tokio::test]
    async fn an_unreachable_or_silent_server_fails_within_the_discovery_timeout() {
        let token = BootstrapToken::parse("abcdef.0123456789abcdef").unwrap();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let started = Instant::now();
        let err = get_cluster_info(&format!("https://{closed}"), &Trust::Insecure, &token, Duration::from_secs(1))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("Connection refused"), "{err}");
        assert!(
            err.starts_with(&format!("Get \"https://{closed}/api/v1/namespaces/kube-public/configmaps/cluster-info\""))
        );
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());

        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let holder = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = silent.accept().await {
                held.push(conn);
            }
        });
        let started = Instant::now();
        let err = get_cluster_info(&format!("https://{addr}"), &Trust::Insecure, &token, Duration::from_millis(1500))
            .await
            .unwrap_err()
            .to_string();
        let took = started.elapsed();
        holder.abort();
        assert!(took >= Duration::from_millis(1400) && took < Duration::from_secs(4), "{took:?}: {err}");
    }

    /// The first fetch trusts no one: a server that answers without end is cut off after a ConfigMap's worth, with
    /// an error saying so, and the agent does not hold the answer in memory.
    #[tokio::test]
    async fn an_endless_cluster_info_answer_is_refused_past_a_config_maps_size() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = std::sync::Arc::clone(&sent);
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = conn.read(&mut request).await;
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
            conn.write_all(head.as_bytes()).await.unwrap();
            let chunk = format!("{:x}\r\n{}\r\n", 64 << 10, " ".repeat(64 << 10));
            // Up to 64 MiB, far past the limit; the client hangs up long before.
            for _ in 0..1024 {
                if conn.write_all(chunk.as_bytes()).await.is_err() {
                    break;
                }
                counter.fetch_add(64 << 10, std::sync::atomic::Ordering::Relaxed);
            }
        });
        let err = get_config_map(
            &format!("http://{addr}"),
            "kube-public",
            CLUSTER_INFO,
            &Trust::Insecure,
            None,
            Duration::from_secs(20),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("reading the answer") && err.contains("length limit exceeded"), "{err}");
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
        assert!(sent < 16 << 20, "the server could send {sent} bytes before the client stopped reading");
    }

    proptest! {
        #[test]
        fn arbitrary_tokens_hashes_and_cluster_info_never_panic(
            token in ".{0,40}",
            hash in ".{0,80}",
            hex_hash in "sha256:[0-9a-fA-F]{0,70}",
            kubeconfig in ".{0,300}",
            sig in ".{0,120}",
            server in ".{0,40}",
            duration in "[0-9.hmsun]{0,12}",
        ) {
            let _ = BootstrapToken::parse(&token);
            let mut pins = PinSet::default();
            let _ = pins.allow(&hash);
            let _ = pins.allow(&hex_hash);
            let _ = endpoint_url(&server);
            let _ = parse_duration(&duration);
            let token = BootstrapToken::parse("abcdef.0123456789abcdef").unwrap();
            let data = BTreeMap::from([
                (KUBECONFIG_KEY.to_owned(), kubeconfig.clone()),
                ("jws-kubeconfig-abcdef".to_owned(), sig),
            ]);
            let _ = validate_cluster_info(&data, &token, &pins);
            // Signed, so the kubeconfig and CA parsing are reached.
            let signed = cluster_info(&kubeconfig, "abcdef", "0123456789abcdef");
            let _ = validate_cluster_info(&signed, &token, &pins);
            let _ = validate_cluster_info(&signed, &token, &PinSet::default());
            let _ = env_file_text(Some(&kubeconfig), "x");
        }
    }
}
