//! Reading the API's JSON strictly: the error type of a policy that cannot be enforced as
//! written, and the typed accessors that name the path of what is wrong.

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("{path}: unknown field {field:?} (trellis cannot tell what it would allow, so the policy is enforced as deny-all for the pods it selects)")]
    Unknown { path: String, field: String },
    #[error("{path}: {why}")]
    Invalid { path: String, why: String },
}

impl PolicyError {
    pub fn unknown(path: &str, field: &str) -> PolicyError {
        PolicyError::Unknown {
            path: path.to_string(),
            field: field.to_string(),
        }
    }

    pub fn invalid(path: &str, why: &str) -> PolicyError {
        PolicyError::Invalid {
            path: path.to_string(),
            why: why.to_string(),
        }
    }
}

pub fn object<'v>(path: &str, v: &'v Value) -> Result<&'v Map<String, Value>, PolicyError> {
    v.as_object()
        .ok_or_else(|| PolicyError::invalid(path, "expected an object"))
}

pub fn array<'v>(path: &str, v: &'v Value) -> Result<&'v Vec<Value>, PolicyError> {
    v.as_array()
        .ok_or_else(|| PolicyError::invalid(path, "expected a list"))
}

pub fn string<'v>(path: &str, v: &'v Value) -> Result<&'v str, PolicyError> {
    v.as_str()
        .ok_or_else(|| PolicyError::invalid(path, "expected a string"))
}
