//! NetworkPolicy (networking.k8s.io/v1) as the apiserver defaults and validates it. A policy
//! engine reading these objects relies on both: every port has a protocol, `policyTypes` is
//! never empty (it decides whether egress is isolated), and selectors, peers and CIDRs are well
//! formed, so the engine never has to guess what a malformed policy meant.

use std::net::IpAddr;

use serde_json::{json, Value};

use super::semantics::{is_label_value, is_qualified_name};
use super::workloads::{
    invalid, items, port_name_errors, port_number, required, unsupported, Causes, PROTOCOLS,
};

const POLICY_TYPES: &[&str] = &["Ingress", "Egress"];

/// The rule lists of a spec and the name of each one's peer list.
const DIRECTIONS: [(&str, &str); 2] = [("ingress", "from"), ("egress", "to")];

/// What the decoder fills in on every write (SetDefaults_NetworkPolicy and
/// SetDefaults_NetworkPolicyPort): `podSelector` is `{}` when absent (the Go field is not
/// omitempty), unset `policyTypes` is Ingress plus Egress when there are egress rules, and a
/// port without a protocol is TCP. Shapes it cannot walk are left for validation to name.
pub fn defaults(obj: &mut Value) {
    let Some(obj) = obj.as_object_mut() else {
        return;
    };
    let spec = obj.entry("spec").or_insert(Value::Null);
    if spec.is_null() {
        *spec = json!({});
    }
    let Some(spec) = spec.as_object_mut() else {
        return;
    };
    if spec.get("podSelector").is_none_or(Value::is_null) {
        spec.insert("podSelector".into(), json!({}));
    }
    if spec
        .get("policyTypes")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        let egress = spec
            .get("egress")
            .and_then(Value::as_array)
            .is_some_and(|e| !e.is_empty());
        let types = if egress {
            json!(["Ingress", "Egress"])
        } else {
            json!(["Ingress"])
        };
        spec.insert("policyTypes".into(), types);
    }
    for (direction, _) in DIRECTIONS {
        let Some(Value::Array(rules)) = spec.get_mut(direction) else {
            continue;
        };
        for rule in rules {
            let Some(Value::Array(ports)) = rule.get_mut("ports") else {
                continue;
            };
            for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                if p.get("protocol").is_none_or(Value::is_null) {
                    p.insert("protocol".into(), json!("TCP"));
                }
            }
        }
    }
}

/// ValidateNetworkPolicySpec: selectors, each rule's ports and peers, and `policyTypes`.
pub fn validate(causes: &mut Causes, obj: &Value) {
    let spec = &obj["spec"];
    if !object(causes, "spec", spec) {
        return;
    }
    label_selector(causes, "spec.podSelector", &spec["podSelector"]);
    for (direction, peers) in DIRECTIONS {
        let path = format!("spec.{direction}");
        for (i, rule) in items(&spec[direction], &path, causes).iter().enumerate() {
            let rp = format!("{path}[{i}]");
            if !object(causes, &rp, rule) {
                continue;
            }
            for (j, p) in items(&rule["ports"], &format!("{rp}.ports"), causes)
                .iter()
                .enumerate()
            {
                let pp = format!("{rp}.ports[{j}]");
                if object(causes, &pp, p) {
                    port(causes, &pp, p);
                }
            }
            for (j, p) in items(&rule[peers], &format!("{rp}.{peers}"), causes)
                .iter()
                .enumerate()
            {
                peer(causes, &format!("{rp}.{peers}[{j}]"), p);
            }
        }
    }
    policy_types(causes, &spec["policyTypes"]);
}

/// Whether `v` is an object; a cause when not (what Go's decoder would refuse).
fn object(causes: &mut Causes, path: &str, v: &Value) -> bool {
    if !v.is_object() {
        invalid(causes, path.to_string(), v, "must be an object");
    }
    v.is_object()
}

