//! kubelet's serving certificate manager with `serverTLSBootstrap`: the certificate in `kubelet-server-current.pem`
//! while it is valid and before its rotation time, else a new one requested from the cluster; then wait for the
//! rotation time and request again.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::api::certificate::{jitter, rotation_deadline};
use crate::api::serving::{request_serving_certificate, SERVING_CERT_FILE};
use crate::server::tls::{pem_pair, validity, ServingCerts};

/// A failed request is tried again after this long.
const RETRY: Duration = Duration::from_secs(30);

pub struct ServingCertificateManager {
    pub client: kube::Client,
    pub certs: Arc<ServingCerts>,
    pub node_name: String,
    pub hostname: String,
    pub ips: Vec<String>,
    pub cert_dir: PathBuf,
}

impl ServingCertificateManager {
    /// Never returns.
    pub async fn run(self) {
        let path = self.cert_dir.join(SERVING_CERT_FILE);
        let mut text = std::fs::read_to_string(&path).ok();
        loop {
            let now = SystemTime::now();
            // The saved certificate serves until its rotation time.
            let usable = text.as_deref().and_then(|t| pem_pair(t, &path).ok()).and_then(|pair| {
                let (from, to) = validity(&pair.chain)?;
                let deadline = rotation_deadline(from, to, jitter());
                (now < deadline).then_some((pair, deadline))
            });
            match usable {
                Some((pair, deadline)) => {
                    if let Err(e) = self.certs.set(pair) {
                        tracing::error!(error = %e, "cannot use the serving certificate");
                    }
                    let wait = deadline.duration_since(now).unwrap_or_default();
                    tracing::info!(rotation_in = ?wait, "serving certificate in use");
                    tokio::time::sleep(wait).await;
                    text = None;
                }
                None => {
                    match request_serving_certificate(
                        &self.client,
                        &self.node_name,
                        &self.hostname,
                        &self.ips,
                        &self.cert_dir,
                    )
                    .await
                    {
                        Ok(t) => text = Some(t),
                        Err(e) => {
                            tracing::warn!(error = %e, retry_in = ?RETRY, "serving certificate request failed");
                            tokio::time::sleep(RETRY).await;
                        }
                    }
                }
            }
        }
    }
}
