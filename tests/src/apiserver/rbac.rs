//! Authorization, for proving a component's RBAC grants are least privilege: an audit of every
//! resource request per user, and RBAC decisions answering 403 like the apiserver. Two sources
//! of users and rules:
//! - ServiceAccount tokens from a TokenRequest (`tokens.rs`) are always authorized by the
//!   Roles, ClusterRoles and bindings stored in the API (plus any manifests given at start),
//!   as the apiserver's RBAC authorizer does: `kubectl apply -f rbac.yaml` is what grants;
//! - extra bearer tokens of the configuration (`EmulatorConfig::users`) are authorized by the
//!   Role/ClusterRole(+Binding) manifests given at start, or allowed everything without them.
//!
//! The emulator's own token stays a cluster admin (group `system:masters` bypasses RBAC), so
//! a test keeps driving the cluster with kubectl while the component under test runs with a
//! restricted token. Discovery and `/version` stay open to every user, as the apiserver's
//! `system:discovery` and `system:public-info-viewer` bindings make them.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::status::ApiError;

/// The request attributes RBAC decides on (the apiserver's `authorizer.Attributes`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Attributes {
    pub verb: String,
    #[serde(rename = "apiGroup")]
    pub group: String,
    pub resource: String,
    pub subresource: String,
    /// Empty at the cluster scope.
    pub namespace: String,
    /// Empty for collections (create, list and watch without a `metadata.name` selector).
    pub name: String,
}

/// One distinct (user, attributes, decision) seen, with how often.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditRecord {
    pub user: String,
    pub verb: String,
    #[serde(rename = "apiGroup")]
    pub api_group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    /// The object's name, or the one a list or watch was narrowed to by its field selector;
    /// empty for a collection. Recorded so a test can check `resourceNames` grants too.
    #[serde(default)]
    pub name: String,
    pub allowed: bool,
    pub count: u64,
}

#[derive(Debug, Default)]
pub struct Audit {
    seen: Mutex<BTreeMap<(String, Attributes, bool), u64>>,
}

impl Audit {
    pub fn record(&self, user: &str, attrs: &Attributes, allowed: bool) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        *seen
            .entry((user.to_string(), attrs.clone(), allowed))
            .or_default() += 1;
    }

    pub fn records(&self) -> Vec<AuditRecord> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.iter()
            .map(|((user, a, allowed), count)| AuditRecord {
                user: user.clone(),
                verb: a.verb.clone(),
                api_group: a.group.clone(),
                resource: a.resource.clone(),
                subresource: a.subresource.clone(),
                namespace: a.namespace.clone(),
                name: a.name.clone(),
                allowed: *allowed,
                count: *count,
            })
            .collect()
    }

    pub fn clear(&self) {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RbacError {
    #[error("{path}: {reason}")]
    Manifest { path: String, reason: String },
}

/// One expanded grant: (verb, apiGroup, resource[/subresource], namespace, resourceName).
pub type Grant = (String, String, String, String, String);

/// A PolicyRule (resource rules only: the emulator serves no non-resource URL worth granting).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(default)]
    pub api_groups: Vec<String>,
    #[serde(default)]
    pub resources: Vec<String>,
    #[serde(default)]
    pub verbs: Vec<String>,
    #[serde(default)]
    pub resource_names: Vec<String>,
}

impl Rule {
    fn allows(&self, a: &Attributes) -> bool {
        let any = |v: &[String], x: &str| v.iter().any(|s| s == "*" || s == x);
        let resource_ok = self.resources.iter().any(|r| {
            if a.subresource.is_empty() {
                r == "*" || *r == a.resource
            } else {
                r == "*"
                    || *r == format!("{}/{}", a.resource, a.subresource)
                    || *r == format!("{}/*", a.resource)
                    || *r == format!("*/{}", a.subresource)
            }
        });
        // resourceNames never match a request without a name: a create, or a list/watch
        // without a `metadata.name` field selector (see [`selected_name`]).
        let name_ok = self.resource_names.is_empty()
            || (!a.name.is_empty() && self.resource_names.contains(&a.name));
        any(&self.verbs, &a.verb) && any(&self.api_groups, &a.group) && resource_ok && name_ok
    }

