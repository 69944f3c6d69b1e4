//! Styx workflow files as Charon Workflows (SPEC §15), for `charon import styx`.
//!
//! Pure: the caller reads the files and prints the result. Every field of a Styx workflow
//! either becomes part of the Workflow or comes back as a [`Note`], so a migration never loses
//! a setting without saying so. Every Workflow returned has passed
//! [`validate::workflow`](crate::validate::workflow) and the patterns of the CRD schema, so
//! `kubectl apply` and the operator accept it as printed.
//!
//! A file holds one workflow (a mapping), several YAML documents separated by `---`, a list of
//! workflows, or a mapping whose `schedules:` (or `workflows:`) key lists them, the layout of
//! Styx's local-files source.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::EnvVar;
use kube::Resource;
use serde::Deserialize;
use serde_json::{Map, Value as Json, json};
use serde_yaml::Value;

use crate::resources::{TriggerType, Workflow, WorkflowTemplate};
use crate::schedule::Kind;
use crate::validate::{self, FieldError, Policy};

/// What one Styx file became: its Workflows, and what in it Charon has no equivalent for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Import {
    /// The Workflows, in the order of the file.
    pub workflows: Vec<Workflow>,
    /// What was not carried over, or carried over differently, one per field.
    pub notes: Vec<Note>,
}

/// Something of a Styx file that the Workflow does not carry as Styx meant it: shown to the
/// user so nothing is dropped silently.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// The file, as the caller named it.
    pub file: String,
    /// Which workflow (`workflow "my-workflow"`), or `None` for the file as a whole.
    pub place: Option<String>,
    /// The Styx field, as the file spells it (`service_account`, `env.FOO`).
    pub field: String,
    /// What happened to it and what to do instead.
    pub message: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        located(f, &self.file, self.place.as_deref(), Some(&self.field))?;
        f.write_str(&self.message)
    }
}

/// Why a Styx file, or one workflow in it, could not be imported.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct StyxError {
    /// The file, as the caller named it.
    pub file: String,
    /// Which workflow (`workflow "my-workflow"`, or `document 2` before its id is known).
    pub place: Option<String>,
    /// The Styx field at fault (`schedule`, `secret.mount_path`), if it is one field.
    pub field: Option<String>,
    /// Why it was refused.
    pub reason: String,
}

impl fmt::Display for StyxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        located(f, &self.file, self.place.as_deref(), self.field.as_deref())?;
        f.write_str(&self.reason)
    }
}

fn located(
    f: &mut fmt::Formatter<'_>,
    file: &str,
    place: Option<&str>,
    field: Option<&str>,
) -> fmt::Result {
    write!(f, "{file}: ")?;
    if let Some(place) = place {
        write!(f, "{place}: ")?;
    }
    if let Some(field) = field {
        write!(f, "{field}: ")?;
    }
    Ok(())
}

/// Converts the Styx workflow file `file_name` (used only in messages) with content `text`.
/// `namespace` becomes every Workflow's `metadata.namespace`; `None` leaves it to `kubectl`.
/// A file is imported whole or not at all: the error lists every problem found in it.
pub fn import(
    file_name: &str,
    text: &str,
    namespace: Option<&str>,
) -> Result<Import, Vec<StyxError>> {
    let mut notes = Vec::new();
    let entries = entries(file_name, text, &mut notes).map_err(|e| vec![e])?;
    if entries.is_empty() {
        return Err(vec![StyxError {
            file: file_name.to_string(),
            place: None,
            field: None,
            reason: "no Styx workflow in the file (expected a mapping with id, docker_image and schedule)"
                .to_string(),
        }]);
    }
    let mut workflows = Vec::new();
    let mut errors = Vec::new();
    // Workflow name → the Styx id that took it, so two ids that sanitise alike are refused.
    let mut taken: BTreeMap<String, String> = BTreeMap::new();
    for (place, value) in entries {
        let mut converter = Converter {
            file: file_name,
            place,
            notes: Vec::new(),
            errors: Vec::new(),
        };
        let converted = converter.workflow(&value, namespace);
        notes.append(&mut converter.notes);
        if let Some((id, workflow)) = converted {
            let name = workflow.metadata.name.clone().unwrap_or_default();
            if let Some(other) = taken.get(&name) {
                converter.error(
                    "id",
                    format!(
                        "the Workflow name {name:?} is already that of workflow {other:?} in this file"
                    ),
                );
            } else {
                taken.insert(name, id);
                workflows.push(workflow);
            }
        }
        errors.append(&mut converter.errors);
    }
    if errors.is_empty() {
        Ok(Import { workflows, notes })
    } else {
        Err(errors)
    }
}

/// Imports several files as `charon import styx DIR` does: each on its own, so a bad file does
/// not keep the others out, and one check across them: a Workflow name taken by an earlier file
/// makes the later file fail, since applying both would keep only one.
pub fn import_files<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a str)>,
    namespace: Option<&str>,
) -> Vec<Result<Import, Vec<StyxError>>> {
    let mut taken: BTreeMap<String, String> = BTreeMap::new();
    files
        .into_iter()
        .map(|(file, text)| {
            let import = import(file, text, namespace)?;
            let clashes: Vec<StyxError> = import
                .workflows
                .iter()
                .filter_map(|w| {
                    let name = w.metadata.name.clone().unwrap_or_default();
                    taken.get(&name).map(|other| StyxError {
                        file: file.to_string(),
                        place: Some(format!("workflow {name:?}")),
                        field: Some("id".to_string()),
                        reason: format!(
                            "the Workflow name {name:?} is already that of a workflow in {other}"
                        ),
                    })
                })
                .collect();
            if !clashes.is_empty() {
                return Err(clashes);
            }
            for w in &import.workflows {
                taken.insert(
                    w.metadata.name.clone().unwrap_or_default(),
                    file.to_string(),
                );
            }
            Ok(import)
        })
        .collect()
}

