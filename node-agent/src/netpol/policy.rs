//! A NetworkPolicy as trellis enforces it, parsed strictly from the API's JSON: a field this
//! code does not know (a newer API, a typo through `kubectl apply --validate=false`) is an
//! error rather than silently ignored, because ignoring part of a policy could allow traffic
//! the author meant to deny. What happens to a policy that does not parse is the compiler's
//! business ([`super::compile`]): it still isolates the pods it selects.

use ipnetwork::IpNetwork;
use serde_json::Value;

pub use super::api_json::PolicyError;
use super::api_json::{array, object, string};
use super::selector::Selector;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// As nft writes it, and as a container port's `protocol` is compared (lower case).
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    pub fn from_api(s: &str) -> Option<Protocol> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

/// One entry of a rule's `ports`: `port` absent means every port of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    pub protocol: Protocol,
    pub port: Option<PortRef>,
    pub end_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// `podSelector` and/or `namespaceSelector`. `namespaces: None` is the policy's own
    /// namespace; `pods: None` is every pod of the selected namespaces.
    Pods {
        namespaces: Option<Selector>,
        pods: Option<Selector>,
    },
    Block {
        cidr: IpNetwork,
        except: Vec<IpNetwork>,
    },
}

/// One ingress or egress rule. Empty `peers` allows every address, empty `ports` every port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    pub peers: Vec<Peer>,
    pub ports: Vec<PortSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub pod_selector: Selector,
    /// Whether the policy isolates its pods for ingress / egress (`policyTypes`, defaulted).
    pub ingress: bool,
    pub egress: bool,
    pub ingress_rules: Vec<Rule>,
    pub egress_rules: Vec<Rule>,
}

impl Policy {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// What a policy that does not parse becomes: its pods isolated, nothing allowed. The
    /// selector and the policy types are kept when they parse, else every pod of the
    /// namespace, both ways: never more open than the policy as written.
    pub fn deny_all_fallback(namespace: &str, name: &str, spec: Option<&Value>) -> Policy {
        let field = |f: &str| spec.and_then(|s| s.get(f));
        let pod_selector = field("podSelector")
            .and_then(|v| Selector::parse("spec.podSelector", v).ok())
            .unwrap_or_default();
        let (ingress, egress) = spec
            .and_then(|s| policy_types(s).ok())
            .unwrap_or((true, true));
        Policy {
            namespace: namespace.to_string(),
            name: name.to_string(),
            pod_selector,
            ingress,
            egress,
            ingress_rules: Vec::new(),
            egress_rules: Vec::new(),
        }
    }

    /// Parses a NetworkPolicy object (`metadata` and `spec`).
    pub fn parse(namespace: &str, name: &str, spec: &Value) -> Result<Policy, PolicyError> {
        let obj = object("spec", spec)?;
        let mut pod_selector = None;
        let (mut ingress_rules, mut egress_rules) = (Vec::new(), Vec::new());
        for (k, v) in obj {
            let at = format!("spec.{k}");
            match k.as_str() {
                "podSelector" => pod_selector = Some(Selector::parse(&at, v)?),
                "ingress" => ingress_rules = rules(&at, v, "from")?,
                "egress" => egress_rules = rules(&at, v, "to")?,
                "policyTypes" => {}
                other => return Err(PolicyError::unknown("spec", other)),
            }
        }
        let (ingress, egress) = policy_types(spec)?;
        Ok(Policy {
            namespace: namespace.to_string(),
            name: name.to_string(),
            // Required by the API; absent only from a hand-made object: select nothing less
            // than the apiserver would have refused, i.e. treat it as required.
            pod_selector: pod_selector
                .ok_or_else(|| PolicyError::invalid("spec.podSelector", "is required"))?,
            ingress,
            egress,
            ingress_rules,
            egress_rules,
        })
    }
}

/// `policyTypes`, or the apiserver's default when absent or empty: Ingress always, Egress
/// when there are egress rules.
fn policy_types(spec: &Value) -> Result<(bool, bool), PolicyError> {
    let defaulted = (true, has_rules(spec, "egress"));
    let types = match spec.get("policyTypes") {
        None | Some(Value::Null) => return Ok(defaulted),
        Some(v) => array("spec.policyTypes", v)?,
    };
    if types.is_empty() {
        return Ok(defaulted);
    }
    let (mut ingress, mut egress) = (false, false);
    for (i, t) in types.iter().enumerate() {
        let at = format!("spec.policyTypes[{i}]");
        match string(&at, t)? {
            "Ingress" => ingress = true,
            "Egress" => egress = true,
            other => {
                return Err(PolicyError::invalid(
                    &at,
                    &format!("unknown policy type {other:?} (Ingress, Egress)"),
                ))
            }
        }
    }
    Ok((ingress, egress))
}

fn has_rules(spec: &Value, field: &str) -> bool {
    spec.get(field)
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
}