    /// The rule as single grants in `namespace` (empty: cluster-wide).
    fn expand(&self, namespace: &str) -> Vec<Grant> {
        let any = [String::new()];
        let names: &[String] = if self.resource_names.is_empty() {
            &any
        } else {
            &self.resource_names
        };
        let mut out = Vec::new();
        for g in &self.api_groups {
            for res in &self.resources {
                for v in &self.verbs {
                    for n in names {
                        out.push((
                            v.clone(),
                            g.clone(),
                            res.clone(),
                            namespace.to_string(),
                            n.clone(),
                        ));
                    }
                }
            }
        }
        out
    }
}

#[derive(Debug, Clone, Deserialize)]
struct Subject {
    kind: String,
    name: String,
    #[serde(default)]
    namespace: String,
}

#[derive(Debug, Clone, Deserialize)]
struct RoleRef {
    kind: String,
    name: String,
}

#[derive(Debug, Clone)]
struct Binding {
    /// Empty for a ClusterRoleBinding.
    namespace: String,
    role_ref: RoleRef,
    subjects: Vec<Subject>,
}

/// Roles and bindings loaded from manifests.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    cluster_roles: HashMap<String, Vec<Rule>>,
    roles: HashMap<(String, String), Vec<Rule>>,
    bindings: Vec<Binding>,
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    /// `system:masters`: bypasses authorization (the emulator's own token).
    pub admin: bool,
}

impl User {
    fn groups(&self) -> Vec<String> {
        let mut g = vec!["system:authenticated".to_string()];
        if let Some(rest) = self.name.strip_prefix("system:serviceaccount:") {
            g.push("system:serviceaccounts".into());
            if let Some((ns, _)) = rest.split_once(':') {
                g.push(format!("system:serviceaccounts:{ns}"));
            }
        }
        g
    }

    fn is(&self, s: &Subject) -> bool {
        match s.kind.as_str() {
            "User" => s.name == self.name,
            "ServiceAccount" => {
                self.name == format!("system:serviceaccount:{}:{}", s.namespace, s.name)
            }
            "Group" => self.groups().contains(&s.name),
            _ => false,
        }
    }
}

impl Policy {
    /// Load every Role, ClusterRole, RoleBinding and ClusterRoleBinding of a multi-document
    /// YAML manifest (other kinds are ignored).
    pub fn add_file(&mut self, path: &Path) -> Result<(), RbacError> {
        let err = |reason: String| RbacError::Manifest {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        self.add_yaml(&text).map_err(err)
    }

    pub fn add_yaml(&mut self, text: &str) -> Result<(), String> {
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(text).map_err(|e| format!("not YAML: {e}"))?;
        for v in docs.iter().filter(|v| !v.is_null()) {
            self.add_object(v)?;
        }
        Ok(())
    }

    /// Adds one Role, ClusterRole, RoleBinding or ClusterRoleBinding (other kinds are ignored):
    /// from a manifest, or as stored in the API.
    pub fn add_object(&mut self, v: &Value) -> Result<(), String> {
        let kind = v["kind"].as_str().unwrap_or_default();
        let name = v["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let ns = v["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let list = |f: &str| v.get(f).cloned().unwrap_or(Value::Array(vec![]));
        match kind {
            "ClusterRole" | "Role" => {
                let rules: Vec<Rule> = serde_json::from_value(list("rules"))
                    .map_err(|e| format!("{kind} {name}: rules: {e}"))?;
                if kind == "Role" {
                    if ns.is_empty() {
                        return Err(format!("Role {name} has no namespace"));
                    }
                    self.roles.insert((ns, name), rules);
                } else {
                    self.cluster_roles.insert(name, rules);
                }
            }
            "ClusterRoleBinding" | "RoleBinding" => {
                let role_ref: RoleRef = serde_json::from_value(v["roleRef"].clone())
                    .map_err(|e| format!("{kind} {name}: roleRef: {e}"))?;
                let subjects: Vec<Subject> = serde_json::from_value(list("subjects"))
                    .map_err(|e| format!("{kind} {name}: subjects: {e}"))?;
                if kind == "RoleBinding" && ns.is_empty() {
                    return Err(format!("RoleBinding {name} has no namespace"));
                }
                self.bindings.push(Binding {
                    namespace: if kind == "RoleBinding" {
                        ns
                    } else {
                        String::new()
                    },
                    role_ref,
                    subjects,
                });
            }
            _ => {}
        }
        Ok(())
    }

    /// Everything `other` grants, added to this policy.
    pub fn merge(&mut self, other: &Policy) {
        for (k, v) in &other.cluster_roles {
            self.cluster_roles.insert(k.clone(), v.clone());
        }
        for (k, v) in &other.roles {
            self.roles.insert(k.clone(), v.clone());
        }
        self.bindings.extend(other.bindings.iter().cloned());
    }

    /// The rules that apply to `user` for a request in `namespace` (empty: cluster scope).
    fn rules_for<'a>(&'a self, user: &User, namespace: &str) -> Vec<&'a Rule> {
        let mut out = Vec::new();
        for b in &self.bindings {
            if !b.subjects.iter().any(|s| user.is(s)) {
                continue;
            }
            // A RoleBinding grants only inside its own namespace.
            if !b.namespace.is_empty() && b.namespace != namespace {
                continue;
            }
            let rules = match b.role_ref.kind.as_str() {
                "ClusterRole" => self.cluster_roles.get(&b.role_ref.name),
                "Role" => self
                    .roles
                    .get(&(b.namespace.clone(), b.role_ref.name.clone())),
                _ => None,
            };
            out.extend(rules.into_iter().flatten());
        }
        out
    }

