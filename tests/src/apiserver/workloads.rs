//! Validation of the workload kinds (Pod, DaemonSet) and the other kinds `kubectl apply -k
//! deploy` sends (Namespace, ServiceAccount, RBAC): the apiserver's field errors for what the
//! emulator, or a node driver reading these objects, could not represent. Each finding is a
//! (field path, message) cause of one 422, so a bad object is refused whole and named.

use serde_json::Value;

pub(super) type Causes = Vec<(String, String)>;

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub(super) fn required(causes: &mut Causes, field: String) {
    causes.push((field, "Required value".into()));
}

pub(super) fn invalid(causes: &mut Causes, field: String, v: &Value, why: &str) {
    causes.push((field, format!("Invalid value: {v}: {why}")));
}

/// A required string that may not repeat one in `seen` (`repeated` words the apiserver's
/// complaint about a repeat); a new one joins `seen`.
fn required_unique<'a>(
    causes: &mut Causes,
    field: String,
    value: Option<&'a str>,
    seen: &mut Vec<&'a str>,
    repeated: impl FnOnce(&str) -> String,
) {
    match value {
        None | Some("") => required(causes, field),
        Some(v) if seen.contains(&v) => causes.push((field, repeated(v))),
        Some(v) => seen.push(v),
    }
}

pub(super) fn unsupported(causes: &mut Causes, field: String, v: &Value, allowed: &[&str]) {
    let list: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
    causes.push((
        field,
        format!(
            "Unsupported value: {v}: supported values: {}",
            list.join(", ")
        ),
    ));
}

/// A field that may be unset, else must be one of `allowed`.
fn optional_enum(causes: &mut Causes, field: String, v: &Value, allowed: &[&str]) {
    if !v.is_null() && !v.as_str().is_some_and(|s| allowed.contains(&s)) {
        unsupported(causes, field, v, allowed);
    }
}

pub(super) fn items<'a>(v: &'a Value, field: &str, causes: &mut Causes) -> &'a [Value] {
    match v {
        Value::Null => &[],
        Value::Array(a) => a,
        other => {
            invalid(causes, field.to_string(), other, "must be a list");
            &[]
        }
    }
}

/// The volume sources a node driver can set up; anything else is refused by name.
const VOLUME_SOURCES: &[&str] = &[
    "hostPath",
    "emptyDir",
    "configMap",
    "secret",
    "projected",
    "downwardAPI",
    "persistentVolumeClaim",
];

const HOST_PATH_TYPES: &[&str] = &[
    "",
    "DirectoryOrCreate",
    "Directory",
    "FileOrCreate",
    "File",
    "Socket",
    "CharDevice",
    "BlockDevice",
];

/// The fieldRef paths the downward API resolves (env and volumes).
const FIELD_PATHS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "metadata.labels",
    "metadata.annotations",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.hostIP",
    "status.hostIPs",
    "status.podIP",
    "status.podIPs",
];

fn field_ref(causes: &mut Causes, path: String, fr: &Value) {
    let fp = &fr["fieldPath"];
    match fp.as_str() {
        None | Some("") => required(causes, format!("{path}.fieldPath")),
        Some(p) => {
            let label_or_annotation =
                p.starts_with("metadata.labels['") || p.starts_with("metadata.annotations['");
            if !FIELD_PATHS.contains(&p) && !label_or_annotation {
                unsupported(causes, format!("{path}.fieldPath"), fp, FIELD_PATHS);
            }
        }
    }
}