fn rules(path: &str, v: &Value, peers_field: &str) -> Result<Vec<Rule>, PolicyError> {
    if v.is_null() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for (i, r) in array(path, v)?.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let mut rule = Rule::default();
        for (k, v) in object(&at, r)? {
            let field_at = format!("{at}.{k}");
            match k.as_str() {
                f if f == peers_field && v.is_null() => {}
                f if f == peers_field => {
                    for (j, p) in array(&field_at, v)?.iter().enumerate() {
                        rule.peers.push(peer(&format!("{field_at}[{j}]"), p)?);
                    }
                }
                "ports" if v.is_null() => {}
                "ports" => {
                    for (j, p) in array(&field_at, v)?.iter().enumerate() {
                        rule.ports.push(port(&format!("{field_at}[{j}]"), p)?);
                    }
                }
                other => return Err(PolicyError::unknown(&at, other)),
            }
        }
        out.push(rule);
    }
    Ok(out)
}

fn peer(path: &str, v: &Value) -> Result<Peer, PolicyError> {
    let (mut namespaces, mut pods, mut block) = (None, None, None);
    for (k, v) in object(path, v)? {
        let at = format!("{path}.{k}");
        match k.as_str() {
            _ if v.is_null() => {}
            "namespaceSelector" => namespaces = Some(Selector::parse(&at, v)?),
            "podSelector" => pods = Some(Selector::parse(&at, v)?),
            "ipBlock" => block = Some(ip_block(&at, v)?),
            other => return Err(PolicyError::unknown(path, other)),
        }
    }
    match (block, namespaces.is_some() || pods.is_some()) {
        (Some(_), true) => Err(PolicyError::invalid(
            path,
            "ipBlock cannot be combined with a pod or namespace selector",
        )),
        (Some(b), false) => Ok(b),
        (None, true) => Ok(Peer::Pods { namespaces, pods }),
        (None, false) => Err(PolicyError::invalid(
            path,
            "a peer needs podSelector, namespaceSelector or ipBlock",
        )),
    }
}

fn ip_block(path: &str, v: &Value) -> Result<Peer, PolicyError> {
    let (mut cidr, mut except) = (None, Vec::new());
    for (k, v) in object(path, v)? {
        let at = format!("{path}.{k}");
        match k.as_str() {
            "cidr" => cidr = Some(network(&at, v)?),
            "except" if v.is_null() => {}
            "except" => {
                for (i, e) in array(&at, v)?.iter().enumerate() {
                    except.push(network(&format!("{at}[{i}]"), e)?);
                }
            }
            other => return Err(PolicyError::unknown(path, other)),
        }
    }
    let cidr = cidr.ok_or_else(|| PolicyError::invalid(path, "cidr is required"))?;
    for e in &except {
        // The apiserver refuses an except outside its cidr, or of another family.
        if e.is_ipv4() != cidr.is_ipv4()
            || !cidr.contains(e.network())
            || e.prefix() < cidr.prefix()
        {
            return Err(PolicyError::invalid(
                path,
                &format!("except {e} is not inside cidr {cidr}"),
            ));
        }
    }
    Ok(Peer::Block { cidr, except })
}

fn network(path: &str, v: &Value) -> Result<IpNetwork, PolicyError> {
    let s = string(path, v)?;
    let net = crate::config::parse_cidr(s).map_err(|e| PolicyError::invalid(path, &e))?;
    // Host bits are masked, as the apiserver's older validation accepted them.
    IpNetwork::new(net.network(), net.prefix())
        .map_err(|e| PolicyError::invalid(path, &e.to_string()))
}

fn port(path: &str, v: &Value) -> Result<PortSpec, PolicyError> {
    let (mut protocol, mut port, mut end_port) = (Protocol::Tcp, None, None);
    for (k, v) in object(path, v)? {
        let at = format!("{path}.{k}");
        match k.as_str() {
            _ if v.is_null() => {}
            "protocol" => {
                protocol = Protocol::from_api(string(&at, v)?).ok_or_else(|| {
                    PolicyError::invalid(&at, "expected \"TCP\", \"UDP\" or \"SCTP\"")
                })?
            }
            "port" => port = Some(port_ref(&at, v)?),
            "endPort" => end_port = Some(port_number(&at, v)?),
            other => return Err(PolicyError::unknown(path, other)),
        }
    }
    if let Some(end) = end_port {
        match port {
            Some(PortRef::Number(start)) if start <= end => {}
            Some(PortRef::Number(start)) => {
                return Err(PolicyError::invalid(
                    path,
                    &format!("endPort {end} is below port {start}"),
                ))
            }
            _ => {
                return Err(PolicyError::invalid(
                    path,
                    "endPort needs a numeric port to start the range",
                ))
            }
        }
    }
    Ok(PortSpec {
        protocol,
        port,
        end_port,
    })
}

fn port_ref(path: &str, v: &Value) -> Result<PortRef, PolicyError> {
    match v {
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            // An IntOrString given as a string of digits is still a name to the API, and a
            // port name must contain a letter: refuse rather than guess.
            Err(PolicyError::invalid(
                path,
                "a port name must contain a letter",
            ))
        }
        Value::String(s) if !s.is_empty() && s.len() <= 15 => Ok(PortRef::Name(s.clone())),
        Value::String(_) => Err(PolicyError::invalid(
            path,
            "a port name has 1 to 15 characters",
        )),
        _ => port_number(path, v).map(PortRef::Number),
    }
}

fn port_number(path: &str, v: &Value) -> Result<u16, PolicyError> {
    v.as_u64()
        .filter(|n| (1..=65535).contains(n))
        .map(|n| n as u16)
        .ok_or_else(|| PolicyError::invalid(path, "expected a port number 1-65535"))
}

#[cfg(test)]
mod tests;
