//! securityContext as written, container fields over pod fields, the way
//! kubelet hands them to the runtime: capabilities as named, readonly
//! rootfs, uid/gid, no_new_privs from allowPrivilegeEscalation=false, and a
//! seccomp profile (Unconfined when none is asked for, like kubelet).

use k8s_cri::v1::security_profile::ProfileType;
use k8s_cri::v1::{
    Capability, Int64Value, LinuxContainerSecurityContext, NamespaceOption, SecurityProfile,
};
use k8s_openapi::api::core::v1::{PodSecurityContext, SeccompProfile, SecurityContext};

use super::fields::only_known;
use super::TranslateError;

const POD_FIELDS: &[&str] = &[
    "runAsUser",
    "runAsGroup",
    "runAsNonRoot",
    "supplementalGroups",
    "seccompProfile",
];
const CONTAINER_FIELDS: &[&str] = &[
    "capabilities",
    "privileged",
    "readOnlyRootFilesystem",
    "runAsUser",
    "runAsGroup",
    "runAsNonRoot",
    "allowPrivilegeEscalation",
    "seccompProfile",
];

/// Checks the pod-level context; its fields are merged into each container.
pub fn check_pod(ctx: Option<&PodSecurityContext>) -> Result<(), TranslateError> {
    match ctx {
        Some(ctx) => only_known(ctx, "spec.securityContext", POD_FIELDS),
        None => Ok(()),
    }
}

/// The container's Linux security context. `path` is the container's field
/// path; `namespaces` are the pod's (containers share them).
pub fn container_context(
    pod: Option<&PodSecurityContext>,
    ctr: Option<&SecurityContext>,
    namespaces: NamespaceOption,
    path: &str,
) -> Result<LinuxContainerSecurityContext, TranslateError> {
    let default = SecurityContext::default();
    let c = ctr.unwrap_or(&default);
    let path = format!("{path}.securityContext");
    only_known(c, &path, CONTAINER_FIELDS)?;
    let privileged = c.privileged.unwrap_or(false);
    if privileged && c.allow_privilege_escalation == Some(false) {
        return Err(TranslateError::Invalid {
            field: format!("{path}.allowPrivilegeEscalation"),
            reason: "false cannot be combined with privileged: true".into(),
        });
    }
    let run_as_user = c.run_as_user.or(pod.and_then(|p| p.run_as_user));
    let non_root = c.run_as_non_root.or(pod.and_then(|p| p.run_as_non_root));
    check_non_root(non_root, run_as_user, &path)?;
    let seccomp = c
        .seccomp_profile
        .as_ref()
        .or(pod.and_then(|p| p.seccomp_profile.as_ref()));
    Ok(LinuxContainerSecurityContext {
        capabilities: c.capabilities.as_ref().map(|caps| Capability {
            add_capabilities: caps.add.clone().unwrap_or_default(),
            drop_capabilities: caps.drop.clone().unwrap_or_default(),
            ..Default::default()
        }),
        privileged,
        namespace_options: Some(namespaces),
        run_as_user: run_as_user.map(|value| Int64Value { value }),
        run_as_group: c
            .run_as_group
            .or(pod.and_then(|p| p.run_as_group))
            .map(|value| Int64Value { value }),
        readonly_rootfs: c.read_only_root_filesystem.unwrap_or(false),
        supplemental_groups: pod
            .and_then(|p| p.supplemental_groups.clone())
            .unwrap_or_default(),
        no_new_privs: c.allow_privilege_escalation == Some(false),
        seccomp: Some(seccomp_profile(seccomp, &path)?),
        ..Default::default()
    })
}

/// kubelet checks runAsNonRoot against the image's user; the driver does
/// not read image configs, so it can only honour an explicit uid.
fn check_non_root(
    non_root: Option<bool>,
    uid: Option<i64>,
    path: &str,
) -> Result<(), TranslateError> {
    match (non_root, uid) {
        (Some(true), Some(0)) => Err(TranslateError::Invalid {
            field: format!("{path}.runAsNonRoot"),
            reason: "runAsNonRoot is true but runAsUser is 0".into(),
        }),
        (Some(true), None) => Err(TranslateError::Unsupported {
            field: format!(
                "{path}.runAsNonRoot (without runAsUser: the image's user is not checked)"
            ),
        }),
        _ => Ok(()),
    }
}

