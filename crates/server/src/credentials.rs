//! Users' credentials, as OSMO has them (`osmo credential set/list/delete`,
//! `/api/credentials`): DATA (an object store's keys, for the URLs under its
//! `endpoint`), REGISTRY and GENERIC (key-value pairs a workflow's
//! `credentials:` puts in a task's environment or files).
//!
//! At rest each payload is sealed with AES-256-GCM (ring) under a key kept
//! in the data directory, outside the store, and bound to its user and
//! name. In memory they are held unsealed for the launches; no answer of
//! the API ever carries a secret back.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, RwLock};

use anyhow::Context;
use axum::Json;
use axum::extract::{Extension, Path as UrlPath, State};
use axum::http::StatusCode;
use base64::Engine;
use osmo_runtime::data::DataCredential;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use super::api::{ApiError, ApiResult, AppState};
use super::auth::Caller;
use crate::api_types::ErrorResponse;

/// One credential of one user.
#[derive(Clone, Serialize, Deserialize)]
pub struct Credential {
    /// `DATA`, `REGISTRY` or `GENERIC`.
    pub cred_type: String,
    /// DATA: the endpoint (`s3://bucket`); REGISTRY: the registry; else empty.
    pub profile: String,
    pub payload: BTreeMap<String, String>,
}

/// The credentials, unsealed in memory, and the key that seals them in the store.
#[derive(Clone)]
pub struct Vault {
    key: Arc<LessSafeKey>,
    by_user: Arc<RwLock<HashMap<String, BTreeMap<String, Credential>>>>,
}

impl Vault {
    /// Opens the key (made on first use) and unseals what the store keeps.
    pub async fn load(data_dir: &Path, store: &osmo_store::Store) -> anyhow::Result<Vault> {
        let secret = crate::secret_file(&data_dir.join("credentials.key"))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
        let key = UnboundKey::new(&AES_256_GCM, digest.as_ref())
            .map_err(|_| anyhow::anyhow!("cannot make the credentials key"))?;
        let vault = Vault {
            key: Arc::new(LessSafeKey::new(key)),
            by_user: Default::default(),
        };
        for (user, name, _, _, sealed) in store.credentials().await? {
            let credential = vault
                .unseal(&user, &name, &sealed)
                .with_context(|| format!("credential {name} of {user}"))?;
            vault.remember(&user, &name, credential);
        }
        Ok(vault)
    }

    /// No credentials, under a key of its own (tests of the core).
    #[cfg(test)]
    pub fn empty() -> Vault {
        let mut key = [0u8; 32];
        let _ = SystemRandom::new().fill(&mut key);
        Vault {
            key: Arc::new(LessSafeKey::new(
                UnboundKey::new(&AES_256_GCM, &key).expect("32 bytes make an AES-256 key"),
            )),
            by_user: Default::default(),
        }
    }

    fn remember(&self, user: &str, name: &str, credential: Credential) {
        self.by_user
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(user.to_string())
            .or_default()
            .insert(name.to_string(), credential);
    }

    fn seal(&self, user: &str, name: &str, credential: &Credential) -> anyhow::Result<String> {
        let mut nonce = [0u8; 12];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| anyhow::anyhow!("no randomness for a nonce"))?;
        let mut data = serde_json::to_vec(credential)?;
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(format!("{user}/{name}").as_bytes()),
                &mut data,
            )
            .map_err(|_| anyhow::anyhow!("cannot seal the credential"))?;
        let mut sealed = nonce.to_vec();
        sealed.extend(data);
        Ok(base64::engine::general_purpose::STANDARD.encode(sealed))
    }

    fn unseal(&self, user: &str, name: &str, sealed: &str) -> anyhow::Result<Credential> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(sealed)?;
        anyhow::ensure!(bytes.len() > 12, "the sealed payload is too short");
        let (nonce, data) = bytes.split_at(12);
        let mut data = data.to_vec();
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| anyhow::anyhow!("bad nonce"))?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(format!("{user}/{name}").as_bytes()), &mut data)
            .map_err(|_| {
                anyhow::anyhow!("cannot unseal it: the data directory's credentials.key is not the one it was sealed with")
            })?;
        Ok(serde_json::from_slice(plain)?)
    }

    /// A user's credential by name.
    pub fn get(&self, user: &str, name: &str) -> Option<Credential> {
        self.by_user
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(user)?
            .get(name)
            .cloned()
    }

    /// The user's DATA credential for `url`: the one whose endpoint is the
    /// longest prefix of it (at a `/`).
    pub fn data_for(&self, user: &str, url: &str) -> Option<DataCredential> {
        let users = self.by_user.read().unwrap_or_else(|e| e.into_inner());
        let (_, c) = users
            .get(user)?
            .iter()
            .filter(|(_, c)| c.cred_type == "DATA")
            .filter(|(_, c)| {
                let endpoint = c.profile.trim_end_matches('/');
                url == endpoint
                    || url
                        .strip_prefix(endpoint)
                        .is_some_and(|rest| rest.starts_with('/'))
            })
            .max_by_key(|(_, c)| c.profile.len())?;
        let field = |k: &str| c.payload.get(k).cloned();
        Some(DataCredential {
            access_key_id: field("access_key_id").unwrap_or_default(),
            access_key: field("access_key").unwrap_or_default(),
            region: field("region"),
            override_url: field("override_url"),
            addressing_style: field("addressing_style"),
        })
    }
}

