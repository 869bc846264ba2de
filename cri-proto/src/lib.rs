//! rkubelet's Kubernetes CRI (`runtime.v1`) protocol types and gRPC clients.
//!
//! The messages and the `RuntimeService` / `ImageService` clients are generated at build
//! time from `proto/runtime/v1/api.proto`, our own wire-compatible definition of the CRI
//! API. Only clients are generated: rkubelet talks to a container runtime, it never serves
//! the CRI itself.
//!
//! ```no_run
//! use cri_proto::runtime::v1::runtime_service_client::RuntimeServiceClient;
//! # fn check(_: RuntimeServiceClient<tonic::transport::Channel>) {}
//! ```

/// The `runtime` proto package.
pub mod runtime {
    /// The `runtime.v1` proto package (generated code).
    #[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all, unreachable_pub)]
    pub mod v1 {
        tonic::include_proto!("runtime.v1");
    }
}

/// The CRI API version string to send in `VersionRequest.version`.
pub const CRI_API_VERSION: &str = "v1";

impl std::fmt::Debug for runtime::v1::AuthConfig {
    /// Shows which credentials are present without revealing them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn redacted(s: &str) -> &'static str {
            if s.is_empty() {
                ""
            } else {
                "<redacted>"
            }
        }
        f.debug_struct("AuthConfig")
            .field("username", &self.username)
            .field("password", &redacted(&self.password))
            .field("auth", &redacted(&self.auth))
            .field("server_address", &self.server_address)
            .field("identity_token", &redacted(&self.identity_token))
            .field("registry_token", &redacted(&self.registry_token))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::runtime::v1::AuthConfig;

    #[test]
    fn auth_config_debug_hides_secrets() {
        let auth = AuthConfig {
            username: "alice".into(),
            password: "hunter2".into(),
            registry_token: "tok".into(),
            ..Default::default()
        };
        let shown = format!("{auth:?}");
        assert!(shown.contains("alice"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(!shown.contains("hunter2") && !shown.contains("tok\""), "{shown}");
    }
}
