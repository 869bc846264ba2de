//! The container security settings kubelet derives from the pod's and the container's `securityContext`
//! (`pkg/kubelet/kuberuntime/security_context*.go`, `helpers.go`): the container's own settings win over the pod's.

use std::path::Path;

use k8s_openapi::api::core::v1::{Container, Pod, SeccompProfile as ApiSeccompProfile};

use crate::pods::spec;
use crate::runtime::{ImageUser, SeccompProfile};

/// The pod's setting, unless the container sets its own.
fn effective<T: Clone>(
    pod: &Pod,
    container: &Container,
    from_pod: impl Fn(&k8s_openapi::api::core::v1::PodSecurityContext) -> Option<T>,
    from_container: impl Fn(&k8s_openapi::api::core::v1::SecurityContext) -> Option<T>,
) -> Option<T> {
    container
        .security_context
        .as_ref()
        .and_then(from_container)
        .or_else(|| spec::spec(pod).security_context.as_ref().and_then(from_pod))
}

/// kubelet's `AddNoNewPrivileges`: only an explicit `allowPrivilegeEscalation: false` sets `no_new_privs`.
pub fn no_new_privs(container: &Container) -> bool {
    container.security_context.as_ref().and_then(|sc| sc.allow_privilege_escalation) == Some(false)
}

/// kubelet's `getSeccompProfile`: the container's profile, else the pod's, else Unconfined (kubelet's default
/// while `seccompDefault` is off). A `Localhost` profile is a file under `<root-dir>/seccomp`.
pub fn seccomp_profile(pod: &Pod, container: &Container, profile_root: &Path) -> Result<SeccompProfile, String> {
    let profile: Option<ApiSeccompProfile> =
        effective(pod, container, |p| p.seccomp_profile.clone(), |c| c.seccomp_profile.clone());
    let Some(profile) = profile else { return Ok(SeccompProfile::Unconfined) };
    match profile.type_.as_str() {
        "RuntimeDefault" => Ok(SeccompProfile::RuntimeDefault),
        "Unconfined" => Ok(SeccompProfile::Unconfined),
        "Localhost" => match profile.localhost_profile.as_deref().filter(|p| !p.is_empty()) {
            Some(name) => Ok(SeccompProfile::Localhost(profile_root.join(name).display().to_string())),
            None => Err(format!(
                "localhostProfile must be set for container {:?}'s Localhost seccomp profile",
                container.name
            )),
        },
        other => Err(format!("unknown seccomp profile type {other:?} for container {:?}", container.name)),
    }
}

/// Whether the container must be checked against its image's user: `runAsNonRoot` without a `runAsUser`.
pub fn needs_image_user(pod: &Pod, container: &Container) -> bool {
    let non_root = effective(pod, container, |p| p.run_as_non_root, |c| c.run_as_non_root) == Some(true);
    non_root && effective(pod, container, |p| p.run_as_user, |c| c.run_as_user).is_none()
}

