//! The kinds the server serves: built-in ones and those registered by CustomResourceDefinitions.

use serde_json::{Value, json};

/// One served resource type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceType {
    /// API group ("" for core).
    pub group: String,
    /// Version, e.g. v1.
    pub version: String,
    /// Kind, e.g. ConfigMap.
    pub kind: String,
    /// Plural resource name, e.g. configmaps.
    pub plural: String,
    /// Singular name.
    pub singular: String,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Short names for kubectl.
    pub short_names: Vec<String>,
    /// Categories (`kubectl get all`, `kubectl get charon`).
    pub categories: Vec<String>,
    /// Whether `/status` is a separate subresource (spec and status writes kept apart).
    pub status_subresource: bool,
}

impl ResourceType {
    fn builtin(
        group: &str,
        version: &str,
        kind: &str,
        plural: &str,
        namespaced: bool,
        status: bool,
    ) -> Self {
        ResourceType {
            group: group.to_string(),
            version: version.to_string(),
            kind: kind.to_string(),
            plural: plural.to_string(),
            singular: kind.to_lowercase(),
            namespaced,
            short_names: Vec::new(),
            categories: Vec::new(),
            status_subresource: status,
        }
    }

    fn with_short(mut self, short: &[&str]) -> Self {
        self.short_names = short.iter().map(|s| s.to_string()).collect();
        self
    }

    fn with_categories(mut self, categories: &[&str]) -> Self {
        self.categories = categories.iter().map(|s| s.to_string()).collect();
        self
    }

    /// `apiVersion` of its objects.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural` or `plural.group`, as error messages name the resource.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Its entry in an APIResourceList.
    pub fn discovery(&self) -> Value {
        let mut verbs = vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ];
        verbs.sort_unstable();
        json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": verbs,
            "shortNames": self.short_names,
            "categories": self.categories,
        })
    }
}

/// The built-in kinds.
pub fn builtins() -> Vec<ResourceType> {
    vec![
        ResourceType::builtin("", "v1", "Namespace", "namespaces", false, true).with_short(&["ns"]),
        ResourceType::builtin("", "v1", "ConfigMap", "configmaps", true, false).with_short(&["cm"]),
        ResourceType::builtin("", "v1", "Secret", "secrets", true, false),
        ResourceType::builtin("", "v1", "ServiceAccount", "serviceaccounts", true, false)
            .with_short(&["sa"]),
        ResourceType::builtin("", "v1", "Event", "events", true, false).with_short(&["ev"]),
        ResourceType::builtin("", "v1", "Pod", "pods", true, true)
            .with_short(&["po"])
            .with_categories(&["all"]),
        ResourceType::builtin("events.k8s.io", "v1", "Event", "events", true, false)
            .with_short(&["ev"]),
        ResourceType::builtin("coordination.k8s.io", "v1", "Lease", "leases", true, false),
        // Storage, with a local-path provisioner behind it (`storage.rs`).
        ResourceType::builtin(
            "",
            "v1",
            "PersistentVolumeClaim",
            "persistentvolumeclaims",
            true,
            true,
        )
        .with_short(&["pvc"]),
        ResourceType::builtin(
            "",
            "v1",
            "PersistentVolume",
            "persistentvolumes",
            false,
            true,
        )
        .with_short(&["pv"]),
        ResourceType::builtin(
            "storage.k8s.io",
            "v1",
            "StorageClass",
            "storageclasses",
            false,
            false,
        )
        .with_short(&["sc"]),
        ResourceType::builtin("batch", "v1", "Job", "jobs", true, true).with_categories(&["all"]),
        // What the Helm chart installs (`kubectl apply --dry-run=server` of it works); stored
        // and validated (`workloads.rs`), with no controllers behind them.
        ResourceType::builtin("apps", "v1", "Deployment", "deployments", true, true)
            .with_short(&["deploy"])
            .with_categories(&["all"]),
        ResourceType::builtin("", "v1", "Service", "services", true, true)
            .with_short(&["svc"])
            .with_categories(&["all"]),
        ResourceType::builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRole",
            "clusterroles",
            false,
            false,
        ),
        ResourceType::builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRoleBinding",
            "clusterrolebindings",
            false,
            false,
        ),
        ResourceType::builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "Role",
            "roles",
            true,
            false,
        ),
        ResourceType::builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "RoleBinding",
            "rolebindings",
            true,
            false,
        ),
        ResourceType::builtin(
            "policy",
            "v1",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
            true,
            true,
        )
        .with_short(&["pdb"]),
        ResourceType::builtin(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            false,
            true,
        )
        .with_short(&["crd", "crds"]),
    ]
}

/// Whether `t` is one of the built-in kinds (rather than served by a CRD).
pub fn is_builtin(t: &ResourceType) -> bool {
    builtins()
        .iter()
        .any(|b| b.group == t.group && b.version == t.version && b.plural == t.plural)
}

/// The resource types a CustomResourceDefinition serves (one per served version).
pub fn from_crd(crd: &Value) -> Result<Vec<ResourceType>, String> {
    let spec = crd.get("spec").ok_or("spec: Required value")?;
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
    let group = text(spec, "group").ok_or("spec.group: Required value")?;
    let names = spec.get("names").ok_or("spec.names: Required value")?;
    let plural = text(names, "plural").ok_or("spec.names.plural: Required value")?;
    let kind = text(names, "kind").ok_or("spec.names.kind: Required value")?;
    let singular = text(names, "singular").unwrap_or_else(|| kind.to_lowercase());
    let strings = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect()
    };
    let namespaced = text(spec, "scope").as_deref() != Some("Cluster");
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .filter(|v| !v.is_empty())
        .ok_or("spec.versions: Required value")?;
    Ok(versions
        .iter()
        .filter(|v| v.get("served").and_then(Value::as_bool).unwrap_or(false))
        .filter_map(|v| {
            Some(ResourceType {
                group: group.clone(),
                version: text(v, "name")?,
                kind: kind.clone(),
                plural: plural.clone(),
                singular: singular.clone(),
                namespaced,
                short_names: strings(names.get("shortNames")),
                categories: strings(names.get("categories")),
                status_subresource: v.pointer("/subresources/status").is_some(),
            })
        })
        .collect())
}
