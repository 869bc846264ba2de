//! Pod fields the agent cannot honour yet. A pod that asks for one is rejected at admission with a clear reason
//! instead of running without it: a pod silently missing its volume, probe or security setting is worse than a
//! pod that does not run. Each entry goes when its feature lands.
//!
//! The one exception is the service-account token volume (`kube-api-access-*`) that the API server's
//! ServiceAccount admission injects into every pod: rejecting it would reject every API pod, so the pod runs
//! without it and gets a warning event.

use k8s_openapi::api::core::v1::{Container, Pod, Volume};

use super::spec;

/// The admission reason of a pod rejected for an unsupported field.
pub const REASON_UNSUPPORTED_POD_SPEC: &str = "UnsupportedPodSpec";
/// The prefix of the projected volume ServiceAccount admission injects.
const SERVICE_ACCOUNT_TOKEN_VOLUME_PREFIX: &str = "kube-api-access-";

/// Which unsupported fields the pod uses, as paths into the pod (`spec.volumes[1].configMap`), in spec order.
pub fn unsupported_fields(pod: &Pod) -> Vec<String> {
    let s = spec::spec(pod);
    let mut found = Vec::new();
    for (i, v) in s.volumes.iter().flatten().enumerate() {
        if !is_service_account_token_volume(v) {
            found.push(format!("spec.volumes[{i}].{} ({:?})", volume_source(v), v.name));
        }
    }
    let mut pod_field = |set: bool, path: &str| {
        if set {
            found.push(path.to_owned());
        }
    };
    pod_field(s.runtime_class_name.is_some(), "spec.runtimeClassName");
    pod_field(s.host_aliases.as_ref().is_some_and(|h| !h.is_empty()), "spec.hostAliases");
    pod_field(s.active_deadline_seconds.is_some(), "spec.activeDeadlineSeconds");
    pod_field(s.readiness_gates.as_ref().is_some_and(|g| !g.is_empty()), "spec.readinessGates");
    pod_field(s.host_users == Some(false), "spec.hostUsers");
    pod_field(s.os.as_ref().is_some_and(|os| os.name != "linux"), "spec.os.name");
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
    field(c.liveness_probe.is_some(), "livenessProbe");
    field(c.startup_probe.is_some(), "startupProbe");
    field(c.lifecycle.as_ref().is_some_and(|l| l.post_start.is_some()), "lifecycle.postStart");
    field(c.lifecycle.as_ref().is_some_and(|l| l.pre_stop.is_some()), "lifecycle.preStop");
    field(c.termination_message_policy.as_deref() == Some("FallbackToLogsOnError"), "terminationMessagePolicy");
    field(c.restart_policy.is_some(), "restartPolicy");
    field(c.volume_devices.as_ref().is_some_and(|d| !d.is_empty()), "volumeDevices");
    field(c.resources.as_ref().and_then(|r| r.claims.as_ref()).is_some_and(|cl| !cl.is_empty()), "resources.claims");
    for (i, m) in c.volume_mounts.iter().flatten().enumerate() {
        if m.sub_path.as_ref().is_some_and(|p| !p.is_empty()) || m.sub_path_expr.is_some() {
            found.push(format!("{path}.volumeMounts[{i}].subPath"));
        }
    }
}

/// The projected service-account token volume the API server injects (token, `ca.crt`, namespace).
pub fn is_service_account_token_volume(v: &Volume) -> bool {
    v.name.starts_with(SERVICE_ACCOUNT_TOKEN_VOLUME_PREFIX)
        && v.projected.as_ref().is_some_and(|p| p.sources.iter().flatten().any(|s| s.service_account_token.is_some()))
}

/// The service-account token volumes of the pod that the containers mount, which the pod runs without.
pub fn unmounted_service_account_volumes(pod: &Pod) -> Vec<String> {
    spec::spec(pod)
        .volumes
        .iter()
        .flatten()
        .filter(|v| is_service_account_token_volume(v))
        .map(|v| v.name.clone())
        .collect()
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
    fn a_plain_pod_and_the_injected_token_volume_are_accepted() {
        let p = pod(PodSpec {
            containers: vec![Container { name: "app".into(), ..Default::default() }],
            volumes: Some(vec![token_volume("kube-api-access-x7z2q")]),
            ..Default::default()
        });
        assert_eq!(unsupported_fields(&p), Vec::<String>::new());
        assert_eq!(unmounted_service_account_volumes(&p), vec!["kube-api-access-x7z2q"]);
    }

    #[test]
    fn each_unsupported_field_is_named_by_its_path() {
        let mut app = Container {
            name: "app".into(),
            liveness_probe: Some(Probe::default()),
            lifecycle: Some(Lifecycle { pre_stop: Some(LifecycleHandler::default()), ..Default::default() }),
            security_context: Some(SecurityContext { proc_mount: Some("Unmasked".into()), ..Default::default() }),
            ..Default::default()
        };
        // A readiness probe is not rejected: without a prober the container simply never becomes ready.
        app.readiness_probe = Some(Probe::default());
        let p = pod(PodSpec {
            containers: vec![app],
            volumes: Some(vec![
                Volume { name: "data".into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Default::default() },
                Volume { name: "cfg".into(), config_map: Some(ConfigMapVolumeSource::default()), ..Default::default() },
                // Named like the injected one but not a token projection.
                Volume { name: "kube-api-access-fake".into(), ..Default::default() },
            ]),
            runtime_class_name: Some("gvisor".into()),
            ..Default::default()
        });
        assert_eq!(
            unsupported_fields(&p),
            vec![
                "spec.volumes[0].emptyDir (\"data\")",
                "spec.volumes[1].configMap (\"cfg\")",
                "spec.volumes[2].volume (\"kube-api-access-fake\")",
                "spec.runtimeClassName",
                "spec.containers[0].livenessProbe",
                "spec.containers[0].lifecycle.preStop",
            ]
        );
    }
}
