//! Reads the protobuf bodies that typed clients send (`kubectl create namespace|configmap|
//! secret|serviceaccount|job`) and turns them into the JSON objects the rest of the server
//! works with.
//!
//! Only the kinds and fields listed in the tables below are known; other fields are skipped,
//! and zero values (empty strings, 0, false, empty messages) are left out as Go's JSON
//! `omitempty` would. Responses are always JSON, which those clients also accept.

use serde_json::{Map, Value, json};

/// The envelope's magic prefix.
const MAGIC: &[u8] = b"k8s\x00";

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
    /// metav1.Time: seconds and nanos, shown as RFC 3339.
    Time,
    Msg(Fields),
    RepStr,
    RepMsg(Fields),
    MapStr,
    /// map<string, bytes>, values shown as base64 like JSON does.
    MapBytes,
    /// map<string, resource.Quantity>, values as their string form.
    MapQuantity,
}

type Fields = &'static [(u32, &'static str, Kind)];

use Kind::*;

const OWNER_REFERENCE: Fields = &[
    (1, "kind", Str),
    (3, "name", Str),
    (4, "uid", Str),
    (5, "apiVersion", Str),
    (6, "controller", Bool),
    (7, "blockOwnerDeletion", Bool),
];

const OBJECT_META: Fields = &[
    (1, "name", Str),
    (2, "generateName", Str),
    (3, "namespace", Str),
    (5, "uid", Str),
    (6, "resourceVersion", Str),
    (7, "generation", Int),
    (8, "creationTimestamp", Time),
    (11, "labels", MapStr),
    (12, "annotations", MapStr),
    (13, "ownerReferences", RepMsg(OWNER_REFERENCE)),
    (14, "finalizers", RepStr),
];

const NAMESPACE: Fields = &[
    (1, "metadata", Msg(OBJECT_META)),
    (2, "spec", Msg(&[(1, "finalizers", RepStr)])),
];

const CONFIG_MAP: Fields = &[
    (1, "metadata", Msg(OBJECT_META)),
    (2, "data", MapStr),
    (3, "binaryData", MapBytes),
    (4, "immutable", Bool),
];

const SECRET: Fields = &[
    (1, "metadata", Msg(OBJECT_META)),
    (2, "data", MapBytes),
    (3, "type", Str),
    (4, "stringData", MapStr),
    (5, "immutable", Bool),
];

const NAME_ONLY: Fields = &[(1, "name", Str)];

const SERVICE_ACCOUNT: Fields = &[
    (1, "metadata", Msg(OBJECT_META)),
    (3, "imagePullSecrets", RepMsg(NAME_ONLY)),
    (4, "automountServiceAccountToken", Bool),
];

const ENV_VAR: Fields = &[(1, "name", Str), (2, "value", Str)];

const RESOURCES: Fields = &[(1, "limits", MapQuantity), (2, "requests", MapQuantity)];

const CONTAINER: Fields = &[
    (1, "name", Str),
    (2, "image", Str),
    (3, "command", RepStr),
    (4, "args", RepStr),
    (5, "workingDir", Str),
    (7, "env", RepMsg(ENV_VAR)),
    (8, "resources", Msg(RESOURCES)),
    (13, "terminationMessagePath", Str),
    (14, "imagePullPolicy", Str),
    (20, "terminationMessagePolicy", Str),
];

const POD_SPEC: Fields = &[
    (2, "containers", RepMsg(CONTAINER)),
    (3, "restartPolicy", Str),
    (4, "terminationGracePeriodSeconds", Int),
    (5, "activeDeadlineSeconds", Int),
    (6, "dnsPolicy", Str),
    (7, "nodeSelector", MapStr),
    (8, "serviceAccountName", Str),
    (20, "initContainers", RepMsg(CONTAINER)),
];

const POD_TEMPLATE: Fields = &[
    (1, "metadata", Msg(OBJECT_META)),
    (2, "spec", Msg(POD_SPEC)),
];

