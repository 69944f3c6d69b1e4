//! Authentication and RBAC authorization, as the real server does them: the configured
//! admin token (or, without one, every request) is `system:masters`; ServiceAccount tokens
//! come from the TokenRequest subresource (`kubectl create token`) and are authorised by the
//! Roles, ClusterRoles and bindings stored here. The same evaluation answers TokenReview,
//! SubjectAccessReview and SelfSubjectAccessReview, so a client that reviews tokens and
//! access (a web UI, say) is tested against real RBAC objects.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::{HeaderMap, header};
use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::selector::Selector;
use crate::store::Store;

/// The username of the admin token: what kubeadm's admin kubeconfig is.
pub const ADMIN: &str = "kubernetes-admin";
/// The group that passes every authorization check.
pub const MASTERS: &str = "system:masters";
/// The group of every authenticated user.
pub const AUTHENTICATED: &str = "system:authenticated";
/// The shortest token a TokenRequest may ask for, as the real server's validation says.
const MIN_TOKEN_SECONDS: i64 = 600;
/// A TokenRequest's default lifetime.
const DEFAULT_TOKEN_SECONDS: i64 = 3600;

/// A user a request was authenticated as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// The username.
    pub name: String,
    /// Its uid (a ServiceAccount's uid).
    pub uid: String,
    /// Its groups.
    pub groups: Vec<String>,
}

impl User {
    fn admin() -> User {
        User {
            name: ADMIN.into(),
            uid: String::new(),
            groups: vec![MASTERS.into(), AUTHENTICATED.into()],
        }
    }

    fn service_account(namespace: &str, name: &str, uid: &str) -> User {
        User {
            name: format!("system:serviceaccount:{namespace}:{name}"),
            uid: uid.into(),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                AUTHENTICATED.into(),
            ],
        }
    }

    fn json(&self) -> Value {
        json!({"username": self.name, "uid": self.uid, "groups": self.groups})
    }
}

/// A token issued for a ServiceAccount.
#[derive(Clone, Debug)]
struct Issued {
    namespace: String,
    name: String,
    uid: String,
    expires: DateTime<Utc>,
}

/// The ServiceAccount tokens issued so far.
#[derive(Default)]
pub struct Tokens(Mutex<HashMap<String, Issued>>);