    pub fn allows(&self, user: &User, a: &Attributes) -> bool {
        user.admin
            || self
                .rules_for(user, &a.namespace)
                .iter()
                .any(|r| r.allows(a))
    }

    /// Every (verb, apiGroup, resource[/subresource], namespace, resourceName) the policy
    /// grants `user`, expanded from the rules: namespaced grants carry their namespace, and a
    /// rule with `resourceNames` gives one entry per name (an empty name: any object).
    pub fn granted(&self, user: &User) -> Vec<Grant> {
        let mut out = Vec::new();
        let mut namespaces: Vec<String> =
            self.bindings.iter().map(|b| b.namespace.clone()).collect();
        namespaces.sort();
        namespaces.dedup();
        for ns in namespaces {
            for b in self.bindings.iter().filter(|b| b.namespace == ns) {
                if !b.subjects.iter().any(|s| user.is(s)) {
                    continue;
                }
                let rules = match b.role_ref.kind.as_str() {
                    "ClusterRole" => self.cluster_roles.get(&b.role_ref.name),
                    _ => self.roles.get(&(ns.clone(), b.role_ref.name.clone())),
                };
                for r in rules.into_iter().flatten() {
                    out.extend(r.expand(&ns));
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

/// The verb of a resource request, as the apiserver names it.
pub fn verb(method: &hyper::Method, collection: bool, watch: bool) -> &'static str {
    use hyper::Method;
    match (method, collection) {
        (&Method::GET, true) if watch => "watch",
        (&Method::GET, true) => "list",
        (&Method::GET, false) if watch => "watch",
        (&Method::GET, false) | (&Method::HEAD, _) => "get",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, true) => "deletecollection",
        (&Method::DELETE, false) => "delete",
        _ => "unknown",
    }
}

/// The name a list or watch is narrowed to by its field selector, which the apiserver uses to
/// match `resourceNames`: as its RequestInfo resolver does, the first `metadata.name=X` (or
/// `==`) term of the selector's conjunction (`fields.Selector.RequiresExactMatch`), kept only
/// when X is a valid path segment (not `.` or `..`, no `/` or `%`).
pub fn selected_name(field_selector: Option<&str>) -> String {
    let exact = |term: &str| -> Option<String> {
        if term.contains("!=") {
            return None;
        }
        let (key, value) = term.split_once("==").or_else(|| term.split_once('='))?;
        (key.trim() == "metadata.name").then(|| value.trim().to_string())
    };
    field_selector
        .unwrap_or_default()
        .split(',')
        .find_map(exact)
        .filter(|n| !matches!(n.as_str(), "." | "..") && !n.contains(['/', '%']))
        .unwrap_or_default()
}

/// The apiserver's 403, e.g. `nodes "n1" is forbidden: User "u" cannot patch resource
/// "nodes/status" in API group "" at the cluster scope`.
pub fn forbidden(user: &User, a: &Attributes) -> ApiError {
    let resource = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let qualified = if a.group.is_empty() {
        a.resource.clone()
    } else {
        format!("{}.{}", a.resource, a.group)
    };
    let what = if a.name.is_empty() {
        format!("{qualified} is forbidden")
    } else {
        format!("{qualified} \"{}\" is forbidden", a.name)
    };
    let scope = if a.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace \"{}\"", a.namespace)
    };
    let mut details = json!({"kind": a.resource});
    if !a.name.is_empty() {
        details["name"] = json!(a.name);
    }
    if !a.group.is_empty() {
        details["group"] = json!(a.group);
    }
    ApiError {
        code: 403,
        reason: "Forbidden",
        message: format!(
            "{what}: User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
            user.name, a.verb, a.group
        ),
        details: Some(details),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: sa, namespace: ns1}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: cr}
rules:
  - apiGroups: [""]
    resources: ["nodes"]
    verbs: ["get", "list"]
  - apiGroups: [""]
    resources: ["nodes/status"]
    verbs: ["patch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: crb}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cr}
subjects: [{kind: ServiceAccount, name: sa, namespace: ns1}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: r, namespace: ns1}
rules:
  - apiGroups: [""]
    resources: ["configmaps"]
    verbs: ["get"]
    resourceNames: ["cfg"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: rb, namespace: ns1}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: r}
subjects: [{kind: Group, name: "system:serviceaccounts:ns1"}]
"#;

