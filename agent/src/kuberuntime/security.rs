//! The container security settings kubelet derives from the pod's and the container's `securityContext`
//! (`pkg/kubelet/kuberuntime/security_context*.go`, `helpers.go`): the container's own settings win over the pod's.

use std::path::Path;

use k8s_openapi::api::core::v1::{Container, Pod, SELinuxOptions, SeccompProfile as ApiSeccompProfile};

use crate::kubetypes::spec;
use crate::runtime::{ContainerSecurity, ImageUser, SandboxSecurity, SeLinuxOptions, SeccompProfile};

/// The /proc and /sys paths a container does not see unless its `procMount` is `Unmasked`: kubelet's
/// `defaultMaskedPaths` (`pkg/securitycontext/util.go`, kept in sync with moby's defaults).
pub const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];
/// The /proc paths a container sees read-only unless its `procMount` is `Unmasked` (kubelet's
/// `defaultReadonlyPaths`).
pub const DEFAULT_READONLY_PATHS: &[&str] =
    &["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];
/// `procMount: Unmasked`: the runtime masks nothing.
const UNMASKED_PROC_MOUNT: &str = "Unmasked";

/// The pod's setting, unless the container sets its own (kubelet's `DetermineEffectiveSecurityContext` for the
/// fields a pod can set: SELinux options, runAsUser, runAsGroup, runAsNonRoot).
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

fn selinux(o: &SELinuxOptions) -> SeLinuxOptions {
    SeLinuxOptions {
        user: o.user.clone().unwrap_or_default(),
        role: o.role.clone().unwrap_or_default(),
        type_: o.type_.clone().unwrap_or_default(),
        level: o.level.clone().unwrap_or_default(),
    }
}

/// The pod's supplemental groups as kubelet passes them to the runtime: `fsGroup` first (so that volumes it owns
/// are writable), then `supplementalGroups`.
pub fn supplemental_groups(pod: &Pod) -> Vec<i64> {
    let Some(sc) = spec::spec(pod).security_context.as_ref() else { return Vec::new() };
    sc.fs_group.iter().chain(sc.supplemental_groups.iter().flatten()).copied().collect()
}

/// kubelet's `HasPrivilegedContainer`: the sandbox is privileged when any container of the pod is, so that the
/// runtime can give privileged containers what they need from the sandbox.
pub fn has_privileged_container(pod: &Pod) -> bool {
    let s = spec::spec(pod);
    let privileged = |c: &Container| c.security_context.as_ref().and_then(|sc| sc.privileged) == Some(true);
    spec::init_containers(pod).iter().chain(s.containers.iter()).any(privileged)
        || s.ephemeral_containers
            .iter()
            .flatten()
            .any(|c| c.security_context.as_ref().and_then(|sc| sc.privileged) == Some(true))
}

/// kubelet's `generatePodSandboxLinuxConfig` security settings. The sandbox always runs with the runtime's
/// default seccomp profile, whatever the containers use (kubernetes#84623).
pub fn sandbox_security(pod: &Pod) -> SandboxSecurity {
    let sc = spec::spec(pod).security_context.as_ref();
    SandboxSecurity {
        privileged: has_privileged_container(pod),
        run_as_user: sc.and_then(|s| s.run_as_user),
        run_as_group: sc.and_then(|s| s.run_as_group),
        supplemental_groups: supplemental_groups(pod),
        selinux: sc.and_then(|s| s.se_linux_options.as_ref()).map(selinux),
        seccomp: SeccompProfile::RuntimeDefault,
    }
}

/// kubelet's `determineEffectiveSecurityContext`: the container's security settings over the pod's, the pod's
/// supplemental groups, the seccomp profile and the masked paths of its `procMount`.
pub fn container_security(
    pod: &Pod,
    container: &Container,
    profile_root: &Path,
    seccomp_default: bool,
) -> Result<ContainerSecurity, String> {
    let sc = container.security_context.as_ref();
    let caps = sc.and_then(|s| s.capabilities.as_ref());
    let unmasked = sc.and_then(|s| s.proc_mount.as_deref()) == Some(UNMASKED_PROC_MOUNT);
    let paths = |list: &[&str]| if unmasked { Vec::new() } else { list.iter().map(|p| (*p).to_owned()).collect() };
    Ok(ContainerSecurity {
        privileged: sc.and_then(|s| s.privileged).unwrap_or(false),
        run_as_user: effective(pod, container, |p| p.run_as_user, |c| c.run_as_user),
        run_as_group: effective(pod, container, |p| p.run_as_group, |c| c.run_as_group),
        supplemental_groups: supplemental_groups(pod),
        readonly_rootfs: sc.and_then(|s| s.read_only_root_filesystem).unwrap_or(false),
        capabilities_add: caps.and_then(|c| c.add.clone()).unwrap_or_default(),
        capabilities_drop: caps.and_then(|c| c.drop.clone()).unwrap_or_default(),
        no_new_privs: no_new_privs(container),
        seccomp: seccomp_profile(pod, container, profile_root, seccomp_default)?,
        masked_paths: paths(DEFAULT_MASKED_PATHS),
        readonly_paths: paths(DEFAULT_READONLY_PATHS),
        selinux: effective(pod, container, |p| p.se_linux_options.clone(), |c| c.se_linux_options.clone())
            .as_ref()
            .map(selinux),
    })
}

/// kubelet's `AddNoNewPrivileges`: only an explicit `allowPrivilegeEscalation: false` sets `no_new_privs`.
pub fn no_new_privs(container: &Container) -> bool {
    container.security_context.as_ref().and_then(|sc| sc.allow_privilege_escalation) == Some(false)
}

/// kubelet's `getSeccompProfile`: the container's profile, else the pod's, else Unconfined, or the runtime's
/// default with `seccompDefault`. A `Localhost` profile is a file under `<root-dir>/seccomp`; a type kubelet does
/// not know is Unconfined, as in kubelet.
pub fn seccomp_profile(
    pod: &Pod,
    container: &Container,
    profile_root: &Path,
    seccomp_default: bool,
) -> Result<SeccompProfile, String> {
    let profile: Option<ApiSeccompProfile> = container
        .security_context
        .as_ref()
        .and_then(|c| c.seccomp_profile.clone())
        .or_else(|| spec::spec(pod).security_context.as_ref().and_then(|p| p.seccomp_profile.clone()));
    let Some(profile) = profile else {
        return Ok(if seccomp_default { SeccompProfile::RuntimeDefault } else { SeccompProfile::Unconfined });
    };
    match profile.type_.as_str() {
        "RuntimeDefault" => Ok(SeccompProfile::RuntimeDefault),
        "Localhost" => match profile.localhost_profile.as_deref().filter(|p| !p.is_empty()) {
            Some(name) => Ok(SeccompProfile::Localhost(profile_root.join(name).display().to_string())),
            None => Err("localhostProfile must be set if seccompProfile type is Localhost.".to_owned()),
        },
        _ => Ok(SeccompProfile::Unconfined),
    }
}

/// Whether `verify_run_as_non_root` needs the image's user: `runAsNonRoot` without a `runAsUser`. Every other
/// case is decided by the security contexts alone, so the runtime is not asked.
pub fn needs_image_user(pod: &Pod, container: &Container) -> bool {
    let non_root = effective(pod, container, |p| p.run_as_non_root, |c| c.run_as_non_root) == Some(true);
    non_root && effective(pod, container, |p| p.run_as_user, |c| c.run_as_user).is_none()
}

/// The `runAsNonRoot` check of every container start, as kubelet's `generateContainerConfig` makes it: always,
/// asking the runtime for the image's user (`image_user`) only when no `runAsUser` decides. An error is the
/// container's `CreateContainerConfigError` message.
pub async fn check_run_as_non_root<F, Fut>(pod: &Pod, container: &Container, image_user: F) -> Result<(), String>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<ImageUser, String>>,
{
    let user = if needs_image_user(pod, container) { image_user().await? } else { ImageUser::default() };
    verify_run_as_non_root(pod, container, &user)
}

/// kubelet's `verifyRunAsNonRoot` (`pkg/kubelet/kuberuntime/security_context_others.go`), with its messages, for
/// every container whatever its `runAsUser`: an explicit uid 0 breaks the policy as surely as a root image does.
/// `image_user` is the image's user as kubelet's `getImageUser` gives it (an image that names none runs as root);
/// it is only looked at without a `runAsUser`. `windowsOptions` play no part on Linux.
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
    use k8s_openapi::api::core::v1::{Capabilities, PodSecurityContext, PodSpec, SecurityContext};

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
        assert_eq!(
            seccomp_profile(&p, &p.spec.as_ref().unwrap().containers[0], root, false),
            Ok(SeccompProfile::Unconfined)
        );
        let p = pod(
            Some(PodSecurityContext { seccomp_profile: profile("RuntimeDefault", None), ..Default::default() }),
            None,
        );
        let c = &p.spec.as_ref().unwrap().containers[0];
        assert_eq!(seccomp_profile(&p, c, root, false), Ok(SeccompProfile::RuntimeDefault));
        let p = pod(
            Some(PodSecurityContext { seccomp_profile: profile("RuntimeDefault", None), ..Default::default() }),
            Some(SecurityContext { seccomp_profile: profile("Localhost", Some("audit.json")), ..Default::default() }),
        );
        let c = &p.spec.as_ref().unwrap().containers[0];
        assert_eq!(
            seccomp_profile(&p, c, root, false),
            Ok(SeccompProfile::Localhost("/var/lib/rkubelet/seccomp/audit.json".into()))
        );
        let p = pod(None, Some(SecurityContext { seccomp_profile: profile("Localhost", None), ..Default::default() }));
        assert_eq!(
            seccomp_profile(&p, &p.spec.as_ref().unwrap().containers[0], root, false),
            Err("localhostProfile must be set if seccompProfile type is Localhost.".into())
        );
        let c = &p.spec.as_ref().unwrap().containers[0];
        assert_eq!(
            seccomp_profile(&p, c, root, true),
            Err("localhostProfile must be set if seccompProfile type is Localhost.".into())
        );
        // seccompDefault: a container without a profile gets the runtime's default, an explicit one stays.
        let p = pod(None, None);
        assert_eq!(
            seccomp_profile(&p, &p.spec.as_ref().unwrap().containers[0], root, true),
            Ok(SeccompProfile::RuntimeDefault)
        );
        let p = pod(None, Some(SecurityContext { seccomp_profile: profile("Unconfined", None), ..Default::default() }));
        assert_eq!(
            seccomp_profile(&p, &p.spec.as_ref().unwrap().containers[0], root, true),
            Ok(SeccompProfile::Unconfined)
        );
        assert_eq!(
            seccomp_profile(&p, &p.spec.as_ref().unwrap().containers[0], root, false),
            Ok(SeccompProfile::Unconfined)
        );
    }

    #[test]
    fn container_settings_win_over_the_pods_and_groups_start_with_fs_group() {
        let root = Path::new("/r/seccomp");
        let p = pod(
            Some(PodSecurityContext {
                run_as_user: Some(1000),
                run_as_group: Some(3000),
                fs_group: Some(2000),
                supplemental_groups: Some(vec![4000, 5000]),
                se_linux_options: Some(SELinuxOptions { level: Some("s0:c1,c2".into()), ..Default::default() }),
                ..Default::default()
            }),
            Some(SecurityContext {
                run_as_user: Some(1001),
                read_only_root_filesystem: Some(true),
                allow_privilege_escalation: Some(false),
                capabilities: Some(Capabilities {
                    add: Some(vec!["NET_ADMIN".into()]),
                    drop: Some(vec!["ALL".into()]),
                }),
                ..Default::default()
            }),
        );
        let c = &p.spec.as_ref().unwrap().containers[0];
        let sc = container_security(&p, c, root, false).unwrap();
        assert_eq!((sc.run_as_user, sc.run_as_group), (Some(1001), Some(3000)));
        assert_eq!(sc.supplemental_groups, vec![2000, 4000, 5000]);
        assert!(sc.readonly_rootfs && sc.no_new_privs && !sc.privileged);
        assert_eq!((sc.capabilities_add, sc.capabilities_drop), (vec!["NET_ADMIN".into()], vec!["ALL".into()]));
        assert_eq!(sc.selinux.map(|o| o.level), Some("s0:c1,c2".into()), "the pod's SELinux level is inherited");
        assert_eq!(sc.masked_paths.len(), DEFAULT_MASKED_PATHS.len());
        assert!(sc.readonly_paths.contains(&"/proc/sys".to_owned()));

        let sandbox = sandbox_security(&p);
        assert_eq!((sandbox.run_as_user, sandbox.run_as_group), (Some(1000), Some(3000)));
        assert_eq!(sandbox.supplemental_groups, vec![2000, 4000, 5000]);
        assert_eq!(sandbox.seccomp, SeccompProfile::RuntimeDefault, "the sandbox always gets the runtime default");
        assert!(!sandbox.privileged);
    }

    #[test]
    fn unmasked_proc_mount_masks_nothing_and_a_privileged_container_makes_the_sandbox_privileged() {
        let p = pod(
            None,
            Some(SecurityContext { proc_mount: Some("Unmasked".into()), privileged: Some(true), ..Default::default() }),
        );
        let sc = container_security(&p, &p.spec.as_ref().unwrap().containers[0], Path::new("/r"), false).unwrap();
        assert!(sc.masked_paths.is_empty() && sc.readonly_paths.is_empty() && sc.privileged);
        assert!(sandbox_security(&p).privileged);
        assert_eq!(sandbox_security(&p).supplemental_groups, Vec::<i64>::new());
        let p = pod(None, Some(SecurityContext { proc_mount: Some("Default".into()), ..Default::default() }));
        let sc = container_security(&p, &p.spec.as_ref().unwrap().containers[0], Path::new("/r"), false).unwrap();
        assert_eq!(sc.masked_paths, DEFAULT_MASKED_PATHS.iter().map(|p| p.to_string()).collect::<Vec<_>>());
        assert!(!sandbox_security(&p).privileged);
        // A Localhost profile without a name makes the container config fail.
        let p = pod(
            None,
            Some(SecurityContext {
                seccomp_profile: Some(ApiSeccompProfile { type_: "Localhost".into(), localhost_profile: None }),
                ..Default::default()
            }),
        );
        assert!(container_security(&p, &p.spec.as_ref().unwrap().containers[0], Path::new("/r"), false).is_err());
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

    /// kubelet's `verifyRunAsNonRoot` table: pod and container contexts (the container's fields win one by one),
    /// the image's user, and kubelet's exact message for each refusal.
    #[test]
    fn run_as_non_root_table_matches_kubelet() {
        use k8s_openapi::api::core::v1::WindowsSecurityContextOptions;
        let psc = |non_root: Option<bool>, uid: Option<i64>| {
            Some(PodSecurityContext { run_as_non_root: non_root, run_as_user: uid, ..Default::default() })
        };
        let sc = |non_root: Option<bool>, uid: Option<i64>| {
            Some(SecurityContext { run_as_non_root: non_root, run_as_user: uid, ..Default::default() })
        };
        let image = |uid: Option<i64>, name: &str| ImageUser { uid, username: name.into() };
        let breaks = "container's runAsUser breaks non-root policy (pod: \"web_default(u1)\", container: app)";
        let root_image =
            "container has runAsNonRoot and image will run as root (pod: \"web_default(u1)\", container: app)";
        let named = "container has runAsNonRoot and image has non-numeric user (www), cannot verify user is non-root \
                     (pod: \"web_default(u1)\", container: app)";
        type Case =
            (&'static str, Option<PodSecurityContext>, Option<SecurityContext>, ImageUser, Option<&'static str>);
        let cases: Vec<Case> = vec![
            ("no security context", None, None, image(Some(0), ""), None),
            ("runAsNonRoot false", psc(Some(false), Some(0)), None, image(Some(0), ""), None),
            ("pod-level uid 0", psc(Some(true), Some(0)), None, image(Some(1000), ""), Some(breaks)),
            ("container-level uid 0", None, sc(Some(true), Some(0)), image(Some(1000), ""), Some(breaks)),
            (
                "container uid 0 under the pod's policy",
                psc(Some(true), None),
                sc(None, Some(0)),
                image(None, ""),
                Some(breaks),
            ),
            (
                "pod uid 0 under the container's policy",
                psc(None, Some(0)),
                sc(Some(true), None),
                image(None, ""),
                Some(breaks),
            ),
            (
                "container uid overrides the pod's 0",
                psc(Some(true), Some(0)),
                sc(None, Some(1000)),
                image(Some(0), ""),
                None,
            ),
            (
                "container uid 0 overrides the pod's",
                psc(Some(true), Some(1000)),
                sc(None, Some(0)),
                image(None, ""),
                Some(breaks),
            ),
            (
                "container allows root over the pod",
                psc(Some(true), Some(0)),
                sc(Some(false), None),
                image(Some(0), ""),
                None,
            ),
            (
                "container demands non-root over the pod",
                psc(Some(false), None),
                sc(Some(true), None),
                image(Some(0), ""),
                Some(root_image),
            ),
            ("non-zero uid, root image", psc(Some(true), Some(1)), None, image(Some(0), ""), None),
            ("image user 0", psc(Some(true), None), None, image(Some(0), ""), Some(root_image)),
            ("image without a user runs as root", psc(Some(true), None), None, image(None, ""), Some(root_image)),
            ("image user non-numeric", psc(Some(true), None), None, image(None, "www"), Some(named)),
            ("image uid wins over its name", psc(Some(true), None), None, image(Some(1000), "www"), None),
            ("image user non-root", None, sc(Some(true), None), image(Some(65534), ""), None),
        ];
        for (name, pod_sc, container_sc, user, want) in cases {
            let p = pod(pod_sc, container_sc);
            let c = &p.spec.as_ref().unwrap().containers[0];
            let got = verify_run_as_non_root(&p, c, &user);
            assert_eq!(got, want.map_or(Ok(()), |m| Err(m.to_owned())), "{name}");
            // The runtime is asked exactly when the image decides.
            let image_decides = !matches!(want, Some(m) if m == breaks)
                && effective(&p, c, |p| p.run_as_non_root, |c| c.run_as_non_root) == Some(true)
                && effective(&p, c, |p| p.run_as_user, |c| c.run_as_user).is_none();
            assert_eq!(needs_image_user(&p, c), image_decides, "{name}");
        }

        // Windows options are ignored on Linux, whatever they say about the user.
        let windows = WindowsSecurityContextOptions {
            run_as_user_name: Some("ContainerUser".into()),
            host_process: Some(false),
            ..Default::default()
        };
        let p = pod(
            Some(PodSecurityContext {
                run_as_non_root: Some(true),
                windows_options: Some(windows.clone()),
                ..Default::default()
            }),
            Some(SecurityContext { run_as_user: Some(0), windows_options: Some(windows), ..Default::default() }),
        );
        let c = &p.spec.as_ref().unwrap().containers[0];
        assert_eq!(verify_run_as_non_root(&p, c, &image(Some(1000), "")), Err(breaks.to_owned()));
    }

    /// Every start is checked, also with a `runAsUser` (then without asking the runtime): `runAsNonRoot` with uid 0
    /// never reaches the runtime.
    #[test]
    fn every_container_start_is_checked_and_the_runtime_is_asked_only_without_run_as_user() {
        let asked = std::cell::Cell::new(0);
        let check = |p: &Pod, user: Result<ImageUser, String>| {
            let c = &p.spec.as_ref().unwrap().containers[0];
            let image_user = || {
                asked.set(asked.get() + 1);
                std::future::ready(user)
            };
            futures::executor::block_on(check_run_as_non_root(p, c, image_user))
        };
        let root = || Ok(ImageUser { uid: Some(0), username: String::new() });
        let breaks = "container's runAsUser breaks non-root policy (pod: \"web_default(u1)\", container: app)";
        let p = pod(
            Some(PodSecurityContext { run_as_non_root: Some(true), run_as_user: Some(0), ..Default::default() }),
            None,
        );
        assert_eq!(check(&p, root()), Err(breaks.into()));
        let p = pod(
            None,
            Some(SecurityContext { run_as_non_root: Some(true), run_as_user: Some(0), ..Default::default() }),
        );
        assert_eq!(check(&p, root()), Err(breaks.into()));
        let p = pod(
            None,
            Some(SecurityContext { run_as_non_root: Some(true), run_as_user: Some(7), ..Default::default() }),
        );
        assert_eq!(check(&p, root()), Ok(()));
        assert_eq!(asked.get(), 0, "a runAsUser decides without the image");
        let p = pod(None, Some(SecurityContext { run_as_non_root: Some(true), ..Default::default() }));
        assert!(check(&p, root()).unwrap_err().contains("image will run as root"));
        assert_eq!(check(&p, Err("no such image".into())), Err("no such image".into()));
        assert_eq!(asked.get(), 2);
        assert_eq!(check(&pod(None, None), root()), Ok(()));
        assert_eq!(asked.get(), 2, "without runAsNonRoot the image is not looked at");
    }
}