impl Tokens {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Issued>> {
        // Each change is one insert or remove: a panic elsewhere leaves the map consistent.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Compares in time that does not depend on where a guess goes wrong.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// Who `token` is: the admin, a live ServiceAccount's token, or nobody.
pub fn user_of_token(
    store: &Store,
    tokens: &Tokens,
    admin: Option<&str>,
    token: &str,
) -> Option<User> {
    if admin.is_some_and(|a| same(a, token)) {
        return Some(User::admin());
    }
    let issued = tokens.lock().get(token).cloned()?;
    if issued.expires <= Utc::now() {
        tokens.lock().remove(token);
        return None;
    }
    // A token dies with its ServiceAccount (a new account of the same name has a new uid).
    let t = store.find_type("", "v1", "serviceaccounts")?;
    let account = store.get_shared(&t, &issued.namespace, &issued.name).ok()?;
    if account.pointer("/metadata/uid").and_then(Value::as_str) != Some(issued.uid.as_str()) {
        tokens.lock().remove(token);
        return None;
    }
    Some(User::service_account(
        &issued.namespace,
        &issued.name,
        &issued.uid,
    ))
}

/// Who sent a request: 401 for a token nobody issued, or for no token when the server wants
/// one.
pub fn authenticate(
    store: &Store,
    tokens: &Tokens,
    admin: Option<&str>,
    headers: &HeaderMap,
) -> Result<User, ApiError> {
    match bearer(headers) {
        Some(token) => {
            user_of_token(store, tokens, admin, token).ok_or_else(ApiError::unauthorized)
        }
        None if admin.is_none() => Ok(User::admin()),
        None => Err(ApiError::unauthorized()),
    }
}

/// What a request asks to do, as the real server's RequestInfo resolver names it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attributes {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`.
    pub verb: String,
    /// The API group (`""` for core).
    pub group: String,
    /// The resource (plural); empty for a non-resource path.
    pub resource: String,
    /// The subresource (`log`, `status`, `token`).
    pub subresource: String,
    /// The namespace, `""` for cluster scope or all namespaces.
    pub namespace: String,
    /// The object's name, if one is named.
    pub name: String,
    /// The path of a non-resource request.
    pub path: String,
}

impl Attributes {
    fn from_json(spec: &Value) -> Option<Attributes> {
        if let Some(r) = spec.get("resourceAttributes").filter(|v| v.is_object()) {
            let s = |k: &str| {
                r.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            return Some(Attributes {
                verb: s("verb"),
                group: s("group"),
                resource: s("resource"),
                subresource: s("subresource"),
                namespace: s("namespace"),
                name: s("name"),
                path: String::new(),
            });
        }
        let n = spec
            .get("nonResourceAttributes")
            .filter(|v| v.is_object())?;
        let s = |k: &str| {
            n.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        Some(Attributes {
            verb: s("verb"),
            path: s("path"),
            ..Default::default()
        })
    }
}

fn strings(v: Option<&Value>) -> Vec<&str> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Whether one PolicyRule allows `attrs`.
fn rule_allows(rule: &Value, attrs: &Attributes) -> bool {
    let verbs = strings(rule.get("verbs"));
    if !verbs.iter().any(|v| *v == "*" || *v == attrs.verb) {
        return false;
    }
    if attrs.resource.is_empty() {
        return strings(rule.get("nonResourceURLs")).iter().any(|url| {
            *url == "*"
                || *url == attrs.path
                || url
                    .strip_suffix('*')
                    .is_some_and(|prefix| attrs.path.starts_with(prefix))
        });
    }
    let groups = strings(rule.get("apiGroups"));
    if !groups.iter().any(|g| *g == "*" || *g == attrs.group) {
        return false;
    }
    let combined = if attrs.subresource.is_empty() {
        attrs.resource.clone()
    } else {
        format!("{}/{}", attrs.resource, attrs.subresource)
    };
    let resources = strings(rule.get("resources"));
    let resource_ok = resources.iter().any(|r| {
        *r == "*"
            || *r == combined
            || (!attrs.subresource.is_empty() && *r == format!("*/{}", attrs.subresource))
    });
    if !resource_ok {
        return false;
    }
    let names = strings(rule.get("resourceNames"));
    names.is_empty() || names.contains(&attrs.name.as_str())
}

fn subject_matches(subject: &Value, user: &User, binding_namespace: &str) -> bool {
    let s = |k: &str| subject.get(k).and_then(Value::as_str).unwrap_or_default();
    match s("kind") {
        "User" => s("name") == user.name,
        "Group" => user.groups.iter().any(|g| g == s("name")),
        "ServiceAccount" => {
            let namespace = match s("namespace") {
                "" => binding_namespace,
                ns => ns,
            };
            user.name == format!("system:serviceaccount:{namespace}:{}", s("name"))
        }
        _ => false,
    }
}

/// The rules bootstrap ClusterRoles bound to every authenticated user grant: discovery,
/// version and health (`system:discovery`, `system:public-info-viewer`) and reviewing one's
/// own access (`system:basic-user`).
fn bootstrap_allows(user: &User, attrs: &Attributes) -> Option<&'static str> {
    if !user.groups.iter().any(|g| g == AUTHENTICATED) {
        return None;
    }
    if attrs.resource.is_empty() {
        let discovery = [
            "/api", "/apis", "/version", "/healthz", "/livez", "/readyz", "/openapi",
        ];
        let path = attrs.path.as_str();
        let allowed = attrs.verb == "get"
            && discovery
                .iter()
                .any(|p| path == *p || path.starts_with(&format!("{p}/")));
        return allowed.then_some("system:discovery");
    }
    let own = matches!(
        (attrs.group.as_str(), attrs.resource.as_str()),
        (
            "authorization.k8s.io",
            "selfsubjectaccessreviews" | "selfsubjectrulesreviews"
        ) | ("authentication.k8s.io", "selfsubjectreviews")
    );
    (own && attrs.verb == "create").then_some("system:basic-user")
}

/// Whether `user` may do `attrs`, and why (the real RBAC authorizer's reason when allowed).
pub fn authorize(store: &Store, user: &User, attrs: &Attributes) -> (bool, String) {
    if user.groups.iter().any(|g| g == MASTERS) {
        return (true, String::new());
    }
    if let Some(role) = bootstrap_allows(user, attrs) {
        return (
            true,
            format!(
                "RBAC: allowed by ClusterRoleBinding \"{role}\" of ClusterRole \"{role}\" to Group \"{AUTHENTICATED}\""
            ),
        );
    }
    let all = Selector::parse("").unwrap_or_default();
    let list = |plural: &str, namespace: &str| {
        store
            .find_type("rbac.authorization.k8s.io", "v1", plural)
            .map(|t| store.list(&t, namespace, &all, &all).0)
            .unwrap_or_default()
    };
    let role_rules = |kind: &str, name: &str, namespace: &str| -> Vec<Value> {
        let (plural, ns) = if kind == "ClusterRole" {
            ("clusterroles", "")
        } else {
            ("roles", namespace)
        };
        let Some(t) = store.find_type("rbac.authorization.k8s.io", "v1", plural) else {
            return Vec::new();
        };
        let Ok(role) = store.get_shared(&t, ns, name) else {
            return Vec::new();
        };
        let mut rules: Vec<Value> = role
            .get("rules")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        // An aggregated ClusterRole holds the rules of the ClusterRoles its selectors match.
        if let Some(selectors) = role
            .pointer("/aggregationRule/clusterRoleSelectors")
            .and_then(Value::as_array)
        {
            for other in list("clusterroles", "") {
                let labels = other
                    .pointer("/metadata/labels")
                    .cloned()
                    .unwrap_or(json!({}));
                let picked = selectors.iter().any(|s| {
                    s.get("matchLabels")
                        .and_then(Value::as_object)
                        .is_some_and(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)))
                });
                if picked {
                    rules.extend(
                        other
                            .get("rules")
                            .and_then(Value::as_array)
                            .cloned()
                            .unwrap_or_default(),
                    );
                }
            }
        }
        rules
    };
    let subject_kind = |subject: &Value| {
        let s = |k: &str| {
            subject
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        match s("kind").as_str() {
            "ServiceAccount" => format!("ServiceAccount \"{}/{}\"", s("name"), s("namespace")),
            kind => format!("{kind} \"{}\"", s("name")),
        }
    };
    let check = |bindings: Vec<std::sync::Arc<Value>>, cluster: bool| -> Option<String> {
        for binding in bindings {
            let binding_ns = binding
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let Some(subject) = binding
                .get("subjects")
                .and_then(Value::as_array)
                .and_then(|s| s.iter().find(|s| subject_matches(s, user, binding_ns)))
            else {
                continue;
            };
            let kind = binding
                .pointer("/roleRef/kind")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let role = binding
                .pointer("/roleRef/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if role_rules(kind, role, binding_ns)
                .iter()
                .any(|r| rule_allows(r, attrs))
            {
                let name = binding
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let of = if cluster {
                    format!("ClusterRoleBinding \"{name}\"")
                } else {
                    format!("RoleBinding \"{name}/{binding_ns}\"")
                };
                return Some(format!(
                    "RBAC: allowed by {of} of {kind} \"{role}\" to {}",
                    subject_kind(subject)
                ));
            }
        }
        None
    };
    if let Some(reason) = check(list("clusterrolebindings", ""), true) {
        return (true, reason);
    }
    if !attrs.namespace.is_empty()
        && let Some(reason) = check(list("rolebindings", &attrs.namespace), false)
    {
        return (true, reason);
    }
    (false, String::new())
}

/// What the real authorizer says a refused request was (`User "u" cannot …`).
pub fn refusal(user: &User, attrs: &Attributes) -> String {
    if attrs.resource.is_empty() {
        return format!(
            "User \"{}\" cannot {} path \"{}\"",
            user.name, attrs.verb, attrs.path
        );
    }
    let resource = if attrs.subresource.is_empty() {
        attrs.resource.clone()
    } else {
        format!("{}/{}", attrs.resource, attrs.subresource)
    };
    let scope = if attrs.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace \"{}\"", attrs.namespace)
    };
    format!(
        "User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
        user.name, attrs.verb, attrs.group
    )
}

