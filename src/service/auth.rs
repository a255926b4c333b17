//! Bearer-token authentication and role checks.
//!
//! Tokens are compared as SHA-256 digests in constant time, against every
//! configured token (so timing reveals neither which token matched nor how
//! long the secrets are). Secrets are never logged; the principal's name is.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::config::{Role, TokenSpec};

/// Who made a call. Cloned several times per request (into the request's
/// and the response's extensions, for the handler and the access log), so
/// its text is shared, not copied.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Principal name (from the config, never the secret).
    pub name: Arc<str>,
    /// Role.
    pub role: Role,
    /// Actors an agent may submit as (`None` = any).
    pub actors: Option<Arc<[String]>>,
}

impl Principal {
    /// Refuses (403) unless the principal has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            let wanted: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            Err(ApiError::forbidden(format!(
                "this call needs the {} role; the token has {}",
                wanted.join(" or "),
                self.role.as_str()
            )))
        }
    }

    /// Refuses (403) unless the principal may submit as `actor`.
    pub fn may_act_as(&self, actor: &str) -> Result<(), ApiError> {
        match &self.actors {
            None => Ok(()),
            Some(allowed) if allowed.iter().any(|a| a == actor) => Ok(()),
            Some(_) => Err(ApiError::forbidden(format!(
                "this token may not submit as actor '{actor}'"
            ))),
        }
    }
}

/// Configured tokens, kept as digests.
#[derive(Debug, Clone)]
pub struct TokenTable {
    entries: Vec<([u8; 32], Principal)>,
}

impl TokenTable {
    /// Builds the table from the configuration.
    pub fn new(tokens: &[TokenSpec]) -> TokenTable {
        TokenTable {
            entries: tokens
                .iter()
                .map(|t| {
                    (
                        Sha256::digest(t.secret.as_bytes()).into(),
                        Principal {
                            name: t.name.as_str().into(),
                            role: t.role,
                            actors: t.actors.as_deref().map(Arc::from),
                        },
                    )
                })
                .collect(),
        }
    }

    /// Whether no token is configured.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The principal holding `secret`, if any.
    pub fn find(&self, secret: &str) -> Option<Principal> {
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let mut found = None;
        for (d, p) in &self.entries {
            if bool::from(d.ct_eq(&digest)) {
                found = Some(p.clone());
            }
        }
        found
    }
}

/// Middleware for `/v1/`: 401 without a valid bearer token; otherwise the
/// [`Principal`] is put in the request's extensions.
pub async fn authenticate(
    State(tokens): State<Arc<TokenTable>>,
    mut req: Request,
    next: Next,
) -> Response {
    let secret = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match secret.and_then(|s| tokens.find(s)) {
        Some(principal) => {
            req.extensions_mut().insert(principal.clone());
            let mut response = next.run(req).await;
            // For the access log, which runs outside this layer.
            response.extensions_mut().insert(principal);
            response
        }
        None => ApiError::Unauthorized.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_found_by_secret_only() {
        let table = TokenTable::new(&[
            TokenSpec {
                secret: "agent-secret".into(),
                role: Role::Agent,
                actors: Some(vec!["a1".into()]),
                name: "agent#1".into(),
            },
            TokenSpec {
                secret: "operator-secret".into(),
                role: Role::Operator,
                actors: None,
                name: "ops".into(),
            },
        ]);
        let agent = table.find("agent-secret").unwrap();
        assert_eq!(agent.role, Role::Agent);
        assert!(agent.may_act_as("a1").is_ok());
        assert!(agent.may_act_as("a2").is_err());
        assert!(agent.require(&[Role::Operator]).is_err());
        assert_eq!(table.find("operator-secret").unwrap().name.as_ref(), "ops");
        assert!(table.find("agent-secre").is_none());
        assert!(table.find("").is_none());
    }
}
