//! `spec.activeDeadlineSeconds`, kubelet's `activeDeadlineHandler`: a pod active on the node longer than its
//! deadline (counted from its start time) is failed with reason `DeadlineExceeded` and its containers are killed.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Pod, PodStatus};

use crate::kubetypes::spec;
use crate::pods::status::PHASE_FAILED;

pub const REASON_DEADLINE_EXCEEDED: &str = "DeadlineExceeded";
pub const MESSAGE_DEADLINE_EXCEEDED: &str = "Pod was active on the node longer than the specified deadline";

/// How long the pod may still be active: `None` without a deadline, zero once it has passed.
pub fn remaining(pod: &Pod, start_time: SystemTime, now: SystemTime) -> Option<Duration> {
    let seconds = spec::spec(pod).active_deadline_seconds?;
    let allowed = Duration::from_secs(u64::try_from(seconds).unwrap_or(0));
    let active = now.duration_since(start_time).unwrap_or_default();
    Some(allowed.saturating_sub(active))
}

/// The status of a pod failed for its deadline, as kubelet overrides the computed one.
pub fn fail(status: &mut PodStatus) {
    status.phase = Some(PHASE_FAILED.into());
    status.reason = Some(REASON_DEADLINE_EXCEEDED.into());
    status.message = Some(MESSAGE_DEADLINE_EXCEEDED.into());
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    #[test]
    fn the_deadline_counts_from_the_start_time() {
        let mut pod = Pod { spec: Some(PodSpec::default()), ..Default::default() };
        assert_eq!(remaining(&pod, t(0), t(1000)), None, "no deadline");
        pod.spec.as_mut().unwrap().active_deadline_seconds = Some(5);
        assert_eq!(remaining(&pod, t(0), t(3)), Some(Duration::from_secs(2)));
        assert_eq!(remaining(&pod, t(0), t(5)), Some(Duration::ZERO), "at the deadline it has passed");
        assert_eq!(remaining(&pod, t(0), t(50)), Some(Duration::ZERO));
        let mut status = PodStatus { phase: Some("Running".into()), ..Default::default() };
        fail(&mut status);
        assert_eq!(status.phase.as_deref(), Some("Failed"));
        assert_eq!(status.reason.as_deref(), Some("DeadlineExceeded"));
        assert_eq!(status.message.as_deref(), Some("Pod was active on the node longer than the specified deadline"));
    }
}