/// The workflow mappings of a file, each with where it is (`None` when the file is one
/// workflow). Top-level keys beside a `schedules:` list are reported in `notes`.
fn entries(
    file: &str,
    text: &str,
    notes: &mut Vec<Note>,
) -> Result<Vec<(Option<String>, Value)>, StyxError> {
    let mut documents = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(document).map_err(|e| StyxError {
            file: file.to_string(),
            place: None,
            field: None,
            reason: format!("not valid YAML: {e}"),
        })?;
        if !value.is_null() {
            documents.push(value);
        }
    }
    let several = documents.len() > 1;
    let mut entries = Vec::new();
    for (i, document) in documents.into_iter().enumerate() {
        let document_place = several.then(|| format!("document {}", i + 1));
        let join = |inner: String| match &document_place {
            Some(outer) => format!("{outer}, {inner}"),
            None => inner,
        };
        let list_key = document.as_mapping().and_then(|m| {
            let has_id = m.contains_key("id");
            ["schedules", "workflows"]
                .into_iter()
                .find(|key| !has_id && m.get(*key).is_some_and(Value::is_sequence))
        });
        match (document, list_key) {
            (Value::Mapping(mapping), Some(key)) => {
                for (k, v) in &mapping {
                    let name = key_text(k);
                    if name == key {
                        let items = v.as_sequence().map(Vec::as_slice).unwrap_or_default();
                        for (j, item) in items.iter().enumerate() {
                            entries.push((Some(join(format!("{key}[{j}]"))), item.clone()));
                        }
                    } else {
                        notes.push(Note {
                            file: file.to_string(),
                            place: document_place.clone(),
                            field: name,
                            message: format!("not a Styx field beside {key}:, not imported"),
                        });
                    }
                }
            }
            (Value::Sequence(items), _) => {
                for (j, item) in items.into_iter().enumerate() {
                    entries.push((Some(join(format!("[{j}]"))), item));
                }
            }
            (other, _) => entries.push((document_place.clone(), other)),
        }
    }
    Ok(entries)
}

fn key_text(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .map(|s| s.trim_end().to_string())
            .unwrap_or_default(),
    }
}

/// What kind of YAML value something is, for error messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// The Styx fields Charon carries over; any other key is reported as not imported.
const KNOWN: &[&str] = &[
    "id",
    "schedule",
    "partitioning",
    "offset",
    "docker_image",
    "docker_args",
    "docker_termination_logging",
    "secret",
    "env",
    "commit_sha",
    "service_account",
    "running_timeout",
    "retry_condition",
    "resources",
    "requests",
    "limits",
    "flyte_exec_conf",
    "source",
    "deployment_source",
];

/// Where the mount path of Styx's service-account keys was.
const STYX_KEYS_PATH: &str = "/etc/styx-wf-sa-keys/";

/// Converts one workflow mapping, collecting notes and errors.
struct Converter<'a> {
    file: &'a str,
    place: Option<String>,
    notes: Vec<Note>,
    errors: Vec<StyxError>,
}

