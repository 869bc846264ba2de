//! The verdict of an admit handler that refuses a pod (kubelet's `lifecycle.PodAdmitResult`).

use std::borrow::Cow;

use k8s_openapi::api::core::v1::{Pod, PodStatus};

use crate::kubetypes::qos::pod_qos_class;
use crate::kubetypes::spec;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Cow<'static, str>,
    pub message: String,
}

impl Rejection {
    /// kubelet's `rejectPod` status: Failed, the reason, and the message prefixed as kubelet does.
    pub fn status(&self, pod: &Pod) -> PodStatus {
        PodStatus {
            phase: Some("Failed".into()),
            reason: Some(self.reason.to_string()),
            message: Some(format!("Pod was rejected: {}", self.message)),
            qos_class: Some(pod_qos_class(spec::spec(pod)).as_str().to_owned()),
            ..Default::default()
        }
    }
}
