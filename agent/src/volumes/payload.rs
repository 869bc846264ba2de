//! The files of configMap, secret, downwardAPI and projected volumes, as kubelet's `MakePayload` and
//! `CollectData` compute them from the objects the volume refers to. Pure: the objects are fetched first.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, DownwardAPIVolumeFile, KeyToPath, Pod, ProjectedVolumeSource, Secret};

use crate::volumes::atomic_writer::{FileProjection, Payload};
use crate::pods::env::{container_resource_value, pod_field_value, Lookup, NodeAllocatable};
use crate::pods::spec;

/// The API's default `defaultMode` (0644).
pub const DEFAULT_MODE: i32 = 0o644;

/// The objects a pod's volumes refer to, by name in the pod's namespace; `None` without an API server.
#[derive(Debug, Default)]
pub struct Objects {
    pub config_maps: BTreeMap<String, Lookup<ConfigMap>>,
    pub secrets: BTreeMap<String, Lookup<Secret>>,
}

fn mode(m: Option<i32>, default_mode: i32) -> u32 {
    (m.unwrap_or(default_mode) & 0o7777) as u32
}

/// An object for a volume: `Ok(None)` when it is missing and optional (the volume gets what exists, or nothing).
fn object<'a, T>(
    objects: Option<&'a BTreeMap<String, Lookup<T>>>,
    kind: &str,
    name: &str,
    optional: bool,
) -> Result<Option<&'a T>, String> {
    match objects.map(|o| o.get(name)) {
        None => Err(format!("cannot get {kind} {name:?}: the node runs without an API server")),
        Some(Some(Lookup::Found(o))) => Ok(Some(o)),
        Some(Some(Lookup::NotFound) | None) if optional => Ok(None),
        Some(Some(Lookup::NotFound) | None) => Err(format!("{kind} {name:?} not found")),
        Some(Some(Lookup::Failed(e))) => Err(e.clone()),
    }
}

/// `configmap.MakePayload`.
pub fn config_map_payload(
    cm: Option<&ConfigMap>,
    items: Option<&[KeyToPath]>,
    default_mode: i32,
    optional: bool,
) -> Result<Payload, String> {
    let string_data = cm.and_then(|c| c.data.as_ref());
    let binary_data = cm.and_then(|c| c.binary_data.as_ref());
    let get = |key: &str| -> Option<Vec<u8>> {
        string_data
            .and_then(|d| d.get(key))
            .map(|s| s.as_bytes().to_vec())
            .or_else(|| binary_data.and_then(|d| d.get(key)).map(|b| b.0.clone()))
    };
    let mut payload = Payload::new();
    match items.filter(|i| !i.is_empty()) {
        None => {
            for (k, v) in string_data.into_iter().flatten() {
                payload
                    .insert(k.clone(), FileProjection { data: v.as_bytes().to_vec(), mode: mode(None, default_mode) });
            }
            for (k, v) in binary_data.into_iter().flatten() {
                payload.insert(k.clone(), FileProjection { data: v.0.clone(), mode: mode(None, default_mode) });
            }
        }
        Some(items) => {
            for ktp in items {
                let Some(data) = get(&ktp.key) else {
                    if optional {
                        continue;
                    }
                    return Err(format!("configmap references non-existent config key: {}", ktp.key));
                };
                payload.insert(ktp.path.clone(), FileProjection { data, mode: mode(ktp.mode, default_mode) });
            }
        }
    }
    Ok(payload)
}

/// `secret.MakePayload`.
pub fn secret_payload(
    secret: Option<&Secret>,
    items: Option<&[KeyToPath]>,
    default_mode: i32,
    optional: bool,
) -> Result<Payload, String> {
    let data = secret.and_then(|s| s.data.as_ref());
    let mut payload = Payload::new();
    match items.filter(|i| !i.is_empty()) {
        None => {
            for (k, v) in data.into_iter().flatten() {
                payload.insert(k.clone(), FileProjection { data: v.0.clone(), mode: mode(None, default_mode) });
            }
        }
        Some(items) => {
            for ktp in items {
                let Some(v) = data.and_then(|d| d.get(&ktp.key)) else {
                    if optional {
                        continue;
                    }
                    return Err(format!("references non-existent secret key: {}", ktp.key));
                };
                payload
                    .insert(ktp.path.clone(), FileProjection { data: v.0.clone(), mode: mode(ktp.mode, default_mode) });
            }
        }
    }
    Ok(payload)
}

/// `utilerrors.NewAggregate(...).Error()`.
fn aggregate(errors: Vec<String>) -> Result<(), String> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.into_iter().next().unwrap_or_default()),
        _ => Err(format!("[{}]", errors.join(", "))),
    }
}

