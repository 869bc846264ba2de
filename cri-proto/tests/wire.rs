//! Wire-compatibility checks against the public CRI `runtime.v1` field numbers.
//!
//! Every expected byte sequence is built by hand from the (field number, wire type) pairs
//! of k8s.io/cri-api, so a wrong field number or type in our `api.proto` fails here.

use std::collections::HashMap;

use cri_proto::runtime::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatus, ImageSpec, LinuxContainerResources,
    LinuxPodSandboxConfig, ListPodSandboxResponse, NamespaceMode, PodSandboxConfig, PodSandboxMetadata,
    PodSandboxState, Signal, VersionResponse,
};
use prost::Message;

const VARINT: u64 = 0;
const LEN: u64 = 2;

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// A varint field; negative int32/int64 values are sign-extended to 64 bits as on the wire.
fn int_field(field: u64, v: i64) -> Vec<u8> {
    let mut out = varint((field << 3) | VARINT);
    out.extend(varint(v as u64));
    out
}

/// A length-delimited field (string, bytes, sub-message, map entry).
fn len_field(field: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = varint((field << 3) | LEN);
    out.extend(varint(payload.len() as u64));
    out.extend_from_slice(payload);
    out
}

fn str_field(field: u64, s: &str) -> Vec<u8> {
    len_field(field, s.as_bytes())
}

fn map_entry(field: u64, key: &str, value: &str) -> Vec<u8> {
    len_field(field, &[str_field(1, key), str_field(2, value)].concat())
}

#[test]
fn helpers_match_literal_bytes() {
    // ContainerMetadata{name: "app", attempt: 1}, written out byte by byte.
    let literal = [0x0a, 0x03, b'a', b'p', b'p', 0x10, 0x01];
    assert_eq!([str_field(1, "app"), int_field(2, 1)].concat(), literal);
    assert_eq!(int_field(7, 137), [0x38, 0x89, 0x01]);
    assert_eq!(int_field(5, -1).len(), 11);
}

#[test]
fn container_config_encodes_with_cri_field_numbers() {
    let config = ContainerConfig {
        metadata: Some(ContainerMetadata { name: "app".into(), attempt: 1 }),
        image: Some(ImageSpec { image: "busybox".into(), ..Default::default() }),
        command: vec!["sh".into()],
        labels: HashMap::from([("io.kubernetes.pod.name".into(), "web".into())]),
        log_path: "app/1.log".into(),
        tty: true,
        stop_signal: Signal::Sigterm as i32,
        ..Default::default()
    };
    let expected = [
        // metadata = 1 { name = 1, attempt = 2 }
        len_field(1, &[str_field(1, "app"), int_field(2, 1)].concat()),
        // image = 2 { image = 1 }
        len_field(2, &str_field(1, "busybox")),
        // command = 3
        str_field(3, "sh"),
        // labels = 9
        map_entry(9, "io.kubernetes.pod.name", "web"),
        // log_path = 11
        str_field(11, "app/1.log"),
        // tty = 14
        int_field(14, 1),
        // stop_signal = 18, SIGTERM = 23
        int_field(18, 23),
    ]
    .concat();
    assert_eq!(config.encode_to_vec(), expected);
}

#[test]
fn pod_sandbox_config_encodes_with_cri_field_numbers() {
    let config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "web".into(),
            uid: "1234".into(),
            namespace: "default".into(),
            attempt: 2,
        }),
        hostname: "web".into(),
        log_directory: "/var/log/pods/default_web_1234".into(),
        linux: Some(LinuxPodSandboxConfig { cgroup_parent: "/kubepods/pod1234".into(), ..Default::default() }),
        ..Default::default()
    };
    let expected = [
        // metadata = 1 { name = 1, uid = 2, namespace = 3, attempt = 4 }
        len_field(1, &[str_field(1, "web"), str_field(2, "1234"), str_field(3, "default"), int_field(4, 2)].concat()),
        // hostname = 2
        str_field(2, "web"),
        // log_directory = 3
        str_field(3, "/var/log/pods/default_web_1234"),
        // linux = 8 { cgroup_parent = 1 }
        len_field(8, &str_field(1, "/kubepods/pod1234")),
    ]
    .concat();
    assert_eq!(config.encode_to_vec(), expected);
}

#[test]
fn linux_container_resources_encode_with_cri_field_numbers() {
    let resources = LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 50_000,
        cpu_shares: 512,
        memory_limit_in_bytes: 64 << 20,
        oom_score_adj: -997,
        cpuset_cpus: "0-1".into(),
        unified: HashMap::from([("memory.high".into(), "60000000".into())]),
        memory_swap_limit_in_bytes: 64 << 20,
        ..Default::default()
    };
    let expected = [
        int_field(1, 100_000),
        int_field(2, 50_000),
        int_field(3, 512),
        int_field(4, 64 << 20),
        int_field(5, -997),
        str_field(6, "0-1"),
        map_entry(9, "memory.high", "60000000"),
        int_field(10, 64 << 20),
    ]
    .concat();
    assert_eq!(resources.encode_to_vec(), expected);
}