impl Converter<'_> {
    fn note(&mut self, field: &str, message: impl Into<String>) {
        self.notes.push(Note {
            file: self.file.to_string(),
            place: self.place.clone(),
            field: field.to_string(),
            message: message.into(),
        });
    }

    fn error(&mut self, field: &str, reason: impl Into<String>) {
        self.errors.push(StyxError {
            file: self.file.to_string(),
            place: self.place.clone(),
            field: Some(field.to_string()),
            reason: reason.into(),
        });
    }

    /// A scalar as text, as Styx's own reader coerces numbers and booleans; `None` (and an
    /// error) for anything else.
    fn text(&mut self, field: &str, value: &Value) -> Option<String> {
        match value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            other => {
                self.error(field, format!("expected a string, got {}", kind(other)));
                None
            }
        }
    }

    /// A required, non-empty string field.
    fn required(&mut self, map: &serde_yaml::Mapping, field: &str, what: &str) -> Option<String> {
        match map.get(field) {
            None | Some(Value::Null) => {
                self.error(field, format!("missing: {what}"));
                None
            }
            Some(value) => {
                let text = self.text(field, value)?;
                if text.trim().is_empty() {
                    self.error(field, "must not be empty");
                    return None;
                }
                Some(text)
            }
        }
    }

    /// Converts the mapping in `value`; `Some((styx id, workflow))` when it has no error.
    fn workflow(&mut self, value: &Value, namespace: Option<&str>) -> Option<(String, Workflow)> {
        let Some(map) = value.as_mapping() else {
            self.errors.push(StyxError {
                file: self.file.to_string(),
                place: self.place.clone(),
                field: None,
                reason: format!(
                    "expected a mapping of Styx workflow fields (id, docker_image, schedule, ...), got {}",
                    kind(value)
                ),
            });
            return None;
        };
        let id = self.required(map, "id", "every Styx workflow has an id");
        if let Some(id) = &id {
            self.place = Some(format!("workflow {id:?}"));
        }
        let name = id.as_deref().and_then(|id| self.name(id));

        let mut spec = Map::new();
        let mut template = Map::new();
        // Styx field of each env entry, to name it in validation errors.
        let mut env_fields: Vec<String> = Vec::new();
        let mut env: Vec<(String, String)> = Vec::new();

        let schedule_key = match (map.get("schedule"), map.get("partitioning")) {
            (Some(_), Some(_)) => {
                self.error(
                    "partitioning",
                    "the older name of schedule: give one of the two, not both",
                );
                "schedule"
            }
            (None, Some(_)) => "partitioning",
            _ => "schedule",
        };
        let schedule = self.required(
            map,
            schedule_key,
            "how often the workflow runs (hourly, daily, weekly, monthly, yearly or a cron expression)",
        );
        if let Some(schedule) = &schedule {
            spec.insert("schedule".into(), json!(canonical_schedule(schedule)));
        }
        if let Some(offset) = map.get("offset").filter(|v| !v.is_null())
            && let Some(offset) = self.duration("offset", offset, true)
        {
            spec.insert("offset".into(), json!(offset));
        }
        if let Some(timeout) = map.get("running_timeout").filter(|v| !v.is_null())
            && let Some(timeout) = self.duration("running_timeout", timeout, false)
        {
            spec.insert("runningTimeout".into(), json!(timeout));
        }
        spec.insert("styxCompatibleEnv".into(), json!(true));

        if let Some(image) = self.required(map, "docker_image", "the image every execution runs") {
            template.insert("image".into(), json!(image.trim()));
        }
        if let Some(args) = map.get("docker_args").filter(|v| !v.is_null()) {
            let args = self.args(args);
            if !args.is_empty() {
                template.insert("args".into(), json!(args));
            }
        }
        if let Some(value) = map.get("env").filter(|v| !v.is_null()) {
            self.env(value, &mut env, &mut env_fields);
        }
        if let Some(sha) = map.get("commit_sha").filter(|v| !v.is_null())
            && let Some(sha) = self.text("commit_sha", sha)
        {
            // Styx gave it to the container as STYX_COMMIT_SHA, which Charon does not set.
            if let Some(i) = env.iter().position(|(n, _)| n == "STYX_COMMIT_SHA") {
                self.note(
                    "env.STYX_COMMIT_SHA",
                    "replaced by commit_sha, which Styx set as STYX_COMMIT_SHA",
                );
                env.remove(i);
                env_fields.remove(i);
            }
            env.push(("STYX_COMMIT_SHA".to_string(), sha));
            env_fields.push("commit_sha".to_string());
        }
        if !env.is_empty() {
            let vars: Vec<Json> = env
                .iter()
                .map(|(name, value)| json!({"name": name, "value": value}))
                .collect();
            template.insert("env".into(), Json::Array(vars));
        }
        if let Some(secret) = map.get("secret").filter(|v| !v.is_null())
            && let Some(secret) = self.secret(secret)
        {
            template.insert("secret".into(), secret);
        }
        let mut resources = Map::new();
        for key in ["requests", "limits"] {
            if let Some(value) = map.get(key).filter(|v| !v.is_null())
                && let Some(amounts) = self.amounts(key, value)
            {
                resources.insert(key.into(), amounts);
            }
        }
        if !resources.is_empty() {
            template.insert("resources".into(), Json::Object(resources));
        }
        self.unsupported(map);
        // Stand-ins for a missing schedule, image or name, so that the rest is still validated
        // and every problem of the workflow is reported at once. Each is used only where an
        // error was recorded already, so a Workflow holding one is never returned.
        spec.entry("schedule").or_insert_with(|| json!("@daily"));
        template.entry("image").or_insert_with(|| json!("stand-in"));
        spec.insert("template".into(), Json::Object(template));
        let mut metadata = json!({"name": name.as_deref().unwrap_or("stand-in")});
        if let Some(namespace) = namespace {
            metadata["namespace"] = json!(namespace);
        }
        let manifest = json!({
            "apiVersion": Workflow::api_version(&()),
            "kind": Workflow::kind(&()),
            "metadata": metadata,
            "spec": spec,
        });
        let workflow: Workflow = match serde_json::from_value(manifest) {
            Ok(workflow) => workflow,
            Err(e) => {
                self.errors.push(StyxError {
                    file: self.file.to_string(),
                    place: self.place.clone(),
                    field: None,
                    reason: format!("cannot be written as a Workflow: {e}"),
                });
                return None;
            }
        };
        if let Err(problems) = validate::workflow(&workflow.spec, Policy::default()) {
            for FieldError { field, reason } in problems {
                let styx = styx_field(&field, schedule_key, &env_fields);
                // One word is a misspelt alias rather than a cron expression.
                let reason = match schedule.as_deref().map(str::trim) {
                    Some(word)
                        if field == "spec.schedule" && !word.contains(char::is_whitespace) =>
                    {
                        format!(
                            "unknown schedule {word:?}: expected hourly, daily, weekly, monthly, yearly or annually (with or without @, or plural), or a 5-field cron expression"
                        )
                    }
                    _ => reason,
                };
                self.error(&styx, reason);
            }
        }
        let (id, _) = (id?, name?);
        if !self.errors.is_empty() {
            return None;
        }
        Some((id, workflow))
    }

    /// The Workflow name for Styx `id`: a DNS-1123 label, with a note when it differs.
    fn name(&mut self, id: &str) -> Option<String> {
        let name = dns_label(id);
        if name.is_empty() {
            self.error(
                "id",
                format!(
                    "{id:?} has no letter or digit to name a Workflow with (a lower-case DNS-1123 label)"
                ),
            );
            return None;
        }
        if name != id {
            self.note(
                "id",
                format!(
                    "{id:?} is not a Kubernetes name: the Workflow is named {name:?}, which is also what STYX_WORKFLOW_ID holds"
                ),
            );
        }
        Some(name)
    }

    /// An ISO-8601 duration in the form the CRD schema accepts (upper-case designators, as
    /// Styx read them in any case).
    fn duration(&mut self, field: &str, value: &Value, signed: bool) -> Option<String> {
        let text = self.text(field, value)?.trim().to_ascii_uppercase();
        if iso_shape(&text, signed) {
            Some(text)
        } else {
            let examples = if signed {
                "PT1H, P1D, P1DT2H, -PT30M"
            } else {
                "PT30M, PT2H, P1DT12H"
            };
            self.error(
                field,
                format!("{text:?} is not an ISO-8601 duration (examples: {examples})"),
            );
            None
        }
    }

    /// `docker_args`: every element as text; an unquoted `{}` (a YAML mapping) is taken for
    /// the placeholder it was meant to be.
    fn args(&mut self, value: &Value) -> Vec<String> {
        let Some(items) = value.as_sequence() else {
            self.error(
                "docker_args",
                format!("expected a list of strings, got {}", kind(value)),
            );
            return Vec::new();
        };
        let mut args = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let field = format!("docker_args[{i}]");
            match item {
                Value::Mapping(m) if m.is_empty() => {
                    self.note(
                        &field,
                        "an unquoted {} is an empty YAML mapping, not a string; read as the '{}' placeholder (Styx needs it quoted)",
                    );
                    args.push("{}".to_string());
                }
                other => {
                    if let Some(text) = self.text(&field, other) {
                        args.push(text);
                    }
                }
            }
        }
        args
    }

    /// `env`: a mapping of names to values, in file order.
    fn env(&mut self, value: &Value, env: &mut Vec<(String, String)>, fields: &mut Vec<String>) {
        let Some(map) = value.as_mapping() else {
            self.error(
                "env",
                format!(
                    "expected a mapping of variable names to values, got {}",
                    kind(value)
                ),
            );
            return;
        };
        let reserved = reserved_env();
        for (key, value) in map {
            let name = key_text(key);
            let field = format!("env.{name}");
            let Some(value) = self.text(&field, value) else {
                continue;
            };
            if reserved.contains(&name) {
                self.note(
                    &field,
                    "Charon sets this variable itself for every execution, so this value is not seen",
                );
            }
            env.push((name, value));
            fields.push(field);
        }
    }

    /// `secret: {name, mount_path}`.
    fn secret(&mut self, value: &Value) -> Option<Json> {
        let Some(map) = value.as_mapping() else {
            self.error(
                "secret",
                format!(
                    "expected a mapping with name and mount_path, got {}",
                    kind(value)
                ),
            );
            return None;
        };
        let name = match map.get("name") {
            None | Some(Value::Null) => {
                self.error("secret.name", "missing: the name of the Kubernetes Secret");
                None
            }
            Some(v) => self.text("secret.name", v),
        };
        let mount_path = match map.get("mount_path") {
            None | Some(Value::Null) => {
                self.error(
                    "secret.mount_path",
                    "missing: where the Secret's keys appear in the container",
                );
                None
            }
            Some(v) => self.text("secret.mount_path", v),
        };
        for (key, _) in map {
            let key = key_text(key);
            if key != "name" && key != "mount_path" {
                self.note(
                    &format!("secret.{key}"),
                    "not a field of a Styx secret, not imported",
                );
            }
        }
        Some(json!({"name": name?, "mountPath": mount_path?}))
    }

    /// `requests` or `limits`: `{cpu, memory}` as Kubernetes quantities.
    fn amounts(&mut self, key: &str, value: &Value) -> Option<Json> {
        let Some(map) = value.as_mapping() else {
            self.error(
                key,
                format!(
                    "expected a mapping with cpu and memory, got {}",
                    kind(value)
                ),
            );
            return None;
        };
        let mut amounts = Map::new();
        for (resource, amount) in map {
            let resource = key_text(resource);
            let field = format!("{key}.{resource}");
            if resource != "cpu" && resource != "memory" {
                self.note(&field, "Styx knows only cpu and memory here; not imported");
                continue;
            }
            let Some(amount) = self.text(&field, amount) else {
                continue;
            };
            let amount = amount.trim().to_string();
            if is_quantity(&amount) {
                amounts.insert(resource, json!(amount));
            } else {
                self.error(
                    &field,
                    format!("{amount:?} is not a Kubernetes quantity (examples: 500m, 2, 1Gi)"),
                );
            }
        }
        (!amounts.is_empty()).then_some(Json::Object(amounts))
    }

    /// Notes for every field Charon has no equivalent for, and for keys Styx does not know.
    fn unsupported(&mut self, map: &serde_yaml::Mapping) {
        for (key, value) in map {
            let field = key_text(key);
            let shown =
                || serde_json::to_string(value).unwrap_or_else(|_| format!("<{}>", kind(value)));
            match field.as_str() {
                "service_account" if !value.is_null() => self.note(
                    &field,
                    format!(
                        "{} has no equivalent: Charon does not create, rotate or mount Google service account keys \
                         (Styx mounted them under {STYX_KEYS_PATH} and set GOOGLE_APPLICATION_CREDENTIALS); \
                         put a key in a Secret and mount it with secret, or set template.serviceAccountName to a \
                         Kubernetes service account (Workload Identity); STYX_SERVICE_ACCOUNT is that name, or empty",
                        shown()
                    ),
                ),
                "retry_condition" if !value.is_null() => self.note(
                    &field,
                    format!(
                        "{} has no equivalent: Charon retries by exit code and cost (spec.retry: maxCost, \
                         missingDependencyExitCode, fatalExitCodes), not by an expression",
                        shown()
                    ),
                ),
                "resources" => {
                    let empty = value.is_null() || value.as_sequence().is_some_and(Vec::is_empty);
                    if !empty {
                        self.note(
                            &field,
                            format!(
                                "{} has no equivalent: Styx resources are concurrency limits shared between \
                                 workflows; spec.concurrency limits one workflow's active instances",
                                shown()
                            ),
                        );
                    }
                }
                "docker_termination_logging" => match value {
                    Value::Bool(false) | Value::Null => {}
                    Value::Bool(true) => self.note(
                        &field,
                        "not needed: Charon reads the exit code from the container's status",
                    ),
                    other => self.error(
                        &field,
                        format!("expected true or false, got {}", kind(other)),
                    ),
                },
                "flyte_exec_conf" if !value.is_null() => self.note(
                    &field,
                    "has no equivalent: Charon runs containers (docker_image), not Flyte executions",
                ),
                "source" | "deployment_source" if !value.is_null() => self.note(
                    &field,
                    "deployment metadata, not kept: a Workflow does not record where it was deployed from",
                ),
                known if KNOWN.contains(&known) => {}
                _ => self.note(
                    &field,
                    "not a Styx workflow field Charon knows, not imported",
                ),
            }
        }
    }
}

