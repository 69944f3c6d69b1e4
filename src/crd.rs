//! CustomResourceDefinitions generated from the Rust types (`charon crds`). The checked-in
//! copies under `crds/` are compared with these by `tests/crds.rs`, so the YAML must be
//! deterministic: every map in the typed CRD is ordered, and nothing here depends on time or
//! environment.
//!
//! `kube::CustomResourceExt::crd()` already produces structural schemas; [`crds`] then applies
//! two corrections the derive cannot express per field:
//!
//! - schemars' `uint32`/`uint64` formats are not OpenAPI formats (Kubernetes 1.34+ warns
//!   "unrecognized format" on apply), so unsigned integers become `int32`/`int64`; every
//!   `int32` also gets the bounds of its format, so a value the API server stores always fits
//!   the Rust field (one unreadable object would break the controller's list).
//! - an `Option` of an enum is rendered `nullable: true`, but the API server checks `null`
//!   against `enum` and rejects it. Without `nullable`, a `null` is pruned instead, which is
//!   what `None` means.
//! - doc comments keep their source line breaks, which `kubectl explain` prints mid-sentence;
//!   lines are joined into paragraphs (blank lines stay paragraph breaks).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::CustomResourceExt;

use charon_core::resources::{Backfill, Pool, Quota, Workflow, WorkflowInstance};

/// First line of every file under `crds/`, so nobody edits them by hand.
pub const GENERATED_HEADER: &str =
    "# Generated from the Rust types by `charon crds --out-dir crds`; do not edit.\n";

/// The CRDs of every Charon kind, in a stable order: Workflow, WorkflowInstance, Backfill,
/// Pool, Quota.
pub fn crds() -> Vec<CustomResourceDefinition> {
    [
        Workflow::crd(),
        WorkflowInstance::crd(),
        Backfill::crd(),
        Pool::crd(),
        Quota::crd(),
    ]
    .into_iter()
    .map(normalize)
    .collect()
}

/// One CRD as a YAML document (no `---` separator, no header).
pub fn to_yaml(crd: &CustomResourceDefinition) -> anyhow::Result<String> {
    Ok(serde_yaml::to_string(crd)?)
}

/// `(file name, YAML)` per CRD: `<plural>.<group>.yaml` with [`GENERATED_HEADER`], exactly as
/// checked in under `crds/`.
pub fn files() -> anyhow::Result<Vec<(String, String)>> {
    crds()
        .iter()
        .map(|crd| {
            let name = crd.metadata.name.as_deref().unwrap_or_default();
            Ok((
                format!("{name}.yaml"),
                format!("{GENERATED_HEADER}{}", to_yaml(crd)?),
            ))
        })
        .collect()
}

/// Every CRD as one multi-document YAML stream (each document starts with `---`), for
/// `charon crds | kubectl apply -f -`.
pub fn all_yaml() -> anyhow::Result<String> {
    crds()
        .iter()
        .map(|crd| Ok(format!("---\n{}", to_yaml(crd)?)))
        .collect()
}

/// Applies the corrections described in the module docs to every version's schema.
fn normalize(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            normalize_schema(schema);
        }
    }
    crd
}

fn normalize_schema(node: &mut JSONSchemaProps) {
    if let Some(description) = node.description.as_mut() {
        *description = unwrap_lines(description);
    }
    if let Some(format) = node.format.as_deref() {
        let openapi = match format {
            "uint8" | "uint16" | "uint32" | "int8" | "int16" => Some("int32"),
            "uint" | "uint64" | "uint128" | "int" | "int128" => Some("int64"),
            _ => None,
        };
        if let Some(openapi) = openapi {
            node.format = Some(openapi.to_string());
        }
    }
    if node.type_.as_deref() == Some("integer") && node.format.as_deref() == Some("int32") {
        node.minimum.get_or_insert(f64::from(i32::MIN));
        node.maximum.get_or_insert(f64::from(i32::MAX));
    }
    if node.enum_.is_some() && node.nullable == Some(true) {
        node.nullable = None;
    }
    for child in node.properties.iter_mut().flat_map(|p| p.values_mut()) {
        normalize_schema(child);
    }
    match &mut node.items {
        Some(JSONSchemaPropsOrArray::Schema(item)) => normalize_schema(item),
        Some(JSONSchemaPropsOrArray::Schemas(items)) => {
            items.iter_mut().for_each(normalize_schema);
        }
        None => {}
    }
    if let Some(JSONSchemaPropsOrBool::Schema(extra)) = &mut node.additional_properties {
        normalize_schema(extra);
    }
}

/// Joins the lines of each paragraph with single spaces; paragraphs stay separated by a
/// blank line.
fn unwrap_lines(text: &str) -> String {
    text.split("\n\n")
        .map(|paragraph| {
            paragraph
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|paragraph| !paragraph.is_empty())
        .collect::<Vec<_>>()
        .join("\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_holds_every_crd_once_and_in_order() {
        let all = all_yaml().unwrap();
        let kinds: Vec<&str> = all
            .lines()
            .filter_map(|l| l.strip_prefix("    kind: "))
            .collect();
        assert_eq!(
            kinds,
            ["Workflow", "WorkflowInstance", "Backfill", "Pool", "Quota"]
        );
        assert_eq!(all.matches("---\n").count(), 5);
        assert_eq!(all, all_yaml().unwrap(), "rendering is deterministic");
    }

    #[test]
    fn file_names_are_plural_dot_group() {
        let names: Vec<String> = files().unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "workflows.charon.dev.yaml",
                "workflowinstances.charon.dev.yaml",
                "backfills.charon.dev.yaml",
                "pools.charon.dev.yaml",
                "quotas.charon.dev.yaml"
            ]
        );
    }

    #[test]
    fn descriptions_are_paragraphs_not_source_lines() {
        assert_eq!(
            unwrap_lines("Stop triggering new\npartitions.\n\nBackfills\n still run."),
            "Stop triggering new partitions.\n\nBackfills still run."
        );
        assert_eq!(unwrap_lines("One line."), "One line.");
    }

    #[test]
    fn unsigned_formats_become_openapi_formats_with_bounds() {
        let mut node = JSONSchemaProps {
            type_: Some("integer".into()),
            format: Some("uint32".into()),
            minimum: Some(0.0),
            ..Default::default()
        };
        normalize_schema(&mut node);
        assert_eq!(node.format.as_deref(), Some("int32"));
        assert_eq!(node.minimum, Some(0.0));
        assert_eq!(node.maximum, Some(f64::from(i32::MAX)));
    }

    #[test]
    fn an_optional_enum_is_pruned_not_nullable() {
        let mut node = JSONSchemaProps {
            type_: Some("string".into()),
            enum_: Some(vec![
                k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSON(
                    serde_json::json!("Always"),
                ),
            ]),
            nullable: Some(true),
            ..Default::default()
        };
        normalize_schema(&mut node);
        assert_eq!(node.nullable, None);
    }
}