/// OSMO's credential names: a letter, then letters, digits, `-` and `_`.
fn valid_name(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// `POST /api/credentials/{name}` body (OSMO's envelope: one of the three).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialRequest {
    /// `{access_key_id, access_key, endpoint, region?, override_url?, addressing_style?}`
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub data_credential: Option<BTreeMap<String, String>>,
    /// `{auth, registry?, username?}`
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub registry_credential: Option<BTreeMap<String, String>>,
    /// `{credential: {KEY: VALUE, ...}}`
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub generic_credential: Option<GenericCredential>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenericCredential {
    #[schema(value_type = Object)]
    pub credential: BTreeMap<String, String>,
}

/// A credential as lists show it: never its secrets.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CredentialSummary {
    pub cred_name: String,
    pub cred_type: String,
    pub profile: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CredentialList {
    pub credentials: Vec<CredentialSummary>,
}

fn checked(request: CredentialRequest) -> Result<Credential, String> {
    let (cred_type, payload) = match (
        request.data_credential,
        request.registry_credential,
        request.generic_credential,
    ) {
        (Some(p), None, None) => ("DATA", p),
        (None, Some(p), None) => ("REGISTRY", p),
        (None, None, Some(g)) => ("GENERIC", g.credential),
        _ => {
            return Err(
                "give exactly one of data_credential, registry_credential and generic_credential"
                    .into(),
            );
        }
    };
    if payload.is_empty() || payload.len() > 64 {
        return Err("a credential holds 1 to 64 key-value pairs".into());
    }
    if let Some((k, _)) = payload
        .iter()
        .find(|(k, v)| k.is_empty() || v.is_empty() || k.len() > 256 || v.len() > 64 * 1024)
    {
        return Err(format!(
            "`{k}`: keys and values must be non-empty (values at most 64 KiB)"
        ));
    }
    let profile = match cred_type {
        "DATA" => {
            for required in ["access_key_id", "access_key", "endpoint"] {
                if !payload.contains_key(required) {
                    return Err(format!("a DATA credential needs `{required}`"));
                }
            }
            if let Some(k) = payload.keys().find(|k| {
                ![
                    "access_key_id",
                    "access_key",
                    "endpoint",
                    "region",
                    "override_url",
                    "addressing_style",
                ]
                .contains(&k.as_str())
            }) {
                return Err(format!(
                    "a DATA credential has no `{k}` (access_key_id, access_key, endpoint, region, override_url, addressing_style)"
                ));
            }
            let endpoint = payload["endpoint"].trim_end_matches('/').to_string();
            osmo_runtime::data::check_url(&endpoint, false)
                .map_err(|e| format!("endpoint: {e}"))?;
            if let Some(style) = payload.get("addressing_style")
                && style != "path"
                && style != "virtual"
            {
                return Err(format!(
                    "addressing_style is `path` or `virtual`, not `{style}`"
                ));
            }
            endpoint
        }
        "REGISTRY" => {
            if !payload.contains_key("auth") {
                return Err("a REGISTRY credential needs `auth`".into());
            }
            payload.get("registry").cloned().unwrap_or_default()
        }
        _ => String::new(),
    };
    let mut payload = payload;
    if let Some(endpoint) = payload.get_mut("endpoint") {
        *endpoint = endpoint.trim_end_matches('/').to_string();
    }
    Ok(Credential {
        cred_type: cred_type.to_string(),
        profile,
        payload,
    })
}

/// Set (or replace) one of the caller's credentials.
#[utoipa::path(post, path = "/api/credentials/{name}", request_body = CredentialRequest,
    params(("name" = String, Path)),
    responses((status = 200, body = CredentialSummary), (status = 400, body = ErrorResponse),
              (status = 401, body = ErrorResponse)))]
