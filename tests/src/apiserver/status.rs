//! API errors rendered as `meta/v1 Status` objects, with the reasons and messages the apiserver uses
//! (clients such as kube-rs and kubectl branch on `code` and `reason`).

use serde_json::{json, Value};

use super::resources::ResourceType;

/// One failed request, as the apiserver would report it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, rt: &ResourceType, name: &str) -> Self {
        let mut d = json!({"name": name, "kind": rt.plural});
        if !rt.group.is_empty() {
            d["group"] = json!(rt.group);
        }
        self.details = Some(d);
        self
    }

    fn qualified(rt: &ResourceType) -> String {
        if rt.group.is_empty() {
            rt.plural.to_string()
        } else {
            format!("{}.{}", rt.plural, rt.group)
        }
    }

    pub fn not_found(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", Self::qualified(rt)),
        )
        .with_details(rt, name)
    }

    pub fn path_not_found() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    pub fn already_exists(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", Self::qualified(rt)),
        )
        .with_details(rt, name)
    }

    pub fn conflict(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                Self::qualified(rt)
            ),
        )
        .with_details(rt, name)
    }

    pub fn precondition_failed(rt: &ResourceType, name: &str, what: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: {what}",
                Self::qualified(rt)
            ),
        )
        .with_details(rt, name)
    }

    /// 410: the requested resourceVersion (or continue token) predates the retained history.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 422 with one cause per offending field, formatted like apimachinery's field errors.
    pub fn invalid(rt: &ResourceType, name: &str, causes: Vec<(String, String)>) -> Self {
        Self::invalid_kind(rt.kind, rt.group, name, causes)
    }

    /// [`ApiError::invalid`] for a kind the store does not hold (a TokenRequest).
    pub fn invalid_kind(
        kind: &str,
        group: &str,
        name: &str,
        causes: Vec<(String, String)>,
    ) -> Self {
        let text: Vec<String> = causes.iter().map(|(f, m)| format!("{f}: {m}")).collect();
        let msg = if text.len() == 1 {
            format!("{kind} \"{name}\" is invalid: {}", text[0])
        } else {
            format!("{kind} \"{name}\" is invalid: [{}]", text.join(", "))
        };
        let mut e = Self::new(422, "Invalid", msg);
        let mut d = json!({"name": name, "kind": kind});
        if !group.is_empty() {
            d["group"] = json!(group);
        }
        d["causes"] = Value::Array(
            causes
                .into_iter()
                .map(|(f, m)| json!({"reason": "FieldValueInvalid", "message": m, "field": f}))
                .collect(),
        );
        e.details = Some(d);
        e
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    /// A non-admin user on the emulator's own `/_emulator/` controls.
    /// 404 for a write into a namespace that does not exist (the NamespaceLifecycle admission
    /// plugin's answer).
    pub fn namespace_not_found(ns: &str) -> Self {
        Self::new(404, "NotFound", format!("namespaces \"{ns}\" not found"))
            .with_details_raw(json!({"name": ns, "kind": "namespaces"}))
    }

    /// 403 for a create in a namespace being deleted.
    pub fn namespace_terminating(ns: &str) -> Self {
        Self::new(
            403,
            "Forbidden",
            format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            ),
        )
    }

    fn with_details_raw(mut self, d: Value) -> Self {
        self.details = Some(d);
        self
    }

    pub fn forbidden_admin() -> Self {
        Self::new(
            403,
            "Forbidden",
            "the emulator's controls (/_emulator/) need the admin token",
        )
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/json, application/merge-patch+json, application/strategic-merge-patch+json, application/json-patch+json (got {content_type:?})"),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(504, "Timeout", message)
    }

    /// The `Status` object sent as a response body or inside a watch `ERROR` event.
    pub fn to_status(&self) -> Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        v
    }
}

impl ApiError {
    /// 422 without field causes: a JSON patch that cannot apply, or a request the API forbids.
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::NODES;

    #[test]
    fn not_found_matches_apiserver_wording() {
        let s = ApiError::not_found(&NODES, "n1").to_status();
        assert_eq!(s["message"], "nodes \"n1\" not found");
        assert_eq!(s["reason"], "NotFound");
        assert_eq!(s["code"], 404);
        assert_eq!(s["details"]["kind"], "nodes");
    }

    #[test]
    fn invalid_lists_causes() {
        let e = ApiError::invalid(
            &NODES,
            "Bad_Name",
            vec![("metadata.name".into(), "Invalid value: \"Bad_Name\"".into())],
        );
        assert_eq!(e.code, 422);
        assert!(e
            .message
            .starts_with("Node \"Bad_Name\" is invalid: metadata.name"));
    }
}