/// `downwardapi.CollectData`.
pub fn downward_api_payload(
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    default_mode: i32,
    allocatable: NodeAllocatable,
) -> Result<Payload, String> {
    let mut payload = Payload::new();
    let mut errors = Vec::new();
    for item in items {
        let path = item.path.trim_end_matches('/').to_owned();
        let value = if let Some(f) = &item.field_ref {
            pod_field_value(pod, &f.field_path)
        } else if let Some(r) = &item.resource_field_ref {
            let name = r.container_name.as_deref().unwrap_or_default();
            match spec::spec(pod).containers.iter().chain(spec::init_containers(pod)).find(|c| c.name == name) {
                Some(c) => container_resource_value(r, c, allocatable),
                None => Err(format!("container {name} not found")),
            }
        } else {
            Ok(String::new())
        };
        match value {
            Ok(v) => {
                payload.insert(path, FileProjection { data: v.into_bytes(), mode: mode(item.mode, default_mode) });
            }
            Err(e) => errors.push(e),
        }
    }
    aggregate(errors).map(|()| payload)
}

/// The projected volume's files. `tokens[i]` is the token fetched for `sources[i]` when it is a
/// serviceAccountToken projection. `fs_group` makes the token file 0600 before the ownership change, as kubelet.
pub fn projected_payload(
    pod: &Pod,
    source: &ProjectedVolumeSource,
    objects: Option<&Objects>,
    tokens: &BTreeMap<usize, Result<String, String>>,
    allocatable: NodeAllocatable,
    fs_group: bool,
) -> Result<Payload, String> {
    let default_mode = source.default_mode.unwrap_or(DEFAULT_MODE);
    let mut payload = Payload::new();
    let mut errors = Vec::new();
    for (i, s) in source.sources.iter().flatten().enumerate() {
        let part = if let Some(cm) = &s.config_map {
            let optional = cm.optional.unwrap_or(false);
            object(objects.map(|o| &o.config_maps), "configmap", &cm.name, optional)
                .and_then(|c| config_map_payload(c, cm.items.as_deref(), default_mode, optional))
        } else if let Some(sec) = &s.secret {
            let optional = sec.optional.unwrap_or(false);
            object(objects.map(|o| &o.secrets), "secret", &sec.name, optional)
                .and_then(|o| secret_payload(o, sec.items.as_deref(), default_mode, optional))
        } else if let Some(d) = &s.downward_api {
            downward_api_payload(pod, d.items.as_deref().unwrap_or_default(), default_mode, allocatable)
        } else if let Some(t) = &s.service_account_token {
            let mode = if fs_group { 0o600 } else { mode(None, default_mode) };
            match tokens.get(&i) {
                Some(Ok(token)) => {
                    Ok(Payload::from([(t.path.clone(), FileProjection { data: token.as_bytes().to_vec(), mode })]))
                }
                Some(Err(e)) => Err(e.clone()),
                None => Err("cannot setup projected volume: no token was requested".into()),
            }
        } else {
            Ok(Payload::new())
        };
        match part {
            Ok(p) => payload.extend(p),
            Err(e) => errors.push(e),
        }
    }
    aggregate(errors).map(|()| payload)
}

/// The configMap volume's files, from the fetched objects.
pub fn config_map_volume(
    objects: Option<&Objects>,
    name: &str,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    optional: bool,
) -> Result<Payload, String> {
    let cm = object(objects.map(|o| &o.config_maps), "configmap", name, optional)?;
    config_map_payload(cm, items, default_mode.unwrap_or(DEFAULT_MODE), optional)
}

