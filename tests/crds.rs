//! The checked-in CRDs match the Rust types; their schemas are structural, documented, and
//! accept what Charon writes while rejecting what a schema can reject (SPEC §1, §7).

use std::collections::BTreeSet;
use std::path::Path;

use charon_core::resources::{
    AttemptOutcomeKind, AttemptRecord, Backfill, BackfillCounts, BackfillPartition, BackfillSpec,
    BackfillState, BackfillStatus, Condition, ConditionStatus, ExecutionSnapshot, HistoryEntry,
    InstanceState, NextTrigger, RunRecord, Trigger, TriggerType, TriggeredPartition, Workflow,
    WorkflowInstance, WorkflowInstanceSpec, WorkflowInstanceStatus, WorkflowSpec, WorkflowStatus,
};
use chrono::{TimeZone, Utc};
use serde_json::{Value, json};

const REGENERATE: &str = "run `cargo run -- crds --out-dir crds` and commit the result";

// ---------------------------------------------------------------------------------------------
// The checked-in files

#[test]
fn checked_in_crds_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let generated = charon::crd::files().expect("CRDs render");
    let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("crds/ is not readable ({e}): {REGENERATE}"))
        .map(|e| {
            e.expect("readable entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let expected: BTreeSet<String> = generated.iter().map(|(name, _)| name.clone()).collect();
    assert_eq!(
        on_disk, expected,
        "crds/ must hold exactly the generated files (delete any others): {REGENERATE}"
    );
    for (name, yaml) in generated {
        let checked_in = std::fs::read_to_string(dir.join(&name)).expect("readable CRD");
        if checked_in != yaml {
            let line = checked_in
                .lines()
                .zip(yaml.lines())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| checked_in.lines().count().min(yaml.lines().count()));
            panic!(
                "crds/{name} is stale (first difference at line {}): {REGENERATE}",
                line + 1
            );
        }
    }
}

#[test]
fn the_stream_is_the_files_without_headers() {
    let stream = charon::crd::all_yaml().unwrap();
    let joined: String = charon::crd::files()
        .unwrap()
        .into_iter()
        .map(|(_, yaml)| {
            let body = yaml
                .strip_prefix(charon::crd::GENERATED_HEADER)
                .expect("files start with the header");
            format!("---\n{body}")
        })
        .collect();
    assert_eq!(stream, joined);
    let docs: Vec<Value> = stream
        .split("---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_yaml::from_str(d).expect("each document is YAML"))
        .collect();
    assert_eq!(docs.len(), 5);
    assert!(docs.iter().all(|d| d["kind"] == "CustomResourceDefinition"));
}

// ---------------------------------------------------------------------------------------------
// Schemas

/// `(kind, openAPIV3Schema)` of every CRD, in `crd::crds()` order.
fn schemas() -> Vec<(String, Value)> {
    charon::crd::crds()
        .into_iter()
        .map(|crd| {
            let value = serde_json::to_value(&crd).expect("CRD serialises");
            let schema = value["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
            (crd.spec.names.kind, schema)
        })
        .collect()
}

fn schema_of(kind: &str) -> Value {
    schemas()
        .into_iter()
        .find(|(k, _)| k == kind)
        .map(|(_, s)| s)
        .unwrap_or_else(|| panic!("no CRD for {kind}"))
}

/// The node at a dotted path of property names.
fn at<'a>(schema: &'a Value, path: &str) -> &'a Value {
    path.split('.')
        .fold(schema, |node, key| &node["properties"][key])
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(String::from))
        .collect()
}

/// Formats the API server recognises (unknown ones draw a warning on apply since 1.34).
const RECOGNISED_FORMATS: &[&str] = &["int32", "int64", "float", "double", "date-time", "byte"];

/// Keywords that a structural schema may not use, or that we never need.
const FORBIDDEN: &[&str] = &[
    "$ref",
    "$schema",
    "$defs",
    "definitions",
    "anyOf",
    "oneOf",
    "allOf",
    "not",
    "const",
    "examples",
];

