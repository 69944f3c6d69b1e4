//! Minimal OpenAPI v3 documents: enough for kubectl to find each kind's schema and to see that
//! the server validates fields itself (`fieldValidation`), as `kubectl apply` checks both.

use serde_json::{Map, Value, json};

use crate::registry::ResourceType;
use crate::store::Store;

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: where each group-version's document is.
pub fn root(store: &Store) -> Value {
    let mut paths = Map::new();
    for t in store.types() {
        let path = gv_path(&t.group, &t.version);
        let url = format!("/openapi/v3/{path}?hash={}", store.current_rv());
        paths.insert(path, json!({"serverRelativeURL": url}));
    }
    json!({"paths": paths})
}

const STANDARD_FIELDS: &[(&str, &str, &str)] = &[
    (
        "apiVersion",
        "string",
        "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources",
    ),
    (
        "kind",
        "string",
        "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds",
    ),
    (
        "metadata",
        "object",
        "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata",
    ),
];

/// Reverse-domain schema name, as the real server names them (`dev.charon.v1alpha1.Workflow`).
fn schema_name(t: &ResourceType) -> String {
    let group: Vec<&str> = if t.group.is_empty() {
        vec!["io", "k8s", "api", "core"]
    } else {
        t.group.split('.').rev().collect()
    };
    format!("{}.{}.{}", group.join("."), t.version, t.kind)
}

/// `/openapi/v3/<api/v1 | apis/g/v>`; `None` when nothing is served there.
pub fn group_version(store: &Store, group: &str, version: &str) -> Option<Value> {
    let types: Vec<ResourceType> = store
        .types()
        .into_iter()
        .filter(|t| t.group == group && t.version == version)
        .collect();
    if types.is_empty() {
        return None;
    }
    let mut schemas = Map::new();
    let mut paths = Map::new();
    for t in &types {
        let gvk = json!({"group": t.group, "version": t.version, "kind": t.kind});
        let mut schema = store.crd_schema(t).unwrap_or_else(
            || json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
        );
        schema["x-kubernetes-group-version-kind"] = json!([gvk]);
        if let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) {
            // The real server adds these to every CRD schema it publishes (`kubectl explain`).
            for (field, kind, description) in STANDARD_FIELDS {
                properties
                    .entry(*field)
                    .or_insert_with(|| json!({"type": kind, "description": description}));
            }
        }
        schemas.insert(schema_name(t), schema);
        let base = format!("/{}", gv_path(&t.group, &t.version));
        let collection = if t.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", t.plural)
        } else {
            format!("{base}/{}/{{name}}", t.plural)
        };
        let parameters: Vec<Value> = ["dryRun", "fieldManager", "fieldValidation", "force"]
            .iter()
            .map(|name| json!({"name": name, "in": "query", "schema": {"type": "string"}, "uniqueItems": true}))
            .collect();
        paths.insert(
            collection,
            json!({"patch": {
                "operationId": format!("patch{}", t.kind),
                "parameters": parameters,
                "responses": {"200": {"description": "OK"}},
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": gvk,
            }}),
        );
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}
