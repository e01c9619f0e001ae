//! A Pod + node facts -> what kubelet would send to the runtime: the
//! `PodSandboxConfig`, one `ContainerConfig` per (init) container, the
//! volumes to prepare and the probes to run. Pure: every field is either
//! honoured or reported as a [`TranslateError`] naming it.

use std::collections::HashMap;
use std::time::Duration;

use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ImageSpec, LinuxContainerConfig, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, Mount, MountPropagation, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, PortMapping, Protocol,
};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};

use super::env::{container_env, expand, EnvFacts};
use super::fields::only_known;
use super::probes::{self, ProbePlan};
use super::volumes::{plan_volumes, NodeDirs, VolumePlan};
use super::{resources, security};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    #[error("{field}: not supported by the test node driver")]
    Unsupported { field: String },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

/// What the driver knows about the node a pod runs on.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    pub node_name: String,
    /// The node's address (status.hostIP, and podIP of hostNetwork pods).
    pub node_ip: Option<String>,
    pub dirs: NodeDirs,
    /// The API server as in-cluster config sees it.
    pub api_host: String,
    pub api_port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone)]
pub struct ContainerPlan {
    pub name: String,
    /// Attempt 0; see [`ContainerPlan::config_for_attempt`].
    pub config: ContainerConfig,
    pub liveness: Option<ProbePlan>,
    pub readiness: Option<ProbePlan>,
}

impl ContainerPlan {
    /// The config for a restart: CRI wants a new attempt number (and a new
    /// log file) for each container created under the same name.
    pub fn config_for_attempt(&self, attempt: u32) -> ContainerConfig {
        let mut config = self.config.clone();
        if let Some(meta) = config.metadata.as_mut() {
            meta.attempt = attempt;
        }
        config.log_path = format!("{}/{attempt}.log", self.name);
        config
    }
}

#[derive(Debug, Clone)]
pub struct PodPlan {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub sandbox: PodSandboxConfig,
    pub volumes: Vec<(String, VolumePlan)>,
    pub init_containers: Vec<ContainerPlan>,
    pub containers: Vec<ContainerPlan>,
    pub restart_policy: RestartPolicy,
    pub host_network: bool,
    pub grace_period: Duration,
    /// Accepted but not fully enforced (reported as Warning Events).
    pub warnings: Vec<String>,
}

const POD_FIELDS: &[&str] = &[
    "containers",
    "initContainers",
    "volumes",
    "hostNetwork",
    "hostPID",
    "hostIPC",
    "shareProcessNamespace",
    "securityContext",
    "restartPolicy",
    "terminationGracePeriodSeconds",
    "hostname",
    "serviceAccountName",
    "serviceAccount",
    "automountServiceAccountToken",
    // Scheduling and admission: decided before the pod reaches a node.
    "nodeName",
    "nodeSelector",
    "tolerations",
    "affinity",
    "schedulerName",
    "priorityClassName",
    "priority",
    "preemptionPolicy",
    "enableServiceLinks",
    // The sandbox keeps the runtime's resolv.conf: no cluster DNS here.
    "dnsPolicy",
];