/// Kubernetes' structural-schema rules (and the ones the API server adds on top), as far as a
/// generated schema can break them.
fn check_structural(path: &str, node: &Value, problems: &mut Vec<String>) {
    let Some(obj) = node.as_object() else {
        problems.push(format!("{path}: schema is not an object"));
        return;
    };
    for forbidden in FORBIDDEN {
        if obj.contains_key(*forbidden) {
            problems.push(format!("{path}: uses {forbidden}"));
        }
    }
    let flag = |key: &str| obj.get(key) == Some(&Value::Bool(true));
    let preserve = flag("x-kubernetes-preserve-unknown-fields");
    let int_or_string = flag("x-kubernetes-int-or-string");
    if let Some(v) = obj.get("x-kubernetes-preserve-unknown-fields")
        && v != &Value::Bool(true)
    {
        problems.push(format!("{path}: preserve-unknown-fields must be true"));
    }
    let ty = obj.get("type").and_then(Value::as_str);
    match ty {
        None if !preserve && !int_or_string => problems.push(format!("{path}: no type")),
        None => {}
        Some(_) if int_or_string => {
            problems.push(format!("{path}: int-or-string must not carry a type"))
        }
        Some("object" | "array" | "string" | "integer" | "number" | "boolean") => {}
        Some(other) => problems.push(format!("{path}: unknown type {other}")),
    }
    if flag("nullable") && ty.is_none() && !int_or_string {
        problems.push(format!("{path}: nullable without a type"));
    }
    if let Some(values) = obj.get("enum") {
        let values = values.as_array().cloned().unwrap_or_default();
        if values.is_empty() {
            problems.push(format!("{path}: empty enum"));
        }
        if flag("nullable") && !values.contains(&Value::Null) {
            problems.push(format!(
                "{path}: nullable enum without null (the API server rejects null)"
            ));
        }
        for value in &values {
            if !value.is_null() && !has_type(value, ty) {
                problems.push(format!("{path}: enum value {value} is not a {ty:?}"));
            }
        }
    }
    if let Some(format) = obj.get("format").and_then(Value::as_str)
        && !RECOGNISED_FORMATS.contains(&format)
    {
        problems.push(format!("{path}: unrecognised format {format}"));
    }
    if let Some(pattern) = obj.get("pattern") {
        match pattern.as_str() {
            Some(p) => {
                if let Err(reason) = re2_compatible(p) {
                    problems.push(format!("{path}: pattern {p}: {reason}"));
                }
                if ty != Some("string") {
                    problems.push(format!("{path}: pattern on a non-string"));
                }
            }
            None => problems.push(format!("{path}: pattern is not a string")),
        }
    }
    if let (Some(min), Some(max)) = (
        obj.get("minimum").and_then(Value::as_f64),
        obj.get("maximum").and_then(Value::as_f64),
    ) && min > max
    {
        problems.push(format!("{path}: minimum {min} > maximum {max}"));
    }
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        problems.push(format!(
            "{path}: properties together with additionalProperties"
        ));
    }
    if (obj.contains_key("properties") || obj.contains_key("additionalProperties"))
        && ty != Some("object")
    {
        problems.push(format!("{path}: properties on a non-object"));
    }
    if let Some(required) = obj.get("required") {
        let props = obj.get("properties").and_then(Value::as_object);
        for name in strings(required) {
            if !props.is_some_and(|p| p.contains_key(&name)) {
                problems.push(format!("{path}: required {name} is not a property"));
            }
        }
    }
    match (ty, obj.get("items")) {
        (Some("array"), Some(items)) if items.is_object() => {
            check_structural(&format!("{path}[]"), items, problems)
        }
        (Some("array"), _) => problems.push(format!("{path}: array without one items schema")),
        (_, Some(_)) => problems.push(format!("{path}: items on a non-array")),
        (_, None) => {}
    }
    if let Some(list_type) = obj.get("x-kubernetes-list-type").and_then(Value::as_str) {
        let keys = strings(
            obj.get("x-kubernetes-list-map-keys")
                .unwrap_or(&Value::Null),
        );
        match list_type {
            "map" => {
                let item_required = strings(&node["items"]["required"]);
                if keys.is_empty() {
                    problems.push(format!("{path}: list-type map without map keys"));
                }
                for key in keys {
                    if !item_required.contains(&key) {
                        problems.push(format!("{path}: map key {key} is not required"));
                    }
                }
            }
            "atomic" | "set" => {}
            other => problems.push(format!("{path}: unknown list type {other}")),
        }
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            check_structural(&format!("{path}.{name}"), child, problems);
        }
    }
    if let Some(extra) = obj.get("additionalProperties") {
        if extra.is_object() {
            check_structural(&format!("{path}{{}}"), extra, problems);
        } else if extra != &Value::Bool(true) {
            problems.push(format!("{path}: additionalProperties must be a schema"));
        }
    }
    if let Some(default) = obj.get("default") {
        // The API server validates defaults against their own node and prunes them.
        let mut errors = Vec::new();
        validate(&format!("{path}(default)"), node, default, &mut errors);
        problems.extend(errors);
    }
}

