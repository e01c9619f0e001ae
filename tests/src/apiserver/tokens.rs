//! ServiceAccount tokens: `POST .../serviceaccounts/NAME/token` (authentication.k8s.io/v1
//! TokenRequest) issues one, and the authenticator accepts it as
//! `system:serviceaccount:NS:NAME` while it has not expired and the ServiceAccount it names
//! still exists with the same uid (as the apiserver checks bound tokens).
//!
//! Tokens are self-contained (payload plus a keyed SHA-256 over it, keyed by the emulator's
//! secret admin token) rather than JWTs: nothing outside the emulator verifies them, and being
//! stateless they stay valid across an emulator restart with the same state directory.

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::resources::PODS;
use super::status::ApiError;
use super::util;

const PREFIX: &str = "trellis-sa.";
/// The apiserver's default when a TokenRequest names no duration, and its lower bound.
const DEFAULT_SECONDS: i64 = 3600;
const MIN_SECONDS: i64 = 600;
const DEFAULT_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// The Pod the token is bound to (`spec.boundObjectRef`): the token dies with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<BoundPod>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BoundPod {
    pub name: String,
    pub uid: String,
}

impl Claims {
    pub fn user_name(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }
}

fn signature(secret: &str, payload: &str) -> String {
    let mut h = Sha256::new();
    h.update(secret.as_bytes());
    h.update(b"\0");
    h.update(payload.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

pub fn issue(secret: &str, claims: &Claims) -> String {
    let raw = serde_json::to_vec(claims).unwrap_or_default();
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    let sig = signature(secret, &payload);
    format!("{PREFIX}{payload}.{sig}")
}

/// The claims of a token this emulator issued and that has not expired at `now`.
pub fn verify(secret: &str, token: &str, now: i64) -> Option<Claims> {
    let (payload, sig) = token.strip_prefix(PREFIX)?.split_once('.')?;
    // Compared in full whatever the first differing byte: no timing hint about the signature.
    let want = signature(secret, payload);
    let same = want.len() == sig.len()
        && want
            .bytes()
            .zip(sig.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return None;
    }
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: Claims = serde_json::from_slice(&raw).ok()?;
    (claims.exp > now).then_some(claims)
}

/// Answers a TokenRequest for the ServiceAccount `sa` (as stored): the TokenRequest with its
/// `status.token`. Validation as the apiserver's: at least ten minutes; a bound object must be
/// a Pod of the same namespace, found by `pod_uid` (its uid, if it exists) and matching the
/// reference's uid when one is given.
pub fn token_request(
    secret: &str,
    sa: &Value,
    body: &[u8],
    now: i64,
    pod_uid: impl Fn(&str) -> Option<String>,
) -> Result<Value, ApiError> {
    let mut req: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("the request body is not valid JSON: {e}"))
        })?
    };
    let name = sa["metadata"]["name"].as_str().unwrap_or_default();
    let namespace = sa["metadata"]["namespace"].as_str().unwrap_or_default();
    let uid = sa["metadata"]["uid"].as_str().unwrap_or_default();
    if !req.is_object() {
        return Err(ApiError::bad_request(
            "a TokenRequest must be a JSON object",
        ));
    }
    let seconds = match &req["spec"]["expirationSeconds"] {
        Value::Null => DEFAULT_SECONDS,
        v => v
            .as_i64()
            .ok_or_else(|| ApiError::bad_request("spec.expirationSeconds must be an integer"))?,
    };
    if seconds < MIN_SECONDS {
        return Err(ApiError::invalid_kind(
            "TokenRequest",
            "authentication.k8s.io",
            name,
            vec![(
                "spec.expirationSeconds".into(),
                "Invalid value: may not specify a duration less than 10 minutes".into(),
            )],
        ));
    }
    if !matches!(req["spec"]["audiences"], Value::Array(_)) {
        req["spec"]["audiences"] = json!([DEFAULT_AUDIENCE]);
    }
    let pod = match &req["spec"]["boundObjectRef"] {
        Value::Null => None,
        r => Some(bound_pod(name, r, &pod_uid)?),
    };
    let claims = Claims {
        namespace: namespace.to_string(),
        name: name.to_string(),
        uid: uid.to_string(),
        exp: now + seconds,
        pod,
    };
    req["apiVersion"] = json!("authentication.k8s.io/v1");
    req["kind"] = json!("TokenRequest");
    req["metadata"] = json!({
        "name": name,
        "namespace": namespace,
        "creationTimestamp": util::rfc3339(now),
    });
    req["spec"]["expirationSeconds"] = json!(seconds);
    req["status"] = json!({
        "token": issue(secret, &claims),
        "expirationTimestamp": util::rfc3339(now + seconds),
    });
    tracing::debug!(user = claims.user_name(), seconds, "issued a token");
    Ok(req)
}