/// The 403 of a refused request, shaped as the real server's Status.
pub fn forbidden(user: &User, attrs: &Attributes) -> ApiError {
    let why = refusal(user, attrs);
    if attrs.resource.is_empty() {
        return ApiError {
            code: 403,
            reason: "Forbidden",
            message: format!("forbidden: {why}"),
            details: None,
        };
    }
    let qualified = if attrs.group.is_empty() {
        attrs.resource.clone()
    } else {
        format!("{}.{}", attrs.resource, attrs.group)
    };
    let message = if attrs.name.is_empty() {
        format!("{qualified} is forbidden: {why}")
    } else {
        format!("{qualified} \"{}\" is forbidden: {why}", attrs.name)
    };
    ApiError {
        code: 403,
        reason: "Forbidden",
        message,
        details: Some(json!({"name": attrs.name, "group": attrs.group, "kind": attrs.resource})),
    }
}

fn invalid(kind: &str, group: &str, field: &str, body: &str) -> ApiError {
    ApiError {
        code: 422,
        reason: "Invalid",
        message: format!("{kind}.{group} \"\" is invalid: {field}: {body}"),
        details: Some(json!({
            "group": group, "kind": kind,
            "causes": [{"reason": "FieldValueInvalid", "message": body, "field": field}],
        })),
    }
}