/// Go's regexp (RE2) has no lookaround and no backreferences; the regex crate has neither
/// either, so a pattern that compiles here and avoids `\C` and `(?<name>` syntax compiles there.
fn re2_compatible(pattern: &str) -> Result<(), String> {
    for bad in ["(?=", "(?!", "(?<=", "(?<!", "(?<", "\\C"] {
        if pattern.contains(bad) {
            return Err(format!("{bad} is not RE2"));
        }
    }
    if regex::Regex::new(r"\\[1-9]").unwrap().is_match(pattern) {
        return Err("backreferences are not RE2".into());
    }
    regex::Regex::new(pattern)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn has_type(value: &Value, ty: Option<&str>) -> bool {
    match ty {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        _ => true,
    }
}

#[test]
fn schemas_are_structural() {
    for (kind, schema) in schemas() {
        let mut problems = Vec::new();
        check_structural(&kind, &schema, &mut problems);
        assert!(
            problems.is_empty(),
            "{kind} is not structural:\n{}",
            problems.join("\n")
        );
    }
}

#[test]
fn the_structural_checker_catches_what_it_should() {
    let mut problems = Vec::new();
    let bad = json!({
        "type": "object",
        "properties": {
            "untyped": {"description": "x"},
            "ref": {"$ref": "#/definitions/X"},
            "choice": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            "nullableEnum": {"type": "string", "enum": ["A"], "nullable": true},
            "nullableUntyped": {"nullable": true},
            "both": {"type": "object", "properties": {}, "additionalProperties": {"type": "string"}},
            "lookahead": {"type": "string", "pattern": "^(?!x)"},
            "unsigned": {"type": "integer", "format": "uint32"},
            "list": {"type": "array"},
            "badDefault": {"type": "integer", "minimum": 1, "default": 0},
        },
    });
    check_structural("t", &bad, &mut problems);
    for expected in [
        "t.untyped: no type",
        "t.ref: uses $ref",
        "t.choice: uses anyOf",
        "t.nullableEnum: nullable enum without null",
        "t.nullableUntyped: nullable without a type",
        "t.both: properties together with additionalProperties",
        "t.lookahead: pattern ^(?!x): (?! is not RE2",
        "t.unsigned: unrecognised format uint32",
        "t.list: array without one items schema",
        "t.badDefault(default): 0 < minimum",
    ] {
        assert!(
            problems.iter().any(|p| p.starts_with(expected)),
            "missed {expected:?} in {problems:#?}"
        );
    }
}

/// Every property of Charon's own types says what it is; embedded Kubernetes types (env,
/// resources, tolerations) carry their upstream descriptions.
fn check_documented(path: &str, node: &Value, missing: &mut Vec<String>) {
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            let child_path = format!("{path}.{name}");
            let described = child
                .get("description")
                .and_then(Value::as_str)
                .is_some_and(|d| !d.trim().is_empty());
            if !described {
                missing.push(child_path.clone());
            }
            check_documented(&child_path, child, missing);
        }
    }
    if let Some(items) = node.get("items") {
        check_documented(&format!("{path}[]"), items, missing);
    }
    if let Some(extra) = node.get("additionalProperties") {
        check_documented(&format!("{path}{{}}"), extra, missing);
    }
}

#[test]
fn every_field_is_documented() {
    for (kind, schema) in schemas() {
        let mut missing = Vec::new();
        assert!(
            schema["description"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{kind} has no description"
        );
        check_documented(&kind, &schema, &mut missing);
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
        ("Workflow", "workflows", "cwf"),
        ("WorkflowInstance", "workflowinstances", "cwfi"),
        ("Backfill", "backfills", "cbf"),
        ("Pool", "pools", "cpool"),
        ("Quota", "quotas", "cquota"),
    ];
    assert_eq!(crds.len(), expected.len());
    for (crd, (kind, plural, short)) in crds.iter().zip(expected) {
        let names = &crd.spec.names;
        assert_eq!(names.kind, kind);
        assert_eq!(names.plural, plural);
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some(format!("{plural}.charon.dev").as_str())
        );
        assert_eq!(names.short_names.as_deref(), Some(&[short.to_string()][..]));
        assert_eq!(
            names.categories.as_deref(),
            Some(&["charon".to_string()][..])
        );
        assert_eq!(crd.spec.group, "charon.dev");
        // Pools are shared by every namespace.
        let scope = if kind == "Pool" {
            "Cluster"
        } else {
            "Namespaced"
        };
        assert_eq!(crd.spec.scope, scope, "{kind}'s scope");
        assert_eq!(crd.spec.versions.len(), 1);
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.served && version.storage);
        let subresources = version.subresources.as_ref();
        assert!(
            subresources.and_then(|s| s.status.as_ref()).is_some(),
            "{kind} has a status subresource"
        );
        let columns: Vec<(&str, &str)> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .filter(|c| c.priority.unwrap_or(0) == 0)
            .map(|c| (c.name.as_str(), c.json_path.as_str()))
            .collect();
        let wanted: &[(&str, &str)] = match kind {
            "Workflow" => &[
                ("Schedule", ".spec.schedule"),
                ("Suspended", ".spec.suspend"),
                ("Valid", ".status.conditions[?(@.type==\"Valid\")].status"),
                ("Last", ".status.lastTriggered.parameter"),
                ("Next", ".status.nextTrigger.parameter"),
                ("Next At", ".status.nextTrigger.triggerAt"),
                ("Active", ".status.active"),
                ("Age", ".metadata.creationTimestamp"),
            ],
            "WorkflowInstance" => &[
                ("Workflow", ".spec.workflow"),
                ("Parameter", ".spec.parameter"),
                ("Trigger", ".spec.trigger.type"),
                ("State", ".status.state"),
                ("Tries", ".status.tries"),
                ("Age", ".metadata.creationTimestamp"),
            ],
            "Pool" => &[
                ("Slots", ".spec.slots"),
                ("Used", ".status.used"),
                ("Queued", ".status.queued"),
                ("Age", ".metadata.creationTimestamp"),
            ],
            "Quota" => &[
                ("Max Active", ".spec.maxActive"),
                ("Active", ".status.active"),
                ("Max Queued", ".spec.maxQueued"),
                ("Queued", ".status.queued"),
                ("Age", ".metadata.creationTimestamp"),
            ],
            _ => &[
                ("Workflow", ".spec.workflow"),
                ("Start", ".spec.start"),
                ("End", ".spec.end"),
                ("Progress", ".status.progress"),
                ("State", ".status.state"),
                ("Age", ".metadata.creationTimestamp"),
            ],
        };
        assert_eq!(columns, wanted, "{kind}'s default printer columns");
        // kubectl prints a `date` column as an age, and `<invalid>` for a future time: only
        // times in the past (creation) may be dates.
        for column in version.additional_printer_columns.iter().flatten() {
            if column.type_ == "date" {
                assert_eq!(
                    column.json_path, ".metadata.creationTimestamp",
                    "{kind} column {} is a date but may lie in the future",
                    column.name
                );
            }
        }
        let schema = schema_of(kind);
        for column in version.additional_printer_columns.iter().flatten() {
            // Every column points at a field the schema has (filters aside).
            let path = column.json_path.split("[?").next().unwrap_or_default();
            if path.starts_with(".metadata") {
                continue;
            }
            let node = at(&schema, path.trim_start_matches('.'));
            assert!(
                node.is_object(),
                "{kind} column {} points at {path}, which the schema lacks",
                column.name
            );
        }
    }
}

