//! Discovery documents: what groups, versions and resources the server serves, which
//! changes as CRDs are registered.

use serde_json::{Value, json};

use crate::store::Store;

/// The `APIResourceList` of `group/version`: its kinds and their `/status` subresources.
pub fn resource_list(store: &Store, group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for t in store
        .types()
        .iter()
        .filter(|t| t.group == group && t.version == version)
    {
        resources.push(t.discovery());
        if t.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", t.plural), "singularName": "", "namespaced": t.namespaced,
                "kind": t.kind, "verbs": ["get", "patch", "update"],
            }));
        }
    }
    resources.extend(reviews(group, version));
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources})
}

/// The `APIGroupList` of every group served, each with its versions.
pub fn group_list(store: &Store) -> Value {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for t in store.types().iter().filter(|t| !t.group.is_empty()) {
        match groups.iter_mut().find(|(g, _)| *g == t.group) {
            Some((_, versions)) if !versions.contains(&t.version) => {
                versions.push(t.version.clone())
            }
            Some(_) => {}
            None => groups.push((t.group.clone(), vec![t.version.clone()])),
        }
    }
    for review_group in ["authentication.k8s.io", "authorization.k8s.io"] {
        groups.push((review_group.to_string(), vec!["v1".to_string()]));
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(name, versions)| {
            let entries: Vec<Value> = versions
                .iter()
                .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
                .collect();
            json!({"name": name, "versions": entries, "preferredVersion": entries[0]})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// The create-only review APIs (see `auth.rs`) and the TokenRequest subresource, which are
/// served without being stored.
fn reviews(group: &str, version: &str) -> Vec<Value> {
    let create = |name: &str, kind: &str, namespaced: bool| json!({"name": name, "singularName": "", "namespaced": namespaced, "kind": kind, "verbs": ["create"]});
    match (group, version) {
        ("", "v1") => vec![json!({
            "name": "serviceaccounts/token", "singularName": "", "namespaced": true,
            "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest", "verbs": ["create"],
        })],
        ("authentication.k8s.io", "v1") => vec![
            create("selfsubjectreviews", "SelfSubjectReview", false),
            create("tokenreviews", "TokenReview", false),
        ],
        ("authorization.k8s.io", "v1") => vec![
            create("selfsubjectaccessreviews", "SelfSubjectAccessReview", false),
            create("subjectaccessreviews", "SubjectAccessReview", false),
        ],
        _ => Vec::new(),
    }
}