const JOB_SPEC: Fields = &[
    (1, "parallelism", Int),
    (2, "completions", Int),
    (3, "activeDeadlineSeconds", Int),
    (6, "template", Msg(POD_TEMPLATE)),
    (7, "backoffLimit", Int),
    (8, "ttlSecondsAfterFinished", Int),
    (9, "completionMode", Str),
    (10, "suspend", Bool),
];

const JOB: Fields = &[
    (1, "metadata", Msg(OBJECT_META)),
    (2, "spec", Msg(JOB_SPEC)),
];

const POD: Fields = &[
    (1, "metadata", Msg(OBJECT_META)),
    (2, "spec", Msg(POD_SPEC)),
];

const POLICY_RULE: Fields = &[
    (1, "verbs", RepStr),
    (2, "apiGroups", RepStr),
    (3, "resources", RepStr),
    (4, "resourceNames", RepStr),
    (5, "nonResourceURLs", RepStr),
];

const ROLE: Fields = &[
    (1, "metadata", Msg(OBJECT_META)),
    (2, "rules", RepMsg(POLICY_RULE)),
];

const CLUSTER_ROLE: Fields = &[
    (1, "metadata", Msg(OBJECT_META)),
    (2, "rules", RepMsg(POLICY_RULE)),
    (
        3,
        "aggregationRule",
        Msg(&[(
            1,
            "clusterRoleSelectors",
            RepMsg(&[(1, "matchLabels", MapStr)]),
        )]),
    ),
];

const ROLE_BINDING: Fields = &[
    (1, "metadata", Msg(OBJECT_META)),
    (
        2,
        "subjects",
        RepMsg(&[
            (1, "kind", Str),
            (2, "apiGroup", Str),
            (3, "name", Str),
            (4, "namespace", Str),
        ]),
    ),
    (
        3,
        "roleRef",
        Msg(&[(1, "apiGroup", Str), (2, "kind", Str), (3, "name", Str)]),
    ),
];

const RESOURCE_ATTRIBUTES: Fields = &[
    (1, "namespace", Str),
    (2, "verb", Str),
    (3, "group", Str),
    (4, "version", Str),
    (5, "resource", Str),
    (6, "subresource", Str),
    (7, "name", Str),
];

const NON_RESOURCE_ATTRIBUTES: Fields = &[(1, "path", Str), (2, "verb", Str)];

const TOKEN_REQUEST: Fields = &[
    (1, "metadata", Msg(OBJECT_META)),
    (
        2,
        "spec",
        Msg(&[
            (1, "audiences", RepStr),
            (
                3,
                "boundObjectRef",
                Msg(&[
                    (1, "kind", Str),
                    (2, "apiVersion", Str),
                    (3, "name", Str),
                    (4, "uid", Str),
                ]),
            ),
            (4, "expirationSeconds", Int),
        ]),
    ),
];

const TOKEN_REVIEW: Fields = &[
    (1, "metadata", Msg(OBJECT_META)),
    (
        2,
        "spec",
        Msg(&[(1, "token", Str), (2, "audiences", RepStr)]),
    ),
];

const SELF_SUBJECT_ACCESS_REVIEW: Fields = &[
    (1, "metadata", Msg(OBJECT_META)),
    (
        2,
        "spec",
        Msg(&[
            (1, "resourceAttributes", Msg(RESOURCE_ATTRIBUTES)),
            (2, "nonResourceAttributes", Msg(NON_RESOURCE_ATTRIBUTES)),
        ]),
    ),
];

const SUBJECT_ACCESS_REVIEW: Fields = &[
    (1, "metadata", Msg(OBJECT_META)),
    (
        2,
        "spec",
        Msg(&[
            (1, "resourceAttributes", Msg(RESOURCE_ATTRIBUTES)),
            (2, "nonResourceAttributes", Msg(NON_RESOURCE_ATTRIBUTES)),
            (3, "user", Str),
            (4, "groups", RepStr),
            (6, "uid", Str),
        ]),
    ),
];

