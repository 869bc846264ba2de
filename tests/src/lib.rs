//! Integration-test harness for rkubelet.
//!
//! * [`images`]: the test images (busybox, pause) built by `tests/scripts/build-images.sh`
//!   and served by a local registry on 127.0.0.1:5000.
//! * [`agent`]: an rkubelet process on a private containerd, with its manifest folder and read-only API.
//! * [`containerd`]: private, disposable containerd instances with the CRI plugin.
//! * [`apiserver`]: an in-process Kubernetes API-server double; [`apiserver::Cluster`] picks it or a real cluster.
//! * [`grpc_image`]: an image with the gRPC health server used by the grpc probe tests.
//! * [`oracle`]: the Go kubelet from the kit as the reference node, and the views compared with it.
//! * [`proxy`]: a TCP relay to the API server that can be cut, to stage outages.

pub mod agent;
pub mod api_node;
pub mod apiserver;
pub mod containerd;
pub mod grpc_image;
pub mod images;
pub mod kit;
pub mod oracle;
pub mod proxy;
