//! CRI calls behind the kubelet server: a container's log file, the runtime streaming server's URLs for exec,
//! attach and port-forward, a synchronous exec for `/run`, and reopening a rotated log.

use cri_proto::runtime::v1 as cri;

use crate::runtime::client::{Runtime, RuntimeError, RUNTIME_REQUEST_TIMEOUT};
use crate::runtime::ContainerRunState;

/// The streams an exec or attach session carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamOptions {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// What a synchronous exec produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

impl Runtime {
    /// The container's CRI log file and whether it is running (kubelet reads its logs from the runtime's path).
    pub async fn container_log_path(&self, container_id: &str) -> Result<(String, ContainerRunState), RuntimeError> {
        let mut c = self.runtime.clone();
        let resp = self
            .call(
                "ContainerStatus",
                Some(RUNTIME_REQUEST_TIMEOUT),
                c.container_status(cri::ContainerStatusRequest { container_id: container_id.into(), verbose: false }),
            )
            .await?;
        let s = resp.status.ok_or(RuntimeError::Incomplete { op: "ContainerStatus", field: "status" })?;
        let state = match cri::ContainerState::try_from(s.state) {
            Ok(cri::ContainerState::ContainerRunning) => ContainerRunState::Running,
            Ok(cri::ContainerState::ContainerCreated) => ContainerRunState::Created,
            Ok(cri::ContainerState::ContainerExited) => ContainerRunState::Exited,
            _ => ContainerRunState::Unknown,
        };
        Ok((s.log_path, state))
    }

    /// The streaming server's URL for an exec session (CRI `Exec`).
    pub async fn exec_url(&self, container_id: &str, cmd: &[String], o: StreamOptions) -> Result<String, RuntimeError> {
        let mut c = self.runtime.clone();
        let req = cri::ExecRequest {
            container_id: container_id.into(),
            cmd: cmd.to_vec(),
            tty: o.tty,
            stdin: o.stdin,
            stdout: o.stdout,
            stderr: o.stderr,
            ..Default::default()
        };
        Ok(self.call("Exec", Some(RUNTIME_REQUEST_TIMEOUT), c.exec(req)).await?.url)
    }

    /// The streaming server's URL for attaching to a container (CRI `Attach`).
    pub async fn attach_url(&self, container_id: &str, o: StreamOptions) -> Result<String, RuntimeError> {
        let mut c = self.runtime.clone();
        let req = cri::AttachRequest {
            container_id: container_id.into(),
            stdin: o.stdin,
            tty: o.tty,
            stdout: o.stdout,
            stderr: o.stderr,
            ..Default::default()
        };
        Ok(self.call("Attach", Some(RUNTIME_REQUEST_TIMEOUT), c.attach(req)).await?.url)
    }

    /// The streaming server's URL for forwarding ports of a pod sandbox (CRI `PortForward`).
    pub async fn port_forward_url(&self, sandbox_id: &str, ports: &[i32]) -> Result<String, RuntimeError> {
        let mut c = self.runtime.clone();
        let req = cri::PortForwardRequest { pod_sandbox_id: sandbox_id.into(), port: ports.to_vec() };
        Ok(self.call("PortForward", Some(RUNTIME_REQUEST_TIMEOUT), c.port_forward(req)).await?.url)
    }

    /// Runs a command in a container and waits for it (CRI `ExecSync`); `timeout_seconds` 0 waits indefinitely.
    pub async fn exec_sync(
        &self,
        container_id: &str,
        cmd: &[String],
        timeout_seconds: i64,
    ) -> Result<ExecOutput, RuntimeError> {
        let mut c = self.runtime.clone();
        let req =
            cri::ExecSyncRequest { container_id: container_id.into(), cmd: cmd.to_vec(), timeout: timeout_seconds };
        let deadline = (timeout_seconds > 0)
            .then(|| RUNTIME_REQUEST_TIMEOUT + std::time::Duration::from_secs(timeout_seconds as u64));
        let r = self.call("ExecSync", deadline, c.exec_sync(req)).await?;
        Ok(ExecOutput { stdout: r.stdout, stderr: r.stderr, exit_code: r.exit_code })
    }

    /// Asks the runtime to reopen a container's log file after it was rotated (CRI `ReopenContainerLog`).
    pub async fn reopen_container_log(&self, container_id: &str) -> Result<(), RuntimeError> {
        let mut c = self.runtime.clone();
        let req = cri::ReopenContainerLogRequest { container_id: container_id.into() };
        self.call("ReopenContainerLog", Some(RUNTIME_REQUEST_TIMEOUT), c.reopen_container_log(req)).await.map(|_| ())
    }
}
