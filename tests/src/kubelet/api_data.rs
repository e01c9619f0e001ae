//! Volume file contents from the API, fetched before a pod starts (volume
//! materialisation is synchronous): a TokenRequest bound to the Pod for the
//! projected service-account token, ConfigMap keys (ca.crt comes from
//! `kube-root-ca.crt`, as in a real cluster).

use std::collections::BTreeMap;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount};
use kube::api::PostParams;
use kube::{Api, Client};

use super::volumes::{FileContent, VolumeData, VolumePlan};

/// Contents fetched for one pod, keyed like the plan asks for them.
#[derive(Debug, Default)]
pub struct Prefetched {
    tokens: BTreeMap<Option<i64>, String>,
    config_maps: BTreeMap<(String, String), String>,
}

impl VolumeData for Prefetched {
    fn service_account_token(&self, expiration_seconds: Option<i64>) -> Result<String, String> {
        self.tokens
            .get(&expiration_seconds)
            .cloned()
            .ok_or_else(|| "token not fetched".into())
    }
    fn config_map_key(&self, name: &str, key: &str) -> Result<String, String> {
        self.config_maps
            .get(&(name.to_string(), key.to_string()))
            .cloned()
            .ok_or_else(|| format!("ConfigMap {name} has no key {key}"))
    }
}

/// Fetches what the pod's file volumes need; the error says which object
/// was missing (kubelet's CreateContainerConfigError).
pub async fn prefetch(
    client: &Client,
    pod: &Pod,
    volumes: &[(String, VolumePlan)],
) -> Result<Prefetched, String> {
    let mut out = Prefetched::default();
    let files = volumes.iter().flat_map(|(_, plan)| match plan {
        VolumePlan::Files { files, .. } => files.as_slice(),
        _ => &[],
    });
    for file in files {
        match &file.content {
            FileContent::ServiceAccountToken { expiration_seconds } => {
                let token = request_token(client, pod, *expiration_seconds).await?;
                out.tokens.insert(*expiration_seconds, token);
            }
            FileContent::ConfigMapKey { name, key } => {
                let value = config_map_key(client, pod, name, key).await?;
                out.config_maps.insert((name.clone(), key.clone()), value);
            }
            FileContent::Literal(_) => {}
        }
    }
    Ok(out)
}

fn namespace(pod: &Pod) -> String {
    pod.metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into())
}

async fn request_token(
    client: &Client,
    pod: &Pod,
    expiration_seconds: Option<i64>,
) -> Result<String, String> {
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let ns = namespace(pod);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds,
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let answer = Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .create_token_request(&sa, &PostParams::default(), &request)
        .await
        .map_err(|e| format!("TokenRequest for ServiceAccount {ns}/{sa}: {e}"))?;
    answer
        .status
        .and_then(|s| s.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| format!("TokenRequest for ServiceAccount {ns}/{sa} returned no token"))
}

async fn config_map_key(
    client: &Client,
    pod: &Pod,
    name: &str,
    key: &str,
) -> Result<String, String> {
    let ns = namespace(pod);
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get(name)
        .await
        .map_err(|e| format!("ConfigMap {ns}/{name}: {e}"))?;
    cm.data
        .and_then(|mut d| d.remove(key))
        .ok_or_else(|| format!("ConfigMap {ns}/{name} has no key {key}"))
}
