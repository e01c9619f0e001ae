//! Allow-lists of API fields. The driver implements a subset of the Pod API;
//! anything outside it must be reported, never silently dropped. Checking the
//! serialized object against the list of fields we honour catches every
//! field, including ones added to k8s-openapi later.

use serde::Serialize;
use serde_json::Value;

use super::TranslateError;

/// Fails on the first field of `value` that is set (not null, false, empty
/// list or empty object: those are the API's defaults) and not in `allowed`,
/// naming it `<path>.<field>`.
pub fn only_known<T: Serialize>(
    value: &T,
    path: &str,
    allowed: &[&str],
) -> Result<(), TranslateError> {
    let json = serde_json::to_value(value).map_err(|e| TranslateError::Invalid {
        field: path.to_string(),
        reason: format!("cannot serialize: {e}"),
    })?;
    let Value::Object(map) = json else {
        return Ok(());
    };
    let unknown = map
        .iter()
        .find(|(key, value)| !is_default(value) && !allowed.contains(&key.as_str()));
    match unknown {
        Some((key, _)) => Err(TranslateError::Unsupported {
            field: format!("{path}.{key}"),
        }),
        None => Ok(()),
    }
}

fn is_default(value: &Value) -> bool {
    match value {
        Value::Null | Value::Bool(false) => true,
        Value::Array(items) => items.is_empty(),
        Value::Object(map) => map.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_the_first_unknown_set_field() {
        let v = json!({"name": "x", "nfs": {"server": "s"}});
        let err = only_known(&v, "spec.volumes[1]", &["name", "hostPath"]).expect_err("nfs");
        assert_eq!(
            err.to_string(),
            "spec.volumes[1].nfs: not supported by the test node driver"
        );
    }

    #[test]
    fn defaults_count_as_unset() {
        let v = json!({"name": "x", "tty": false, "ports": [], "labels": {}, "gone": null});
        assert!(only_known(&v, "c", &["name"]).is_ok());
    }
}