    fn policy(manifests: &str) -> Policy {
        let mut p = Policy::default();
        p.add_yaml(manifests).unwrap();
        p
    }

    /// A Role in `ns` with these `rules`, bound to the ServiceAccount `sa` of `ns1`.
    fn role_of_sa(ns: &str, rules: &str) -> Policy {
        policy(&format!(
            r#"
kind: Role
metadata: {{name: r, namespace: {ns}}}
rules: {rules}
---
kind: RoleBinding
metadata: {{name: rb, namespace: {ns}}}
roleRef: {{kind: Role, name: r}}
subjects: [{{kind: ServiceAccount, name: sa, namespace: ns1}}]
"#
        ))
    }

    /// The ServiceAccount `sa` of namespace `ns`.
    fn service_account(ns: &str) -> User {
        User {
            name: format!("system:serviceaccount:{ns}:sa"),
            admin: false,
        }
    }

    fn attrs(verb: &str, res: &str, sub: &str, ns: &str, name: &str) -> Attributes {
        Attributes {
            verb: verb.into(),
            group: String::new(),
            resource: res.into(),
            subresource: sub.into(),
            namespace: ns.into(),
            name: name.into(),
        }
    }

    #[test]
    fn decides_like_rbac() {
        let p = policy(MANIFEST);
        let sa = service_account("ns1");
        let other = service_account("ns2");
        assert!(p.allows(&sa, &attrs("list", "nodes", "", "", "")));
        assert!(p.allows(&sa, &attrs("patch", "nodes", "status", "", "n1")));
        assert!(!p.allows(&sa, &attrs("patch", "nodes", "", "", "n1")));
        assert!(!p.allows(&sa, &attrs("watch", "nodes", "", "", "")));
        // Role: only in its namespace, only the named object, through the group subject.
        assert!(p.allows(&sa, &attrs("get", "configmaps", "", "ns1", "cfg")));
        assert!(!p.allows(&sa, &attrs("get", "configmaps", "", "ns1", "other")));
        assert!(!p.allows(&sa, &attrs("get", "configmaps", "", "ns2", "cfg")));
        assert!(!p.allows(&other, &attrs("list", "nodes", "", "", "")));
        assert!(p.allows(
            &User {
                name: "x".into(),
                admin: true
            },
            &attrs("delete", "nodes", "", "", "n1")
        ));
        let g = p.granted(&sa);
        let grant = |v: &str, r: &str, ns: &str, n: &str| -> Grant {
            (v.into(), "".into(), r.into(), ns.into(), n.into())
        };
        assert!(g.contains(&grant("patch", "nodes/status", "", "")));
        assert!(g.contains(&grant("get", "configmaps", "ns1", "cfg")));
        assert_eq!(g.len(), 4);
    }

    #[test]
    fn resource_names_match_a_list_or_watch_only_through_its_field_selector() {
        let p = role_of_sa(
            "ns1",
            r#"[{apiGroups: [""], resources: ["configmaps"], verbs: ["list", "watch"], resourceNames: ["cfg"]}]"#,
        );
        let sa = service_account("ns1");
        let selected = |verb: &str, selector: Option<&str>| {
            p.allows(
                &sa,
                &attrs(verb, "configmaps", "", "ns1", &selected_name(selector)),
            )
        };
        for verb in ["list", "watch"] {
            assert!(selected(verb, Some("metadata.name=cfg")), "{verb}");
            assert!(selected(verb, Some("metadata.name==cfg")), "{verb}");
            assert!(!selected(verb, None), "{verb} of the whole namespace");
            assert!(!selected(verb, Some("metadata.name=other")), "{verb}");
            assert!(!selected(verb, Some("metadata.name!=other")), "{verb}");
        }
        assert!(!p.allows(&sa, &attrs("get", "configmaps", "", "ns1", "cfg")));
    }