/// The field table of a kind typed clients may send.
fn table(api_version: &str, kind: &str) -> Option<Fields> {
    Some(match (api_version, kind) {
        ("v1", "Namespace") => NAMESPACE,
        ("v1", "ConfigMap") => CONFIG_MAP,
        ("v1", "Secret") => SECRET,
        ("v1", "ServiceAccount") => SERVICE_ACCOUNT,
        ("v1", "Pod") => POD,
        ("batch/v1", "Job") => JOB,
        ("rbac.authorization.k8s.io/v1", "Role") => ROLE,
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => CLUSTER_ROLE,
        ("rbac.authorization.k8s.io/v1", "RoleBinding" | "ClusterRoleBinding") => ROLE_BINDING,
        ("authentication.k8s.io/v1", "TokenRequest") => TOKEN_REQUEST,
        ("authentication.k8s.io/v1", "TokenReview") => TOKEN_REVIEW,
        ("authentication.k8s.io/v1", "SelfSubjectReview") => &[(1, "metadata", Msg(OBJECT_META))],
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => SELF_SUBJECT_ACCESS_REVIEW,
        ("authorization.k8s.io/v1", "SubjectAccessReview") => SUBJECT_ACCESS_REVIEW,
        _ => return None,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
}

enum Wire<'a> {
    Varint(u64),
    Len(&'a [u8]),
    Skip,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.bytes.split_first()?;
            self.bytes = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    /// The next field number and value, `None` at the end.
    fn field(&mut self) -> Option<Result<(u32, Wire<'a>), ()>> {
        if self.bytes.is_empty() {
            return None;
        }
        Some(self.field_inner().ok_or(()))
    }

    fn field_inner(&mut self) -> Option<(u32, Wire<'a>)> {
        let key = self.varint()?;
        let number = u32::try_from(key >> 3).ok()?;
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                self.bytes = self.bytes.get(8..)?;
                Wire::Skip
            }
            2 => {
                let len = usize::try_from(self.varint()?).ok()?;
                let (value, rest) = self.bytes.split_at_checked(len)?;
                self.bytes = rest;
                Wire::Len(value)
            }
            5 => {
                self.bytes = self.bytes.get(4..)?;
                Wire::Skip
            }
            _ => return None,
        };
        Some((number, wire))
    }
}

fn fields_of(bytes: &[u8]) -> Result<Vec<(u32, Wire<'_>)>, String> {
    let mut reader = Reader { bytes };
    let mut out = Vec::new();
    while let Some(field) = reader.field() {
        out.push(field.map_err(|()| "malformed protobuf".to_string())?);
    }
    Ok(out)
}

fn text(bytes: &[u8]) -> Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| "invalid UTF-8 in protobuf string".to_string())
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A map entry's key and value bytes.
fn entry(bytes: &[u8]) -> Result<(String, &[u8]), String> {
    let mut key = String::new();
    let mut value: &[u8] = &[];
    for (number, wire) in fields_of(bytes)? {
        match (number, wire) {
            (1, Wire::Len(b)) => key = text(b)?,
            (2, Wire::Len(b)) => value = b,
            _ => {}
        }
    }
    Ok((key, value))
}

fn quantity(bytes: &[u8]) -> Result<String, String> {
    for (number, wire) in fields_of(bytes)? {
        if let (1, Wire::Len(b)) = (number, wire) {
            return text(b);
        }
    }
    Ok(String::new())
}

