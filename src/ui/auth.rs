//! Who is asking, and whether they may. Local mode (`charon ui`, `charon dev`): whoever holds
//! the random session token printed in the URL acts with the caller's own kubeconfig, so the
//! cluster's RBAC answers for them. Cluster mode (`charon operator --ui-address`): every
//! request carries a bearer token, checked with a TokenReview, and every read and action is
//! authorised with a SubjectAccessReview for what kubectl would need.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, COOKIE};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::{Api, Client};

use super::error::UiError;

/// The cookie a browser keeps the token in once it opened the URL carrying it.
pub const COOKIE_NAME: &str = "charon_token";
/// How long an answered TokenReview or SubjectAccessReview is reused: page updates poll
/// every few seconds, and each must not cost two reviews.
const REVIEW_TTL: Duration = Duration::from_secs(10);

/// How requests are authenticated.
pub enum Mode {
    /// The session token of `charon ui` / `charon dev`.
    Local {
        /// The token the URL carries.
        token: String,
    },
    /// Bearer tokens reviewed by the API server.
    Cluster,
}

/// A user the API server vouched for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// The username, e.g. `system:serviceaccount:team:viewer`.
    pub name: String,
    /// Its uid.
    pub uid: Option<String>,
    /// Its groups.
    pub groups: Vec<String>,
}

/// Who a request is from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// The holder of the local session token: the kubeconfig's own user.
    Local,
    /// A reviewed user (cluster mode).
    User(User),
}

/// What a request needs, as kubectl would need it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Permission {
    /// The verb (`get`, `list`, `create`, `patch`).
    pub verb: &'static str,
    /// The resource (`workflowinstances`, `pods`).
    pub resource: &'static str,
    /// The subresource (`log`).
    pub subresource: Option<&'static str>,
    /// The namespace.
    pub namespace: String,
}

impl Permission {
    /// `verb` on `resource` in `namespace`.
    pub fn new(verb: &'static str, resource: &'static str, namespace: &str) -> Self {
        Permission {
            verb,
            resource,
            subresource: None,
            namespace: namespace.to_string(),
        }
    }

    /// The same on a subresource.
    pub fn subresource(mut self, subresource: &'static str) -> Self {
        self.subresource = Some(subresource);
        self
    }

    fn group(&self) -> &'static str {
        match self.resource {
            "workflows" | "workflowinstances" | "backfills" | "pools" | "quotas" => "charon.dev",
            _ => "",
        }
    }

    /// What a refusal says, in the API server's words.
    pub fn refusal(&self, user: &str) -> String {
        let resource = match self.subresource {
            Some(sub) => format!("{}/{sub}", self.resource),
            None => self.resource.to_string(),
        };
        if self.namespace.is_empty() {
            return format!(
                "User {user:?} cannot {} resource {resource:?} in API group {:?} at the cluster scope",
                self.verb,
                self.group()
            );
        }
        format!(
            "User {user:?} cannot {} resource {resource:?} in API group {:?} in the namespace {:?}",
            self.verb,
            self.group(),
            self.namespace
        )
    }
}

/// Checks requests in one [`Mode`], caching the API server's answers briefly.
pub struct Authority {
    mode: Mode,
    client: Client,
    tokens: Mutex<HashMap<String, (Instant, Option<User>)>>,
    decisions: Mutex<HashMap<(String, Permission), (Instant, bool)>>,
}

/// The token a request carries: `Authorization: Bearer`, else the cookie.
pub fn token_of(headers: &HeaderMap) -> Option<String> {
    if let Some(bearer) = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(bearer.trim().to_string());
    }
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.to_string())
}

/// Compares in time that does not depend on where the strings differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn fresh<V: Clone>(entry: Option<&(Instant, V)>) -> Option<V> {
    entry
        .filter(|(at, _)| at.elapsed() < REVIEW_TTL)
        .map(|(_, v)| v.clone())
}

impl Authority {
    /// Checks requests in `mode`; `client` sends the reviews (cluster mode).
    pub fn new(mode: Mode, client: Client) -> Self {
        Authority {
            mode,
            client,
            tokens: Mutex::default(),
            decisions: Mutex::default(),
        }
    }

