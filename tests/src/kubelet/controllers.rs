//! The control-plane side the tests need besides the emulator: the
//! DaemonSet controller and the scheduler, each one `pass` over the API
//! (list, decide with the pure [`daemonset`](super::daemonset) and
//! [`scheduler`](super::scheduler) functions, write). Polling rather than
//! watching keeps them simple; a test calls `pass` in a loop.

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use super::daemonset::{reconcile, status};
use super::placement::PlacementError;
use super::scheduler::assign;

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{object}: {source}")]
    Placement {
        object: String,
        #[source]
        source: PlacementError,
    },
}

fn api(what: impl Into<String>) -> impl FnOnce(kube::Error) -> ControllerError {
    let what = what.into();
    move |source| ControllerError::Api { what, source }
}

async fn list_all<K>(client: &Client, what: &str) -> Result<Vec<K>, ControllerError>
where
    K: kube::Resource<Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    Ok(Api::<K>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(api(what))?
        .items)
}

/// Creates and deletes Pods so every DaemonSet has one per eligible Node of
/// its current template (rolling per its update strategy), and writes its
/// status. Returns how many Pods were created and deleted.
pub async fn daemonset_pass(client: &Client) -> Result<(usize, usize), ControllerError> {
    let nodes: Vec<Node> = list_all(client, "list Nodes").await?;
    let sets = Api::<DaemonSet>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(api("list DaemonSets"))?;
    let mut counts = (0, 0);
    for ds in &sets.items {
        let ns = ds.metadata.namespace.clone().unwrap_or_default();
        let pods_api = Api::<Pod>::namespaced(client.clone(), &ns);
        let pods = pods_api
            .list(&ListParams::default())
            .await
            .map_err(api(format!("list Pods in {ns}")))?;
        let object = format!(
            "DaemonSet {ns}/{}",
            ds.metadata.name.as_deref().unwrap_or("")
        );
        let actions =
            reconcile(ds, &nodes, &pods.items).map_err(|source| ControllerError::Placement {
                object: object.clone(),
                source,
            })?;
        for pod in &actions.create {
            pods_api
                .create(&PostParams::default(), pod)
                .await
                .map_err(api(format!("create a Pod of {object}")))?;
        }
        for name in &actions.delete {
            match pods_api.delete(name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(source) => {
                    return Err(ControllerError::Api {
                        what: format!("delete Pod {ns}/{name}"),
                        source,
                    })
                }
            }
        }
        write_status(client, ds, &nodes, &pods.items, &object).await?;
        counts.0 += actions.create.len();
        counts.1 += actions.delete.len();
    }
    Ok(counts)
}

/// The DaemonSet's status as of this pass's listing (what `kubectl rollout
/// status` waits on).
async fn write_status(
    client: &Client,
    ds: &DaemonSet,
    nodes: &[Node],
    pods: &[Pod],
    object: &str,
) -> Result<(), ControllerError> {
    let st = status(ds, nodes, pods).map_err(|source| ControllerError::Placement {
        object: object.to_string(),
        source,
    })?;
    if ds.status.as_ref() == Some(&st) {
        return Ok(());
    }
    let (ns, name) = (
        ds.metadata.namespace.as_deref().unwrap_or(""),
        ds.metadata.name.as_deref().unwrap_or(""),
    );
    Api::<DaemonSet>::namespaced(client.clone(), ns)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": st })),
        )
        .await
        .map(drop)
        .map_err(api(format!("status of {object}")))
}

/// Binds every Pod without a node to one (by setting `spec.nodeName`, which
/// the API allows once on an unbound Pod). Returns how many were bound.
pub async fn scheduler_pass(client: &Client) -> Result<usize, ControllerError> {
    let nodes: Vec<Node> = list_all(client, "list Nodes").await?;
    let pods = Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(api("list Pods"))?;
    let plan = assign(&pods.items, &nodes);
    // A pod whose spec cannot be placed stays Pending and is said once per pass; it never
    // holds up the others.
    for (i, e) in &plan.refused {
        tracing::warn!(pod = %pod_label(&pods.items[*i]), error = %e, "cannot schedule");
    }
    for (i, node) in &plan.bind {
        let pod = &pods.items[*i];
        let (Some(name), Some(ns)) = (
            pod.metadata.name.as_deref(),
            pod.metadata.namespace.as_deref(),
        ) else {
            continue;
        };
        let patch = Patch::Merge(json!({"spec": {"nodeName": node}}));
        Api::<Pod>::namespaced(client.clone(), ns)
            .patch(name, &PatchParams::default(), &patch)
            .await
            .map_err(api(format!("bind {} to {node}", pod_label(pod))))?;
    }
    Ok(plan.bind.len())
}

fn pod_label(pod: &Pod) -> String {
    format!(
        "Pod {}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}