/// The secret volume's files, from the fetched objects.
pub fn secret_volume(
    objects: Option<&Objects>,
    name: &str,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    optional: bool,
) -> Result<Payload, String> {
    let s = object(objects.map(|o| &o.secrets), "secret", name, optional)?;
    secret_payload(s, items, default_mode.unwrap_or(DEFAULT_MODE), optional)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ConfigMapProjection, Container, DownwardAPIProjection, ObjectFieldSelector, PodSpec, ResourceFieldSelector,
        SecretProjection, ServiceAccountTokenProjection, VolumeProjection,
    };
    use k8s_openapi::ByteString;

    fn files(p: &Payload) -> Vec<(String, String, u32)> {
        p.iter().map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.data).into_owned(), v.mode)).collect()
    }

    fn cm() -> ConfigMap {
        ConfigMap {
            data: Some(BTreeMap::from([("a".into(), "1".into()), ("b".into(), "2".into())])),
            binary_data: Some(BTreeMap::from([("bin".into(), ByteString(vec![0, 1]))])),
            ..Default::default()
        }
    }

    fn ktp(key: &str, path: &str, mode: Option<i32>) -> KeyToPath {
        KeyToPath { key: key.into(), path: path.into(), mode }
    }

    #[test]
    fn config_map_items_modes_and_optional_keys() {
        let all = config_map_payload(Some(&cm()), None, 0o644, false).unwrap();
        assert_eq!(all.keys().collect::<Vec<_>>(), ["a", "b", "bin"]);
        assert_eq!(all["bin"].data, vec![0, 1]);
        let items = [ktp("a", "dir/one", Some(0o400)), ktp("b", "two", None)];
        let some = config_map_payload(Some(&cm()), Some(&items), 0o440, false).unwrap();
        assert_eq!(files(&some), vec![("dir/one".into(), "1".into(), 0o400), ("two".into(), "2".into(), 0o440)]);
        let missing = [ktp("nope", "x", None)];
        assert_eq!(
            config_map_payload(Some(&cm()), Some(&missing), 0o644, false).unwrap_err(),
            "configmap references non-existent config key: nope"
        );
        assert!(config_map_payload(Some(&cm()), Some(&missing), 0o644, true).unwrap().is_empty());

        let objects =
            Objects { config_maps: BTreeMap::from([("gone".into(), Lookup::NotFound)]), ..Default::default() };
        assert_eq!(
            config_map_volume(Some(&objects), "gone", None, None, false).unwrap_err(),
            "configmap \"gone\" not found"
        );
        assert!(config_map_volume(Some(&objects), "gone", None, None, true).unwrap().is_empty());
    }

    #[test]
    fn secret_items() {
        let s = Secret {
            data: Some(BTreeMap::from([("user".into(), ByteString(b"admin".to_vec()))])),
            ..Default::default()
        };
        let p = secret_payload(Some(&s), None, 0o400, false).unwrap();
        assert_eq!(files(&p), vec![("user".into(), "admin".into(), 0o400)]);
        let missing = [ktp("pw", "pw", None)];
        assert_eq!(
            secret_payload(Some(&s), Some(&missing), 0o644, false).unwrap_err(),
            "references non-existent secret key: pw"
        );
    }

    fn pod() -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some("web".into());
        p.metadata.namespace = Some("prod".into());
        p.metadata.labels = Some(BTreeMap::from([("b".into(), "2".into()), ("a".into(), "1".into())]));
        p.spec = Some(PodSpec {
            containers: vec![Container { name: "app".into(), ..Default::default() }],
            ..Default::default()
        });
        p
    }

    fn field_file(path: &str, field: &str) -> DownwardAPIVolumeFile {
        DownwardAPIVolumeFile {
            path: path.into(),
            field_ref: Some(ObjectFieldSelector { field_path: field.into(), ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn downward_api_files() {
        let items = [
            field_file("labels", "metadata.labels"),
            field_file("name", "metadata.name"),
            DownwardAPIVolumeFile {
                path: "mem".into(),
                mode: Some(0o400),
                resource_field_ref: Some(ResourceFieldSelector {
                    container_name: Some("app".into()),
                    resource: "limits.memory".into(),
                    divisor: None,
                }),
                ..Default::default()
            },
        ];
        let alloc = NodeAllocatable { memory_bytes: 1024, ..Default::default() };
        let p = downward_api_payload(&pod(), &items, 0o644, alloc).unwrap();
        assert_eq!(
            files(&p),
            vec![
                ("labels".into(), "a=\"1\"\nb=\"2\"".into(), 0o644),
                ("mem".into(), "1024".into(), 0o400),
                ("name".into(), "web".into(), 0o644),
            ]
        );
        let bad = [field_file("x", "spec.nodeName"), field_file("y", "status.podIP")];
        assert_eq!(
            downward_api_payload(&pod(), &bad, 0o644, alloc).unwrap_err(),
            "[unsupported fieldPath: spec.nodeName, unsupported fieldPath: status.podIP]"
        );
    }

    #[test]
    fn projected_service_account_volume() {
        let source = ProjectedVolumeSource {
            default_mode: Some(0o644),
            sources: Some(vec![
                VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        path: "token".into(),
                        expiration_seconds: Some(3607),
                        audience: None,
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: "kube-root-ca.crt".into(),
                        items: Some(vec![ktp("ca.crt", "ca.crt", None)]),
                        optional: None,
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    downward_api: Some(DownwardAPIProjection {
                        items: Some(vec![field_file("namespace", "metadata.namespace")]),
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    secret: Some(SecretProjection { name: "absent".into(), items: None, optional: Some(true) }),
                    ..Default::default()
                },
            ]),
        };
        let ca = ConfigMap { data: Some(BTreeMap::from([("ca.crt".into(), "PEM".into())])), ..Default::default() };
        let objects = Objects {
            config_maps: BTreeMap::from([("kube-root-ca.crt".into(), Lookup::Found(ca))]),
            secrets: BTreeMap::from([("absent".into(), Lookup::NotFound)]),
        };
        let tokens = BTreeMap::from([(0, Ok("jwt".to_owned()))]);
        let alloc = NodeAllocatable::default();
        let p = projected_payload(&pod(), &source, Some(&objects), &tokens, alloc, false).unwrap();
        assert_eq!(
            files(&p),
            vec![
                ("ca.crt".into(), "PEM".into(), 0o644),
                ("namespace".into(), "prod".into(), 0o644),
                ("token".into(), "jwt".into(), 0o644),
            ]
        );
        let p = projected_payload(&pod(), &source, Some(&objects), &tokens, alloc, true).unwrap();
        assert_eq!(p["token"].mode, 0o600, "fsGroup: the ownership change opens it to the group");
        let failed = BTreeMap::from([(0, Err("failed to fetch token: forbidden".to_owned()))]);
        let none = Objects::default();
        assert_eq!(
            projected_payload(&pod(), &source, Some(&none), &failed, alloc, false).unwrap_err(),
            "[failed to fetch token: forbidden, configmap \"kube-root-ca.crt\" not found]"
        );
    }
}