/// The alias Styx used, written as Charon's canonical `@hourly` …; a cron expression as is.
fn canonical_schedule(schedule: &str) -> String {
    let trimmed = schedule.trim();
    match Kind::from_alias(trimmed) {
        Some(Kind::Hourly) => "@hourly".to_string(),
        Some(Kind::Daily) => "@daily".to_string(),
        Some(Kind::Weekly) => "@weekly".to_string(),
        Some(Kind::Monthly) => "@monthly".to_string(),
        Some(Kind::Yearly) => "@yearly".to_string(),
        Some(Kind::Cron) | None => trimmed.to_string(),
    }
}

/// `id` as a DNS-1123 label: lower-cased, other characters mapped to `-`, no `-` at either
/// end, at most 63 characters. Empty when nothing of it is a letter or digit.
fn dns_label(id: &str) -> String {
    let sanitized = crate::names::sanitize(id);
    let trimmed = sanitized.trim_matches('-');
    let mut label: String = trimmed.chars().take(63).collect();
    while label.ends_with('-') {
        label.pop();
    }
    label
}

/// The Styx field a validation error of the Workflow is about.
fn styx_field(charon: &str, schedule_key: &str, env_fields: &[String]) -> String {
    let indexed = |rest: &str| -> Option<usize> {
        rest.strip_prefix('[')
            .and_then(|r| r.split(']').next())
            .and_then(|i| i.parse().ok())
    };
    match charon {
        "spec.schedule" => schedule_key.to_string(),
        "spec.offset" => "offset".to_string(),
        "spec.runningTimeout" => "running_timeout".to_string(),
        "spec.template.image" => "docker_image".to_string(),
        "spec.template.secret.name" => "secret.name".to_string(),
        "spec.template.secret.mountPath" => "secret.mount_path".to_string(),
        _ => {
            if let Some(rest) = charon.strip_prefix("spec.template.env")
                && let Some(field) = indexed(rest).and_then(|i| env_fields.get(i))
            {
                return field.clone();
            }
            if let Some(rest) = charon.strip_prefix("spec.template.args")
                && let Some(i) = indexed(rest)
            {
                return format!("docker_args[{i}]");
            }
            charon.to_string()
        }
    }
}

/// The environment variables Charon sets on every execution of a Styx-compatible workflow,
/// taken from the Job renderer itself so the two lists cannot drift apart.
fn reserved_env() -> Vec<String> {
    let template = WorkflowTemplate::default();
    let snapshot = crate::job::snapshot(&template, "", None);
    let execution = crate::job::Execution {
        namespace: "",
        workflow: "",
        instance: "",
        instance_uid: "",
        parameter: "",
        logical_time: chrono::DateTime::UNIX_EPOCH,
        trigger_type: TriggerType::Natural,
        trigger_id: "",
        execution: 1,
        tries_before: 0,
        trigger_env: &[],
        running_timeout_seconds: None,
        styx_compatible_env: true,
        log_archive: false,
        launcher: crate::pipeline::Launcher::DEFAULT,
        resumable: false,
    };
    crate::job::environment(&template, &snapshot, &execution)
        .into_iter()
        .map(|EnvVar { name, .. }| name)
        .collect()
}

