//! Pod fields the agent cannot honour yet. A pod that asks for one is rejected at admission with a clear reason
//! instead of running without it: a pod silently missing its volume, probe or security setting is worse than a
//! pod that does not run. Each entry goes when its feature lands.

use k8s_openapi::api::core::v1::{Container, Pod, Volume, VolumeProjection};

use crate::pods::spec;

/// The admission reason of a pod rejected for an unsupported field.
pub const REASON_UNSUPPORTED_POD_SPEC: &str = "UnsupportedPodSpec";

/// Which unsupported fields the pod uses, as paths into the pod (`spec.volumes[1].configMap`), in spec order.
pub fn unsupported_fields(pod: &Pod) -> Vec<String> {
    let s = spec::spec(pod);
    let mut found = Vec::new();
    for (i, v) in s.volumes.iter().flatten().enumerate() {
        if !is_supported_volume(v) {
            found.push(format!("spec.volumes[{i}].{} ({:?})", volume_source(v), v.name));
        }
    }
    let mut pod_field = |set: bool, path: &str| {
        if set {
            found.push(path.to_owned());
        }
    };
    pod_field(s.runtime_class_name.is_some(), "spec.runtimeClassName");
    pod_field(s.host_users == Some(false), "spec.hostUsers");
    pod_field(s.resource_claims.as_ref().is_some_and(|c| !c.is_empty()), "spec.resourceClaims");
    let init = spec::init_containers(pod).iter().enumerate().map(|(i, c)| (format!("spec.initContainers[{i}]"), c));
    let app = s.containers.iter().enumerate().map(|(i, c)| (format!("spec.containers[{i}]"), c));
    for (path, c) in init.chain(app) {
        container_fields(&path, c, &mut found);
    }
    found
}

fn container_fields(path: &str, c: &Container, found: &mut Vec<String>) {
    let mut field = |set: bool, name: &str| {
        if set {
            found.push(format!("{path}.{name}"));
        }
    };
    // `Always` on an init container makes it a sidecar; nothing else is a valid container restart policy.
    let sidecar = path.starts_with("spec.initContainers") && c.restart_policy.as_deref() == Some("Always");
    field(c.restart_policy.is_some() && !sidecar, "restartPolicy");
    field(c.volume_devices.as_ref().is_some_and(|d| !d.is_empty()), "volumeDevices");
    field(c.resources.as_ref().and_then(|r| r.claims.as_ref()).is_some_and(|cl| !cl.is_empty()), "resources.claims");
}

/// The volume kinds the volume manager sets up.
fn is_supported_volume(v: &Volume) -> bool {
    let projection = |s: &VolumeProjection| {
        s.config_map.is_some() || s.secret.is_some() || s.downward_api.is_some() || s.service_account_token.is_some()
    };
    v.empty_dir.as_ref().is_some_and(|e| matches!(e.medium.as_deref().unwrap_or_default(), "" | "Memory"))
        || v.host_path.is_some()
        || v.config_map.is_some()
        || v.secret.is_some()
        || v.downward_api.is_some()
        || v.projected.as_ref().is_some_and(|p| p.sources.iter().flatten().all(projection))
}

fn volume_source(v: &Volume) -> &'static str {
    let kinds: [(bool, &'static str); 10] = [
        (v.empty_dir.is_some(), "emptyDir"),
        (v.host_path.is_some(), "hostPath"),
        (v.config_map.is_some(), "configMap"),
        (v.secret.is_some(), "secret"),
        (v.downward_api.is_some(), "downwardAPI"),
        (v.projected.is_some(), "projected"),
        (v.persistent_volume_claim.is_some(), "persistentVolumeClaim"),
        (v.ephemeral.is_some(), "ephemeral"),
        (v.nfs.is_some(), "nfs"),
        (v.csi.is_some(), "csi"),
    ];
    kinds.iter().find(|(set, _)| *set).map_or("volume", |(_, name)| name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ConfigMapVolumeSource, EmptyDirVolumeSource, Lifecycle, LifecycleHandler, PodSpec, Probe,
        ProjectedVolumeSource, SecurityContext, ServiceAccountTokenProjection, VolumeProjection,
    };

    fn pod(spec: PodSpec) -> Pod {
        Pod { spec: Some(spec), ..Default::default() }
    }

    fn token_volume(name: &str) -> Volume {
        Volume {
            name: name.into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        path: "token".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_plain_pod_and_the_volumes_the_node_sets_up_are_accepted() {
        let p = pod(PodSpec {
            containers: vec![Container { name: "app".into(), ..Default::default() }],
            volumes: Some(vec![
                token_volume("kube-api-access-x7z2q"),
                Volume { name: "data".into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Default::default() },
                Volume { name: "cfg".into(), config_map: Some(ConfigMapVolumeSource::default()), ..Default::default() },
            ]),
            ..Default::default()
        });
        assert_eq!(unsupported_fields(&p), Vec::<String>::new());
    }

    #[test]
    fn each_unsupported_field_is_named_by_its_path() {
        let mut app = Container {
            name: "app".into(),
            lifecycle: Some(Lifecycle { pre_stop: Some(LifecycleHandler::default()), ..Default::default() }),
            restart_policy: Some("Never".into()),
            security_context: Some(SecurityContext { proc_mount: Some("Unmasked".into()), ..Default::default() }),
            ..Default::default()
        };
        // Probes are run.
        app.readiness_probe = Some(Probe::default());
        app.liveness_probe = Some(Probe::default());
        app.startup_probe = Some(Probe::default());
        let p = pod(PodSpec {
            containers: vec![app],
            volumes: Some(vec![
                Volume {
                    name: "data".into(),
                    empty_dir: Some(EmptyDirVolumeSource { medium: Some("HugePages".into()), ..Default::default() }),
                    ..Default::default()
                },
                Volume {
                    name: "claim".into(),
                    persistent_volume_claim: Some(Default::default()),
                    ..Default::default()
                },
                Volume { name: "unknown".into(), ..Default::default() },
            ]),
            runtime_class_name: Some("gvisor".into()),
            ..Default::default()
        });
        assert_eq!(
            unsupported_fields(&p),
            vec![
                "spec.volumes[0].emptyDir (\"data\")",
                "spec.volumes[1].persistentVolumeClaim (\"claim\")",
                "spec.volumes[2].volume (\"unknown\")",
                "spec.runtimeClassName",
                "spec.containers[0].restartPolicy",
            ]
        );
    }
}
