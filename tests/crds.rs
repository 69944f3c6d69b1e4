//! The checked-in CRDs match the Rust types, and their schemas are structural and documented.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

const REGENERATE: &str = "run `cargo run -- crds --out-dir crds` and commit the result";

#[test]
fn checked_in_crds_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let generated = charon::crd::files().expect("CRDs render");
    let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
        .expect("crds/ exists")
        .map(|e| {
            e.expect("readable entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    let expected: BTreeSet<String> = generated.iter().map(|(name, _)| name.clone()).collect();
    assert_eq!(
        on_disk, expected,
        "crds/ holds other files than the generated ones: {REGENERATE}"
    );
    for (name, yaml) in generated {
        let checked_in = std::fs::read_to_string(dir.join(&name)).expect("readable CRD");
        assert!(checked_in == yaml, "crds/{name} is stale: {REGENERATE}");
    }
}

fn schemas() -> Vec<(String, Value)> {
    charon::crd::crds()
        .into_iter()
        .map(|crd| {
            let value = serde_json::to_value(&crd).expect("CRD serialises");
            let schema = value["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
            (crd.metadata.name.unwrap_or_default(), schema)
        })
        .collect()
}

/// Kubernetes' structural-schema rules, as far as the generated schemas can break them.
fn check_structural(path: &str, node: &Value, problems: &mut Vec<String>) {
    let Some(obj) = node.as_object() else {
        problems.push(format!("{path}: schema is not an object"));
        return;
    };
    for forbidden in [
        "$ref",
        "anyOf",
        "oneOf",
        "allOf",
        "not",
        "definitions",
        "$defs",
    ] {
        if obj.contains_key(forbidden) {
            problems.push(format!("{path}: uses {forbidden}"));
        }
    }
    let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    if !obj.contains_key("type") && !preserve && !int_or_string {
        problems.push(format!("{path}: no type"));
    }
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        problems.push(format!(
            "{path}: properties together with additionalProperties"
        ));
    }
    if obj.get("type").and_then(Value::as_str) == Some("array") && !obj.contains_key("items") {
        problems.push(format!("{path}: array without items"));
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            check_structural(&format!("{path}.{name}"), child, problems);
        }
    }
    if let Some(items) = obj.get("items") {
        check_structural(&format!("{path}[]"), items, problems);
    }
    if let Some(extra) = obj.get("additionalProperties").filter(|v| v.is_object()) {
        check_structural(&format!("{path}{{}}"), extra, problems);
    }
}

#[test]
fn schemas_are_structural() {
    for (name, schema) in schemas() {
        let mut problems = Vec::new();
        check_structural(&name, &schema, &mut problems);
        assert!(
            problems.is_empty(),
            "{name} is not structural:\n{}",
            problems.join("\n")
        );
    }
}

/// Every property of Charon's own types says what it is. Embedded Kubernetes types (env,
/// resources, tolerations) carry their upstream descriptions.
fn check_documented(path: &str, node: &Value, missing: &mut Vec<String>) {
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            let child_path = format!("{path}.{name}");
            let described = child
                .get("description")
                .and_then(Value::as_str)
                .is_some_and(|d| !d.trim().is_empty());
            if !described && name != "apiVersion" && name != "kind" && name != "metadata" {
                missing.push(child_path.clone());
            }
            check_documented(&child_path, child, missing);
        }
    }
    if let Some(items) = node.get("items") {
        check_documented(&format!("{path}[]"), items, missing);
    }
}

#[test]
fn every_field_is_documented() {
    for (name, schema) in schemas() {
        let mut missing = Vec::new();
        check_documented(&name, &schema, &mut missing);
        assert!(
            missing.is_empty(),
            "undocumented fields (they become `kubectl explain` text):\n{}",
            missing.join("\n")
        );
    }
}

#[test]
fn names_categories_subresources_and_columns() {
    let crds = charon::crd::crds();
    let expected = [
        ("Workflow", "cwf"),
        ("WorkflowInstance", "cwfi"),
        ("Backfill", "cbf"),
    ];
    assert_eq!(crds.len(), expected.len());
    for (crd, (kind, short)) in crds.iter().zip(expected) {
        let names = &crd.spec.names;
        assert_eq!(names.kind, kind);
        assert_eq!(names.short_names.as_deref(), Some(&[short.to_string()][..]));
        assert_eq!(
            names.categories.as_deref(),
            Some(&["charon".to_string()][..])
        );
        assert_eq!(crd.spec.group, "charon.dev");
        assert_eq!(crd.spec.scope, "Namespaced");
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.served && version.storage);
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{kind} has a status subresource"
        );
        let columns: Vec<&str> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        let wanted: &[&str] = match kind {
            "Workflow" => &["Schedule", "Suspended", "Last", "Next", "Active", "Age"],
            "WorkflowInstance" => &["Workflow", "Parameter", "Trigger", "State", "Tries", "Age"],
            _ => &["Workflow", "Start", "End", "Progress", "State", "Age"],
        };
        for column in wanted {
            assert!(
                columns.contains(column),
                "{kind} lacks column {column}: {columns:?}"
            );
        }
    }
}

fn at<'a>(schema: &'a Value, path: &str) -> &'a Value {
    path.split('.')
        .fold(schema, |node, key| &node["properties"][key])
}

#[test]
fn validation_the_schema_can_express() {
    let all = schemas();
    let workflow = &all[0].1;
    let instance = &all[1].1;
    let backfill = &all[2].1;
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(String::from))
            .collect()
    };
    assert_eq!(
        strings(&at(workflow, "spec.catchUp")["enum"]),
        ["All", "Latest", "None"]
    );
    assert_eq!(at(workflow, "spec.catchUp")["default"], "All");
    assert_eq!(at(workflow, "spec.timeZone")["default"], "UTC");
    assert_eq!(at(workflow, "spec.concurrency")["minimum"], 1.0);
    assert!(at(workflow, "spec.offset")["pattern"].is_string());
    assert_eq!(
        strings(&workflow["properties"]["spec"]["required"]),
        ["schedule", "template"]
    );
    assert_eq!(
        strings(&at(workflow, "spec.template")["required"]),
        ["image"]
    );
    let overrides = at(workflow, "spec.template.podOverrides");
    assert_eq!(overrides["x-kubernetes-preserve-unknown-fields"], true);
    assert_eq!(overrides["type"], "object");
    assert!(
        overrides.get("properties").is_none(),
        "podOverrides must not embed the PodSpec schema"
    );
    assert_eq!(
        strings(&at(instance, "status.state")["enum"]),
        [
            "Queued",
            "Prepare",
            "Submitting",
            "Submitted",
            "Running",
            "Terminated",
            "Failed",
            "Done",
            "Error",
            "Halted"
        ]
    );
    assert_eq!(
        strings(&at(instance, "spec.trigger.type")["enum"]),
        ["natural", "adhoc", "backfill"]
    );
    assert_eq!(at(instance, "spec.logicalTime")["format"], "date-time");
    assert_eq!(
        strings(&at(backfill, "spec.reprocess")["enum"]),
        ["All", "Failed", "Missing"]
    );
    assert_eq!(at(backfill, "spec.concurrency")["minimum"], 1.0);
    let condition = &at(workflow, "status.conditions")["items"];
    assert!(condition["properties"]["observedGeneration"].is_object());
    assert_eq!(
        strings(&condition["properties"]["status"]["enum"]),
        ["True", "False", "Unknown"]
    );
}
