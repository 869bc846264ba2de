//! What kubelet's garbage collectors ask of the runtime: every container with its creation time and image
//! (`getKubeletContainers`), image removal, and the sandbox image the runtime runs pods with.

use std::collections::HashMap;
use std::time::SystemTime;

use cri_proto::runtime::v1 as cri;

use crate::runtime::client::RUNTIME_REQUEST_TIMEOUT;
use crate::runtime::client::{container_state, image_spec, label, nanos_to_time, Runtime, RuntimeError};
use crate::runtime::labels;
use crate::runtime::ContainerRunState;

/// A container as the container garbage collector and image garbage collector see it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerListing {
    pub id: String,
    pub sandbox_id: String,
    pub pod_uid: String,
    /// The container's name in the pod (CRI metadata name).
    pub name: String,
    pub state: ContainerRunState,
    pub created_at: SystemTime,
    /// The image's ID (`sha256:…`), what `ListImages` calls an image's id.
    pub image_id: String,
    /// The pod's grace period as recorded on the container, for stopping one in an unknown state.
    pub termination_grace_period: Option<i64>,
}

impl Runtime {
    /// Every container this agent created, running or not.
    pub async fn list_all_containers(&self) -> Result<Vec<ContainerListing>, RuntimeError> {
        let selector = HashMap::from([(labels::MANAGED_BY.to_owned(), "true".to_owned())]);
        let filter = cri::ContainerFilter { label_selector: selector, ..Default::default() };
        let mut c = self.runtime.clone();
        let resp = self
            .call(
                "ListContainers",
                Some(RUNTIME_REQUEST_TIMEOUT),
                c.list_containers(cri::ListContainersRequest { filter: Some(filter) }),
            )
            .await?;
        Ok(resp
            .containers
            .into_iter()
            .map(|c| ContainerListing {
                pod_uid: label(&c.labels, labels::POD_UID),
                name: c.metadata.map(|m| m.name).unwrap_or_else(|| label(&c.labels, labels::CONTAINER_NAME)),
                state: container_state(c.state),
                created_at: nanos_to_time(c.created_at),
                // CRI v1.28 adds `image_id`; runtimes before it carry the ID in `image_ref`.
                image_id: if c.image_id.is_empty() { c.image_ref } else { c.image_id },
                termination_grace_period: c
                    .labels
                    .get(labels::POD_TERMINATION_GRACE_PERIOD)
                    .or_else(|| c.annotations.get(labels::POD_TERMINATION_GRACE_PERIOD))
                    .and_then(|v| v.parse().ok()),
                sandbox_id: c.pod_sandbox_id,
                id: c.id,
            })
            .collect())
    }

    /// The image IDs of every container in the runtime, this agent's or another CRI client's, running or not: an
    /// image any of them uses must stay (kubelet lists all of the runtime's containers for this).
    pub async fn image_ids_in_use(&self) -> Result<Vec<String>, RuntimeError> {
        let mut c = self.runtime.clone();
        let resp = self
            .call(
                "ListContainers",
                Some(RUNTIME_REQUEST_TIMEOUT),
                c.list_containers(cri::ListContainersRequest { filter: None }),
            )
            .await?;
        Ok(resp
            .containers
            .into_iter()
            .map(|c| if c.image_id.is_empty() { c.image_ref } else { c.image_id })
            .filter(|id| !id.is_empty())
            .collect())
    }

    /// CRI `RemoveImage`; an image already gone is not an error (the call is idempotent in CRI).
    pub async fn remove_image(&self, image: &str) -> Result<(), RuntimeError> {
        let mut c = self.images.clone();
        let r = self
            .call(
                "RemoveImage",
                Some(RUNTIME_REQUEST_TIMEOUT),
                c.remove_image(cri::RemoveImageRequest { image: Some(image_spec(image)) }),
            )
            .await;
        match r {
            Err(e) if e.is_not_found() => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// The image the runtime starts pod sandboxes from (containerd's `sandbox_image`, which its verbose CRI
    /// `Status` reports as `config.sandboxImage`). kubelet learns it from `--pod-infra-container-image`, which
    /// must match the runtime's own setting; asking the runtime cannot disagree with it. `None` when the runtime
    /// does not say.
    pub async fn sandbox_image(&self) -> Result<Option<String>, RuntimeError> {
        let mut c = self.runtime.clone();
        let resp =
            self.call("Status", Some(RUNTIME_REQUEST_TIMEOUT), c.status(cri::StatusRequest { verbose: true })).await?;
        Ok(sandbox_image_from_info(&resp.info))
    }
}

fn sandbox_image_from_info(info: &HashMap<String, String>) -> Option<String> {
    let config: serde_json::Value = serde_json::from_str(info.get("config")?).ok()?;
    config.get("sandboxImage")?.as_str().filter(|s| !s.is_empty()).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sandbox_image_comes_from_containerds_verbose_status() {
        let info = HashMap::from([(
            "config".to_owned(),
            r#"{"containerd":{"snapshotter":"overlayfs"},"sandboxImage":"127.0.0.1:5000/pause:3.9"}"#.to_owned(),
        )]);
        assert_eq!(sandbox_image_from_info(&info).as_deref(), Some("127.0.0.1:5000/pause:3.9"));
        assert_eq!(sandbox_image_from_info(&HashMap::new()), None);
        let broken = HashMap::from([("config".to_owned(), "{".to_owned())]);
        assert_eq!(sandbox_image_from_info(&broken), None);
    }
}