#[test]
fn container_status_decodes_from_cri_field_numbers() {
    let finished_at: i64 = 1_700_000_000_123_456_789;
    let wire = [
        str_field(1, "c0ffee"),
        len_field(2, &[str_field(1, "app"), int_field(2, 3)].concat()),
        // state = 3, CONTAINER_EXITED = 2
        int_field(3, 2),
        int_field(4, finished_at - 2_000),
        int_field(5, finished_at - 1_000),
        int_field(6, finished_at),
        int_field(7, 137),
        len_field(8, &str_field(1, "busybox")),
        str_field(9, "sha256:abc"),
        str_field(10, "OOMKilled"),
        str_field(11, "memory limit exceeded"),
        map_entry(12, "io.kubernetes.container.name", "app"),
        str_field(15, "/var/log/pods/x/app/3.log"),
        str_field(17, "sha256:abc"),
    ]
    .concat();
    let status = ContainerStatus::decode(wire.as_slice()).expect("decode ContainerStatus");
    assert_eq!(status.id, "c0ffee");
    assert_eq!(status.metadata.as_ref().map(|m| m.attempt), Some(3));
    assert_eq!(status.state(), ContainerState::ContainerExited);
    assert_eq!(status.created_at, finished_at - 2_000);
    assert_eq!(status.started_at, finished_at - 1_000);
    assert_eq!(status.finished_at, finished_at);
    assert_eq!(status.exit_code, 137);
    assert_eq!(status.image.as_ref().map(|i| i.image.as_str()), Some("busybox"));
    assert_eq!(status.image_ref, "sha256:abc");
    assert_eq!(status.reason, "OOMKilled");
    assert_eq!(status.message, "memory limit exceeded");
    assert_eq!(status.labels["io.kubernetes.container.name"], "app");
    assert_eq!(status.log_path, "/var/log/pods/x/app/3.log");
    assert_eq!(status.image_id, "sha256:abc");
    // And back: prost writes fields in field-number order, like the hand-built input.
    assert_eq!(status.encode_to_vec(), wire);
}

#[test]
fn version_and_list_pod_sandbox_responses_decode() {
    let wire = [str_field(1, "0.1.0"), str_field(2, "containerd"), str_field(3, "1.6.20"), str_field(4, "v1")].concat();
    let version = VersionResponse::decode(wire.as_slice()).expect("decode VersionResponse");
    assert_eq!(
        (
            version.version.as_str(),
            version.runtime_name.as_str(),
            version.runtime_version.as_str(),
            version.runtime_api_version.as_str()
        ),
        ("0.1.0", "containerd", "1.6.20", "v1")
    );

    // ListPodSandboxResponse.items = 1 of PodSandbox
    // { id = 1, metadata = 2, state = 3 (SANDBOX_NOTREADY = 1), created_at = 4, labels = 5,
    //   runtime_handler = 7 }
    let sandbox = [
        str_field(1, "sb1"),
        len_field(2, &[str_field(1, "web"), str_field(3, "default")].concat()),
        int_field(3, 1),
        int_field(4, 42),
        map_entry(5, "app", "web"),
        str_field(7, "runc"),
    ]
    .concat();
    let list =
        ListPodSandboxResponse::decode(len_field(1, &sandbox).as_slice()).expect("decode ListPodSandboxResponse");
    let [item] = list.items.as_slice() else {
        panic!("expected one sandbox, got {:?}", list.items);
    };
    assert_eq!(item.id, "sb1");
    assert_eq!(item.state(), PodSandboxState::SandboxNotready);
    assert_eq!(item.created_at, 42);
    assert_eq!(item.labels["app"], "web");
    assert_eq!(item.runtime_handler, "runc");
    let metadata = item.metadata.as_ref().expect("metadata");
    assert_eq!((metadata.name.as_str(), metadata.namespace.as_str()), ("web", "default"));
}

#[test]
fn enum_values_match_cri() {
    assert_eq!(ContainerState::ContainerCreated as i32, 0);
    assert_eq!(ContainerState::ContainerRunning as i32, 1);
    assert_eq!(ContainerState::ContainerExited as i32, 2);
    assert_eq!(ContainerState::ContainerUnknown as i32, 3);
    assert_eq!(PodSandboxState::SandboxReady as i32, 0);
    assert_eq!(NamespaceMode::Node as i32, 2);
    assert_eq!(Signal::Sigkill as i32, 13);
}
