//! Talks to a CRI runtime over its Unix socket: prints `Version`, the pod sandboxes and the
//! image filesystems.
//!
//! ```sh
//! cargo run -p cri-proto --example cri_version -- /run/containerd/containerd.sock
//! ```

use std::error::Error;

use cri_proto::runtime::v1::{
    image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient, ImageFsInfoRequest,
    ListPodSandboxRequest, VersionRequest,
};
use cri_proto::CRI_API_VERSION;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// A channel to the gRPC server on `socket`; the endpoint URI is a placeholder that only
/// supplies the HTTP/2 `:authority`.
async fn unix_channel(socket: String) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { UnixStream::connect(socket).await.map(TokioIo::new) }
        }))
        .await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let socket = std::env::args().nth(1).unwrap_or_else(|| "/run/containerd/containerd.sock".to_owned());
    let channel = unix_channel(socket).await?;
    let mut runtime = RuntimeServiceClient::new(channel.clone());
    let mut images = ImageServiceClient::new(channel);

    let version = runtime.version(VersionRequest { version: CRI_API_VERSION.to_owned() }).await?.into_inner();
    println!(
        "runtime {} {} (CRI {}, version field {:?})",
        version.runtime_name, version.runtime_version, version.runtime_api_version, version.version
    );

    let sandboxes = runtime.list_pod_sandbox(ListPodSandboxRequest::default()).await?.into_inner().items;
    println!("{} pod sandbox(es)", sandboxes.len());
    for sandbox in &sandboxes {
        let name = sandbox.metadata.as_ref().map_or("?", |m| m.name.as_str());
        println!("  {} {name} {:?}", sandbox.id, sandbox.state());
    }

    let fs = images.image_fs_info(ImageFsInfoRequest {}).await?.into_inner();
    for usage in &fs.image_filesystems {
        let mountpoint = usage.fs_id.as_ref().map_or("?", |id| id.mountpoint.as_str());
        let used = usage.used_bytes.as_ref().map_or(0, |v| v.value);
        let inodes = usage.inodes_used.as_ref().map_or(0, |v| v.value);
        println!("image fs {mountpoint}: {used} bytes, {inodes} inodes used");
    }
    Ok(())
}
