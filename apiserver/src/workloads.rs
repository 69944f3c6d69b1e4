//! Defaults and checks for the kinds an operator's install manifests are made of
//! (Deployments, Services, RBAC roles and bindings, PodDisruptionBudgets), so that
//! `kubectl apply --dry-run=server` of a Helm chart's output refuses what a real server
//! would, in its words. Nothing runs them: there are no controllers for these kinds.

use serde_json::{Value, json};

use crate::error::FieldError;
use crate::registry::ResourceType;
use crate::selector::Selector;

const RBAC: &str = "rbac.authorization.k8s.io";

/// Defaults and validates a new object of one of these kinds; other kinds pass unchanged.
pub fn prepare_create(t: &ResourceType, obj: &mut Value) -> Result<(), Vec<FieldError>> {
    let errors = match (t.group.as_str(), t.plural.as_str()) {
        ("apps", "deployments") => deployment(obj),
        ("", "services") => service(obj),
        (RBAC, "roles") => rules(obj, true),
        (RBAC, "clusterroles") => rules(obj, false),
        (RBAC, "rolebindings") => binding(obj, true),
        (RBAC, "clusterrolebindings") => binding(obj, false),
        ("policy", "poddisruptionbudgets") => disruption_budget(obj),
        _ => Vec::new(),
    };
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// `spec`, created as an empty object when absent or not an object.
fn spec_of(obj: &mut Value) -> &mut Value {
    if !obj.get("spec").is_some_and(Value::is_object) {
        obj["spec"] = json!({});
    }
    &mut obj["spec"]
}

fn default_fields(target: &mut Value, defaults: &[(&str, Value)]) {
    for (field, default) in defaults {
        if target.get(*field).is_none() {
            target[*field] = default.clone();
        }
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

/// A `metav1.LabelSelector` (matchLabels and matchExpressions) as selector text.
fn label_selector(selector: &Value) -> Result<Selector, String> {
    let mut terms = Vec::new();
    if let Some(labels) = selector.get("matchLabels").and_then(Value::as_object) {
        for (k, v) in labels {
            terms.push(format!("{k}={}", v.as_str().unwrap_or_default()));
        }
    }
    for e in selector
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
        let values = strings(e.get("values")).join(",");
        terms.push(match e.get("operator").and_then(Value::as_str) {
            Some("In") => format!("{key} in ({values})"),
            Some("NotIn") => format!("{key} notin ({values})"),
            Some("Exists") => key.to_string(),
            Some("DoesNotExist") => format!("!{key}"),
            other => return Err(format!("{other:?} is not a valid label selector operator")),
        });
    }
    Selector::parse(&terms.join(","))
}

/// A label map as Go's `%#v` prints it in the real server's messages.
fn go_string_map(labels: Option<&Value>) -> String {
    match labels.and_then(Value::as_object) {
        None => "map[string]string(nil)".to_string(),
        Some(m) => {
            let pairs: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{}:{}", json!(k), json!(v.as_str().unwrap_or_default())))
                .collect();
            format!("map[string]string{{{}}}", pairs.join(", "))
        }
    }
}

fn deployment(obj: &mut Value) -> Vec<FieldError> {
    let spec = spec_of(obj);
    default_fields(
        spec,
        &[
            ("replicas", json!(1)),
            (
                "strategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}),
            ),
            ("revisionHistoryLimit", json!(10)),
            ("progressDeadlineSeconds", json!(600)),
        ],
    );
    let mut errors = Vec::new();
    if let Some(replicas) = spec["replicas"].as_i64().filter(|r| *r < 0) {
        errors.push(FieldError::invalid(
            "spec.replicas",
            &json!(replicas),
            "must be greater than or equal to 0".to_string(),
        ));
    }
    // A missing selector matches nothing, so the template check below fails too (as it does
    // on the real server).
    let selector = match spec.get("selector").filter(|s| s.is_object()) {
        None => {
            errors.push(FieldError::required("spec.selector", String::new()));
            None
        }
        Some(s) => {
            let empty = s
                .get("matchLabels")
                .and_then(Value::as_object)
                .is_none_or(|m| m.is_empty())
                && s.get("matchExpressions")
                    .and_then(Value::as_array)
                    .is_none_or(|e| e.is_empty());
            if empty {
                errors.push(FieldError::invalid(
                    "spec.selector",
                    s,
                    "empty selector is invalid for deployment".to_string(),
                ));
            }
            match label_selector(s) {
                Ok(selector) => Some(selector),
                Err(detail) => {
                    errors.push(FieldError::invalid("spec.selector", s, detail));
                    None
                }
            }
        }
    };
    let template = match spec.get_mut("template").filter(|t| t.is_object()) {
        Some(template) => template,
        None => {
            errors.push(FieldError::required("spec.template", String::new()));
            return errors;
        }
    };
    let matches = selector.is_some_and(|s| s.matches_labels(template));
    if !matches {
        errors.push(FieldError::new(
            "spec.template.metadata.labels",
            "FieldValueInvalid",
            format!(
                "Invalid value: {}: `selector` does not match template `labels`",
                go_string_map(template.pointer("/metadata/labels"))
            ),
        ));
    }
    match template.get_mut("spec").filter(|s| s.is_object()) {
        Some(pod) => {
            errors.extend(crate::builtin::pod_spec(pod, "spec.template.spec", false));
            let policy = pod.get("restartPolicy").cloned().unwrap_or_default();
            if policy != "Always" {
                errors.push(FieldError::not_supported(
                    "spec.template.spec.restartPolicy",
                    &policy,
                    &[json!("Always")],
                ));
            }
        }
        None => errors.push(FieldError::required(
            "spec.template.spec.containers",
            String::new(),
        )),
    }
    errors
}

fn port_number(field: String, value: &Value, errors: &mut Vec<FieldError>) {
    match value.as_i64() {
        Some(1..=65535) => {}
        _ => errors.push(FieldError::invalid(
            field,
            value,
            "must be between 1 and 65535, inclusive".to_string(),
        )),
    }
}

fn service(obj: &mut Value) -> Vec<FieldError> {
    let spec = spec_of(obj);
    default_fields(
        spec,
        &[
            ("type", json!("ClusterIP")),
            ("sessionAffinity", json!("None")),
            ("internalTrafficPolicy", json!("Cluster")),
        ],
    );
    let mut errors = Vec::new();
    let kind = spec["type"].clone();
    let types = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
    if !types.iter().any(|t| kind == *t) {
        let options: Vec<Value> = types.iter().map(|t| json!(t)).collect();
        errors.push(FieldError::not_supported("spec.type", &kind, &options));
    }
    let headless = spec.get("clusterIP") == Some(&json!("None"));
    let ports = spec.get_mut("ports").and_then(Value::as_array_mut);
    let count = ports.as_ref().map_or(0, |p| p.len());
    if count == 0 && kind != "ExternalName" && !headless {
        errors.push(FieldError::required("spec.ports", String::new()));
    }
    let mut names: Vec<String> = Vec::new();
    for (i, port) in ports.into_iter().flatten().enumerate() {
        let path = format!("spec.ports[{i}]");
        let name = port.get("name").and_then(Value::as_str).unwrap_or_default();
        if name.is_empty() && count > 1 {
            errors.push(FieldError::required(format!("{path}.name"), String::new()));
        } else if !name.is_empty() && names.iter().any(|n| n == name) {
            errors.push(FieldError::new(
                format!("{path}.name"),
                "FieldValueDuplicate",
                format!("Duplicate value: {}", json!(name)),
            ));
        }
        names.push(name.to_string());
        let number = port.get("port").cloned().unwrap_or(json!(0));
        port_number(format!("{path}.port"), &number, &mut errors);
        let protocol = port.get("protocol").cloned().unwrap_or(json!("TCP"));
        if !["TCP", "UDP", "SCTP"].iter().any(|p| protocol == *p) {
            errors.push(FieldError::not_supported(
                format!("{path}.protocol"),
                &protocol,
                &[json!("SCTP"), json!("TCP"), json!("UDP")],
            ));
        }
        match port.get("targetPort") {
            None => port["targetPort"] = number,
            Some(Value::String(s)) if s.is_empty() => errors.push(FieldError::required(
                format!("{path}.targetPort"),
                String::new(),
            )),
            Some(Value::String(_)) => {}
            Some(target) => port_number(format!("{path}.targetPort"), target, &mut errors),
        }
        port["protocol"] = protocol;
    }
    errors
}

/// `rules` of a Role or ClusterRole.
fn rules(obj: &Value, namespaced: bool) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let rules = obj.get("rules").and_then(Value::as_array);
    for (i, rule) in rules.into_iter().flatten().enumerate() {
        let path = format!("rules[{i}]");
        let list = |key: &str| strings(rule.get(key));
        if list("verbs").is_empty() {
            errors.push(FieldError::required(
                format!("{path}.verbs"),
                "verbs must contain at least one value".to_string(),
            ));
        }
        let urls = list("nonResourceURLs");
        if !urls.is_empty() {
            let value = json!(urls);
            if namespaced {
                errors.push(FieldError::invalid(
                    format!("{path}.nonResourceURLs"),
                    &value,
                    "namespaced rules cannot apply to non-resource URLs".to_string(),
                ));
            }
            if !list("apiGroups").is_empty()
                || !list("resources").is_empty()
                || !list("resourceNames").is_empty()
            {
                errors.push(FieldError::invalid(
                    format!("{path}.nonResourceURLs"),
                    &value,
                    "rules cannot apply to both regular resources and non-resource URLs"
                        .to_string(),
                ));
            }
            continue;
        }
        if rule
            .get("apiGroups")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
        {
            errors.push(FieldError::required(
                format!("{path}.apiGroups"),
                "resource rules must supply at least one api group".to_string(),
            ));
        }
        if list("resources").is_empty() {
            errors.push(FieldError::required(
                format!("{path}.resources"),
                "resource rules must supply at least one resource".to_string(),
            ));
        }
    }
    errors
}

/// `roleRef` and `subjects` of a RoleBinding or ClusterRoleBinding.
fn binding(obj: &Value, namespaced: bool) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let text = |v: Option<&Value>, key: &str| {
        v.and_then(|v| v.get(key))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let role_ref = obj.get("roleRef");
    if text(role_ref, "name").is_empty() {
        errors.push(FieldError::required("roleRef.name", String::new()));
    }
    let group = text(role_ref, "apiGroup");
    if group != RBAC {
        errors.push(FieldError::not_supported(
            "roleRef.apiGroup",
            &json!(group),
            &[json!(RBAC)],
        ));
    }
    let kind = text(role_ref, "kind");
    let kinds: &[&str] = if namespaced {
        &["Role", "ClusterRole"]
    } else {
        &["ClusterRole"]
    };
    if !kinds.contains(&kind.as_str()) {
        let options: Vec<Value> = kinds.iter().map(|k| json!(k)).collect();
        errors.push(FieldError::not_supported(
            "roleRef.kind",
            &json!(kind),
            &options,
        ));
    }
    let subjects = obj.get("subjects").and_then(Value::as_array);
    for (i, subject) in subjects.into_iter().flatten().enumerate() {
        let path = format!("subjects[{i}]");
        let subject = Some(subject);
        if text(subject, "name").is_empty() {
            errors.push(FieldError::required(format!("{path}.name"), String::new()));
        }
        match text(subject, "kind").as_str() {
            "ServiceAccount" => {
                if !text(subject, "apiGroup").is_empty() {
                    errors.push(FieldError::not_supported(
                        format!("{path}.apiGroup"),
                        &json!(text(subject, "apiGroup")),
                        &[json!("")],
                    ));
                }
                if !namespaced && text(subject, "namespace").is_empty() {
                    errors.push(FieldError::required(
                        format!("{path}.namespace"),
                        String::new(),
                    ));
                }
            }
            "User" | "Group" => {}
            other => errors.push(FieldError::not_supported(
                format!("{path}.kind"),
                &json!(other),
                &[json!("ServiceAccount"), json!("User"), json!("Group")],
            )),
        }
    }
    errors
}

/// An int-or-string count of pods: a non-negative integer or a percentage up to 100%.
fn int_or_percent(field: &str, value: &Value, errors: &mut Vec<FieldError>) {
    match value {
        Value::Number(n) if n.as_i64().is_some_and(|n| n >= 0) => {}
        Value::Number(_) => errors.push(FieldError::invalid(
            field,
            value,
            "must be greater than or equal to 0".to_string(),
        )),
        Value::String(s) => match s.strip_suffix('%').map(str::parse::<i64>) {
            Some(Ok(0..=100)) => {}
            Some(Ok(p)) if p > 100 => errors.push(FieldError::invalid(
                field,
                value,
                "must not be greater than 100%".to_string(),
            )),
            _ => errors.push(FieldError::invalid(
                field,
                value,
                "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')".to_string(),
            )),
        },
        _ => errors.push(FieldError::invalid(
            field,
            value,
            "must be an integer or percentage".to_string(),
        )),
    }
}

fn disruption_budget(obj: &mut Value) -> Vec<FieldError> {
    let spec = spec_of(obj);
    let mut errors = Vec::new();
    let min = spec.get("minAvailable");
    let max = spec.get("maxUnavailable");
    if min.is_some() && max.is_some() {
        errors.push(FieldError::invalid(
            "spec",
            spec,
            "minAvailable and maxUnavailable cannot be both set".to_string(),
        ));
    }
    if let Some(min) = min {
        int_or_percent("spec.minAvailable", min, &mut errors);
    }
    if let Some(max) = max {
        int_or_percent("spec.maxUnavailable", max, &mut errors);
    }
    if let Some(selector) = spec.get("selector")
        && let Err(detail) = label_selector(selector)
    {
        errors.push(FieldError::invalid("spec.selector", selector, detail));
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::builtins;

    fn kind(plural: &str) -> ResourceType {
        builtins()
            .into_iter()
            .find(|t| t.plural == plural)
            .expect("a built-in kind")
    }

    fn messages(plural: &str, mut obj: Value) -> Vec<String> {
        match prepare_create(&kind(plural), &mut obj) {
            Ok(()) => Vec::new(),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    fn deployment(selector: Value, labels: Value) -> Value {
        json!({"metadata": {"name": "d"}, "spec": {
            "selector": selector,
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}},
        }})
    }

    #[test]
    fn deployments_need_a_selector_matching_the_template() {
        let mut ok = deployment(
            json!({"matchLabels": {"app": "x"}}),
            json!({"app": "x", "v": "1"}),
        );
        assert!(prepare_create(&kind("deployments"), &mut ok).is_ok());
        assert_eq!(ok["spec"]["replicas"], 1);
        assert_eq!(ok["spec"]["template"]["spec"]["restartPolicy"], "Always");
        assert_eq!(
            ok["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
        assert_eq!(
            messages(
                "deployments",
                deployment(
                    json!({"matchLabels": {"app": "y"}}),
                    json!({"app": "x", "b": "c"})
                )
            ),
            [
                "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"x\", \"b\":\"c\"}: `selector` does not match template `labels`"
            ]
        );
        let expressions =
            json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["x", "z"]}]});
        assert!(messages("deployments", deployment(expressions, json!({"app": "x"}))).is_empty());
        let mut missing = deployment(json!({}), json!({"app": "x"}));
        missing["spec"].as_object_mut().unwrap().remove("selector");
        assert_eq!(
            messages("deployments", missing),
            [
                "spec.selector: Required value",
                "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"x\"}: `selector` does not match template `labels`",
            ]
        );
    }

    #[test]
    fn deployment_containers_need_a_name_and_an_image() {
        let mut d = deployment(json!({"matchLabels": {"app": "x"}}), json!({"app": "x"}));
        d["spec"]["template"]["spec"] = json!({"restartPolicy": "Never", "containers": [{}]});
        assert_eq!(
            messages("deployments", d),
            [
                "spec.template.spec.containers[0].name: Required value",
                "spec.template.spec.containers[0].image: Required value",
                "spec.template.spec.restartPolicy: Unsupported value: \"Never\": supported values: \"Always\"",
            ]
        );
    }

    #[test]
    fn service_ports_are_checked_and_defaulted() {
        let mut svc = json!({"metadata": {"name": "s"}, "spec": {"ports": [{"name": "metrics", "port": 8080}]}});
        assert!(prepare_create(&kind("services"), &mut svc).is_ok());
        assert_eq!(svc["spec"]["type"], "ClusterIP");
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);
        assert_eq!(svc["spec"]["ports"][0]["protocol"], "TCP");
        let bad = json!({"spec": {"ports": [{"name": "a", "port": 0}, {"name": "a", "port": 70000, "targetPort": "web"}]}});
        assert_eq!(
            messages("services", bad),
            [
                "spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
                "spec.ports[1].name: Duplicate value: \"a\"",
                "spec.ports[1].port: Invalid value: 70000: must be between 1 and 65535, inclusive",
            ]
        );
        assert_eq!(
            messages("services", json!({"spec": {}})),
            ["spec.ports: Required value"]
        );
    }

    #[test]
    fn roles_need_verbs_and_bindings_a_role() {
        let role = json!({"rules": [{"apiGroups": [""], "resources": ["pods"]}, {"verbs": ["get"], "nonResourceURLs": ["/healthz"]}]});
        assert_eq!(
            messages("roles", role.clone()),
            [
                "rules[0].verbs: Required value: verbs must contain at least one value",
                "rules[1].nonResourceURLs: Invalid value: [\"/healthz\"]: namespaced rules cannot apply to non-resource URLs",
            ]
        );
        assert_eq!(
            messages("clusterroles", role),
            ["rules[0].verbs: Required value: verbs must contain at least one value"]
        );
        assert_eq!(
            messages(
                "rolebindings",
                json!({"subjects": [{"kind": "ServiceAccount", "name": "sa"}]})
            ),
            [
                "roleRef.name: Required value",
                "roleRef.apiGroup: Unsupported value: \"\": supported values: \"rbac.authorization.k8s.io\"",
                "roleRef.kind: Unsupported value: \"\": supported values: \"Role\", \"ClusterRole\"",
            ]
        );
        let role_ref = json!({"apiGroup": RBAC, "kind": "Role", "name": "r"});
        let subjects = json!([{"kind": "ServiceAccount", "name": "sa"}]);
        assert!(
            messages(
                "rolebindings",
                json!({"roleRef": role_ref, "subjects": subjects})
            )
            .is_empty()
        );
        assert_eq!(
            messages(
                "clusterrolebindings",
                json!({"roleRef": role_ref, "subjects": subjects})
            ),
            [
                "roleRef.kind: Unsupported value: \"Role\": supported values: \"ClusterRole\"",
                "subjects[0].namespace: Required value",
            ]
        );
    }

    #[test]
    fn disruption_budgets_take_one_bound() {
        assert!(messages("poddisruptionbudgets", json!({"spec": {"minAvailable": 1}})).is_empty());
        assert!(
            messages(
                "poddisruptionbudgets",
                json!({"spec": {"maxUnavailable": "50%"}})
            )
            .is_empty()
        );
        assert_eq!(
            messages(
                "poddisruptionbudgets",
                json!({"spec": {"minAvailable": -1, "maxUnavailable": "150%"}})
            ),
            [
                "spec: Invalid value: {\"maxUnavailable\":\"150%\",\"minAvailable\":-1}: minAvailable and maxUnavailable cannot be both set",
                "spec.minAvailable: Invalid value: -1: must be greater than or equal to 0",
                "spec.maxUnavailable: Invalid value: \"150%\": must not be greater than 100%",
            ]
        );
    }
}