/// `POST /api/v1/namespaces/{ns}/serviceaccounts/{name}/token`: a token for the account.
pub fn token_request(
    store: &Store,
    tokens: &Tokens,
    namespace: &str,
    name: &str,
    body: &Value,
) -> Result<Value, ApiError> {
    let t = store
        .find_type("", "v1", "serviceaccounts")
        .ok_or_else(|| ApiError::no_route("serviceaccounts"))?;
    let account = store.get_shared(&t, namespace, name)?;
    let seconds = body
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(DEFAULT_TOKEN_SECONDS);
    if seconds < MIN_TOKEN_SECONDS {
        return Err(ApiError {
            code: 422,
            reason: "Invalid",
            message: format!(
                "TokenRequest.authentication.k8s.io \"{name}\" is invalid: spec.expirationSeconds: Invalid value: {seconds}: may not specify a duration less than 10 minutes"
            ),
            details: Some(
                json!({"name": name, "group": "authentication.k8s.io", "kind": "TokenRequest",
                "causes": [{"reason": "FieldValueInvalid", "field": "spec.expirationSeconds",
                    "message": format!("Invalid value: {seconds}: may not specify a duration less than 10 minutes")}]}),
            ),
        });
    }
    let uid = account
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let expires = Utc::now() + Duration::seconds(seconds);
    // JWT-shaped, as real tokens are: a header, a payload naming the account, and random
    // bits where the signature goes (the payload is not trusted: the token is looked up).
    let encode = |v: Value| base64_url(v.to_string().as_bytes());
    let token = format!(
        "{}.{}.{}",
        encode(json!({"alg": "RS256", "kid": "charon-apiserver"})),
        encode(
            json!({"sub": format!("system:serviceaccount:{namespace}:{name}"), "exp": expires.timestamp()})
        ),
        crate::random_token()
    );
    tokens.lock().insert(
        token.clone(),
        Issued {
            namespace: namespace.into(),
            name: name.into(),
            uid,
            expires,
        },
    );
    Ok(json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": null},
        "spec": {
            "audiences": body.pointer("/spec/audiences").cloned().unwrap_or(json!(["https://kubernetes.default.svc"])),
            "expirationSeconds": seconds,
            "boundObjectRef": body.pointer("/spec/boundObjectRef").cloned().unwrap_or(Value::Null),
        },
        "status": {"token": token, "expirationTimestamp": expires.format("%Y-%m-%dT%H:%M:%SZ").to_string()},
    }))
}

fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// `POST /apis/authentication.k8s.io/v1/tokenreviews`.
pub fn token_review(
    store: &Store,
    tokens: &Tokens,
    admin: Option<&str>,
    body: &Value,
) -> Result<Value, ApiError> {
    let token = body
        .pointer("/spec/token")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if token.is_empty() {
        return Err(ApiError {
            code: 422,
            reason: "Invalid",
            message:
                "TokenReview.authentication.k8s.io \"\" is invalid: spec.token: Required value"
                    .into(),
            details: Some(
                json!({"group": "authentication.k8s.io", "kind": "TokenReview",
                "causes": [{"reason": "FieldValueRequired", "message": "Required value", "field": "spec.token"}]}),
            ),
        });
    }
    let status = match user_of_token(store, tokens, admin, token) {
        Some(user) => json!({"authenticated": true, "user": user.json(),
            "audiences": ["https://kubernetes.default.svc"]}),
        None => json!({"user": {}, "error": "[invalid bearer token, token lookup failed]"}),
    };
    Ok(review(body, "authentication.k8s.io", "TokenReview", status))
}

fn review(body: &Value, group: &str, kind: &str, status: Value) -> Value {
    json!({
        "kind": kind,
        "apiVersion": format!("{group}/v1"),
        "metadata": {"creationTimestamp": null},
        "spec": body.get("spec").cloned().unwrap_or(json!({})),
        "status": status,
    })
}

fn access_status(store: &Store, user: &User, attrs: &Attributes) -> Value {
    let (allowed, reason) = authorize(store, user, attrs);
    let mut status = json!({"allowed": allowed});
    if !reason.is_empty() {
        status["reason"] = json!(reason);
    }
    status
}

fn attributes_of(body: &Value, kind: &str) -> Result<Attributes, ApiError> {
    let spec = body.get("spec").cloned().unwrap_or(json!({}));
    let both = spec.get("resourceAttributes").is_some_and(Value::is_object)
        && spec
            .get("nonResourceAttributes")
            .is_some_and(Value::is_object);
    match Attributes::from_json(&spec) {
        Some(attrs) if !both => Ok(attrs),
        _ => Err(invalid(
            kind,
            "authorization.k8s.io",
            "spec.resourceAttributes",
            "Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified",
        )),
    }
}

