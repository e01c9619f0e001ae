//! Kubernetes label selectors (`matchLabels` and `matchExpressions`), parsed strictly from the
//! API's JSON and matched against a label map.

use std::collections::BTreeMap;

use serde_json::Value;

use super::api_json::{array, object, string, PolicyError};

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub op: Operator,
    pub values: Vec<String>,
}

/// A selector; the empty one (`{}`) selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

impl Selector {
    pub fn everything() -> Selector {
        Selector::default()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Parses `{"matchLabels": {...}, "matchExpressions": [...]}` at `path`.
    pub fn parse(path: &str, v: &Value) -> Result<Selector, PolicyError> {
        let obj = object(path, v)?;
        let mut requirements = Vec::new();
        for (k, v) in obj {
            match k.as_str() {
                "matchLabels" => requirements.extend(match_labels(&format!("{path}.{k}"), v)?),
                "matchExpressions" => {
                    let path = format!("{path}.{k}");
                    for (i, e) in array(&path, v)?.iter().enumerate() {
                        requirements.push(Requirement::parse(&format!("{path}[{i}]"), e)?);
                    }
                }
                other => return Err(PolicyError::unknown(path, other)),
            }
        }
        Ok(Selector { requirements })
    }
}

fn match_labels(path: &str, v: &Value) -> Result<Vec<Requirement>, PolicyError> {
    if v.is_null() {
        return Ok(Vec::new());
    }
    let obj = object(path, v)?;
    obj.iter()
        .map(|(k, v)| {
            let value = v
                .as_str()
                .ok_or_else(|| PolicyError::invalid(&format!("{path}.{k}"), "expected a string"))?;
            Ok(Requirement {
                key: k.clone(),
                op: Operator::In,
                values: vec![value.to_string()],
            })
        })
        .collect()
}

impl Requirement {
    fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match self.op {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }

    fn parse(path: &str, v: &Value) -> Result<Requirement, PolicyError> {
        let obj = object(path, v)?;
        let (mut key, mut op, mut values) = (None, None, Vec::new());
        for (k, v) in obj {
            let at = format!("{path}.{k}");
            match k.as_str() {
                "key" => key = Some(string(&at, v)?.to_string()),
                "operator" => op = Some(operator(&at, string(&at, v)?)?),
                "values" if v.is_null() => {}
                "values" => {
                    for (i, s) in array(&at, v)?.iter().enumerate() {
                        values.push(string(&format!("{at}[{i}]"), s)?.to_string());
                    }
                }
                other => return Err(PolicyError::unknown(path, other)),
            }
        }
        let key = key.ok_or_else(|| PolicyError::invalid(path, "key is required"))?;
        let op = op.ok_or_else(|| PolicyError::invalid(path, "operator is required"))?;
        // The apiserver's own validation: In/NotIn need values, Exists/DoesNotExist none.
        let needs_values = matches!(op, Operator::In | Operator::NotIn);
        if needs_values == values.is_empty() {
            let why = if needs_values {
                "In and NotIn need at least one value"
            } else {
                "Exists and DoesNotExist take no values"
            };
            return Err(PolicyError::invalid(path, why));
        }
        Ok(Requirement { key, op, values })
    }
}

fn operator(path: &str, s: &str) -> Result<Operator, PolicyError> {
    Ok(match s {
        "In" => Operator::In,
        "NotIn" => Operator::NotIn,
        "Exists" => Operator::Exists,
        "DoesNotExist" => Operator::DoesNotExist,
        other => {
            return Err(PolicyError::invalid(
                path,
                &format!("unknown operator {other:?} (In, NotIn, Exists, DoesNotExist)"),
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn empty_selects_everything() {
        let s = Selector::parse("s", &json!({})).unwrap();
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn labels_and_expressions_all_hold() {
        let s = Selector::parse(
            "s",
            &json!({"matchLabels": {"app": "web"}, "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["a", "b"]},
                {"key": "env", "operator": "NotIn", "values": ["prod"]},
                {"key": "team", "operator": "Exists"},
                {"key": "legacy", "operator": "DoesNotExist"}
            ]}),
        )
        .unwrap();
        let ok = labels(&[("app", "web"), ("tier", "b"), ("team", "x")]);
        assert!(s.matches(&ok));
        let mut prod = ok.clone();
        prod.insert("env".into(), "prod".into());
        assert!(!s.matches(&prod));
        let mut legacy = ok.clone();
        legacy.insert("legacy".into(), "".into());
        assert!(!s.matches(&legacy));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "c"), ("team", "x")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "a")])));
    }

    #[test]
    fn malformed_selectors_are_refused_with_their_path() {
        for (v, want) in [
            (json!({"matchLabel": {}}), "unknown field"),
            (json!({"matchLabels": {"a": 1}}), "s.matchLabels.a"),
            (
                json!({"matchExpressions": [{"key": "a", "operator": "Has"}]}),
                "unknown operator",
            ),
            (
                json!({"matchExpressions": [{"key": "a", "operator": "In"}]}),
                "at least one",
            ),
            (
                json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}),
                "no values",
            ),
            (
                json!({"matchExpressions": [{"operator": "Exists"}]}),
                "key is required",
            ),
            (json!([]), "expected an object"),
        ] {
            let e = Selector::parse("s", &v).unwrap_err().to_string();
            assert!(e.contains(want), "{v}: {e}");
        }
    }
}