/// Whether `text` has the shape the CRD's duration patterns accept (`spec.offset` with
/// `signed`, `spec.runningTimeout` without): `P`, then any of `nY nM nW nD` in that order, then
/// optionally `T` and any of `nH nM nS` in that order (only seconds may have a fraction), at
/// least one component, and none missing after a `T`. Checked here because the API server,
/// not [`validate::workflow`], applies those patterns.
fn iso_shape(text: &str, signed: bool) -> bool {
    let body = if signed {
        text.strip_prefix(['-', '+']).unwrap_or(text)
    } else {
        text
    };
    let Some(body) = body.strip_prefix('P') else {
        return false;
    };
    let (date, time) = match body.split_once('T') {
        Some((date, time)) => (date, Some(time)),
        None => (body, None),
    };
    let Some(date_parts) = components(date, &['Y', 'M', 'W', 'D']) else {
        return false;
    };
    match time {
        None => date_parts > 0,
        Some(time) => components(time, &['H', 'M', 'S']).is_some_and(|n| n > 0),
    }
}

/// How many `<digits><designator>` components `text` is made of, with designators from
/// `order` in that order, each at most once; a fraction (`1.5S`) only before `S`. `None` when
/// it is not made of them.
fn components(text: &str, order: &[char]) -> Option<usize> {
    let mut rest = text;
    let mut next = 0;
    let mut count = 0;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return None;
        }
        let (_, after) = rest.split_at(digits);
        let mut after = after;
        let mut fraction = false;
        if let Some(f) = after.strip_prefix(['.', ',']) {
            let fraction_digits =
                f.len() - f.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            if fraction_digits == 0 {
                return None;
            }
            after = &f[fraction_digits..];
            fraction = true;
        }
        let designator = after.chars().next()?;
        let position = order[next..].iter().position(|d| *d == designator)? + next;
        if fraction && designator != 'S' {
            return None;
        }
        next = position + 1;
        count += 1;
        rest = &after[designator.len_utf8()..];
    }
    Some(count)
}