/// Plans the whole pod. `pod_ip` is known only once the sandbox runs:
/// plan first without it (everything is validated), then again with it.
pub fn plan_pod(
    pod: &Pod,
    node: &NodeFacts,
    pod_ip: Option<&str>,
) -> Result<PodPlan, TranslateError> {
    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| invalid("spec", "missing"))?;
    only_known(spec, "spec", POD_FIELDS)?;
    security::check_pod(spec.security_context.as_ref())?;
    let (name, namespace, uid) = identity(pod)?;
    let host_network = spec.host_network.unwrap_or(false);
    let pod_ip = pod_ip
        .map(str::to_string)
        .or_else(|| host_network.then(|| node.node_ip.clone()).flatten());
    let mut warnings = Vec::new();
    let volumes = plan_volumes(pod, &uid, &node.dirs, &mut warnings)?;
    let ctx = Ctx {
        pod,
        spec,
        namespaces: namespaces(spec),
        volumes: &volumes,
        facts: EnvFacts {
            node_name: node.node_name.clone(),
            host_ip: node.node_ip.clone(),
            pod_ip,
            api_host: node.api_host.clone(),
            api_port: node.api_port,
        },
        labels: labels(&name, &namespace, &uid),
    };
    let init_containers = plan_list(&ctx, spec.init_containers.as_deref(), "spec.initContainers")?;
    let containers = plan_list(&ctx, Some(&spec.containers), "spec.containers")?;
    let sandbox = sandbox_config(&ctx, &name, &namespace, &uid, node)?;
    Ok(PodPlan {
        sandbox,
        volumes: volumes.clone(),
        init_containers,
        containers,
        restart_policy: restart_policy(spec)?,
        host_network,
        grace_period: Duration::from_secs(
            spec.termination_grace_period_seconds.unwrap_or(30).max(0) as u64,
        ),
        warnings,
        name,
        namespace,
        uid,
    })
}

/// Everything a container's translation needs from its pod.
struct Ctx<'a> {
    pod: &'a Pod,
    spec: &'a PodSpec,
    namespaces: NamespaceOption,
    volumes: &'a [(String, VolumePlan)],
    facts: EnvFacts,
    labels: HashMap<String, String>,
}

fn invalid(field: &str, reason: &str) -> TranslateError {
    TranslateError::Invalid {
        field: field.to_string(),
        reason: reason.to_string(),
    }
}

fn identity(pod: &Pod) -> Result<(String, String, String), TranslateError> {
    let m = &pod.metadata;
    let name = m
        .name
        .clone()
        .ok_or_else(|| invalid("metadata.name", "missing"))?;
    let uid = m
        .uid
        .clone()
        .ok_or_else(|| invalid("metadata.uid", "missing"))?;
    Ok((
        name,
        m.namespace.clone().unwrap_or_else(|| "default".into()),
        uid,
    ))
}

fn labels(name: &str, namespace: &str, uid: &str) -> HashMap<String, String> {
    HashMap::from([
        ("io.kubernetes.pod.name".to_string(), name.to_string()),
        (
            "io.kubernetes.pod.namespace".to_string(),
            namespace.to_string(),
        ),
        ("io.kubernetes.pod.uid".to_string(), uid.to_string()),
    ])
}

/// The value `choices` gives the name in an enum-like field, the first choice's when the field
/// is unset; any other name is refused at `field` as `unknown <what> "<name>"`.
fn one_of<T: Copy>(
    name: Option<&str>,
    field: &str,
    what: &str,
    choices: &[(&str, T)],
) -> Result<T, TranslateError> {
    let Some(name) = name else {
        return Ok(choices[0].1);
    };
    choices
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, value)| *value)
        .ok_or_else(|| invalid(field, &format!("unknown {what} {name:?}")))
}

fn restart_policy(spec: &PodSpec) -> Result<RestartPolicy, TranslateError> {
    one_of(
        spec.restart_policy.as_deref(),
        "spec.restartPolicy",
        "policy",
        &[
            ("Always", RestartPolicy::Always),
            ("OnFailure", RestartPolicy::OnFailure),
            ("Never", RestartPolicy::Never),
        ],
    )
}

/// kubelet's modes: host namespaces on request; otherwise one network and
/// IPC namespace per pod, and a PID namespace per container unless the
/// pod asks to share it.
fn namespaces(spec: &PodSpec) -> NamespaceOption {
    let node_or = |host: Option<bool>, other: NamespaceMode| {
        if host.unwrap_or(false) {
            NamespaceMode::Node as i32
        } else {
            other as i32
        }
    };
    let pid_default = if spec.share_process_namespace.unwrap_or(false) {
        NamespaceMode::Pod
    } else {
        NamespaceMode::Container
    };
    NamespaceOption {
        network: node_or(spec.host_network, NamespaceMode::Pod),
        pid: node_or(spec.host_pid, pid_default),
        ipc: node_or(spec.host_ipc, NamespaceMode::Pod),
        ..Default::default()
    }
}