fn volume(causes: &mut Causes, path: &str, v: &Value) {
    let sources: Vec<&String> = v
        .as_object()
        .map(|m| m.keys().filter(|k| *k != "name").collect())
        .unwrap_or_default();
    match sources.as_slice() {
        [] => causes.push((
            path.to_string(),
            "Required value: must specify a volume type".into(),
        )),
        [one] => {
            if !VOLUME_SOURCES.contains(&one.as_str()) {
                unsupported(
                    causes,
                    format!("{path}.{one}"),
                    &Value::String(one.to_string()),
                    VOLUME_SOURCES,
                );
            }
        }
        [_, second, ..] => causes.push((
            format!("{path}.{second}"),
            "Forbidden: may not specify more than 1 volume type".into(),
        )),
    }
    let hp = &v["hostPath"];
    if !hp.is_null() {
        if hp["path"].as_str().is_none_or(str::is_empty) {
            required(causes, format!("{path}.hostPath.path"));
        }
        let t = &hp["type"];
        if !t.is_null() && !t.as_str().is_some_and(|t| HOST_PATH_TYPES.contains(&t)) {
            unsupported(
                causes,
                format!("{path}.hostPath.type"),
                t,
                &HOST_PATH_TYPES[1..],
            );
        }
    }
    if let Some(name) = v["configMap"].get("name") {
        if name.as_str().is_none_or(str::is_empty) {
            required(causes, format!("{path}.configMap.name"));
        }
    }
    let sources = items(
        &v["projected"]["sources"],
        &format!("{path}.projected.sources"),
        causes,
    );
    for (i, s) in sources.iter().enumerate() {
        let sp = format!("{path}.projected.sources[{i}]");
        let known = ["serviceAccountToken", "configMap", "secret", "downwardAPI"];
        let kinds: Vec<&String> = s
            .as_object()
            .map(|m| m.keys().collect())
            .unwrap_or_default();
        for k in &kinds {
            if !known.contains(&k.as_str()) {
                unsupported(
                    causes,
                    format!("{sp}.{k}"),
                    &Value::String(k.to_string()),
                    &known,
                );
            }
        }
        if kinds.len() != 1 {
            causes.push((
                sp.clone(),
                "Forbidden: may not specify more than 1 volume type".into(),
            ));
        }
        let sat = &s["serviceAccountToken"];
        if !sat.is_null() {
            if sat["path"].as_str().is_none_or(str::is_empty) {
                required(causes, format!("{sp}.serviceAccountToken.path"));
            }
            if let Some(secs) = sat["expirationSeconds"].as_i64() {
                if secs < 600 {
                    invalid(
                        causes,
                        format!("{sp}.serviceAccountToken.expirationSeconds"),
                        &sat["expirationSeconds"],
                        "may not specify a duration less than 10 minutes",
                    );
                }
            }
        }
        let items_of_dapi = items(
            &s["downwardAPI"]["items"],
            &format!("{sp}.downwardAPI.items"),
            causes,
        );
        for (j, it) in items_of_dapi.iter().enumerate() {
            if !it["fieldRef"].is_null() {
                field_ref(
                    causes,
                    format!("{sp}.downwardAPI.items[{j}].fieldRef"),
                    &it["fieldRef"],
                );
            }
        }
    }
}

fn container(
    causes: &mut Causes,
    path: &str,
    c: &Value,
    volumes: &[&str],
    names: &mut Vec<String>,
) {
    match c["name"].as_str() {
        None | Some("") => required(causes, format!("{path}.name")),
        Some(n) if !is_dns_label(n) => invalid(
            causes,
            format!("{path}.name"),
            &c["name"],
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'",
        ),
        Some(n) if names.iter().any(|x| x == n) => {
            causes.push((format!("{path}.name"), format!("Duplicate value: \"{n}\"")))
        }
        Some(n) => names.push(n.to_string()),
    }
    if c["image"].as_str().is_none_or(|s| s.trim().is_empty()) {
        required(causes, format!("{path}.image"));
    }
    optional_enum(
        causes,
        format!("{path}.imagePullPolicy"),
        &c["imagePullPolicy"],
        &["Always", "IfNotPresent", "Never"],
    );
    for (field, want) in [("command", "string"), ("args", "string")] {
        for (i, a) in items(&c[field], &format!("{path}.{field}"), causes)
            .iter()
            .enumerate()
        {
            if !a.is_string() {
                invalid(
                    causes,
                    format!("{path}.{field}[{i}]"),
                    a,
                    &format!("must be a {want}"),
                );
            }
        }
    }
    for (i, e) in items(&c["env"], &format!("{path}.env"), causes)
        .iter()
        .enumerate()
    {
        let ep = format!("{path}.env[{i}]");
        if e["name"].as_str().is_none_or(str::is_empty) {
            required(causes, format!("{ep}.name"));
        }
        if !e["value"].is_null() && !e["valueFrom"].is_null() {
            causes.push((
                format!("{ep}.valueFrom"),
                "Invalid value: \"\": may not be specified when `value` is not empty".into(),
            ));
        }
        if !e["valueFrom"]["fieldRef"].is_null() {
            field_ref(
                causes,
                format!("{ep}.valueFrom.fieldRef"),
                &e["valueFrom"]["fieldRef"],
            );
        }
    }
    let mut paths: Vec<&str> = Vec::new();
    for (i, m) in items(&c["volumeMounts"], &format!("{path}.volumeMounts"), causes)
        .iter()
        .enumerate()
    {
        let mp = format!("{path}.volumeMounts[{i}]");
        match m["name"].as_str() {
            None | Some("") => required(causes, format!("{mp}.name")),
            Some(n) if !volumes.contains(&n) => {
                causes.push((format!("{mp}.name"), format!("Not found: \"{n}\"")))
            }
            Some(_) => {}
        }
        required_unique(
            causes,
            format!("{mp}.mountPath"),
            m["mountPath"].as_str(),
            &mut paths,
            |_| "Invalid value: must be unique".into(),
        );
    }
    container_ports(causes, path, c);
}

