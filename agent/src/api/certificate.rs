//! kubelet's client certificate manager with `rotateCertificates` (client-go `util/certificate`, set up by
//! `pkg/kubelet/certificate/kubelet.go`): the node's client certificate is renewed at a jittered 70–90 % of its
//! lifetime through a CSR filed with the current certificate, stored as a new `kubelet-client-<time>.pem` behind the
//! `kubelet-client-current.pem` link, and the API client switched over to it without a restart.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::api::client::{
    request_client_certificate, ClientError, PairStore, RotatingClient, NODES_GROUP, NODE_USER_PREFIX,
};

/// client-go `certificate_manager.go` `certificateWaitTimeout`: how long one CSR is waited for.
pub const CERTIFICATE_WAIT_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// client-go's back-off after a failed rotation (`wait.Backoff{Duration: 2s, Factor: 2, Jitter: 0.1, Steps: 5}`),
/// then a try every 32 s (`wait.PollInfinite(32*time.Second, m.rotateCerts)`).
const BACKOFF_FIRST: Duration = Duration::from_secs(2);
const BACKOFF_STEPS: u32 = 5;
const BACKOFF_JITTER: f64 = 0.1;
const RETRY_AFTER_BACKOFF: Duration = Duration::from_secs(32);
/// kubelet's `exitAfter` (`kubeletcertificate.UpdateTransport(..., 5*time.Minute)`): a node that has had no valid
/// client certificate for this long while the API server answers ends the process, so that the service manager
/// restarts it and the start-up bootstraps a new certificate with the bootstrap kubeconfig.
pub const EXIT_AFTER: Duration = Duration::from_secs(5 * 60);

/// client-go's `nextRotationDeadline`: `notBefore` plus `wait.Jitter(lifetime, 0.2) - 0.3 × lifetime`, i.e. a point
/// in [70 %, 90 %) of the certificate's lifetime; `jitter` in [0, 1).
pub fn rotation_deadline(not_before: SystemTime, not_after: SystemTime, jitter: f64) -> SystemTime {
    let total = not_after.duration_since(not_before).unwrap_or_default();
    not_before + total.mul_f64(0.7 + 0.2 * jitter.clamp(0.0, 1.0))
}

/// A fraction in [0, 1), as Go's `rand.Float64` gives `wait.Jitter`: from the standard library's per-process random
/// hash keys.
pub fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    // The top 53 bits, as an f64 in [0, 1).
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// The wait before try `n` (counted from 1) after `n` failed ones: 2, 4, 8, 16 s with 10 % jitter, then 32 s.
pub fn retry_delay(failures: u32, jitter: f64) -> Duration {
    if failures < BACKOFF_STEPS {
        let base = BACKOFF_FIRST * 2u32.pow(failures.saturating_sub(1));
        base.mul_f64(1.0 + BACKOFF_JITTER * jitter.clamp(0.0, 1.0))
    } else {
        RETRY_AFTER_BACKOFF
    }
}

/// What the current pair says about the next rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairTimes {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// The validity of the first certificate of a PEM pair whose subject is the node's (`system:node:<name>` in
/// `system:nodes`); `None` when there is none or it is someone else's, which client-go's
/// `certSatisfiesTemplateLocked` answers with a rotation at once (kubeadm hands its first control-plane node a
/// certificate to be rotated out like that).
pub fn node_pair_times(pem: &str, node_name: &str) -> Option<PairTimes> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    if block.label != "CERTIFICATE" {
        return None;
    }
    let cert = block.parse_x509().ok()?;
    let subject = cert.subject();
    let cn = subject.iter_common_name().next()?.as_str().ok()?;
    let in_nodes = subject.iter_organization().any(|o| o.as_str().ok() == Some(NODES_GROUP));
    if cn != format!("{NODE_USER_PREFIX}{node_name}") || !in_nodes {
        return None;
    }
    let at = |t: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    Some(PairTimes {
        not_before: at(cert.validity().not_before.timestamp()),
        not_after: at(cert.validity().not_after.timestamp()),
    })
}

/// client-go's `updateTransport` check with an `exitAfter`: the agent gives up on its current credentials when it
/// has had no valid certificate for [`EXIT_AFTER`] and the API server answered the last try. kubelet counts a
/// transport error as an answer too; here an unreachable server is waited for, because a restart would need that
/// server for its bootstrap as much, and the running agent keeps its pods either way.
pub fn must_exit(last_valid: SystemTime, now: SystemTime, server_answered: bool) -> bool {
    server_answered && now.duration_since(last_valid).is_ok_and(|without| without >= EXIT_AFTER)
}

/// Whether a failed rotation got an answer from the API server itself (client-go's `updateServerError`: any status
/// but an unexpected server error, which a proxy in front of a down server gives).
fn server_answered(e: &ClientError) -> bool {
    matches!(e, ClientError::Api(kube::Error::Api(status)) if status.code < 500)
}

/// The node's client certificate manager; [`ClientCertificateManager::run`] returns only when the node has been
/// without a valid certificate for [`EXIT_AFTER`] (kubelet then exits).
pub struct ClientCertificateManager {
    /// The agent's shared API client: the CSR goes out with the current certificate, as kubelet files it.
    pub client: kube::Client,
    /// Switches that client to a new pair.
    pub rotating: RotatingClient,
    pub cert_dir: PathBuf,
    pub node_name: String,
}

