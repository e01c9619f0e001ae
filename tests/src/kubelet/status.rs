//! The Pod status the driver writes back, built from its container records
//! the way kubelet computes it: phase, podIP(s), hostIP, the Initialized /
//! ContainersReady / Ready conditions, and per-container state, last state,
//! restart count and readiness.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::container::{ContainerRecord, Observed};

/// What the status is computed from.
pub struct StatusInput<'a> {
    pub init: &'a [ContainerRecord],
    pub containers: &'a [ContainerRecord],
    pub pod_ip: Option<&'a str>,
    pub host_ip: Option<&'a str>,
    /// Set when an init container failed for good (restartPolicy Never).
    pub init_failed: bool,
}

pub fn pod_status(input: &StatusInput) -> PodStatus {
    let initialized = input
        .init
        .iter()
        .all(|c| c.finished && exit_code(&c.state) == Some(0));
    let all_ready = initialized && input.containers.iter().all(|c| c.ready);
    PodStatus {
        phase: Some(phase(input, initialized).to_string()),
        pod_ip: input.pod_ip.map(str::to_string),
        pod_ips: input.pod_ip.map(|ip| vec![PodIP { ip: ip.to_string() }]),
        host_ip: input.host_ip.map(str::to_string),
        host_ips: input.host_ip.map(|ip| vec![HostIP { ip: ip.to_string() }]),
        conditions: Some(vec![
            condition("PodScheduled", true, None),
            condition(
                "Initialized",
                initialized,
                (!initialized).then_some("ContainersNotInitialized"),
            ),
            condition(
                "ContainersReady",
                all_ready,
                (!all_ready).then_some("ContainersNotReady"),
            ),
            condition(
                "Ready",
                all_ready,
                (!all_ready).then_some("ContainersNotReady"),
            ),
        ]),
        init_container_statuses: Some(input.init.iter().map(container_status).collect()),
        container_statuses: Some(input.containers.iter().map(container_status).collect()),
        ..Default::default()
    }
}

/// The status of a pod the driver refused to run: Pending, with every
/// container waiting on `reason` and the message naming the field.
pub fn rejected_status(names: &[String], reason: &str, message: &str) -> PodStatus {
    let waiting = |name: &String| ContainerStatus {
        name: name.clone(),
        state: Some(to_api(&Observed::waiting(reason, message))),
        ..Default::default()
    };
    PodStatus {
        phase: Some("Pending".into()),
        message: Some(message.to_string()),
        reason: Some(reason.to_string()),
        conditions: Some(vec![
            condition("PodScheduled", true, None),
            condition("Ready", false, Some(reason)),
        ]),
        container_statuses: Some(names.iter().map(waiting).collect()),
        ..Default::default()
    }
}

fn phase(input: &StatusInput, initialized: bool) -> &'static str {
    if input.init_failed {
        return "Failed";
    }
    if !initialized {
        return "Pending";
    }
    let cs = input.containers;
    if cs.iter().all(|c| c.finished) {
        return if cs.iter().all(|c| exit_code(&c.state) == Some(0)) {
            "Succeeded"
        } else {
            "Failed"
        };
    }
    // Running once every container has had an instance started.
    if cs.iter().all(|c| c.attempts > 0) {
        "Running"
    } else {
        "Pending"
    }
}

fn exit_code(state: &Observed) -> Option<i32> {
    match state {
        Observed::Terminated { exit_code, .. } => Some(*exit_code),
        _ => None,
    }
}

fn condition(kind: &str, ok: bool, reason: Option<&str>) -> PodCondition {
    PodCondition {
        type_: kind.to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        reason: reason.map(str::to_string),
        last_transition_time: Some(Time(Timestamp::now())),
        ..Default::default()
    }
}

fn container_status(c: &ContainerRecord) -> ContainerStatus {
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: c.image_ref.clone(),
        container_id: c.id.as_ref().map(|id| format!("containerd://{id}")),
        ready: c.ready,
        restart_count: c.restart_count(),
        started: Some(matches!(c.state, Observed::Running { .. })),
        state: Some(to_api(&c.state)),
        last_state: c.last_state.as_ref().map(to_api),
        ..Default::default()
    }
}