fn policy_types(causes: &mut Causes, types: &Value) {
    let list = items(types, "spec.policyTypes", causes);
    if list.len() > POLICY_TYPES.len() {
        invalid(
            causes,
            "spec.policyTypes".into(),
            types,
            "may not specify more than two policyTypes",
        );
        return;
    }
    for (i, t) in list.iter().enumerate() {
        if !t.as_str().is_some_and(|t| POLICY_TYPES.contains(&t)) {
            unsupported(causes, format!("spec.policyTypes[{i}]"), t, POLICY_TYPES);
        }
    }
}

/// ValidateNetworkPolicyPort: a number (optionally a range up to `endPort`) or a port name.
fn port(causes: &mut Causes, path: &str, p: &Value) {
    let proto = &p["protocol"];
    if !proto.is_null() && !proto.as_str().is_some_and(|s| PROTOCOLS.contains(&s)) {
        unsupported(causes, format!("{path}.protocol"), proto, PROTOCOLS);
    }
    let end = &p["endPort"];
    let end_path = format!("{path}.endPort");
    match &p["port"] {
        Value::Null if !end.is_null() => invalid(
            causes,
            end_path,
            end,
            "may not be specified when `port` is not specified",
        ),
        Value::Null => {}
        n @ Value::Number(_) => {
            port_number(causes, format!("{path}.port"), n);
            if !end.is_null() {
                if end.as_i64() < n.as_i64() {
                    invalid(
                        causes,
                        end_path.clone(),
                        n,
                        "must be greater than or equal to `port`",
                    );
                }
                port_number(causes, end_path, end);
            }
        }
        name @ Value::String(s) => {
            if !end.is_null() {
                invalid(
                    causes,
                    end_path,
                    end,
                    "may not be specified when `port` is non-numeric",
                );
            }
            for why in port_name_errors(s) {
                invalid(causes, format!("{path}.port"), name, why);
            }
        }
        other => invalid(
            causes,
            format!("{path}.port"),
            other,
            "must be an integer or a string",
        ),
    }
}

/// ValidateNetworkPolicyPeer: pod and/or namespace selectors, or an ipBlock alone.
fn peer(causes: &mut Causes, path: &str, p: &Value) {
    if !object(causes, path, p) {
        return;
    }
    let mut kinds = 0;
    for sel in ["podSelector", "namespaceSelector"] {
        if !p[sel].is_null() {
            kinds += 1;
            label_selector(causes, &format!("{path}.{sel}"), &p[sel]);
        }
    }
    let ip_block = &p["ipBlock"];
    if !ip_block.is_null() {
        kinds += 1;
        self::ip_block(causes, &format!("{path}.ipBlock"), ip_block);
    }
    if kinds == 0 {
        causes.push((
            path.to_string(),
            "Required value: must specify a peer".into(),
        ));
    } else if kinds > 1 && !ip_block.is_null() {
        causes.push((
            path.to_string(),
            "Forbidden: may not specify both ipBlock and another peer".into(),
        ));
    }
}

/// A CIDR as Go's ParseCIDR reads it: the network (host bits cleared) and the prefix length.
fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (ip, len) = s.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let bits = if ip.is_ipv4() { 32 } else { 128 };
    if len > bits {
        return None;
    }
    Some((mask(ip, len), len))
}

fn mask(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & m).into())
        }
        IpAddr::V6(v6) => {
            let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & m).into())
        }
    }
}

const CIDR_MESSAGE: &str = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)";

/// ValidateIPBlock: a valid `cidr`, and each `except` a strict subset of it.
fn ip_block(causes: &mut Causes, path: &str, b: &Value) {
    let cidr = &b["cidr"];
    let Some(text) = cidr.as_str().filter(|s| !s.is_empty()) else {
        required(causes, format!("{path}.cidr"));
        return;
    };
    let Some((net, len)) = parse_cidr(text) else {
        invalid(causes, format!("{path}.cidr"), cidr, CIDR_MESSAGE);
        return;
    };
    for (i, e) in items(&b["except"], &format!("{path}.except"), causes)
        .iter()
        .enumerate()
    {
        let ep = format!("{path}.except[{i}]");
        match e.as_str().and_then(parse_cidr) {
            None => invalid(causes, ep, e, CIDR_MESSAGE),
            Some((ex, ex_len)) => {
                let inside = ex.is_ipv4() == net.is_ipv4() && mask(ex, len) == net;
                if !inside || ex_len <= len {
                    invalid(causes, ep, e, "must be a strict subset of `cidr`");
                }
            }
        }
    }
}