pub fn seccomp_profile(
    profile: Option<&SeccompProfile>,
    path: &str,
) -> Result<SecurityProfile, TranslateError> {
    let kind = match profile.map(|p| p.type_.as_str()) {
        None | Some("Unconfined") => ProfileType::Unconfined,
        Some("RuntimeDefault") => ProfileType::RuntimeDefault,
        Some(other) => {
            return Err(TranslateError::Unsupported {
                field: format!("{path}.seccompProfile.type={other}"),
            })
        }
    };
    Ok(SecurityProfile {
        profile_type: kind as i32,
        localhost_ref: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Capabilities;

    fn agent_context() -> SecurityContext {
        SecurityContext {
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_user: Some(0),
            run_as_group: Some(0),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn daemonset_agent_context_is_passed_as_written() {
        let ctx = container_context(
            None,
            Some(&agent_context()),
            NamespaceOption::default(),
            "c",
        )
        .expect("valid");
        let caps = ctx.capabilities.expect("caps");
        assert_eq!(caps.add_capabilities, ["NET_ADMIN", "NET_RAW"]);
        assert_eq!(caps.drop_capabilities, ["ALL"]);
        assert!(ctx.readonly_rootfs && ctx.no_new_privs && !ctx.privileged);
        assert_eq!(ctx.run_as_user, Some(Int64Value { value: 0 }));
        assert_eq!(ctx.run_as_group, Some(Int64Value { value: 0 }));
        let seccomp = ctx.seccomp.expect("seccomp");
        assert_eq!(seccomp.profile_type, ProfileType::RuntimeDefault as i32);
    }

    #[test]
    fn pod_level_fields_apply_unless_the_container_overrides() {
        let pod = PodSecurityContext {
            run_as_user: Some(1000),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let ctx =
            container_context(Some(&pod), None, NamespaceOption::default(), "c").expect("valid");
        assert_eq!(ctx.run_as_user, Some(Int64Value { value: 1000 }));
        assert_eq!(
            ctx.seccomp.expect("seccomp").profile_type,
            ProfileType::RuntimeDefault as i32
        );
        assert!(
            !ctx.no_new_privs,
            "unset allowPrivilegeEscalation keeps privs"
        );
        let own = SecurityContext {
            run_as_user: Some(7),
            ..Default::default()
        };
        let ctx = container_context(Some(&pod), Some(&own), NamespaceOption::default(), "c")
            .expect("valid");
        assert_eq!(ctx.run_as_user, Some(Int64Value { value: 7 }));
    }

    #[test]
    fn unhonourable_contexts_are_named() {
        let cases = [
            (
                SecurityContext {
                    se_linux_options: Some(Default::default()),
                    proc_mount: Some("Unmasked".into()),
                    ..Default::default()
                },
                "c.securityContext.procMount: not supported by the test node driver",
            ),
            (
                SecurityContext {
                    seccomp_profile: Some(SeccompProfile {
                        type_: "Localhost".into(),
                        localhost_profile: Some("p.json".into()),
                    }),
                    ..Default::default()
                },
                "c.securityContext.seccompProfile.type=Localhost: not supported by the test node driver",
            ),
            (
                SecurityContext {
                    privileged: Some(true),
                    allow_privilege_escalation: Some(false),
                    ..Default::default()
                },
                "c.securityContext.allowPrivilegeEscalation: false cannot be combined with privileged: true",
            ),
        ];
        for (ctx, want) in cases {
            let err = container_context(None, Some(&ctx), NamespaceOption::default(), "c")
                .expect_err(want);
            assert_eq!(err.to_string(), want);
        }
    }
}