    #[test]
    fn a_role_binding_grants_only_in_its_namespace() {
        let p = role_of_sa(
            "default",
            r#"[{apiGroups: ["events.k8s.io"], resources: ["events"], verbs: ["create", "patch"]}]"#,
        );
        let sa = service_account("ns1");
        let event = |verb: &str, ns: &str| Attributes {
            group: "events.k8s.io".into(),
            ..attrs(verb, "events", "", ns, "")
        };
        assert!(p.allows(&sa, &event("create", "default")));
        assert!(p.allows(&sa, &event("patch", "default")));
        assert!(!p.allows(&sa, &event("create", "ns1")));
        assert!(!p.allows(&sa, &event("create", "kube-system")));
        assert!(!p.allows(&sa, &event("create", "")), "cluster scope");
    }

    #[test]
    fn network_policies_are_granted_by_their_group() {
        let p = policy(
            r#"
kind: ClusterRole
metadata: {name: netpol-reader}
rules:
  - apiGroups: ["networking.k8s.io"]
    resources: ["networkpolicies"]
    verbs: ["list", "watch"]
  - apiGroups: [""]
    resources: ["namespaces", "pods"]
    verbs: ["list", "watch"]
---
kind: ClusterRoleBinding
metadata: {name: netpol-reader}
roleRef: {kind: ClusterRole, name: netpol-reader}
subjects: [{kind: ServiceAccount, name: sa, namespace: ns1}]
"#,
        );
        let sa = service_account("ns1");
        let netpol = |verb: &str, group: &str, ns: &str| Attributes {
            group: group.into(),
            ..attrs(verb, "networkpolicies", "", ns, "")
        };
        // Api::all list+watch, and one namespace's.
        assert!(p.allows(&sa, &netpol("list", "networking.k8s.io", "")));
        assert!(p.allows(&sa, &netpol("watch", "networking.k8s.io", "team-a")));
        assert!(!p.allows(&sa, &netpol("create", "networking.k8s.io", "team-a")));
        assert!(!p.allows(&sa, &netpol("list", "", "")), "another group");
        let e = forbidden(&sa, &netpol("create", "networking.k8s.io", "team-a"));
        assert!(
            e.message.starts_with(
                "networkpolicies.networking.k8s.io is forbidden: User \"system:serviceaccount:ns1:sa\" \
                 cannot create resource \"networkpolicies\" in API group \"networking.k8s.io\""
            ),
            "{}",
            e.message
        );
    }

    #[test]
    fn forbidden_reads_like_the_apiserver() {
        let u = service_account("ns1");
        let e = forbidden(&u, &attrs("patch", "nodes", "status", "", "n1"));
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            "nodes \"n1\" is forbidden: User \"system:serviceaccount:ns1:sa\" cannot patch \
             resource \"nodes/status\" in API group \"\" at the cluster scope"
        );
        let e = forbidden(&u, &attrs("list", "configmaps", "", "kube-system", ""));
        assert!(
            e.message.ends_with("in the namespace \"kube-system\""),
            "{}",
            e.message
        );
    }

    #[test]
    fn selected_name_is_the_apiservers_exact_match() {
        let name = |s: &str| selected_name(Some(s));
        assert_eq!(name("metadata.name=n1"), "n1");
        assert_eq!(name("metadata.name==n1"), "n1");
        // RequiresExactMatch looks through every term of the conjunction.
        assert_eq!(name("metadata.name=n1,spec.unschedulable=false"), "n1");
        assert_eq!(name("spec.unschedulable=false,metadata.name=n1"), "n1");
        assert_eq!(name("metadata.name!=n1"), "");
        assert_eq!(name("metadata.namespace=n1"), "");
        // Not a valid path segment: the apiserver leaves the name unset.
        assert_eq!(name("metadata.name=a/b"), "");
        assert_eq!(name("metadata.name=.."), "");
        assert_eq!(selected_name(None), "");
    }
}