/// The protocols a port may name (container and NetworkPolicy ports alike).
pub(super) const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];

/// A port number field: 1 to 65535.
pub(super) fn port_number(causes: &mut Causes, field: String, v: &Value) {
    if !v.as_u64().is_some_and(|n| (1..=65535).contains(&n)) {
        invalid(causes, field, v, "must be between 1 and 65535, inclusive");
    }
}

/// What is wrong with a port name (IANA_SVC_NAME, validation.IsValidPortName): the names a
/// NetworkPolicy port may refer to, so a name it could never match is refused at the Pod.
pub(super) fn port_name_errors(name: &str) -> Vec<&'static str> {
    let mut out = Vec::new();
    if name.len() > 15 {
        out.push("must be no more than 15 characters");
    }
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        out.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)");
    }
    if !name.chars().any(|c| c.is_ascii_lowercase()) {
        out.push("must contain at least one letter (a-z)");
    }
    if name.contains("--") {
        out.push("must not contain consecutive hyphens");
    }
    if name.starts_with('-') || name.ends_with('-') {
        out.push("must not begin or end with a hyphen");
    }
    out
}

/// A container's `ports` (validateContainerPorts): numbers in range, names valid and unique
/// within the container, a supported protocol.
fn container_ports(causes: &mut Causes, path: &str, c: &Value) {
    let mut names: Vec<&str> = Vec::new();
    for (i, p) in items(&c["ports"], &format!("{path}.ports"), causes)
        .iter()
        .enumerate()
    {
        let pp = format!("{path}.ports[{i}]");
        match p["name"].as_str() {
            None | Some("") => {}
            Some(n) => {
                let errors = port_name_errors(n);
                for why in &errors {
                    invalid(causes, format!("{pp}.name"), &p["name"], why);
                }
                if errors.is_empty() {
                    if names.contains(&n) {
                        causes.push((format!("{pp}.name"), format!("Duplicate value: \"{n}\"")));
                    } else {
                        names.push(n);
                    }
                }
            }
        }
        port_number(causes, format!("{pp}.containerPort"), &p["containerPort"]);
        if !p["hostPort"].is_null() && p["hostPort"] != 0 {
            port_number(causes, format!("{pp}.hostPort"), &p["hostPort"]);
        }
        // Unset only where defaulting did not run first (these functions' own tests).
        optional_enum(causes, format!("{pp}.protocol"), &p["protocol"], PROTOCOLS);
    }
}