    /// Whether this is local mode.
    pub fn local(&self) -> bool {
        matches!(self.mode, Mode::Local { .. })
    }

    /// Who sent a request with `headers`: 401 without a token that checks out.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, UiError> {
        let token = token_of(headers).ok_or_else(UiError::unauthenticated)?;
        self.authenticate_token(&token).await
    }

    /// Who `token` belongs to.
    pub async fn authenticate_token(&self, token: &str) -> Result<Principal, UiError> {
        match &self.mode {
            Mode::Local { token: expected } if same(token, expected) => Ok(Principal::Local),
            Mode::Local { .. } => Err(UiError::unauthenticated()),
            Mode::Cluster => {
                let cached = fresh(lock(&self.tokens).get(token));
                let user = match cached {
                    Some(user) => user,
                    None => {
                        let user = self.review(token).await?;
                        let mut tokens = lock(&self.tokens);
                        tokens.retain(|_, (at, _)| at.elapsed() < REVIEW_TTL);
                        tokens.insert(token.to_string(), (Instant::now(), user.clone()));
                        user
                    }
                };
                user.map(Principal::User)
                    .ok_or_else(UiError::unauthenticated)
            }
        }
    }

    async fn review(&self, token: &str) -> Result<Option<User>, UiError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| UiError::upstream("reviewing the token", e))?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Ok(None);
        }
        let user = status.user.unwrap_or_default();
        Ok(Some(User {
            name: user.username.unwrap_or_default(),
            uid: user.uid,
            groups: user.groups.unwrap_or_default(),
        }))
    }

    /// Whether `principal` may do what `permission` names; 403 naming it otherwise. The
    /// local session's user is checked by the API server on each call it makes.
    pub async fn authorize(
        &self,
        principal: &Principal,
        permission: Permission,
    ) -> Result<(), UiError> {
        let Principal::User(user) = principal else {
            return Ok(());
        };
        if self.allowed(user, &permission).await? {
            Ok(())
        } else {
            Err(UiError::forbidden(permission.refusal(&user.name)))
        }
    }

    /// Whether `principal` may (without failing the request when not).
    pub async fn may(&self, principal: &Principal, permission: Permission) -> bool {
        match principal {
            Principal::Local => true,
            Principal::User(user) => self.allowed(user, &permission).await.unwrap_or(false),
        }
    }

    async fn allowed(&self, user: &User, permission: &Permission) -> Result<bool, UiError> {
        let key = (user.name.clone(), permission.clone());
        if let Some(allowed) = fresh(lock(&self.decisions).get(&key)) {
            return Ok(allowed);
        }
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                uid: user.uid.clone(),
                groups: Some(user.groups.clone()),
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(permission.namespace.clone()),
                    verb: Some(permission.verb.to_string()),
                    group: Some(permission.group().to_string()),
                    resource: Some(permission.resource.to_string()),
                    subresource: permission.subresource.map(str::to_string),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| UiError::upstream("reviewing access", e))?;
        let allowed = answer.status.is_some_and(|s| s.allowed);
        let mut decisions = lock(&self.decisions);
        decisions.retain(|_, (at, _)| at.elapsed() < REVIEW_TTL);
        decisions.insert(key, (Instant::now(), allowed));
        Ok(allowed)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these maps leaves them consistent (each write is one insert).
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_come_from_the_header_or_the_cookie() {
        let mut headers = HeaderMap::new();
        assert_eq!(token_of(&headers), None);
        headers.insert(COOKIE, "a=b; charon_token=xyz".parse().unwrap());
        assert_eq!(token_of(&headers).as_deref(), Some("xyz"));
        headers.insert(AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(token_of(&headers).as_deref(), Some("abc"));
    }

    #[test]
    fn refusals_name_the_permission_as_the_api_server_does() {
        let p = Permission::new("create", "workflowinstances", "team");
        assert_eq!(
            p.refusal("system:serviceaccount:team:viewer"),
            "User \"system:serviceaccount:team:viewer\" cannot create resource \"workflowinstances\" in API group \"charon.dev\" in the namespace \"team\""
        );
        let p = Permission::new("get", "pods", "team").subresource("log");
        assert!(
            p.refusal("u")
                .contains("cannot get resource \"pods/log\" in API group \"\"")
        );
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "abcd"));
    }
}