impl ClientCertificateManager {
    pub async fn run(self) {
        let store = PairStore::client(&self.cert_dir);
        tracing::info!("kubelet-client: Certificate rotation is enabled");
        let current = || store.current().as_deref().and_then(|pem| node_pair_times(pem, &self.node_name));
        let mut last_valid = SystemTime::now();
        loop {
            let now = SystemTime::now();
            let times = current();
            if times.is_some_and(|t| now < t.not_after) {
                last_valid = now;
            }
            let deadline = match times {
                Some(t) => {
                    let deadline = rotation_deadline(t.not_before, t.not_after, jitter());
                    tracing::info!(
                        expiration = %jiff::Timestamp::try_from(t.not_after).unwrap_or_default(),
                        rotation_deadline = %jiff::Timestamp::try_from(deadline).unwrap_or_default(),
                        "kubelet-client: Certificate expiration is {:?} away, rotation deadline in {:?}",
                        t.not_after.duration_since(now).unwrap_or_default(),
                        deadline.duration_since(now).unwrap_or_default(),
                    );
                    deadline
                }
                None => now,
            };
            if let Ok(wait) = deadline.duration_since(now) {
                if !wait.is_zero() {
                    tracing::info!(wait = ?wait, "kubelet-client: Waiting for next certificate rotation");
                    tokio::time::sleep(wait).await;
                }
            }
            let mut failures = 0;
            while let Err(e) = self.rotate(&store).await {
                failures += 1;
                let now = SystemTime::now();
                if current().is_some_and(|t| now < t.not_after) {
                    last_valid = now;
                } else if must_exit(last_valid, now, server_answered(&e)) {
                    tracing::error!(
                        error = %e,
                        last_certificate_availability_time = %jiff::Timestamp::try_from(last_valid).unwrap_or_default(),
                        shutdown_threshold = ?EXIT_AFTER,
                        "kubelet-client: The currently active client certificate has expired and the server is responsive, exiting."
                    );
                    return;
                }
                let delay = retry_delay(failures, jitter());
                tracing::warn!(error = %e, retry_in = ?delay, "kubelet-client: certificate rotation failed");
                tokio::time::sleep(delay).await;
            }
        }
    }

    /// client-go's `rotateCerts`: a new key and CSR, the certificate stored, the client switched to it.
    async fn rotate(&self, store: &PairStore) -> Result<(), ClientError> {
        tracing::info!("kubelet-client: Rotating certificates");
        let (cert, key) = request_client_certificate(&self.client, &self.node_name, CERTIFICATE_WAIT_TIMEOUT).await?;
        let file = store.update(&cert, &key)?;
        tracing::info!(file = %file.display(), "kubelet-client: new client certificate stored");
        self.rotating.reload()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_falls_in_70_to_90_percent_of_the_lifetime() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let t1 = t0 + Duration::from_secs(1000);
        assert_eq!(rotation_deadline(t0, t1, 0.0), t0 + Duration::from_secs(700));
        assert_eq!(rotation_deadline(t0, t1, 0.5), t0 + Duration::from_secs(800));
        // Out-of-range jitter is held to the bounds; a certificate whose end precedes its start is due at once.
        assert_eq!(rotation_deadline(t0, t1, 7.0), t0 + Duration::from_secs(900));
        assert_eq!(rotation_deadline(t1, t0, 0.5), t1);
        for _ in 0..10_000 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j), "{j}");
            let d = rotation_deadline(t0, t1, j);
            assert!(d >= t0 + Duration::from_secs(700) && d < t0 + Duration::from_secs(900), "{d:?}");
        }
        // Not a constant: the deadlines of many nodes spread out.
        let spread: std::collections::BTreeSet<u64> = (0..100).map(|_| (jitter() * 1000.0) as u64).collect();
        assert!(spread.len() > 50, "{spread:?}");
    }

    #[test]
    fn without_a_valid_certificate_for_five_minutes_the_agent_exits_only_while_the_server_answers() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert!(!must_exit(t0, t0 + Duration::from_secs(299), true));
        assert!(must_exit(t0, t0 + EXIT_AFTER, true));
        assert!(!must_exit(t0, t0 + Duration::from_secs(3600), false), "an unreachable server is waited for");
        // A clock stepped back is no reason to exit.
        assert!(!must_exit(t0 + Duration::from_secs(600), t0, true));
        let status = |code| {
            ClientError::Api(kube::Error::Api(Box::new(kube::core::Status::failure("no", "Reason").with_code(code))))
        };
        assert!(server_answered(&status(401)), "an expired certificate is refused: the server answers");
        assert!(server_answered(&status(403)));
        assert!(!server_answered(&status(503)), "a proxy's answer for a server that is down");
        assert!(!server_answered(&ClientError::Bootstrap("timed out".into())));
    }

    #[test]
    fn failed_rotations_back_off_as_client_go_does() {
        let at = |n| retry_delay(n, 0.0).as_secs();
        assert_eq!([at(1), at(2), at(3), at(4), at(5), at(6), at(100)], [2, 4, 8, 16, 32, 32, 32]);
        assert_eq!(retry_delay(1, 1.0), Duration::from_millis(2200));
    }

    fn pair(cn: &str, org: &str) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::OrganizationName, org);
        dn.push(rcgen::DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.not_before = rcgen::date_time_ymd(2030, 1, 1);
        params.not_after = rcgen::date_time_ymd(2030, 1, 11);
        format!("{}{}", params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    #[test]
    fn only_the_nodes_own_certificate_waits_for_its_deadline() {
        let times = node_pair_times(&pair("system:node:n1", "system:nodes"), "n1").unwrap();
        assert_eq!(times.not_after.duration_since(times.not_before).unwrap(), Duration::from_secs(10 * 86400));
        assert!(node_pair_times(&pair("system:node:n2", "system:nodes"), "n1").is_none());
        assert!(node_pair_times(&pair("system:node:n1", "system:masters"), "n1").is_none());
        assert!(node_pair_times("not a pem", "n1").is_none());
    }
}