/// What the apiserver's defaulting fills into a PodSpec (SetDefaults_ContainerPort): a port
/// without a protocol is TCP. Applied to every write, as the decoder does; shapes it cannot
/// walk are left for validation to name.
pub fn pod_spec_defaults(spec: &mut Value) {
    for field in ["initContainers", "containers"] {
        let Some(Value::Array(cs)) = spec.get_mut(field) else {
            continue;
        };
        for c in cs {
            let Some(Value::Array(ports)) = c.get_mut("ports") else {
                continue;
            };
            for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                if p.get("protocol").is_none_or(Value::is_null) {
                    p.insert("protocol".into(), Value::String("TCP".into()));
                }
            }
        }
    }
}

/// A PodSpec at `path` (`spec`, or `spec.template.spec` in a DaemonSet).
pub fn pod_spec(causes: &mut Causes, path: &str, spec: &Value) {
    if !spec.is_object() {
        required(causes, path.to_string());
        return;
    }
    let mut volume_names: Vec<&str> = Vec::new();
    for (i, v) in items(&spec["volumes"], &format!("{path}.volumes"), causes)
        .iter()
        .enumerate()
    {
        let vp = format!("{path}.volumes[{i}]");
        required_unique(
            causes,
            format!("{vp}.name"),
            v["name"].as_str(),
            &mut volume_names,
            |n| format!("Duplicate value: \"{n}\""),
        );
        volume(causes, &vp, v);
    }
    let containers = items(&spec["containers"], &format!("{path}.containers"), causes);
    if containers.is_empty() {
        required(causes, format!("{path}.containers"));
    }
    let mut names = Vec::new();
    for field in ["initContainers", "containers"] {
        for (i, c) in items(&spec[field], &format!("{path}.{field}"), causes)
            .iter()
            .enumerate()
        {
            container(
                causes,
                &format!("{path}.{field}[{i}]"),
                c,
                &volume_names,
                &mut names,
            );
        }
    }
    optional_enum(
        causes,
        format!("{path}.restartPolicy"),
        &spec["restartPolicy"],
        &["Always", "OnFailure", "Never"],
    );
    optional_enum(
        causes,
        format!("{path}.dnsPolicy"),
        &spec["dnsPolicy"],
        &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
    );
    if let Some(sel) = spec["nodeSelector"].as_object() {
        if let Some((k, _)) = sel.iter().find(|(_, v)| !v.is_string()) {
            invalid(
                causes,
                format!("{path}.nodeSelector[{k}]"),
                &sel[k],
                "must be a string",
            );
        }
    }
    for (i, t) in items(&spec["tolerations"], &format!("{path}.tolerations"), causes)
        .iter()
        .enumerate()
    {
        let op = &t["operator"];
        optional_enum(
            causes,
            format!("{path}.tolerations[{i}].operator"),
            op,
            &["Equal", "Exists"],
        );
        if op.as_str() == Some("Exists") && t["value"].as_str().is_some_and(|v| !v.is_empty()) {
            invalid(
                causes,
                format!("{path}.tolerations[{i}].operator"),
                op,
                "value must be empty when `operator` is 'Exists'",
            );
        }
    }
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    let want = selector["matchLabels"].as_object();
    let have = labels.as_object();
    let labels_ok = want.is_none_or(|w| {
        w.iter()
            .all(|(k, v)| have.and_then(|h| h.get(k)) == Some(v))
    });
    let exprs_ok = selector["matchExpressions"].as_array().is_none_or(|es| {
        es.iter().all(|e| {
            let key = e["key"].as_str().unwrap_or_default();
            let val = have.and_then(|h| h.get(key));
            let values = e["values"].as_array();
            let in_values = val.is_some_and(|v| values.is_some_and(|vs| vs.contains(v)));
            match e["operator"].as_str() {
                Some("In") => in_values,
                Some("NotIn") => !in_values,
                Some("Exists") => val.is_some(),
                Some("DoesNotExist") => val.is_none(),
                _ => false,
            }
        })
    });
    labels_ok && exprs_ok
}