/// Whether `text` is a Kubernetes resource quantity: a signed decimal number and a suffix
/// (`Ki` … `Ei`, `m`, `k`, `M` … `E`, or an exponent `e3`).
fn is_quantity(text: &str) -> bool {
    let body = text.strip_prefix(['+', '-']).unwrap_or(text);
    let number_len = body.len()
        - body
            .trim_start_matches(|c: char| c.is_ascii_digit() || c == '.')
            .len();
    let (number, suffix) = body.split_at(number_len);
    let dots = number.matches('.').count();
    let number_ok = dots <= 1 && number.chars().any(|c| c.is_ascii_digit());
    let suffix_ok = matches!(
        suffix,
        "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" | "m" | "k" | "M" | "G" | "T" | "P" | "E"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .map(|e| e.strip_prefix(['+', '-']).unwrap_or(e))
        .is_some_and(|e| !e.is_empty() && e.chars().all(|c| c.is_ascii_digit()));
    number_ok && suffix_ok
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, TimeZone, Utc};
    use pretty_assertions::assert_eq;

    use super::*;
    use crate::schedule::{IsoDuration, Schedule};

    /// The workflow configuration example of the Styx README, verbatim.
    const README_EXAMPLE: &str = "id: my-workflow
docker_image: my-workflow:0.1
docker_args: ['./run.sh', '{}']
schedule: hourly
offset: PT1H
secret:
  name: my-secret
  mount_path: /etc/my-keys
service_account: [email protected]
";

    fn one(text: &str) -> (Workflow, Vec<String>) {
        let import = import("wf.yaml", text, None).unwrap_or_else(|errors| {
            panic!(
                "{}",
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        });
        assert_eq!(import.workflows.len(), 1, "{text}");
        let notes = import.notes.iter().map(ToString::to_string).collect();
        (import.workflows[0].clone(), notes)
    }

    fn errors(text: &str) -> Vec<String> {
        match import("wf.yaml", text, None) {
            Ok(import) => panic!("imported: {:?}", import.workflows),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    fn schedule_of(workflow: &Workflow) -> Schedule {
        validate::workflow(&workflow.spec, Policy::default())
            .expect("imported workflows are valid")
            .schedule
    }

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("test instant")
            .with_timezone(&Utc)
    }

    #[test]
    fn the_styx_readme_example_becomes_this_manifest() {
        let import = import("my-workflow.yaml", README_EXAMPLE, Some("data")).expect("imports");
        let yaml: Vec<String> = import
            .workflows
            .iter()
            .map(|w| serde_yaml::to_string(w).expect("yaml"))
            .collect();
        assert_eq!(
            yaml,
            ["\
apiVersion: charon.dev/v1alpha1
kind: Workflow
metadata:
  name: my-workflow
  namespace: data
spec:
  schedule: '@hourly'
  timeZone: UTC
  offset: PT1H
  suspend: false
  catchUp: All
  retry:
    maxCost: 50.0
    missingDependencyExitCode: 20
    fatalExitCodes:
    - 50
    infrastructureAttempts: 10
  history:
    ttl: P7D
    limit: 50
  styxCompatibleEnv: true
  template:
    image: my-workflow:0.1
    args:
    - ./run.sh
    - '{}'
    secret:
      name: my-secret
      mountPath: /etc/my-keys
"]
        );
        // The README's copy shows the address as `[email protected]`, which YAML reads as a
        // list; whatever its value, the field is reported.
        let notes: Vec<String> = import.notes.iter().map(ToString::to_string).collect();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].starts_with(
                "my-workflow.yaml: workflow \"my-workflow\": service_account: [\"email protected\"] has no equivalent: Charon does not create, rotate or mount Google service account keys"
            ),
            "{notes:?}"
        );
    }

    #[test]
    fn styx_schedule_aliases_keep_their_cron_and_default_offset() {
        // The alias table of the Styx README, plus the plural spellings and the upper case
        // Styx's own tools write; a cron expression stays one, even when it equals an alias.
        for (styx, schedule, cron, offset) in [
            ("'@hourly'", "@hourly", "0 * * * *", "PT1H"),
            ("hourly", "@hourly", "0 * * * *", "PT1H"),
            ("hours", "@hourly", "0 * * * *", "PT1H"),
            ("'@daily'", "@daily", "0 0 * * *", "P1D"),
            ("daily", "@daily", "0 0 * * *", "P1D"),
            ("DAYS", "@daily", "0 0 * * *", "P1D"),
            ("'@weekly'", "@weekly", "0 0 * * MON", "P1W"),
            ("weekly", "@weekly", "0 0 * * MON", "P1W"),
            ("weeks", "@weekly", "0 0 * * MON", "P1W"),
            ("'@monthly'", "@monthly", "0 0 1 * *", "P1M"),
            ("monthly", "@monthly", "0 0 1 * *", "P1M"),
            ("months", "@monthly", "0 0 1 * *", "P1M"),
            ("'@yearly'", "@yearly", "0 0 1 1 *", "P1Y"),
            ("yearly", "@yearly", "0 0 1 1 *", "P1Y"),
            ("'@annually'", "@yearly", "0 0 1 1 *", "P1Y"),
            ("annually", "@yearly", "0 0 1 1 *", "P1Y"),
            ("years", "@yearly", "0 0 1 1 *", "P1Y"),
            ("'0 * * * *'", "0 * * * *", "0 * * * *", "PT0S"),
            (
                "'30 4 * * MON-FRI'",
                "30 4 * * MON-FRI",
                "30 4 * * MON-FRI",
                "PT0S",
            ),
        ] {
            let (workflow, notes) =
                one(&format!("id: s\ndocker_image: busybox\nschedule: {styx}\n"));
            assert_eq!(workflow.spec.schedule, schedule, "{styx}");
            assert_eq!(workflow.spec.offset, None, "{styx}: the default is Styx's");
            let parsed = schedule_of(&workflow);
            assert_eq!(parsed.cron().expression(), cron, "{styx}");
            assert_eq!(
                *parsed.offset(),
                IsoDuration::parse(offset).expect("offset"),
                "{styx}"
            );
            assert!(notes.is_empty(), "{styx}: {notes:?}");
        }
    }

    #[test]
    fn the_readme_offset_example_triggers_when_styx_did() {
        // "a job needs to run daily at 2 AM but the partition argument needs to be midnight
        // ... At 2017-06-30T02 the execution for 2017-06-29 will be triggered."
        let (workflow, _) = one(
            "id: at-two\ndocker_image: busybox\ndocker_args: ['{}']\nschedule: '@daily'\noffset: P1DT2H\n",
        );
        assert_eq!(workflow.spec.offset.as_deref(), Some("P1DT2H"));
        let schedule = schedule_of(&workflow);
        let next = schedule
            .first_due_after(utc("2017-06-30T01:59:59Z"))
            .expect("a partition");
        assert_eq!(next, utc("2017-06-29T00:00:00Z"));
        assert_eq!(schedule.trigger_at(next), Some(utc("2017-06-30T02:00:00Z")));
        assert_eq!(schedule.parameter(next), "2017-06-29");

        // The hourly example: the placeholder is the logical hour, run one hour later.
        let (hourly, _) = one(README_EXAMPLE);
        let schedule = schedule_of(&hourly);
        let t = Utc
            .with_ymd_and_hms(2016, 4, 1, 14, 0, 0)
            .single()
            .expect("instant");
        assert_eq!(schedule.trigger_at(t), Some(utc("2016-04-01T15:00:00Z")));
        assert_eq!(schedule.parameter(t), "2016-04-01T14");
    }

    #[test]
    fn the_placeholder_becomes_the_readme_example_arguments() {
        // "Example arguments for the supported schedule values: hourly - 2016-04-01T14,
        // 2016-04-01T15, ... daily - 2016-04-01, 2016-04-02, ... weekly - 2016-04-04,
        // 2016-04-11, ... (Mondays)"
        for (schedule, from, expected) in [
            (
                "hourly",
                "2016-04-01T13:59:00Z",
                ["2016-04-01T14", "2016-04-01T15"],
            ),
            (
                "daily",
                "2016-03-31T23:59:00Z",
                ["2016-04-01", "2016-04-02"],
            ),
            (
                "weekly",
                "2016-04-01T00:00:00Z",
                ["2016-04-04", "2016-04-11"],
            ),
        ] {
            let (workflow, _) = one(&format!(
                "id: args\ndocker_image: my-workflow:0.1\ndocker_args: ['./run.sh', '{{}}', '--date={{}}']\nschedule: {schedule}\n"
            ));
            let parsed = schedule_of(&workflow);
            let parameters: Vec<String> = parsed
                .partitions_after(utc(from))
                .take(2)
                .map(|p| parsed.parameter(p))
                .collect();
            assert_eq!(parameters, expected, "{schedule}");
            for parameter in &parameters {
                // Only an argument that is exactly {} is replaced, in Styx and in Charon.
                let snapshot = crate::job::snapshot(&workflow.spec.template, parameter, None);
                assert_eq!(snapshot.args, ["./run.sh", parameter, "--date={}"]);
            }
        }
    }

    #[test]
    fn env_secret_timeout_commit_and_amounts_are_carried_over() {
        let (workflow, notes) = one("id: full
docker_image: eu.gcr.io/project/job:1.2
docker_args: [--days, 3, --dry-run, false]
schedule: '0 */6 * * *'
offset: -pt30m
running_timeout: pt2h
commit_sha: 0123abc
env: {OUTPUT: 's3://bucket/out', RETRIES: 3}
secret: {name: job-keys, mount_path: /etc/job-keys}
requests: {cpu: 500m, memory: 1Gi}
limits: {memory: 2Gi}
docker_termination_logging: false
resources: []
");
        assert!(notes.is_empty(), "{notes:?}");
        let spec = &workflow.spec;
        assert_eq!(spec.offset.as_deref(), Some("-PT30M"));
        assert_eq!(spec.running_timeout.as_deref(), Some("PT2H"));
        assert!(spec.styx_compatible_env);
        assert_eq!(spec.time_zone, "UTC");
        let template = &spec.template;
        assert_eq!(template.image, "eu.gcr.io/project/job:1.2");
        assert_eq!(template.args, ["--days", "3", "--dry-run", "false"]);
        assert!(
            template.command.is_empty(),
            "Styx passes docker_args as args"
        );
        let env: Vec<(&str, Option<&str>)> = template
            .env
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_deref()))
            .collect();
        assert_eq!(
            env,
            [
                ("OUTPUT", Some("s3://bucket/out")),
                ("RETRIES", Some("3")),
                ("STYX_COMMIT_SHA", Some("0123abc")),
            ]
        );
        let secret = template.secret.as_ref().expect("secret");
        assert_eq!(
            (secret.name.as_str(), secret.mount_path.as_str()),
            ("job-keys", "/etc/job-keys")
        );
        let resources = serde_json::to_value(&template.resources).expect("json");
        assert_eq!(
            resources,
            json!({"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}})
        );
    }

    #[test]
    fn what_has_no_equivalent_is_a_note_naming_file_workflow_and_field() {
        let base = "docker_image: busybox\nschedule: daily\n";
        let place = "wf.yaml: workflow \"n\": ";
        for (extra, expected) in [
            (
                "service_account: wf@project.iam.gserviceaccount.com\n",
                format!(
                    "{place}service_account: \"wf@project.iam.gserviceaccount.com\" has no equivalent"
                ),
            ),
            (
                "retry_condition: '#tries < 3'\n",
                format!("{place}retry_condition: \"#tries < 3\" has no equivalent"),
            ),
            (
                "resources: [bigquery, gpu]\n",
                format!("{place}resources: [\"bigquery\",\"gpu\"] has no equivalent"),
            ),
            (
                "docker_termination_logging: true\n",
                format!("{place}docker_termination_logging: not needed"),
            ),
            (
                "flyte_exec_conf: {reference_id: {}}\n",
                format!("{place}flyte_exec_conf: has no equivalent"),
            ),
            (
                "source: {type: git}\n",
                format!("{place}source: deployment metadata, not kept"),
            ),
            (
                "colour: blue\n",
                format!("{place}colour: not a Styx workflow field Charon knows, not imported"),
            ),
            (
                "env: {STYX_PARAMETER: x}\n",
                format!("{place}env.STYX_PARAMETER: Charon sets this variable itself"),
            ),
            (
                "env: {CHARON_WORKFLOW: x}\n",
                format!("{place}env.CHARON_WORKFLOW: Charon sets this variable itself"),
            ),
            (
                "docker_args: [echo, {}]\n",
                format!("{place}docker_args[1]: an unquoted {{}} is an empty YAML mapping"),
            ),
            (
                "secret: {name: s, mount_path: /etc/s, mode: 0400}\n",
                format!("{place}secret.mode: not a field of a Styx secret, not imported"),
            ),
            (
                "requests: {cpu: 1, gpu: 1}\n",
                format!("{place}requests.gpu: Styx knows only cpu and memory here"),
            ),
            (
                "commit_sha: abc\nenv: {STYX_COMMIT_SHA: def}\n",
                format!("{place}env.STYX_COMMIT_SHA: replaced by commit_sha"),
            ),
        ] {
            let (workflow, notes) = one(&format!("id: n\n{base}{extra}"));
            assert_eq!(notes.len(), 1, "{extra}: {notes:?}");
            assert!(notes[0].starts_with(&expected), "{extra}: {notes:?}");
            assert_eq!(workflow.metadata.name.as_deref(), Some("n"));
        }
        // The unquoted placeholder is still the placeholder.
        let (workflow, _) = one(&format!("id: n\n{base}docker_args: [echo, {{}}]\n"));
        assert_eq!(workflow.spec.template.args, ["echo", "{}"]);
    }

    #[test]
    fn ids_become_dns_labels_and_say_so() {
        for (id, name) in [
            ("my-workflow", "my-workflow"),
            ("My_Workflow.v2", "my-workflow-v2"),
            ("_tmp_", "tmp"),
            ("2016-report", "2016-report"),
            (&"x".repeat(70), &"x".repeat(63)),
        ] {
            let (workflow, notes) = one(&format!(
                "id: '{id}'\ndocker_image: busybox\nschedule: daily\n"
            ));
            assert_eq!(workflow.metadata.name.as_deref(), Some(name), "{id}");
            assert!(crate::names::is_dns_label(name));
            if id == name {
                assert!(notes.is_empty(), "{notes:?}");
            } else {
                assert_eq!(
                    notes,
                    [format!(
                        "wf.yaml: workflow {id:?}: id: {id:?} is not a Kubernetes name: the Workflow is named {name:?}, which is also what STYX_WORKFLOW_ID holds"
                    )]
                );
            }
        }
    }

    #[test]
    fn bad_input_is_an_error_naming_the_file_and_the_field() {
        let ok = "id: w\ndocker_image: busybox\nschedule: daily\n";
        let place = "wf.yaml: workflow \"w\": ";
        for (text, expected) in [
            ("id: [\n".to_string(), "wf.yaml: not valid YAML: ".to_string()),
            (
                "just some text\n".to_string(),
                "wf.yaml: expected a mapping of Styx workflow fields (id, docker_image, schedule, ...), got a string".to_string(),
            ),
            ("\n# nothing\n".to_string(), "wf.yaml: no Styx workflow in the file".to_string()),
            (
                "docker_image: busybox\nschedule: daily\n".to_string(),
                "wf.yaml: id: missing: every Styx workflow has an id".to_string(),
            ),
            (
                "id: w\nschedule: daily\n".to_string(),
                format!("{place}docker_image: missing: the image every execution runs"),
            ),
            (
                "id: w\ndocker_image: busybox\n".to_string(),
                format!("{place}schedule: missing: how often the workflow runs"),
            ),
            (
                "id: w\ndocker_image: busybox\nschedule: '@fortnightly'\n".to_string(),
                format!("{place}schedule: unknown schedule \"@fortnightly\": expected hourly, daily, weekly, monthly, yearly or annually"),
            ),
            (
                "id: w\ndocker_image: busybox\nschedule: fortnightly\n".to_string(),
                format!("{place}schedule: unknown schedule \"fortnightly\""),
            ),
            (
                "id: w\ndocker_image: busybox\nschedule: '0 0 * *'\n".to_string(),
                format!("{place}schedule: expected 5 fields, got 4"),
            ),
            (
                "id: w\ndocker_image: busybox\nschedule: '0 0 * * * *'\n".to_string(),
                format!("{place}schedule: expected 5 fields, got 6"),
            ),
            (
                "id: w\ndocker_image: busybox\npartitioning: '61 * * * *'\n".to_string(),
                format!("{place}partitioning: minute field"),
            ),
            (
                format!("{ok}offset: 1h\n"),
                format!("{place}offset: \"1H\" is not an ISO-8601 duration"),
            ),
            (
                format!("{ok}offset: P1000000Y\n"),
                format!("{place}offset: P1000000Y is outside the supported range"),
            ),
            (
                format!("{ok}running_timeout: -PT1H\n"),
                format!("{place}running_timeout: \"-PT1H\" is not an ISO-8601 duration"),
            ),
            (
                format!("{ok}running_timeout: PT0S\n"),
                format!("{place}running_timeout: must be a positive duration"),
            ),
            (
                format!("{ok}docker_args: ./run.sh {{}}\n"),
                format!("{place}docker_args: expected a list of strings, got a string"),
            ),
            (
                format!("{ok}docker_args: [a, ~]\n"),
                format!("{place}docker_args[1]: expected a string, got null"),
            ),
            (
                format!("{ok}secret: {{name: s}}\n"),
                format!("{place}secret.mount_path: missing"),
            ),
            (
                format!("{ok}secret: {{name: s, mount_path: etc/keys}}\n"),
                format!("{place}secret.mount_path: \"etc/keys\" must be an absolute path"),
            ),
            (
                format!("{ok}env: {{1ST: x}}\n"),
                format!("{place}env.1ST: \"1ST\" is not a valid environment variable name"),
            ),
            (
                format!("{ok}env: [A=1]\n"),
                format!("{place}env: expected a mapping of variable names to values, got a list"),
            ),
            (
                format!("{ok}requests: {{cpu: lots}}\n"),
                format!("{place}requests.cpu: \"lots\" is not a Kubernetes quantity"),
            ),
            (
                format!("{ok}docker_termination_logging: sometimes\n"),
                format!("{place}docker_termination_logging: expected true or false"),
            ),
            (
                "id: w\ndocker_image: my image\nschedule: daily\n".to_string(),
                format!("{place}docker_image: \"my image\" is not an image reference"),
            ),
            (
                "id: ___\ndocker_image: busybox\nschedule: daily\n".to_string(),
                "wf.yaml: workflow \"___\": id: \"___\" has no letter or digit".to_string(),
            ),
            (
                "id: w\ndocker_image: busybox\nschedule: daily\npartitioning: days\n".to_string(),
                format!("{place}partitioning: the older name of schedule"),
            ),
        ] {
            let errors = errors(&text);
            assert!(
                errors.iter().any(|e| e.starts_with(&expected)),
                "{text:?}: expected {expected:?}, got {errors:?}"
            );
        }
        // Every problem of a file is reported, not only the first.
        let errors = errors("id: w\nschedule: '@fortnightly'\nsecret: {}\n");
        assert_eq!(errors.len(), 4, "{errors:?}");
    }

    #[test]
    fn a_file_may_hold_several_workflows() {
        // Documents separated by ---, as Styx's own command-line tool reads them.
        let documents = "id: foo\nschedule: DAYS\ndocker_image: busybox\ndocker_args: [echo, foo]\n---\nid: bar\nschedule: DAYS\ndocker_image: busybox\ndocker_args: [echo, bar]\n";
        // The local-files layout: a schedules: list, with the older partitioning key.
        let schedules = "schedules:\n  - id: foo\n    partitioning: hours\n    docker_image: busybox\n    docker_args: [foo, bar]\n\n  - id: bar\n    partitioning: days\n    docker_image: busybox\n    docker_args: [baz, bax]\nowner: team\n";
        let list = "- {id: foo, schedule: hourly, docker_image: busybox}\n- {id: bar, schedule: daily, docker_image: busybox}\n";
        for (text, schedules, notes) in [
            (documents, ["@daily", "@daily"], vec![]),
            (
                schedules,
                ["@hourly", "@daily"],
                vec![
                    "wf.yaml: owner: not a Styx field beside schedules:, not imported".to_string(),
                ],
            ),
            (list, ["@hourly", "@daily"], vec![]),
        ] {
            let import = import("wf.yaml", text, Some("data")).expect("imports");
            let got: Vec<(&str, &str, &str)> = import
                .workflows
                .iter()
                .map(|w| {
                    (
                        w.metadata.name.as_deref().unwrap_or_default(),
                        w.metadata.namespace.as_deref().unwrap_or_default(),
                        w.spec.schedule.as_str(),
                    )
                })
                .collect();
            assert_eq!(
                got,
                [("foo", "data", schedules[0]), ("bar", "data", schedules[1])]
            );
            let shown: Vec<String> = import.notes.iter().map(ToString::to_string).collect();
            assert_eq!(shown, notes);
        }
        // A bad workflow is named by its place when it has no id yet.
        let second = errors(
            "id: a\nschedule: daily\ndocker_image: busybox\n---\nschedule: daily\ndocker_image: busybox\n",
        );
        assert_eq!(
            second,
            ["wf.yaml: document 2: id: missing: every Styx workflow has an id"]
        );
        let listed = errors("schedules:\n  - {schedule: daily}\n");
        assert!(
            listed[0].starts_with("wf.yaml: schedules[0]: id: missing"),
            "{listed:?}"
        );
    }

    #[test]
    fn two_workflows_may_not_get_one_name() {
        let errors = errors(
            "id: my_job\nschedule: daily\ndocker_image: busybox\n---\nid: my-job\nschedule: daily\ndocker_image: busybox\n",
        );
        assert_eq!(
            errors,
            [
                "wf.yaml: workflow \"my-job\": id: the Workflow name \"my-job\" is already that of workflow \"my_job\" in this file"
            ]
        );
        let a = "id: a\nschedule: daily\ndocker_image: busybox\n";
        let results = import_files(
            [
                ("one.yaml", a),
                ("bad.yaml", "id: [\n"),
                ("two.yaml", a),
                (
                    "three.yaml",
                    "id: b\nschedule: daily\ndocker_image: busybox\n",
                ),
            ],
            None,
        );
        let summary: Vec<Result<usize, String>> = results
            .iter()
            .map(|r| match r {
                Ok(import) => Ok(import.workflows.len()),
                Err(errors) => Err(errors[0].to_string()),
            })
            .collect();
        assert!(
            summary[1]
                .as_ref()
                .is_err_and(|e| e.starts_with("bad.yaml: not valid YAML"))
        );
        assert_eq!(summary[0], Ok(1));
        assert_eq!(
            summary[2],
            Err("two.yaml: workflow \"a\": id: the Workflow name \"a\" is already that of a workflow in one.yaml".to_string())
        );
        assert_eq!(summary[3], Ok(1));
    }

    #[test]
    fn printed_manifests_read_back_as_the_same_workflow() {
        let text = format!("{README_EXAMPLE}env: {{A: '1'}}\nrunning_timeout: PT1H\n");
        let (workflow, _) = one(&text);
        let yaml = serde_yaml::to_string(&workflow).expect("yaml");
        assert!(!yaml.contains("status"), "{yaml}");
        let back: Workflow = serde_yaml::from_str(&yaml).expect("reads back");
        assert_eq!(back, workflow);
    }

    #[test]
    fn durations_have_the_shape_of_the_crd_pattern() {
        for (text, signed, ok) in [
            ("PT1H", false, true),
            ("P1D", false, true),
            ("P1DT2H", false, true),
            ("P1Y2M3W4DT5H6M7.5S", false, true),
            ("PT0,5S", false, true),
            ("P1W", false, true),
            ("-PT30M", true, true),
            ("+P1D", true, true),
            ("-PT30M", false, false),
            ("P", false, false),
            ("PT", false, false),
            ("P1DT", false, false),
            ("P1.5D", false, false),
            ("PT1.5H", false, false),
            ("P1D1Y", false, false),
            ("P1M1M", false, false),
            ("PT1H1H", false, false),
            ("P0001-02-03", false, false),
            ("1H", false, false),
            ("PT1H ", false, false),
            ("", false, false),
        ] {
            assert_eq!(iso_shape(text, signed), ok, "{text:?} signed={signed}");
        }
    }

    #[test]
    fn quantities() {
        for (text, ok) in [
            ("500m", true),
            ("2", true),
            ("1.5", true),
            (".5", true),
            ("1Gi", true),
            ("128974848", true),
            ("129e6", true),
            ("1E", true),
            ("lots", false),
            ("1 Gi", false),
            ("1gb", false),
            ("", false),
            ("1.2.3", false),
        ] {
            assert_eq!(is_quantity(text), ok, "{text:?}");
        }
    }
}