#[test]
fn validation_the_schema_can_express() {
    let workflow = schema_of("Workflow");
    let instance = schema_of("WorkflowInstance");
    let backfill = schema_of("Backfill");
    assert_eq!(
        strings(&at(&workflow, "spec.catchUp")["enum"]),
        ["All", "Latest", "None"]
    );
    assert_eq!(at(&workflow, "spec.catchUp")["default"], "All");
    assert_eq!(at(&workflow, "spec.timeZone")["default"], "UTC");
    assert_eq!(at(&workflow, "spec.suspend")["default"], false);
    assert_eq!(at(&workflow, "spec.concurrency")["minimum"], 1.0);
    assert_eq!(at(&workflow, "spec.schedule")["minLength"], 1);
    assert!(
        at(&workflow, "spec.schedule").get("pattern").is_none(),
        "cron is validated by the controller, which names the field (SPEC §7)"
    );
    assert_eq!(at(&workflow, "spec.retry.maxCost")["default"], 50.0);
    assert_eq!(at(&workflow, "spec.retry.maxCost")["minimum"], 0.0);
    assert_eq!(at(&workflow, "spec.history.ttl")["default"], "P7D");
    assert_eq!(
        strings(&workflow["properties"]["spec"]["required"]),
        ["schedule", "template"]
    );
    // A template names its image, or its steps name theirs: the controller checks which
    // (Valid=False naming the field), so the schema requires neither.
    assert!(
        strings(&at(&workflow, "spec.template")["required"]).is_empty(),
        "{:?}",
        at(&workflow, "spec.template")["required"]
    );
    assert_eq!(
        strings(&at(&workflow, "spec.template.steps")["items"]["required"]),
        ["image", "name"]
    );
    assert_eq!(
        strings(&at(&workflow, "spec.template.imagePullPolicy")["enum"]),
        ["Always", "IfNotPresent", "Never"]
    );
    let overrides = at(&workflow, "spec.template.podOverrides");
    assert_eq!(overrides["x-kubernetes-preserve-unknown-fields"], true);
    assert_eq!(overrides["type"], "object");
    assert!(
        overrides.get("properties").is_none(),
        "podOverrides must not embed the PodSpec schema"
    );
    assert_eq!(
        strings(&at(&instance, "status.state")["enum"]),
        [
            "Queued",
            "Prepare",
            "Submitting",
            "Submitted",
            "Running",
            "Suspended",
            "Terminated",
            "Failed",
            "Done",
            "Error",
            "Halted"
        ]
    );
    assert_eq!(
        strings(&at(&instance, "spec.trigger.type")["enum"]),
        ["natural", "adhoc", "backfill"]
    );
    assert_eq!(at(&instance, "spec.logicalTime")["format"], "date-time");
    assert_eq!(at(&instance, "status.lastExitCode")["nullable"], true);
    assert_eq!(at(&instance, "status.nextAttemptAt")["nullable"], true);
    assert_eq!(
        strings(&at(&backfill, "spec.reprocess")["enum"]),
        ["All", "Failed", "Missing"]
    );
    assert_eq!(at(&backfill, "spec.concurrency")["minimum"], 1.0);
    assert_eq!(at(&backfill, "spec.concurrency")["default"], 1);
    assert_eq!(
        strings(&at(&backfill, "status.state")["enum"]),
        ["Pending", "Running", "Completed", "Halted", "Invalid"]
    );
    for (kind, schema) in [
        ("Workflow", &workflow),
        ("WorkflowInstance", &instance),
        ("Backfill", &backfill),
    ] {
        assert_eq!(
            at(schema, "status.observedGeneration")["type"],
            "integer",
            "{kind}"
        );
        let conditions = at(schema, "status.conditions");
        assert_eq!(conditions["x-kubernetes-list-type"], "map", "{kind}");
        assert_eq!(strings(&conditions["x-kubernetes-list-map-keys"]), ["type"]);
        let condition = &conditions["items"];
        assert!(condition["properties"]["observedGeneration"].is_object());
        assert_eq!(
            strings(&condition["properties"]["status"]["enum"]),
            ["True", "False", "Unknown"]
        );
        assert_eq!(
            strings(&condition["required"]),
            ["lastTransitionTime", "reason", "status", "type"]
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A small validator with the API server's semantics for the keywords the schemas use, so the
// tests can check what `kubectl apply` accepts and rejects without a cluster.

fn validate(path: &str, schema: &Value, data: &Value, errors: &mut Vec<String>) {
    let flag = |key: &str| schema.get(key) == Some(&Value::Bool(true));
    if data.is_null() {
        if !flag("nullable") {
            errors.push(format!("{path}: null is not allowed"));
        }
        return;
    }
    if flag("x-kubernetes-int-or-string") {
        if !(data.is_string() || data.is_i64() || data.is_u64()) {
            errors.push(format!("{path}: {data} is neither an integer nor a string"));
        }
        return;
    }
    let ty = schema.get("type").and_then(Value::as_str);
    if !has_type(data, ty) {
        errors.push(format!(
            "{path}: {data} is not of type {}",
            ty.unwrap_or("?")
        ));
        return;
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array)
        && !values.contains(data)
    {
        errors.push(format!("{path}: {data} is not one of {values:?}"));
    }
    if let Some(text) = data.as_str() {
        let len = text.chars().count() as u64;
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
            && len < min
        {
            errors.push(format!("{path}: shorter than {min}"));
        }
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
            && len > max
        {
            errors.push(format!("{path}: longer than {max}"));
        }
        if let Some(pattern) = schema.get("pattern").and_then(Value::as_str)
            && !regex::Regex::new(pattern).unwrap().is_match(text)
        {
            errors.push(format!("{path}: {text:?} does not match {pattern}"));
        }
        if schema.get("format").and_then(Value::as_str) == Some("date-time")
            && chrono::DateTime::parse_from_rfc3339(text).is_err()
        {
            errors.push(format!("{path}: {text:?} is not a date-time"));
        }
    }
    if let Some(number) = data.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
            && number < min
        {
            errors.push(format!("{path}: {data} < minimum {min}"));
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
            && number > max
        {
            errors.push(format!("{path}: {data} > maximum {max}"));
        }
    }
    if let Some(object) = data.as_object() {
        for name in strings(schema.get("required").unwrap_or(&Value::Null)) {
            if !object.contains_key(&name) {
                errors.push(format!("{path}: {name} is required"));
            }
        }
        let props = schema.get("properties").and_then(Value::as_object);
        for (key, value) in object {
            let child = format!("{path}.{key}");
            if let Some(prop) = props.and_then(|p| p.get(key)) {
                validate(&child, prop, value, errors);
            } else if let Some(extra) = schema.get("additionalProperties").filter(|v| v.is_object())
            {
                validate(&child, extra, value, errors);
            } else if !flag("x-kubernetes-preserve-unknown-fields") {
                // kubectl's default strict field validation refuses unknown fields.
                errors.push(format!("{child}: unknown field"));
            }
        }
    }
    if let (Some(items), Some(schema_items)) = (data.as_array(), schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            validate(&format!("{path}[{i}]"), schema_items, item, errors);
        }
    }
}

/// Validates a whole object the way the API server does for a custom resource: apiVersion,
/// kind and metadata are the server's, the rest is the CRD's schema.
fn validate_object(object: &Value) -> Vec<String> {
    let kind = object["kind"].as_str().expect("object has a kind");
    assert_eq!(object["apiVersion"], "charon.dev/v1alpha1");
    let schema = schema_of(kind);
    let mut body = object.clone();
    let map = body.as_object_mut().expect("object");
    for key in ["apiVersion", "kind", "metadata"] {
        map.remove(key);
    }
    let mut errors = Vec::new();
    validate(kind, &schema, &body, &mut errors);
    errors
}

fn yaml(text: &str) -> Value {
    serde_yaml::from_str(text).expect("test YAML parses")
}

#[test]
fn the_shipped_examples_validate() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("config/examples exists") {
        let path = entry.expect("readable entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable example");
        for doc in text.split("\n---\n").filter(|d| d.contains("apiVersion:")) {
            let errors = validate_object(&yaml(doc));
            assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
            seen += 1;
        }
    }
    assert!(seen > 0, "no examples found in {}", dir.display());
}

/// The SPEC §10 Workflow, spelled out (the resource tests hold the verbatim example).
const SPEC_WORKFLOW: &str = r#"
apiVersion: charon.dev/v1alpha1
kind: Workflow
metadata: {name: hourly-report, namespace: data}
spec:
  schedule: "@hourly"
  timeZone: Europe/Stockholm
  offset: PT1H
  suspend: false
  catchUp: All
  concurrency: 3
  runningTimeout: PT2H
  retry: {maxCost: 50, missingDependencyExitCode: 20, fatalExitCodes: [50], infrastructureAttempts: 10}
  history: {ttl: P7D}
  template:
    image: registry.example.com/report:1.4
    command: ["report"]
    args: ["--hour", "{}"]
    env: [{name: OUTPUT, value: "s3://bucket/reports"}]
    resources: {requests: {cpu: 500m, memory: 1Gi}}
    secret: {name: report-credentials, mountPath: /etc/report}
    serviceAccountName: report
"#;

/// Replaces the value at a `/`-separated pointer (creating the last key), or removes it for
/// `None`.
fn with(mut object: Value, pointer: &str, value: Option<Value>) -> Value {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer has a key");
    let parent = object
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .unwrap_or_else(|| panic!("no object at {parent}"));
    match value {
        Some(v) => parent.insert(key.to_string(), v),
        None => parent.remove(key),
    };
    object
}

#[test]
fn the_schema_accepts_valid_workflows() {
    let base = yaml(SPEC_WORKFLOW);
    assert_eq!(validate_object(&base), Vec::<String>::new());
    let accepted = [
        ("/spec/offset", json!("-PT30M")),
        ("/spec/offset", json!("P1DT2H")),
        ("/spec/offset", json!("+P1W")),
        ("/spec/offset", json!("PT0S")),
        ("/spec/offset", json!("PT1.5S")),
        ("/spec/runningTimeout", json!("P1Y2M3DT4H5M6S")),
        ("/spec/schedule", json!("0 0 1 * MON-FRI")),
        ("/spec/catchUp", json!("Latest")),
        ("/spec/template/imagePullPolicy", json!("IfNotPresent")),
        ("/spec/template/nodeSelector", json!({"disk": "ssd"})),
        (
            "/spec/template/tolerations",
            json!([{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}]),
        ),
        (
            "/spec/template/podOverrides",
            json!({"spec": {"priorityClassName": "batch", "affinity": {"anything": [1, 2]}}}),
        ),
        ("/spec/template/resources", json!({"limits": {"cpu": 2}})),
        ("/spec/retry/fatalExitCodes", json!([50, 255])),
        ("/spec/concurrency", Value::Null),
    ];
    for (pointer, value) in accepted {
        let object = with(base.clone(), pointer, Some(value.clone()));
        let errors = validate_object(&object);
        assert!(errors.is_empty(), "{pointer} = {value}: {errors:#?}");
    }
    let minimal = yaml(
        "{apiVersion: charon.dev/v1alpha1, kind: Workflow, metadata: {name: m}, spec: {schedule: '@daily', template: {image: busybox}}}",
    );
    assert_eq!(validate_object(&minimal), Vec::<String>::new());
}

#[test]
fn the_schema_rejects_what_it_can_at_apply_time() {
    let base = yaml(SPEC_WORKFLOW);
    let rejected: &[(&str, Option<Value>, &str)] = &[
        ("/spec/schedule", None, "schedule is required"),
        ("/spec/schedule", Some(json!("")), "shorter than 1"),
        (
            "/spec/template/steps",
            Some(json!([{"image": "busybox", "command": ["true"]}])),
            "name is required",
        ),
        (
            "/spec/template/steps",
            Some(json!([{"name": "a", "image": "", "command": ["true"]}])),
            "shorter than 1",
        ),
        (
            "/spec/template/array",
            Some(json!({"start": 0, "end": 3, "step": 0})),
            "< minimum 1",
        ),
        (
            "/spec/template/array",
            Some(json!({"start": 0})),
            "end is required",
        ),
        ("/spec/catchUp", Some(json!("Sometimes")), "is not one of"),
        ("/spec/concurrency", Some(json!(0)), "< minimum 1"),
        (
            "/spec/concurrency",
            Some(json!(1e10)),
            "not of type integer",
        ),
        (
            "/spec/concurrency",
            Some(json!(5_000_000_000_u64)),
            "> maximum",
        ),
        ("/spec/offset", Some(json!("1h")), "does not match"),
        ("/spec/offset", Some(json!("P")), "does not match"),
        ("/spec/offset", Some(json!("P1DT")), "does not match"),
        (
            "/spec/runningTimeout",
            Some(json!("-PT1H")),
            "does not match",
        ),
        ("/spec/runningTimeout", Some(json!("2h")), "does not match"),
        (
            "/spec/history/ttl",
            Some(json!("forever")),
            "does not match",
        ),
        ("/spec/history/limit", Some(json!(0)), "< minimum 1"),
        ("/spec/retry/maxCost", Some(json!(-1)), "< minimum 0"),
        (
            "/spec/retry/fatalExitCodes",
            Some(json!([300])),
            "> maximum 255",
        ),
        (
            "/spec/retry/infrastructureAttempts",
            Some(json!(-1)),
            "< minimum 0",
        ),
        ("/spec/suspend", Some(json!("yes")), "not of type boolean"),
        (
            "/spec/template/imagePullPolicy",
            Some(json!("Sometimes")),
            "is not one of",
        ),
        (
            "/spec/template/secret/mountPath",
            Some(json!("etc")),
            "does not match",
        ),
        ("/spec/template/secret/name", None, "name is required"),
        (
            "/spec/template/podOverrides",
            Some(json!("raw")),
            "not of type object",
        ),
        ("/spec/scheduel", Some(json!("@daily")), "unknown field"),
    ];
    for (pointer, value, expected) in rejected {
        let object = with(base.clone(), pointer, value.clone());
        let errors = validate_object(&object);
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{pointer} = {value:?}: expected {expected:?}, got {errors:#?}"
        );
    }

    let instance = yaml(
        "{apiVersion: charon.dev/v1alpha1, kind: WorkflowInstance, metadata: {name: i}, spec: {workflow: w, parameter: '2024-01-01', logicalTime: '2024-01-01T00:00:00Z', trigger: {type: natural, id: natural}}}",
    );
    assert_eq!(validate_object(&instance), Vec::<String>::new());
    for (pointer, value, expected) in [
        ("/spec/trigger/type", Some(json!("manual")), "is not one of"),
        (
            "/spec/logicalTime",
            Some(json!("yesterday")),
            "is not a date-time",
        ),
        ("/spec/parameter", Some(json!("")), "shorter than 1"),
        ("/spec/trigger", None, "trigger is required"),
    ] {
        let errors = validate_object(&with(instance.clone(), pointer, value.clone()));
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{pointer} = {value:?}: expected {expected:?}, got {errors:#?}"
        );
    }

    let backfill = yaml(
        "{apiVersion: charon.dev/v1alpha1, kind: Backfill, metadata: {name: b}, spec: {workflow: w, start: '2024-01-01', end: '2024-02-01', concurrency: 4, reprocess: Missing}}",
    );
    assert_eq!(validate_object(&backfill), Vec::<String>::new());
    for (pointer, value, expected) in [
        ("/spec/concurrency", Some(json!(0)), "< minimum 1"),
        ("/spec/reprocess", Some(json!("Some")), "is not one of"),
        ("/spec/start", None, "start is required"),
        ("/spec/end", Some(json!("")), "shorter than 1"),
    ] {
        let errors = validate_object(&with(backfill.clone(), pointer, value.clone()));
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{pointer} = {value:?}: expected {expected:?}, got {errors:#?}"
        );
    }
}

/// Everything the controller may write, fully populated, must pass the schema: a status write
/// the API server refuses would wedge the instance.
#[test]
fn what_the_controller_writes_validates() {
    let t = |h: u32| Utc.with_ymd_and_hms(2024, 10, 27, h, 0, 0).unwrap();
    let condition = |type_: &str, status, reason: &str| {
        Condition::new(
            type_,
            status,
            reason,
            "spec.schedule: expected 5 fields, got 6",
            Some(3),
            t(1),
        )
    };

    let mut workflow: Workflow = serde_yaml::from_str(SPEC_WORKFLOW).unwrap();
    workflow.status = Some(WorkflowStatus {
        observed_generation: Some(3),
        conditions: vec![condition(
            "Valid",
            ConditionStatus::False,
            "InvalidSchedule",
        )],
        last_triggered: Some(TriggeredPartition {
            parameter: "2024-10-27T02+01:00".into(),
            logical_time: t(1),
            at: t(2),
        }),
        next_trigger: Some(NextTrigger {
            parameter: "2024-10-27T03+01:00".into(),
            logical_time: t(2),
            trigger_at: t(3),
        }),
        active: 1,
        trigger_cursor: Some(t(2)),
        scheduled_with: Some("@hourly Europe/Stockholm PT1H".into()),
    });

    let trigger = Trigger {
        trigger_type: TriggerType::Backfill,
        id: "fill-october".into(),
    };
    let mut instance = WorkflowInstance::new(
        "hourly-report-2024-10-27t02-01-00",
        WorkflowInstanceSpec {
            workflow: "hourly-report".into(),
            parameter: "2024-10-27T02+01:00".into(),
            logical_time: t(1),
            trigger: trigger.clone(),
            halted: false,
            suspended: false,
            env: workflow.spec.template.env.clone(),
        },
    );
    instance.status = Some(WorkflowInstanceStatus {
        observed_generation: Some(1),
        conditions: vec![condition("Valid", ConditionStatus::True, "Valid")],
        state: InstanceState::Failed,
        tries: 2,
        cost: 1.1,
        consecutive_failures: 2,
        infrastructure_failures: 1,
        last_exit_code: Some(137),
        next_attempt_at: Some(t(4)),
        job: Some("hourly-report-2024-10-27t02-01-00-4".into()),
        execution: 4,
        message: "exit code 137; retry at 04:00".into(),
        running_since: None,
        reason: None,
        suspended_at: None,
        started_at: Some(t(2)),
        finished_at: None,
        snapshot: Some(Box::new(ExecutionSnapshot {
            image: "registry.example.com/report:1.4".into(),
            command: vec!["report".into()],
            args: vec!["--hour".into(), "2024-10-27T02+01:00".into()],
            env: workflow.spec.template.env.clone(),
            workflow_generation: Some(3),
            steps: vec![charon_core::resources::Step {
                name: "extract".into(),
                image: "registry.example.com/extract:2".into(),
                command: vec!["extract".into()],
                args: vec!["--hour".into(), "2024-10-27T02+01:00".into()],
                env: workflow.spec.template.env.clone(),
                output: "/out/rows.csv".into(),
            }],
            resume_from: Some("extract".into()),
            array: Some(charon_core::resources::ArraySpec {
                start: 0,
                end: 9,
                step: 3,
                parallelism: Some(2),
            }),
            tasks: "1,3".into(),
        })),
        steps: vec![charon_core::resources::StepStatus {
            name: "extract".into(),
            state: charon_core::resources::StepState::Failed,
            exit_code: Some(3),
            started_at: Some(t(2)),
            finished_at: Some(t(3)),
        }],
        steps_completed: Some(0),
        array: Some(charon_core::resources::ArrayStatus {
            succeeded: vec![0, 6],
            failed: vec![3, 9],
        }),
        history: vec![HistoryEntry {
            at: t(2),
            from: InstanceState::Running,
            to: InstanceState::Failed,
            reason: "Evicted".into(),
            message: "the node was low on memory".into(),
        }],
        runs: vec![RunRecord {
            trigger: Trigger {
                trigger_type: TriggerType::Natural,
                id: "natural".into(),
            },
            state: InstanceState::Error,
            tries: 50,
            cost: 50.0,
            last_exit_code: Some(1),
            started_at: Some(t(0)),
            finished_at: Some(t(1)),
        }],
        attempts: vec![AttemptRecord {
            execution: 4,
            job: "hourly-report-2024-10-27t02-01-00-4".into(),
            started_at: Some(t(2)),
            finished_at: Some(t(3)),
            exit_code: Some(137),
            outcome: Some(AttemptOutcomeKind::Failed),
            reason: "Failed".into(),
            archived: false,
        }],
        trigger: Some(trigger.clone()),
    });
    // Freshly created, before the controller wrote anything.
    let mut fresh = instance.clone();
    fresh.status = Some(WorkflowInstanceStatus::default());

    let mut backfill = Backfill::new(
        "fill-october",
        BackfillSpec {
            workflow: "hourly-report".into(),
            start: "2024-10-01T00+02:00".into(),
            end: "2024-11-01T00+01:00".into(),
            concurrency: 2,
            reverse: true,
            reprocess: charon_core::resources::Reprocess::Failed,
            halted: false,
            graceful_halt: true,
            allow_future: false,
            description: Some("re-run October after the outage".into()),
            env: vec![],
            priority: Some(70),
        },
    );
    backfill.status = Some(BackfillStatus {
        observed_generation: Some(1),
        conditions: vec![condition("Complete", ConditionStatus::False, "Running")],
        state: BackfillState::Running,
        range: Some("2024-10-01T00+02:00/2024-11-01T00+01:00".into()),
        progress: Some("7/12".into()),
        cursor: Some("2024-10-01T07+02:00".into()),
        counts: BackfillCounts {
            total: 12,
            triggered: 9,
            active: 2,
            done: 6,
            failed: 1,
            skipped: 1,
        },
        partitions: ["Pending", "Triggered", "Done", "Failed", "Skipped"]
            .into_iter()
            .map(|state| BackfillPartition {
                parameter: "2024-10-01T00+02:00".into(),
                state: state.into(),
                instance: Some("hourly-report-2024-10-01t00-02-00".into()),
                reason: Some("already active through adhoc-1-12345".into()),
            })
            .collect(),
        started_at: Some(t(0)),
        completed_at: None,
    });

    for object in [
        serde_json::to_value(&workflow).unwrap(),
        serde_json::to_value(&instance).unwrap(),
        serde_json::to_value(&fresh).unwrap(),
        serde_json::to_value(&backfill).unwrap(),
        serde_json::to_value(Backfill::new("b", backfill.spec.clone())).unwrap(),
    ] {
        let errors = validate_object(&object);
        assert!(errors.is_empty(), "{errors:#?}\nin {object:#}");
    }
}

/// Every default the schema shows is the value serde fills in for a missing field, so
/// `kubectl explain`, the API server's defaulting and the controller agree.
#[test]
fn schema_defaults_are_the_serde_defaults() {
    fn compare(path: &str, schema: &Value, data: &Value, problems: &mut Vec<String>) {
        let Some(props) = schema.get("properties").and_then(Value::as_object) else {
            return;
        };
        for (name, prop) in props {
            let child = format!("{path}.{name}");
            let value = data.get(name);
            if let Some(default) = prop.get("default") {
                let same = value.is_some_and(|v| {
                    v == default || (v.as_f64().is_some() && v.as_f64() == default.as_f64())
                });
                if !same {
                    problems.push(format!(
                        "{child}: schema default {default}, serde gives {value:?}"
                    ));
                }
            }
            if let Some(value) = value {
                compare(&child, prop, value, problems);
            }
        }
    }
    let minimal = [
        (
            "Workflow",
            "{apiVersion: charon.dev/v1alpha1, kind: Workflow, metadata: {name: m}, spec: {schedule: '@daily', template: {image: busybox}}}",
        ),
        (
            "WorkflowInstance",
            "{apiVersion: charon.dev/v1alpha1, kind: WorkflowInstance, metadata: {name: i}, spec: {workflow: w, parameter: p, logicalTime: '2024-01-01T00:00:00Z', trigger: {type: natural, id: natural}}}",
        ),
        (
            "Backfill",
            "{apiVersion: charon.dev/v1alpha1, kind: Backfill, metadata: {name: b}, spec: {workflow: w, start: a, end: b}}",
        ),
    ];
    let mut problems = Vec::new();
    for (kind, text) in minimal {
        let schema = schema_of(kind);
        let object = match kind {
            "Workflow" => {
                let mut w: Workflow = serde_yaml::from_str(text).unwrap();
                w.status = Some(WorkflowStatus::default());
                serde_json::to_value(w).unwrap()
            }
            "WorkflowInstance" => {
                let mut i: WorkflowInstance = serde_yaml::from_str(text).unwrap();
                i.status = Some(WorkflowInstanceStatus::default());
                serde_json::to_value(i).unwrap()
            }
            _ => {
                let mut b: Backfill = serde_yaml::from_str(text).unwrap();
                b.status = Some(BackfillStatus::default());
                serde_json::to_value(b).unwrap()
            }
        };
        compare(kind, &schema, &object, &mut problems);
    }
    assert!(problems.is_empty(), "{problems:#?}");
    // And a spec the API server has defaulted reads back as the same Rust value.
    let spec: WorkflowSpec =
        serde_yaml::from_str("{schedule: '@daily', template: {image: busybox}}").unwrap();
    let defaulted = serde_json::to_value(&spec).unwrap();
    assert_eq!(
        serde_json::from_value::<WorkflowSpec>(defaulted).unwrap(),
        spec
    );
}