pub fn daemon_set(causes: &mut Causes, obj: &Value, old: Option<&Value>) {
    let spec = &obj["spec"];
    let sel = &spec["selector"];
    let empty = sel["matchLabels"].as_object().is_none_or(|m| m.is_empty())
        && sel["matchExpressions"]
            .as_array()
            .is_none_or(|a| a.is_empty());
    if empty {
        required(causes, "spec.selector".into());
    } else if !labels_match(sel, &spec["template"]["metadata"]["labels"]) {
        invalid(
            causes,
            "spec.template.metadata.labels".into(),
            &spec["template"]["metadata"]["labels"],
            "`selector` does not match template `labels`",
        );
    }
    if let Some(old) = old {
        if old["spec"]["selector"] != *sel {
            invalid(causes, "spec.selector".into(), sel, "field is immutable");
        }
    }
    pod_spec(causes, "spec.template.spec", &spec["template"]["spec"]);
    let rp = &spec["template"]["spec"]["restartPolicy"];
    if !rp.is_null() && rp.as_str() != Some("Always") {
        unsupported(
            causes,
            "spec.template.spec.restartPolicy".into(),
            rp,
            &["Always"],
        );
    }
    optional_enum(
        causes,
        "spec.updateStrategy.type".into(),
        &spec["updateStrategy"]["type"],
        &["RollingUpdate", "OnDelete"],
    );
}

/// The parts of a Pod's spec an update may change: container images, and `nodeName` from
/// unset (what a binding does; the emulator has no `pods/binding`).
pub fn pod(causes: &mut Causes, obj: &Value, old: Option<&Value>) {
    pod_spec(causes, "spec", &obj["spec"]);
    let Some(old) = old else { return };
    let mut a = old["spec"].clone();
    let mut b = obj["spec"].clone();
    // A Pod stored before its defaults were applied compares as if it had them.
    pod_spec_defaults(&mut a);
    for spec in [&mut a, &mut b] {
        for field in ["containers", "initContainers"] {
            if let Some(cs) = spec[field].as_array_mut() {
                for c in cs {
                    c["image"] = Value::Null;
                }
            }
        }
    }
    if old["spec"]["nodeName"].as_str().is_none_or(str::is_empty) {
        a["nodeName"] = b["nodeName"].clone();
    }
    if a != b {
        causes.push((
            "spec".into(),
            "Forbidden: pod updates may not change fields other than `spec.containers[*].image`, \
             `spec.initContainers[*].image` or an unset `spec.nodeName`"
                .into(),
        ));
    }
}

pub fn namespace(causes: &mut Causes, obj: &Value) {
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    if !name.is_empty() && !is_dns_label(name) {
        invalid(
            causes,
            "metadata.name".into(),
            &obj["metadata"]["name"],
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'",
        );
    }
}