fn bound_pod(
    sa_name: &str,
    r: &Value,
    pod_uid: impl Fn(&str) -> Option<String>,
) -> Result<BoundPod, ApiError> {
    let invalid = |field: &str, why: String| {
        ApiError::invalid_kind(
            "TokenRequest",
            "authentication.k8s.io",
            sa_name,
            vec![(format!("spec.boundObjectRef.{field}"), why)],
        )
    };
    if r["kind"].as_str() != Some("Pod") {
        return Err(invalid(
            "kind",
            format!(
                "Unsupported value: {}: the emulator binds tokens to Pods only",
                r["kind"]
            ),
        ));
    }
    let name = r["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| invalid("name", "Required value".into()))?;
    let uid = pod_uid(name).ok_or_else(|| ApiError::not_found(&PODS, name))?;
    if let Some(want) = r["uid"].as_str().filter(|u| !u.is_empty()) {
        if want != uid {
            let mut e = ApiError::conflict(&PODS, name);
            e.message = format!(
                "the UID in the bound object reference ({want}) does not match the UID in record ({uid}); the object might have been deleted and then recreated"
            );
            return Err(e);
        }
    }
    Ok(BoundPod {
        name: name.to_string(),
        uid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_verify_until_they_expire() {
        let c = Claims {
            namespace: "ns".into(),
            name: "sa".into(),
            uid: "u".into(),
            exp: 1000,
            pod: None,
        };
        let t = issue("secret", &c);
        assert_eq!(verify("secret", &t, 999), Some(c.clone()));
        assert_eq!(verify("secret", &t, 1000), None, "expired");
        assert_eq!(verify("other", &t, 0), None, "another emulator's key");
        let forged = t.replacen("trellis-sa.e", "trellis-sa.f", 1);
        assert_eq!(verify("secret", &forged, 0), None);
        assert_eq!(verify("secret", "garbage", 0), None);
        assert_eq!(c.user_name(), "system:serviceaccount:ns:sa");
    }

    #[test]
    fn token_request_defaults_and_validation() {
        let sa = json!({"metadata": {"name": "sa", "namespace": "ns", "uid": "u"}});
        let none = |_: &str| None;
        let r = token_request("k", &sa, b"", 0, none).unwrap();
        assert_eq!(r["spec"]["expirationSeconds"], 3600);
        assert_eq!(r["status"]["expirationTimestamp"], "1970-01-01T01:00:00Z");
        let t = r["status"]["token"].as_str().unwrap();
        assert_eq!(verify("k", t, 10).map(|c| c.uid), Some("u".into()));
        let short = br#"{"spec":{"expirationSeconds":60}}"#;
        let e = token_request("k", &sa, short, 0, none).unwrap_err();
        assert_eq!(e.code, 422);
        let bound = br#"{"spec":{"boundObjectRef":{"kind":"Pod","name":"p","uid":"pu"}}}"#;
        let pods = |n: &str| (n == "p").then(|| "pu".to_string());
        let r = token_request("k", &sa, bound, 0, pods).unwrap();
        let t = r["status"]["token"].as_str().unwrap();
        let pod = verify("k", t, 10).and_then(|c| c.pod);
        assert_eq!(pod.map(|p| p.uid), Some("pu".into()));
        assert_eq!(
            token_request("k", &sa, bound, 0, none).unwrap_err().code,
            404
        );
        let other = |_: &str| Some("recreated".to_string());
        assert_eq!(
            token_request("k", &sa, bound, 0, other).unwrap_err().code,
            409
        );
        assert!(
            e.message.contains("spec.expirationSeconds"),
            "{}",
            e.message
        );
    }
}
