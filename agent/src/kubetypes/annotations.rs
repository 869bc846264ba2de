//! The pod sources and the annotations kubelet puts on the pods they give (pkg/kubelet/types/pod_update.go).

/// `kubernetes.io/config.source` of pods from the static pod folder and from the API server.
pub const FILE_SOURCE: &str = "file";
pub const API_SOURCE: &str = "api";
pub const CONFIG_HASH_ANNOTATION: &str = "kubernetes.io/config.hash";
pub const CONFIG_SOURCE_ANNOTATION: &str = "kubernetes.io/config.source";
pub const CONFIG_MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