fn message(bytes: &[u8], table: Fields) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    for (number, wire) in fields_of(bytes)? {
        let Some(&(_, name, kind)) = table.iter().find(|(n, _, _)| *n == number) else {
            continue;
        };
        let value = match (kind, wire) {
            (Str, Wire::Len(b)) => Some(json!(text(b)?)).filter(|v| v != ""),
            (Int, Wire::Varint(v)) => Some(json!(v as i64)).filter(|v| v != 0),
            (Bool, Wire::Varint(v)) => Some(json!(v != 0)).filter(|v| v != false),
            (Time, Wire::Len(b)) => {
                let mut seconds = 0i64;
                for (n, w) in fields_of(b)? {
                    if let (1, Wire::Varint(v)) = (n, w) {
                        seconds = v as i64;
                    }
                }
                chrono::DateTime::from_timestamp(seconds, 0)
                    .filter(|_| seconds != 0)
                    .map(|t| json!(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)))
            }
            (Msg(fields), Wire::Len(b)) => {
                Some(Value::Object(message(b, fields)?)).filter(|v| v != &json!({}))
            }
            (RepStr, Wire::Len(b)) => {
                let list = out.entry(name).or_insert_with(|| json!([]));
                if let Some(list) = list.as_array_mut() {
                    list.push(json!(text(b)?));
                }
                None
            }
            (RepMsg(fields), Wire::Len(b)) => {
                let item = Value::Object(message(b, fields)?);
                let list = out.entry(name).or_insert_with(|| json!([]));
                if let Some(list) = list.as_array_mut() {
                    list.push(item);
                }
                None
            }
            (MapStr | MapBytes | MapQuantity, Wire::Len(b)) => {
                let (key, raw) = entry(b)?;
                let value = match kind {
                    MapStr => json!(text(raw)?),
                    MapBytes => json!(base64(raw)),
                    _ => json!(quantity(raw)?),
                };
                let map = out.entry(name).or_insert_with(|| json!({}));
                if let Some(map) = map.as_object_mut() {
                    map.insert(key, value);
                }
                None
            }
            _ => None,
        };
        if let Some(value) = value {
            out.insert(name.to_string(), value);
        }
    }
    Ok(out)
}

/// Decodes a `k8s\0`-prefixed protobuf body into a JSON object; `Err` names the problem
/// (unknown kind, malformed bytes).
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let envelope = body
        .strip_prefix(MAGIC)
        .ok_or("protobuf body without the k8s envelope")?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for (number, wire) in fields_of(envelope)? {
        match (number, wire) {
            (1, Wire::Len(b)) => {
                for (n, w) in fields_of(b)? {
                    match (n, w) {
                        (1, Wire::Len(v)) => api_version = text(v)?,
                        (2, Wire::Len(v)) => kind = text(v)?,
                        _ => {}
                    }
                }
            }
            (2, Wire::Len(b)) => raw = b,
            _ => {}
        }
    }
    let fields = table(&api_version, &kind)
        .ok_or_else(|| format!("protobuf bodies of {api_version} {kind} are not supported"))?;
    let mut object = message(raw, fields)?;
    object.insert("apiVersion".into(), json!(api_version));
    object.insert("kind".into(), json!(kind));
    Ok(Value::Object(object))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(number: u32, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![(number << 3 | 2) as u8, bytes.len() as u8];
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn decodes_a_config_map() {
        let meta = [field(1, b"settings"), field(3, b"team-a"), vec![7 << 3, 0]].concat();
        let entry = [field(1, b"mode"), field(2, b"fast")].concat();
        let raw = [
            field(1, &meta),
            field(2, &entry),
            field(3, &[field(1, b"b"), field(2, b"hi")].concat()),
        ]
        .concat();
        let type_meta = [field(1, b"v1"), field(2, b"ConfigMap")].concat();
        let body = [MAGIC.to_vec(), field(1, &type_meta), field(2, &raw)].concat();
        assert_eq!(
            decode(&body).unwrap(),
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "settings", "namespace": "team-a"},
                "data": {"mode": "fast"}, "binaryData": {"b": "aGk="}})
        );
        assert_eq!(base64(b"hello"), "aGVsbG8=");
    }
}