/// `POST /apis/authorization.k8s.io/v1/subjectaccessreviews`: may `spec.user` (with
/// `spec.groups`) do what the attributes say?
pub fn subject_access_review(store: &Store, body: &Value) -> Result<Value, ApiError> {
    let kind = "SubjectAccessReview";
    let attrs = attributes_of(body, kind)?;
    let spec = body.get("spec").cloned().unwrap_or(json!({}));
    let name = spec.get("user").and_then(Value::as_str).unwrap_or_default();
    let groups: Vec<String> = strings(spec.get("groups"))
        .into_iter()
        .map(str::to_string)
        .collect();
    if name.is_empty() && groups.is_empty() {
        return Err(invalid(
            kind,
            "authorization.k8s.io",
            "spec.user",
            "Invalid value: \"\": at least one of user or group must be specified",
        ));
    }
    let user = User {
        name: name.into(),
        uid: spec
            .get("uid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .into(),
        groups,
    };
    Ok(review(
        body,
        "authorization.k8s.io",
        kind,
        access_status(store, &user, &attrs),
    ))
}

/// `POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews` (`kubectl auth can-i`).
pub fn self_subject_access_review(
    store: &Store,
    user: &User,
    body: &Value,
) -> Result<Value, ApiError> {
    let kind = "SelfSubjectAccessReview";
    let attrs = attributes_of(body, kind)?;
    Ok(review(
        body,
        "authorization.k8s.io",
        kind,
        access_status(store, user, &attrs),
    ))
}

/// `POST /apis/authentication.k8s.io/v1/selfsubjectreviews` (`kubectl auth whoami`).
pub fn self_subject_review(user: &User) -> Value {
    json!({
        "kind": "SelfSubjectReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "status": {"userInfo": user.json()},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(verb: &str, group: &str, resource: &str, sub: &str, ns: &str) -> Attributes {
        Attributes {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            namespace: ns.into(),
            ..Default::default()
        }
    }

    #[test]
    fn rules_match_verbs_groups_resources_subresources_and_names() {
        let rule =
            json!({"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]});
        for (a, allowed) in [
            (attrs("get", "", "pods", "", "ns"), true),
            (attrs("list", "", "pods", "", "ns"), true),
            (attrs("get", "", "pods", "log", "ns"), true),
            (attrs("create", "", "pods", "", "ns"), false),
            (attrs("get", "", "pods", "exec", "ns"), false),
            (attrs("get", "apps", "pods", "", "ns"), false),
            (attrs("get", "", "configmaps", "", "ns"), false),
        ] {
            assert_eq!(rule_allows(&rule, &a), allowed, "{a:?}");
        }
        let wild = json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]});
        assert!(rule_allows(
            &wild,
            &attrs("delete", "batch", "jobs", "status", "")
        ));
        let named = json!({"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"], "resourceNames": ["a"]});
        let mut a = attrs("get", "", "configmaps", "", "ns");
        assert!(!rule_allows(&named, &a));
        a.name = "a".into();
        assert!(rule_allows(&named, &a));
        let urls = json!({"nonResourceURLs": ["/metrics", "/logs/*"], "verbs": ["get"]});
        let path = |p: &str| Attributes {
            verb: "get".into(),
            path: p.into(),
            ..Default::default()
        };
        assert!(rule_allows(&urls, &path("/metrics")));
        assert!(rule_allows(&urls, &path("/logs/x")));
        assert!(!rule_allows(&urls, &path("/other")));
        let sub_wild = json!({"apiGroups": ["apps"], "resources": ["*/scale"], "verbs": ["patch"]});
        assert!(rule_allows(
            &sub_wild,
            &attrs("patch", "apps", "deployments", "scale", "ns")
        ));
    }

    #[test]
    fn subjects_match_users_groups_and_service_accounts() {
        let sa = User::service_account("team", "viewer", "u1");
        for (subject, binding_ns, matches) in [
            (
                json!({"kind": "ServiceAccount", "name": "viewer", "namespace": "team"}),
                "x",
                true,
            ),
            (
                json!({"kind": "ServiceAccount", "name": "viewer"}),
                "team",
                true,
            ),
            (
                json!({"kind": "ServiceAccount", "name": "viewer"}),
                "other",
                false,
            ),
            (
                json!({"kind": "Group", "name": "system:serviceaccounts:team"}),
                "x",
                true,
            ),
            (
                json!({"kind": "Group", "name": "system:authenticated"}),
                "x",
                true,
            ),
            (
                json!({"kind": "User", "name": "system:serviceaccount:team:viewer"}),
                "x",
                true,
            ),
            (json!({"kind": "User", "name": "alice"}), "x", false),
        ] {
            assert_eq!(
                subject_matches(&subject, &sa, binding_ns),
                matches,
                "{subject}"
            );
        }
    }

    #[test]
    fn refusals_read_as_the_real_servers() {
        let sa = User::service_account("team", "viewer", "u1");
        assert_eq!(
            forbidden(&sa, &attrs("create", "", "configmaps", "", "team")).message,
            "configmaps is forbidden: User \"system:serviceaccount:team:viewer\" cannot create resource \"configmaps\" in API group \"\" in the namespace \"team\""
        );
        assert_eq!(
            forbidden(&sa, &attrs("list", "", "nodes", "", "")).message,
            "nodes is forbidden: User \"system:serviceaccount:team:viewer\" cannot list resource \"nodes\" in API group \"\" at the cluster scope"
        );
        let mut named = attrs("get", "", "pods", "log", "team");
        named.name = "p".into();
        assert_eq!(
            forbidden(&sa, &named).message,
            "pods \"p\" is forbidden: User \"system:serviceaccount:team:viewer\" cannot get resource \"pods/log\" in API group \"\" in the namespace \"team\""
        );
    }

    #[test]
    fn base64_url_is_unpadded() {
        assert_eq!(base64_url(b"f"), "Zg");
        assert_eq!(base64_url(b"fo"), "Zm8");
        assert_eq!(base64_url(b"foo"), "Zm9v");
        assert_eq!(base64_url(b"\xff\xfe"), "__4");
    }
}