/// ValidateLabelSelector: valid `matchLabels`, and expressions whose operator and values agree.
fn label_selector(causes: &mut Causes, path: &str, sel: &Value) {
    if sel.is_null() {
        return;
    }
    if !sel.is_object() {
        invalid(causes, path.to_string(), sel, "must be a label selector");
        return;
    }
    match &sel["matchLabels"] {
        Value::Null => {}
        Value::Object(m) => {
            for (k, v) in m {
                label(causes, &format!("{path}.matchLabels"), k, v);
            }
        }
        other => invalid(
            causes,
            format!("{path}.matchLabels"),
            other,
            "must be a map of strings",
        ),
    }
    let exprs = items(
        &sel["matchExpressions"],
        &format!("{path}.matchExpressions"),
        causes,
    );
    for (i, e) in exprs.iter().enumerate() {
        requirement(causes, &format!("{path}.matchExpressions[{i}]"), e);
    }
}

const KEY_MESSAGE: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const VALUE_MESSAGE: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";

fn label(causes: &mut Causes, path: &str, key: &str, value: &Value) {
    if !is_qualified_name(key) {
        invalid(causes, path.to_string(), &json!(key), KEY_MESSAGE);
    }
    if !value.as_str().is_some_and(is_label_value) {
        invalid(causes, path.to_string(), value, VALUE_MESSAGE);
    }
}

