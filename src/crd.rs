//! CustomResourceDefinitions generated from the Rust types (`charon crds`); the checked-in
//! copies under `crds/` are compared with these by a test.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::resources::{Backfill, Workflow, WorkflowInstance};

/// The CRDs of every Charon kind, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![Workflow::crd(), WorkflowInstance::crd(), Backfill::crd()]
}

/// One CRD as YAML.
pub fn to_yaml(crd: &CustomResourceDefinition) -> anyhow::Result<String> {
    Ok(serde_yaml::to_string(crd)?)
}

/// `(file name, YAML)` per CRD: `<plural>.<group>.yaml`, as checked in under `crds/`.
pub fn files() -> anyhow::Result<Vec<(String, String)>> {
    crds()
        .iter()
        .map(|crd| Ok((format!("{}.yaml", crd_name(crd)), to_yaml(crd)?)))
        .collect()
}

/// Every CRD as one multi-document YAML stream.
pub fn all_yaml() -> anyhow::Result<String> {
    let docs: Vec<String> = files()?.into_iter().map(|(_, yaml)| yaml).collect();
    Ok(docs
        .iter()
        .map(|doc| format!("---\n{doc}"))
        .collect::<String>())
}

fn crd_name(crd: &CustomResourceDefinition) -> String {
    crd.metadata.name.clone().unwrap_or_default()
}