const CONTAINER_FIELDS: &[&str] = &[
    "name",
    "image",
    "imagePullPolicy",
    "command",
    "args",
    "workingDir",
    "env",
    "ports",
    "resources",
    "securityContext",
    "volumeMounts",
    "livenessProbe",
    "readinessProbe",
    // Defaults the API server writes; the driver keeps no termination log.
    "terminationMessagePath",
    "terminationMessagePolicy",
];

fn plan_list(
    ctx: &Ctx,
    list: Option<&[Container]>,
    path: &str,
) -> Result<Vec<ContainerPlan>, TranslateError> {
    list.into_iter()
        .flatten()
        .enumerate()
        .map(|(i, c)| container_plan(ctx, c, &format!("{path}[{i}]")))
        .collect()
}

fn container_plan(ctx: &Ctx, c: &Container, path: &str) -> Result<ContainerPlan, TranslateError> {
    only_known(c, path, CONTAINER_FIELDS)?;
    let image = c
        .image
        .clone()
        .filter(|i| !i.is_empty())
        .ok_or_else(|| invalid(&format!("{path}.image"), "missing"))?;
    // There is no registry: images are imported into the node's containerd
    // beforehand, and a policy that demands a pull cannot be honoured.
    if c.image_pull_policy.as_deref() == Some("Always") {
        return Err(TranslateError::Unsupported {
            field: format!("{path}.imagePullPolicy=Always"),
        });
    }
    let envs = container_env(ctx.pod, c.env.as_ref(), &ctx.facts, path)?;
    let expand_all = |v: &Option<Vec<String>>| {
        v.iter()
            .flatten()
            .map(|s| expand(s, &envs))
            .collect::<Vec<_>>()
    };
    let security_context = security::container_context(
        ctx.spec.security_context.as_ref(),
        c.security_context.as_ref(),
        ctx.namespaces.clone(),
        path,
    )?;
    let mut labels = ctx.labels.clone();
    labels.insert("io.kubernetes.container.name".into(), c.name.clone());
    let config = ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: c.name.clone(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image,
            ..Default::default()
        }),
        command: expand_all(&c.command),
        args: expand_all(&c.args),
        working_dir: c.working_dir.clone().unwrap_or_default(),
        mounts: mounts(ctx, c, path)?,
        envs,
        labels,
        log_path: format!("{}/0.log", c.name),
        linux: Some(LinuxContainerConfig {
            resources: resources::linux_resources(c.resources.as_ref(), path)?,
            security_context: Some(security_context),
        }),
        ..Default::default()
    };
    let probe = |p: &Option<k8s_openapi::api::core::v1::Probe>, field: &str| {
        p.as_ref()
            .map(|p| probes::plan(p, c, &format!("{path}.{field}")))
            .transpose()
    };
    Ok(ContainerPlan {
        name: c.name.clone(),
        liveness: probe(&c.liveness_probe, "livenessProbe")?,
        readiness: probe(&c.readiness_probe, "readinessProbe")?,
        config,
    })
}

fn mounts(ctx: &Ctx, c: &Container, path: &str) -> Result<Vec<Mount>, TranslateError> {
    let mut out = Vec::new();
    for (i, m) in c.volume_mounts.iter().flatten().enumerate() {
        let field = format!("{path}.volumeMounts[{i}]");
        only_known(
            m,
            &field,
            &["name", "mountPath", "readOnly", "mountPropagation"],
        )?;
        let plan = ctx
            .volumes
            .iter()
            .find(|(name, _)| *name == m.name)
            .map(|(_, plan)| plan)
            .ok_or_else(|| {
                invalid(
                    &format!("{field}.name"),
                    &format!("no volume named {:?}", m.name),
                )
            })?;
        let propagation = one_of(
            m.mount_propagation.as_deref(),
            &format!("{field}.mountPropagation"),
            "mode",
            &[
                ("None", MountPropagation::PropagationPrivate),
                (
                    "HostToContainer",
                    MountPropagation::PropagationHostToContainer,
                ),
                ("Bidirectional", MountPropagation::PropagationBidirectional),
            ],
        )?;
        out.push(Mount {
            container_path: m.mount_path.clone(),
            host_path: plan.host_path().to_string_lossy().into_owned(),
            // kubelet mounts configMap and projected volumes read-only.
            readonly: m.read_only.unwrap_or(false) || matches!(plan, VolumePlan::Files { .. }),
            propagation: propagation as i32,
            ..Default::default()
        });
    }
    Ok(out)
}

