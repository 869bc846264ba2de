//! The grpc probe: `grpc.health.v1.Health/Check` with the probe's `service`, kubelet's `grpc.Prober` and its
//! messages.

use std::time::Duration;

use tonic::codegen::http::uri::PathAndQuery;

use crate::probes::handlers::{go_timeout, ProbeOutput};
use crate::probes::state::Outcome;

#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    pub service: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckResponse {
    #[prost(enumeration = "ServingStatus", tag = "1")]
    pub status: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ServingStatus {
    Unknown = 0,
    Serving = 1,
    NotServing = 2,
    ServiceUnknown = 3,
}

impl ServingStatus {
    /// The enum's name in the proto, as Go prints it.
    pub fn proto_name(self) -> &'static str {
        match self {
            ServingStatus::Unknown => "UNKNOWN",
            ServingStatus::Serving => "SERVING",
            ServingStatus::NotServing => "NOT_SERVING",
            ServingStatus::ServiceUnknown => "SERVICE_UNKNOWN",
        }
    }
}

pub const CHECK_PATH: &str = "/grpc.health.v1.Health/Check";

pub async fn check(host: &str, port: u16, service: &str, timeout: Duration) -> ProbeOutput {
    let addr = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let fail = |m: String| ProbeOutput { outcome: Outcome::Failure, output: m };
    let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{addr}")) {
        Ok(e) => e.connect_timeout(timeout).timeout(timeout),
        Err(e) => return fail(format!("error: failed to connect service at {addr:?}: {e}")),
    };
    let channel = match tokio::time::timeout(timeout, endpoint.connect()).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return fail(format!("error: failed to connect service at {addr:?}: {e}")),
        Err(_) => {
            return fail(format!(
                "timeout: failed to connect service {addr:?} within {}: context deadline exceeded",
                go_timeout(timeout)
            ))
        }
    };
    let mut grpc = tonic::client::Grpc::new(channel);
    let call = async {
        grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let codec = tonic_prost::ProstCodec::<HealthCheckRequest, HealthCheckResponse>::default();
        let request = tonic::Request::new(HealthCheckRequest { service: service.to_owned() });
        grpc.unary(request, PathAndQuery::from_static(CHECK_PATH), codec).await
    };
    let response = match tokio::time::timeout(timeout, call).await {
        Err(_) => return fail(format!("timeout: health rpc did not complete within {}", go_timeout(timeout))),
        Ok(Err(status)) => {
            return fail(match status.code() {
                tonic::Code::Unimplemented => format!(
                    "error: this server does not implement the grpc health protocol (grpc.health.v1.Health): {}",
                    status.message()
                ),
                tonic::Code::DeadlineExceeded => {
                    format!("timeout: health rpc did not complete within {}", go_timeout(timeout))
                }
                code => {
                    format!("error: health rpc probe failed: rpc error: code = {code:?} desc = {}", status.message())
                }
            })
        }
        Ok(Ok(r)) => r.into_inner(),
    };
    let status = ServingStatus::try_from(response.status).unwrap_or(ServingStatus::Unknown);
    if status != ServingStatus::Serving {
        return fail(format!("service unhealthy (responded with {:?})", status.proto_name()));
    }
    ProbeOutput { outcome: Outcome::Success, output: "service is healthy".into() }
}