/// Roles and bindings: the shapes the authorizer reads must be there.
pub fn rbac(kind: &str, causes: &mut Causes, obj: &Value) {
    if kind.ends_with("Binding") {
        let rr = &obj["roleRef"];
        match rr["kind"].as_str() {
            Some("Role") if kind == "RoleBinding" => {}
            Some("ClusterRole") => {}
            _ => unsupported(
                causes,
                "roleRef.kind".into(),
                &rr["kind"],
                &["Role", "ClusterRole"],
            ),
        }
        if rr["name"].as_str().is_none_or(str::is_empty) {
            required(causes, "roleRef.name".into());
        }
        for (i, s) in items(&obj["subjects"], "subjects", causes)
            .iter()
            .enumerate()
        {
            match s["kind"].as_str() {
                Some("ServiceAccount") => {
                    if s["namespace"].as_str().is_none_or(str::is_empty) && kind != "RoleBinding" {
                        required(causes, format!("subjects[{i}].namespace"));
                    }
                }
                Some("User" | "Group") => {}
                _ => unsupported(
                    causes,
                    format!("subjects[{i}].kind"),
                    &s["kind"],
                    &["ServiceAccount", "User", "Group"],
                ),
            }
            if s["name"].as_str().is_none_or(str::is_empty) {
                required(causes, format!("subjects[{i}].name"));
            }
        }
    } else {
        for (i, r) in items(&obj["rules"], "rules", causes).iter().enumerate() {
            if items(&r["verbs"], &format!("rules[{i}].verbs"), causes).is_empty() {
                required(causes, format!("rules[{i}].verbs"));
            }
            let non_resource = r["nonResourceURLs"]
                .as_array()
                .is_some_and(|a| !a.is_empty());
            if !non_resource && r["apiGroups"].as_array().is_none_or(|a| a.is_empty()) {
                required(causes, format!("rules[{i}].apiGroups"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ds(template_spec: Value) -> Value {
        json!({"metadata": {"name": "d"}, "spec": {
            "selector": {"matchLabels": {"app": "x"}},
            "template": {"metadata": {"labels": {"app": "x"}}, "spec": template_spec}}})
    }

    fn fields(obj: &Value) -> Vec<String> {
        let mut c = Vec::new();
        daemon_set(&mut c, obj, None);
        c.into_iter().map(|(f, _)| f).collect()
    }

    #[test]
    fn a_valid_daemonset_passes() {
        let ok = ds(json!({
            "volumes": [{"name": "v", "hostPath": {"path": "/x", "type": "DirectoryOrCreate"}}],
            "containers": [{"name": "c", "image": "i", "volumeMounts": [{"name": "v", "mountPath": "/x"}],
                            "env": [{"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]}]}));
        assert!(fields(&ok).is_empty(), "{:?}", fields(&ok));
    }

    #[test]
    fn what_cannot_be_represented_is_named() {
        let bad = ds(json!({
            "volumes": [{"name": "v", "nfs": {"server": "s"}}, {"name": "v", "emptyDir": {}}],
            "containers": [{"name": "c", "volumeMounts": [{"name": "w", "mountPath": "/x"}]},
                           {"name": "c", "image": "i", "ports": [{"containerPort": 70000}]}]}));
        assert_eq!(
            fields(&bad),
            [
                "spec.template.spec.volumes[0].nfs",
                "spec.template.spec.volumes[1].name",
                "spec.template.spec.containers[0].image",
                "spec.template.spec.containers[0].volumeMounts[0].name",
                "spec.template.spec.containers[1].name",
                "spec.template.spec.containers[1].ports[0].containerPort",
            ]
        );
        let mut mismatched = ds(json!({"containers": [{"name": "c", "image": "i"}]}));
        mismatched["spec"]["template"]["metadata"]["labels"] = json!({"app": "y"});
        assert_eq!(fields(&mismatched), ["spec.template.metadata.labels"]);
    }

    #[test]
    fn repeated_volume_names_and_mount_paths_are_refused_in_the_apiservers_words() {
        let bad = ds(json!({
            "volumes": [{"name": "v", "emptyDir": {}}, {"name": "v", "emptyDir": {}}],
            "containers": [{"name": "c", "image": "i", "volumeMounts": [
                {"name": "v", "mountPath": "/x"}, {"name": "v", "mountPath": "/x"}, {"name": "v"}]}]}));
        let mut c = Vec::new();
        daemon_set(&mut c, &bad, None);
        let spec = "spec.template.spec";
        let mounts = format!("{spec}.containers[0].volumeMounts");
        assert_eq!(
            c,
            [
                (
                    format!("{spec}.volumes[1].name"),
                    "Duplicate value: \"v\"".into()
                ),
                (
                    format!("{mounts}[1].mountPath"),
                    "Invalid value: must be unique".into()
                ),
                (format!("{mounts}[2].mountPath"), "Required value".into()),
            ] as [(String, String); 3]
        );
    }

    #[test]
    fn pod_updates_change_images_and_an_unset_node_only() {
        let p = json!({"spec": {"containers": [{"name": "c", "image": "a"}]}});
        let mut bound = p.clone();
        bound["spec"]["nodeName"] = json!("n1");
        bound["spec"]["containers"][0]["image"] = json!("b");
        let mut c = Vec::new();
        pod(&mut c, &bound, Some(&p));
        assert!(c.is_empty(), "{c:?}");
        let mut moved = bound.clone();
        moved["spec"]["nodeName"] = json!("n2");
        pod(&mut c, &moved, Some(&bound));
        assert_eq!(c.len(), 1);
    }
}