pub(crate) async fn set(
    State(app): State<AppState>,
    UrlPath(name): UrlPath<String>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> ApiResult<Json<CredentialSummary>> {
    if !valid_name(&name) {
        return Err(ApiError::bad_request(format!(
            "`{name}` is not a credential name: a letter, then letters, digits, - and _ (at most 64)"
        )));
    }
    let request: CredentialRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not a credential: {e}")))?;
    let credential = checked(request).map_err(ApiError::bad_request)?;
    let sealed = app
        .vault
        .seal(&caller.user, &name, &credential)
        .map_err(ApiError::internal)?;
    app.store
        .put_credential(
            &caller.user,
            &name,
            &credential.cred_type,
            &credential.profile,
            &sealed,
            crate::now_ms() as i64,
        )
        .await
        .map_err(ApiError::internal)?;
    let summary = CredentialSummary {
        cred_name: name.clone(),
        cred_type: credential.cred_type.clone(),
        profile: credential.profile.clone(),
    };
    app.vault.remember(&caller.user, &name, credential);
    Ok(Json(summary))
}

/// The caller's credentials (names, types and profiles; never secrets).
#[utoipa::path(get, path = "/api/credentials",
    responses((status = 200, body = CredentialList), (status = 401, body = ErrorResponse)))]
pub(crate) async fn list(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Json<CredentialList> {
    let users = app.vault.by_user.read().unwrap_or_else(|e| e.into_inner());
    let credentials = users
        .get(&caller.user)
        .map(|creds| {
            creds
                .iter()
                .map(|(name, c)| CredentialSummary {
                    cred_name: name.clone(),
                    cred_type: c.cred_type.clone(),
                    profile: c.profile.clone(),
                })
                .collect()
        })
        .unwrap_or_default();
    Json(CredentialList { credentials })
}

/// Delete one of the caller's credentials.
#[utoipa::path(delete, path = "/api/credentials/{name}", params(("name" = String, Path)),
    responses((status = 200, body = CredentialList), (status = 401, body = ErrorResponse),
              (status = 404, body = ErrorResponse)))]
pub(crate) async fn delete(
    State(app): State<AppState>,
    UrlPath(name): UrlPath<String>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<CredentialList>> {
    let Some(credential) = app.vault.get(&caller.user, &name) else {
        return Err(ApiError::with_status(
            StatusCode::NOT_FOUND,
            format!("you have no credential `{name}`; `osmo credential list` shows yours"),
        ));
    };
    app.store
        .delete_credential(&caller.user, &name)
        .await
        .map_err(ApiError::internal)?;
    if let Some(creds) = app
        .vault
        .by_user
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .get_mut(&caller.user)
    {
        creds.remove(&name);
    }
    Ok(Json(CredentialList {
        credentials: vec![CredentialSummary {
            cred_name: name,
            cred_type: credential.cred_type,
            profile: credential.profile,
        }],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(endpoint: &str) -> Credential {
        Credential {
            cred_type: "DATA".into(),
            profile: endpoint.into(),
            payload: [
                ("access_key_id", "id"),
                ("access_key", endpoint),
                ("endpoint", endpoint),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        }
    }

    #[tokio::test]
    async fn a_url_takes_the_credential_of_its_longest_endpoint() {
        let dir = tempfile::tempdir().unwrap();
        let store = osmo_store::Store::open(&format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("db").display()
        ))
        .await
        .unwrap();
        let vault = Vault::load(dir.path(), &store).await.unwrap();
        vault.remember("ann", "wide", data("s3://bucket"));
        vault.remember("ann", "narrow", data("s3://bucket/team"));
        let key = |url: &str| vault.data_for("ann", url).map(|c| c.access_key);
        assert_eq!(
            key("s3://bucket/team/x").as_deref(),
            Some("s3://bucket/team")
        );
        assert_eq!(key("s3://bucket/other").as_deref(), Some("s3://bucket"));
        assert_eq!(key("s3://bucket2/x"), None, "not a prefix at a `/`");
        assert_eq!(
            vault.data_for("bob", "s3://bucket/x"),
            None,
            "another user's"
        );
        // Sealed for one user and name, opened only as them.
        let sealed = vault.seal("ann", "wide", &data("s3://bucket")).unwrap();
        assert!(!sealed.contains("s3://bucket"));
        assert!(vault.unseal("ann", "wide", &sealed).is_ok());
        assert!(vault.unseal("bob", "wide", &sealed).is_err());
    }
}