fn to_api(state: &Observed) -> ContainerState {
    match state {
        Observed::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: (!message.is_empty()).then(|| message.clone()),
            }),
            ..Default::default()
        },
        Observed::Running { started_at } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: time(*started_at),
            }),
            ..Default::default()
        },
        Observed::Terminated {
            exit_code,
            reason,
            message,
            started_at,
            finished_at,
        } => ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: *exit_code,
                reason: (!reason.is_empty()).then(|| reason.clone()),
                message: (!message.is_empty()).then(|| message.clone()),
                started_at: time(*started_at),
                finished_at: time(*finished_at),
                ..Default::default()
            }),
            ..Default::default()
        },
    }
}

/// CRI times are Unix nanoseconds; 0 means "not yet".
fn time(nanos: i64) -> Option<Time> {
    (nanos > 0)
        .then(|| Timestamp::from_nanosecond(i128::from(nanos)).ok())
        .flatten()
        .map(Time)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(name: &str, ready: bool) -> ContainerRecord {
        let mut c = ContainerRecord::new(name, "img");
        c.attempts = 1;
        c.id = Some("abc".into());
        c.state = Observed::Running {
            started_at: 1_700_000_000_000_000_000,
        };
        c.ready = ready;
        c
    }

    fn done(name: &str, code: i32) -> ContainerRecord {
        let mut c = ContainerRecord::new(name, "img");
        c.attempts = 1;
        c.finished = true;
        c.state = Observed::Terminated {
            exit_code: code,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            message: String::new(),
            started_at: 1,
            finished_at: 2,
        };
        c
    }

    fn cond(s: &PodStatus, kind: &str) -> String {
        let conds = s.conditions.as_ref().expect("conditions");
        conds
            .iter()
            .find(|c| c.type_ == kind)
            .expect(kind)
            .status
            .clone()
    }

    #[test]
    fn running_and_ready_pod() {
        let init = [done("init", 0)];
        let cs = [running("app", true)];
        let s = pod_status(&StatusInput {
            init: &init,
            containers: &cs,
            pod_ip: Some("10.244.1.2"),
            host_ip: Some("10.99.0.11"),
            init_failed: false,
        });
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(s.pod_ip.as_deref(), Some("10.244.1.2"));
        assert_eq!(
            (cond(&s, "Initialized"), cond(&s, "Ready")),
            ("True".into(), "True".into())
        );
        let app = &s.container_statuses.as_ref().expect("statuses")[0];
        assert_eq!(app.container_id.as_deref(), Some("containerd://abc"));
        assert!(app
            .state
            .as_ref()
            .and_then(|st| st.running.as_ref())
            .and_then(|r| r.started_at.as_ref())
            .is_some());
    }

    #[test]
    fn phases_follow_init_and_exits() {
        let st = |init: &[ContainerRecord], cs: &[ContainerRecord], init_failed| {
            pod_status(&StatusInput {
                init,
                containers: cs,
                pod_ip: None,
                host_ip: None,
                init_failed,
            })
            .phase
            .expect("phase")
        };
        let waiting_init = [ContainerRecord::new("init", "img")];
        assert_eq!(
            st(&waiting_init, &[running("app", false)], false),
            "Pending"
        );
        assert_eq!(
            st(
                &[done("init", 1)],
                &[ContainerRecord::new("app", "img")],
                true
            ),
            "Failed"
        );
        assert_eq!(st(&[], &[done("a", 0), done("b", 0)], false), "Succeeded");
        assert_eq!(st(&[], &[done("a", 0), done("b", 2)], false), "Failed");
        assert_eq!(st(&[], &[running("a", false)], false), "Running");
    }

    #[test]
    fn rejected_pod_is_pending_with_the_reason_on_every_container() {
        let s = rejected_status(
            &["a".into()],
            "UnsupportedPodSpec",
            "spec.volumes[1].nfs: not supported by the test node driver",
        );
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        let w = s.container_statuses.expect("statuses")[0]
            .state
            .clone()
            .and_then(|st| st.waiting)
            .expect("waiting");
        assert_eq!(w.reason.as_deref(), Some("UnsupportedPodSpec"));
        assert!(w.message.expect("message").contains("nfs"));
    }
}