/// ValidateLabelSelectorRequirement.
fn requirement(causes: &mut Causes, path: &str, e: &Value) {
    let key = &e["key"];
    if !key.as_str().is_some_and(is_qualified_name) {
        invalid(causes, format!("{path}.key"), key, KEY_MESSAGE);
    }
    let values = items(&e["values"], &format!("{path}.values"), causes);
    match e["operator"].as_str() {
        Some("In" | "NotIn") if values.is_empty() => causes.push((
            format!("{path}.values"),
            "Required value: must be specified when `operator` is 'In' or 'NotIn'".into(),
        )),
        Some("Exists" | "DoesNotExist") if !values.is_empty() => causes.push((
            format!("{path}.values"),
            "Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'".into(),
        )),
        Some("In" | "NotIn" | "Exists" | "DoesNotExist") => {}
        _ => invalid(
            causes,
            format!("{path}.operator"),
            &e["operator"],
            "not a valid selector operator",
        ),
    }
    for (i, v) in values.iter().enumerate() {
        if !v.as_str().is_some_and(is_label_value) {
            invalid(causes, format!("{path}.values[{i}]"), v, VALUE_MESSAGE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaulted(spec: Value) -> Value {
        let mut obj = json!({"metadata": {"name": "p"}, "spec": spec});
        defaults(&mut obj);
        obj["spec"].clone()
    }

    /// The fields of the causes validation finds in `spec` (after defaulting).
    fn refused(spec: Value) -> Vec<String> {
        let mut obj = json!({"metadata": {"name": "p"}, "spec": spec});
        defaults(&mut obj);
        let mut c = Vec::new();
        validate(&mut c, &obj);
        c.into_iter().map(|(f, _)| f).collect()
    }

    #[test]
    fn defaults_fill_selector_policy_types_and_protocols() {
        let empty = defaulted(Value::Null);
        assert_eq!(
            empty,
            json!({"podSelector": {}, "policyTypes": ["Ingress"]})
        );
        let with_egress = defaulted(json!({
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"ports": [{"port": 80}, {"port": "dns", "protocol": "UDP"}]}],
            "egress": [{"ports": [{"port": 53}]}]}));
        assert_eq!(with_egress["policyTypes"], json!(["Ingress", "Egress"]));
        assert_eq!(
            with_egress["ingress"][0]["ports"],
            json!([{"port": 80, "protocol": "TCP"}, {"port": "dns", "protocol": "UDP"}])
        );
        assert_eq!(with_egress["egress"][0]["ports"][0]["protocol"], "TCP");
        // Given policyTypes are kept as they are: an egress-only policy stays one.
        let egress_only = defaulted(json!({"policyTypes": ["Egress"]}));
        assert_eq!(egress_only["policyTypes"], json!(["Egress"]));
        // Shapes defaulting cannot walk are left for validation to refuse.
        let mut odd = json!({"spec": "x"});
        defaults(&mut odd);
        assert_eq!(odd["spec"], "x");
        assert_eq!(
            refused(json!({"ingress": [1, {"ports": [2]}]})),
            ["spec.ingress[0]", "spec.ingress[1].ports[0]"]
        );
    }

    #[test]
    fn a_typical_policy_is_valid() {
        let ok = refused(json!({
            "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["a", "b"]}]},
            "ingress": [{"from": [
                {"podSelector": {}, "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "x"}}},
                {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                "ports": [{"port": 8000, "endPort": 9000}, {"port": "http"}, {"protocol": "SCTP"}]}],
            "egress": [{"to": [{"ipBlock": {"cidr": "2001:db8::/32", "except": ["2001:db8:1::/48"]}}]}, {}],
            "policyTypes": ["Ingress", "Egress"]}));
        assert!(ok.is_empty(), "{ok:?}");
    }

    #[test]
    fn malformed_ports_peers_and_types_are_named() {
        let bad = refused(json!({
            "podSelector": {"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["x"]},
                                                 {"key": "b", "operator": "Exists", "values": ["x"]}]},
            "ingress": [{"ports": [{"port": 0}, {"port": 90, "endPort": 80}, {"port": "80"},
                                   {"port": "http", "endPort": 90}, {"endPort": 90},
                                   {"port": 1, "protocol": "ICMP"}],
                         "from": [{}, {"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}],
            "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/33"}},
                               {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16", "10.0.0.0/8", "::/0"]}},
                               {"ipBlock": {}}]}],
            "policyTypes": ["Ingress", "Sideways"]}));
        assert_eq!(
            bad,
            [
                "spec.podSelector.matchExpressions[0].operator",
                "spec.podSelector.matchExpressions[1].values",
                "spec.ingress[0].ports[0].port",
                "spec.ingress[0].ports[1].endPort",
                "spec.ingress[0].ports[2].port",
                "spec.ingress[0].ports[3].endPort",
                "spec.ingress[0].ports[4].endPort",
                "spec.ingress[0].ports[5].protocol",
                "spec.ingress[0].from[0]",
                "spec.ingress[0].from[1]",
                "spec.egress[0].to[0].ipBlock.cidr",
                "spec.egress[0].to[1].ipBlock.except[0]",
                "spec.egress[0].to[1].ipBlock.except[1]",
                "spec.egress[0].to[1].ipBlock.except[2]",
                "spec.egress[0].to[2].ipBlock.cidr",
                "spec.policyTypes[1]",
            ]
        );
        let three = refused(json!({"policyTypes": ["Ingress", "Egress", "Ingress"]}));
        assert_eq!(three, ["spec.policyTypes"]);
    }

    #[test]
    fn cidrs_parse_as_go_does() {
        assert_eq!(
            parse_cidr("10.1.2.3/8"),
            Some(("10.0.0.0".parse().unwrap(), 8))
        );
        assert_eq!(
            parse_cidr("0.0.0.0/0"),
            Some(("0.0.0.0".parse().unwrap(), 0))
        );
        assert_eq!(parse_cidr("::1/128"), Some(("::1".parse().unwrap(), 128)));
        for bad in ["10.0.0.0", "10.0.0.0/33", "x/8", "::/129", "10.0.0.0/-1"] {
            assert_eq!(parse_cidr(bad), None, "{bad}");
        }
    }
}