/// kubelet's `verifyRunAsNonRoot`, with its messages. `image_user` is the image's user (kubelet treats an image
/// that names none as root).
pub fn verify_run_as_non_root(pod: &Pod, container: &Container, image_user: &ImageUser) -> Result<(), String> {
    if effective(pod, container, |p| p.run_as_non_root, |c| c.run_as_non_root) != Some(true) {
        return Ok(());
    }
    let (pod_name, name) = (spec::format_pod(pod), &container.name);
    if let Some(uid) = effective(pod, container, |p| p.run_as_user, |c| c.run_as_user) {
        return match uid {
            0 => Err(format!("container's runAsUser breaks non-root policy (pod: {pod_name:?}, container: {name})")),
            _ => Ok(()),
        };
    }
    match (image_user.uid, image_user.username.as_str()) {
        (Some(0), _) | (None, "") => {
            Err(format!("container has runAsNonRoot and image will run as root (pod: {pod_name:?}, container: {name})"))
        }
        (None, username) => Err(format!(
            "container has runAsNonRoot and image has non-numeric user ({username}), cannot verify user is non-root (pod: {pod_name:?}, container: {name})"
        )),
        (Some(_), _) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSecurityContext, PodSpec, SecurityContext};

    fn pod(psc: Option<PodSecurityContext>, sc: Option<SecurityContext>) -> Pod {
        let mut p = Pod {
            spec: Some(PodSpec {
                security_context: psc,
                containers: vec![Container { name: "app".into(), security_context: sc, ..Default::default() }],
                ..Default::default()
            }),
            ..Default::default()
        };
        p.metadata.name = Some("web".into());
        p.metadata.namespace = Some("default".into());
        p.metadata.uid = Some("u1".into());
        p
    }

    fn profile(kind: &str, local: Option<&str>) -> Option<ApiSeccompProfile> {
        Some(ApiSeccompProfile { type_: kind.into(), localhost_profile: local.map(Into::into) })
    }

    #[test]
    fn seccomp_comes_from_the_container_then_the_pod_and_defaults_to_unconfined() {
        let root = Path::new("/var/lib/rkubelet/seccomp");
        let p = pod(None, None);
        assert_eq!(seccomp_profile(&p, &p.spec.as_ref().unwrap().containers[0], root), Ok(SeccompProfile::Unconfined));
        let p = pod(
            Some(PodSecurityContext { seccomp_profile: profile("RuntimeDefault", None), ..Default::default() }),
            None,
        );
        let c = &p.spec.as_ref().unwrap().containers[0];
        assert_eq!(seccomp_profile(&p, c, root), Ok(SeccompProfile::RuntimeDefault));
        let p = pod(
            Some(PodSecurityContext { seccomp_profile: profile("RuntimeDefault", None), ..Default::default() }),
            Some(SecurityContext { seccomp_profile: profile("Localhost", Some("audit.json")), ..Default::default() }),
        );
        let c = &p.spec.as_ref().unwrap().containers[0];
        assert_eq!(
            seccomp_profile(&p, c, root),
            Ok(SeccompProfile::Localhost("/var/lib/rkubelet/seccomp/audit.json".into()))
        );
        let p = pod(None, Some(SecurityContext { seccomp_profile: profile("Localhost", None), ..Default::default() }));
        assert!(seccomp_profile(&p, &p.spec.as_ref().unwrap().containers[0], root).is_err());
    }

    #[test]
    fn no_new_privs_only_when_privilege_escalation_is_explicitly_off() {
        let c = |v| Container {
            security_context: Some(SecurityContext { allow_privilege_escalation: v, ..Default::default() }),
            ..Default::default()
        };
        assert!(no_new_privs(&c(Some(false))));
        assert!(!no_new_privs(&c(Some(true))));
        assert!(!no_new_privs(&c(None)));
    }

    #[test]
    fn run_as_non_root_is_verified_as_kubelet_does() {
        let non_root = |uid: Option<i64>| {
            pod(Some(PodSecurityContext { run_as_non_root: Some(true), run_as_user: uid, ..Default::default() }), None)
        };
        let user = |uid: Option<i64>, name: &str| ImageUser { uid, username: name.into() };
        let check = |p: &Pod, u: &ImageUser| verify_run_as_non_root(p, &p.spec.as_ref().unwrap().containers[0], u);

        let p = non_root(Some(1000));
        assert!(!needs_image_user(&p, &p.spec.as_ref().unwrap().containers[0]));
        assert_eq!(check(&p, &user(Some(0), "")), Ok(()), "runAsUser decides, not the image");
        let p = non_root(Some(0));
        assert_eq!(
            check(&p, &user(None, "")),
            Err("container's runAsUser breaks non-root policy (pod: \"web_default(u1)\", container: app)".into())
        );
        let p = non_root(None);
        assert!(needs_image_user(&p, &p.spec.as_ref().unwrap().containers[0]));
        assert_eq!(check(&p, &user(Some(65534), "")), Ok(()));
        assert!(check(&p, &user(Some(0), "")).unwrap_err().contains("image will run as root"));
        assert!(check(&p, &user(None, "")).unwrap_err().contains("image will run as root"), "no user is root");
        assert!(check(&p, &user(None, "www")).unwrap_err().contains("non-numeric user (www)"));
        // The container's own setting wins over the pod's.
        let p = pod(
            Some(PodSecurityContext { run_as_non_root: Some(true), ..Default::default() }),
            Some(SecurityContext { run_as_non_root: Some(false), ..Default::default() }),
        );
        assert_eq!(check(&p, &user(Some(0), "")), Ok(()));
    }
}