fn sandbox_config(
    ctx: &Ctx,
    name: &str,
    namespace: &str,
    uid: &str,
    node: &NodeFacts,
) -> Result<PodSandboxConfig, TranslateError> {
    let spec = ctx.spec;
    let host_network = spec.host_network.unwrap_or(false);
    let logs = node.dirs.pods.join(uid).join("logs");
    Ok(PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.to_string(),
            uid: uid.to_string(),
            namespace: namespace.to_string(),
            attempt: 0,
        }),
        // A hostNetwork pod keeps the node's hostname, like kubelet does.
        hostname: if host_network {
            String::new()
        } else {
            spec.hostname.clone().unwrap_or_else(|| name.to_string())
        },
        log_directory: logs.to_string_lossy().into_owned(),
        port_mappings: port_mappings(spec, host_network)?,
        labels: ctx.labels.clone(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(sandbox_security(ctx)?),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The pod-level security context; privileged if any container is (the
/// runtime requires it of the sandbox).
fn sandbox_security(ctx: &Ctx) -> Result<LinuxSandboxSecurityContext, TranslateError> {
    let spec = ctx.spec;
    let pod_sc = spec.security_context.as_ref();
    let any_privileged = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| {
            c.security_context
                .as_ref()
                .and_then(|s| s.privileged)
                .unwrap_or(false)
        });
    Ok(LinuxSandboxSecurityContext {
        namespace_options: Some(ctx.namespaces.clone()),
        run_as_user: pod_sc
            .and_then(|p| p.run_as_user)
            .map(|value| k8s_cri::v1::Int64Value { value }),
        supplemental_groups: pod_sc
            .and_then(|p| p.supplemental_groups.clone())
            .unwrap_or_default(),
        privileged: any_privileged,
        seccomp: Some(security::seccomp_profile(
            pod_sc.and_then(|p| p.seccomp_profile.as_ref()),
            "spec.securityContext",
        )?),
        ..Default::default()
    })
}

/// hostPorts of a pod with its own network namespace become the runtime's
/// port mappings (the portmap plugin acts on them). With hostNetwork the
/// container port already is the host port.
fn port_mappings(spec: &PodSpec, host_network: bool) -> Result<Vec<PortMapping>, TranslateError> {
    let mut out = Vec::new();
    for (ci, c) in spec.containers.iter().enumerate() {
        for (pi, p) in c.ports.iter().flatten().enumerate() {
            let field = format!("spec.containers[{ci}].ports[{pi}]");
            only_known(
                p,
                &field,
                &["name", "containerPort", "hostPort", "protocol"],
            )?;
            let protocol = one_of(
                p.protocol.as_deref(),
                &format!("{field}.protocol"),
                "protocol",
                &[
                    ("TCP", Protocol::Tcp),
                    ("UDP", Protocol::Udp),
                    ("SCTP", Protocol::Sctp),
                ],
            )?;
            match p.host_port {
                Some(hp) if !host_network && hp != 0 => out.push(PortMapping {
                    protocol: protocol as i32,
                    container_port: p.container_port,
                    host_port: hp,
                    host_ip: String::new(),
                }),
                _ => {}
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use k8s_cri::v1::security_profile::ProfileType;
    use k8s_openapi::api::apps::v1::DaemonSet;

    use super::*;
    use crate::kubelet::volumes::{FileContent, HostPathKind};

    const DAEMONSET: &str = include_str!("../../../deploy/manifests/daemonset.yaml");

    fn node() -> NodeFacts {
        NodeFacts {
            node_name: "node-1".into(),
            node_ip: Some("10.99.0.11".into()),
            dirs: NodeDirs {
                root: PathBuf::from("/n1/root"),
                pods: PathBuf::from("/n1/pods"),
            },
            api_host: "10.99.0.1".into(),
            api_port: 6443,
        }
    }

    /// The Pod the DaemonSet controller would make from the manifest.
    fn agent_pod() -> Pod {
        // kubectl reads YAML 1.1, where `0444` (the token's mode) is octal.
        let mut options = serde_saphyr::Options::default();
        options.legacy_octal_numbers = true;
        let ds: DaemonSet =
            serde_saphyr::from_str_with_options(DAEMONSET, options).expect("manifest parses");
        let template = ds.spec.template;
        let mut pod = Pod {
            metadata: template.metadata.unwrap_or_default(),
            spec: template.spec,
            status: None,
        };
        pod.metadata.name = Some("trellis-x1".into());
        pod.metadata.namespace = Some("trellis-system".into());
        pod.metadata.uid = Some("uid-1".into());
        pod
    }

    fn env<'a>(c: &'a ContainerConfig, key: &str) -> Option<&'a str> {
        c.envs
            .iter()
            .rev()
            .find(|e| e.key == key)
            .map(|e| e.value.as_str())
    }

    fn mount<'a>(c: &'a ContainerConfig, path: &str) -> &'a Mount {
        c.mounts
            .iter()
            .find(|m| m.container_path == path)
            .unwrap_or_else(|| panic!("no mount at {path}: {:?}", c.mounts))
    }

    #[test]
    fn daemonset_manifest_sandbox_is_host_network_with_runtime_default_seccomp() {
        let plan = plan_pod(&agent_pod(), &node(), None).expect("the manifest is honourable");
        assert!(plan.host_network);
        let sc = plan
            .sandbox
            .linux
            .expect("linux")
            .security_context
            .expect("sc");
        let ns = sc.namespace_options.expect("ns");
        assert_eq!(ns.network, NamespaceMode::Node as i32);
        assert_eq!(ns.pid, NamespaceMode::Container as i32);
        assert_eq!(
            sc.seccomp.expect("seccomp").profile_type,
            ProfileType::RuntimeDefault as i32
        );
        assert!(!sc.privileged);
        assert_eq!(plan.sandbox.hostname, "");
        assert_eq!(plan.grace_period, Duration::from_secs(30));
        assert_eq!(plan.restart_policy, RestartPolicy::Always);
    }

    #[test]
    fn daemonset_manifest_containers_env_mounts_limits_and_probes() {
        let plan = plan_pod(&agent_pod(), &node(), None).expect("honourable");
        assert_eq!(plan.init_containers.len(), 1);
        let agent = &plan.containers[0].config;
        assert_eq!(env(agent, "NODE_NAME"), Some("node-1"));
        assert_eq!(env(agent, "POD_NAMESPACE"), Some("trellis-system"));
        assert_eq!(env(agent, "KUBERNETES_SERVICE_HOST"), Some("10.99.0.1"));
        assert_eq!(env(agent, "KUBERNETES_SERVICE_PORT"), Some("6443"));
        assert!(
            agent
                .args
                .contains(&"--configmap-namespace=trellis-system".to_string()),
            "{:?}",
            agent.args
        );
        let cni_bin = mount(agent, "/opt/cni/bin");
        assert_eq!(
            (cni_bin.host_path.as_str(), cni_bin.readonly),
            ("/n1/root/opt/cni/bin", true)
        );
        let token = mount(agent, "/var/run/secrets/kubernetes.io/serviceaccount");
        assert_eq!(token.host_path, "/n1/pods/uid-1/volumes/kube-api-access");
        assert!(token.readonly);
        let linux = agent.linux.as_ref().expect("linux");
        let res = linux.resources.as_ref().expect("resources");
        assert_eq!(
            (res.cpu_quota, res.memory_limit_in_bytes),
            (100_000, 100 << 20)
        );
        let sc = linux.security_context.as_ref().expect("sc");
        assert!(sc.readonly_rootfs && sc.no_new_privs);
        let caps = sc.capabilities.as_ref().expect("caps");
        assert_eq!(caps.add_capabilities, ["NET_ADMIN", "NET_RAW"]);
        assert!(plan.containers[0].liveness.is_some() && plan.containers[0].readiness.is_some());
        let init = &plan.init_containers[0].config;
        assert!(
            !mount(init, "/opt/cni/bin").readonly,
            "install-cni writes the plugin"
        );
    }

    #[test]
    fn daemonset_manifest_volumes_and_the_one_reported_shortcut() {
        let plan = plan_pod(&agent_pod(), &node(), None).expect("honourable");
        let vol = |name: &str| &plan.volumes.iter().find(|(n, _)| n == name).expect(name).1;
        assert_eq!(
            vol("xtables-lock"),
            &VolumePlan::HostPath {
                host: PathBuf::from("/n1/root/run/xtables.lock"),
                kind: HostPathKind::FileOrCreate
            }
        );
        let VolumePlan::Files { files, .. } = vol("kube-api-access") else {
            panic!("projected volume is files");
        };
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["token", "ca.crt", "namespace"]);
        assert_eq!(
            files[0].content,
            FileContent::ServiceAccountToken {
                expiration_seconds: Some(3607)
            }
        );
        assert_eq!(
            files[2].content,
            FileContent::Literal("trellis-system".into())
        );
        assert_eq!(plan.warnings.len(), 1, "{:?}", plan.warnings);
        assert!(
            plan.warnings[0].starts_with("spec.volumes[5].emptyDir: medium \"Memory\""),
            "{:?}",
            plan.warnings
        );
    }

    fn with_spec(edit: impl FnOnce(&mut PodSpec)) -> Pod {
        let mut pod = agent_pod();
        edit(pod.spec.as_mut().expect("spec"));
        pod
    }

    #[test]
    fn unhonourable_fields_are_named() {
        let appended = agent_pod()
            .spec
            .and_then(|s| s.volumes)
            .map_or(0, |v| v.len());
        let nfs = format!("spec.volumes[{appended}].nfs: not supported by the test node driver");
        let cases: Vec<(Pod, &str)> = vec![
            (
                with_spec(|s| {
                    s.volumes.get_or_insert_with(Vec::new).push(serde_json::from_value(serde_json::json!(
                        {"name": "data", "nfs": {"server": "s", "path": "/"}}))
                    .expect("volume"))
                }),
                &nfs,
            ),
            (
                with_spec(|s| s.containers[0].startup_probe = Some(k8s_openapi::api::core::v1::Probe {
                        period_seconds: Some(1),
                        ..Default::default()
                    })),
                "spec.containers[0].startupProbe: not supported by the test node driver",
            ),
            (
                with_spec(|s| s.containers[0].volume_mounts.get_or_insert_with(Vec::new)[0].sub_path = Some("x".into())),
                "spec.containers[0].volumeMounts[0].subPath: not supported by the test node driver",
            ),
            (
                with_spec(|s| s.runtime_class_name = Some("kata".into())),
                "spec.runtimeClassName: not supported by the test node driver",
            ),
            (
                with_spec(|s| s.init_containers.get_or_insert_with(Vec::new)[0].image_pull_policy = Some("Always".into())),
                "spec.initContainers[0].imagePullPolicy=Always: not supported by the test node driver",
            ),
            (
                with_spec(|s| {
                    if let Some(v) = s.volumes.as_mut() {
                        v[0].host_path.as_mut().expect("hostPath").path = "/run/../etc".into();
                    }
                }),
                "spec.volumes[0].hostPath.path: \"/run/../etc\" is not an absolute path without `..`",
            ),
        ];
        for (pod, want) in cases {
            let err = plan_pod(&pod, &node(), None).expect_err(want);
            assert_eq!(err.to_string(), want);
        }
    }

    #[test]
    fn enum_like_fields_default_when_unset_map_their_names_and_refuse_others() {
        let web = |restart: Option<&str>, protocol: Option<&str>| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "web", "namespace": "default", "uid": "u3"},
                "spec": {"restartPolicy": restart, "containers": [{
                    "name": "web", "image": "localhost/x:1",
                    "ports": [{"containerPort": 80, "hostPort": 8080, "protocol": protocol}]
                }]}
            }))
            .expect("pod")
        };
        for (restart, protocol, want_restart, want_protocol) in [
            (None, None, RestartPolicy::Always, Protocol::Tcp),
            (
                Some("Always"),
                Some("TCP"),
                RestartPolicy::Always,
                Protocol::Tcp,
            ),
            (
                Some("OnFailure"),
                Some("UDP"),
                RestartPolicy::OnFailure,
                Protocol::Udp,
            ),
            (
                Some("Never"),
                Some("SCTP"),
                RestartPolicy::Never,
                Protocol::Sctp,
            ),
        ] {
            let plan = plan_pod(&web(restart, protocol), &node(), None).expect("valid");
            assert_eq!(plan.restart_policy, want_restart, "{restart:?}");
            assert_eq!(
                plan.sandbox.port_mappings[0].protocol, want_protocol as i32,
                "{protocol:?}"
            );
        }
        let propagation = |mode: Option<&str>| {
            with_spec(|s| {
                s.containers[0].volume_mounts.get_or_insert_with(Vec::new)[0].mount_propagation =
                    mode.map(Into::into)
            })
        };
        for (mode, want) in [
            (None, MountPropagation::PropagationPrivate),
            (Some("None"), MountPropagation::PropagationPrivate),
            (
                Some("HostToContainer"),
                MountPropagation::PropagationHostToContainer,
            ),
            (
                Some("Bidirectional"),
                MountPropagation::PropagationBidirectional,
            ),
        ] {
            let plan = plan_pod(&propagation(mode), &node(), None).expect("valid");
            assert_eq!(
                plan.containers[0].config.mounts[0].propagation, want as i32,
                "{mode:?}"
            );
        }
        for (pod, want) in [
            (
                web(Some("Sometimes"), None),
                "spec.restartPolicy: unknown policy \"Sometimes\"",
            ),
            (
                web(None, Some("QUIC")),
                "spec.containers[0].ports[0].protocol: unknown protocol \"QUIC\"",
            ),
            (
                propagation(Some("Sideways")),
                "spec.containers[0].volumeMounts[0].mountPropagation: unknown mode \"Sideways\"",
            ),
        ] {
            let err = plan_pod(&pod, &node(), None).expect_err(want);
            assert_eq!(err.to_string(), want);
        }
    }

    #[test]
    fn pod_network_pod_gets_host_ports_and_pod_ip_env() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u2"},
            "spec": {"containers": [{
                "name": "web", "image": "localhost/x:1",
                "ports": [{"containerPort": 80, "hostPort": 8080}],
                "env": [{"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
            }]}
        }))
        .expect("pod");
        let plan = plan_pod(&pod, &node(), Some("10.244.1.5")).expect("valid");
        assert_eq!(plan.sandbox.hostname, "web");
        assert_eq!(plan.sandbox.port_mappings.len(), 1);
        assert_eq!(plan.sandbox.port_mappings[0].host_port, 8080);
        assert_eq!(env(&plan.containers[0].config, "IP"), Some("10.244.1.5"));
        let ns = plan
            .sandbox
            .linux
            .and_then(|l| l.security_context)
            .and_then(|s| s.namespace_options)
            .expect("ns");
        assert_eq!(ns.network, NamespaceMode::Pod as i32);
        let restart = plan.containers[0].config_for_attempt(2);
        assert_eq!(restart.metadata.map(|m| m.attempt), Some(2));
        assert_eq!(restart.log_path, "web/2.log");
        assert!(Path::new(&plan.sandbox.log_directory).ends_with("u2/logs"));
    }
}
