//! Who calls the API. With `auth: none` the caller names itself
//! (`x-osmo-user`, as OSMO's `--method dev` login does) and may act on every
//! workflow. With `auth: tokens` every call but health, version, the OpenAPI
//! document and `osmo exec`'s own endpoints needs `Authorization: Bearer
//! TOKEN`: a user's token (`osmo token create`; only its SHA-256 is stored)
//! or the token of a workflow's tasks, which acts as the workflow's
//! submitter so that `osmo` works inside tasks. A caller acts on their own
//! workflows only, unless they are an admin.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use osmo_spec::config::AuthMode;
use osmo_store::Store;
use sha2::{Digest, Sha256};

/// The caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user: String,
    /// May act on every user's workflows.
    pub admin: bool,
}

impl Caller {
    /// Whether this caller may change a workflow submitted by `owner`.
    pub fn may_act_on(&self, owner: &str) -> bool {
        self.admin || self.user == owner
    }
}

/// Prefix of a workflow's task token: `osmowf_<workflow id>.<hex HMAC>`.
const TASK_TOKEN_PREFIX: &str = "osmowf_";

/// Mints and checks the tokens tasks get, with a secret kept in the data dir.
#[derive(Clone)]
pub struct TaskTokens {
    secret: Arc<Vec<u8>>,
}

impl TaskTokens {
    pub fn load(data_dir: &Path) -> anyhow::Result<TaskTokens> {
        let secret = crate::secret_file(&data_dir.join("auth.secret"))?;
        Ok(TaskTokens {
            secret: Arc::new(secret.into_bytes()),
        })
    }

    fn mac(&self, workflow_id: &str) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(workflow_id.as_bytes());
        hex(&mac.finalize().into_bytes())
    }

    /// The token of `workflow_id`'s tasks.
    pub fn token(&self, workflow_id: &str) -> String {
        format!("{TASK_TOKEN_PREFIX}{workflow_id}.{}", self.mac(workflow_id))
    }

    /// The workflow a task token was minted for, when it is genuine.
    fn workflow_of<'t>(&self, token: &'t str) -> Option<&'t str> {
        let (id, mac) = token.strip_prefix(TASK_TOKEN_PREFIX)?.rsplit_once('.')?;
        let want = self.mac(id);
        // Constant time: a wrong guess says nothing about how close it was.
        let same = want.len() == mac.len()
            && want
                .bytes()
                .zip(mac.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        same.then_some(id)
    }
}

/// What the authentication layer needs.
#[derive(Clone)]
pub struct Auth {
    pub mode: AuthMode,
    store: Store,
    tasks: TaskTokens,
    /// Callers by token hash, so a request costs no query after the first.
    known: Arc<Mutex<HashMap<String, Caller>>>,
}

impl Auth {
    pub fn new(mode: AuthMode, store: Store, tasks: TaskTokens) -> Auth {
        Auth {
            mode,
            store,
            tasks,
            known: Arc::default(),
        }
    }

    async fn caller(&self, token: &str) -> Option<Caller> {
        let hash = token_hash(token);
        if let Some(c) = self
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&hash)
        {
            return Some(c.clone());
        }
        let caller = if let Some(id) = self.tasks.workflow_of(token) {
            let row = self.store.get_workflow(id).await.ok()??;
            Caller {
                user: row.submitted_by,
                admin: false,
            }
        } else {
            let (user, role) = self.store.token_owner(&hash).await.ok()??;
            Caller {
                user,
                admin: role == "admin",
            }
        };
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(hash, caller.clone());
        Some(caller)
    }
}

/// A new user token: 32 random bytes, hex, recognisable by its prefix.
pub fn new_token() -> anyhow::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(format!("osmo_{}", hex(&bytes)))
}

/// What the store keeps of a token.
pub fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Paths anyone may call: liveness, the version, the API's description, and
/// `osmo exec`'s endpoints (which check their own token).
fn is_open(path: &str) -> bool {
    !path.starts_with("/api/")
        || matches!(path, "/api/health" | "/api/version" | "/api/openapi.json")
        || path.starts_with("/api/exec/")
}

/// Puts the request's [`Caller`] in its extensions, or answers 401.
pub async fn authenticate(State(auth): State<Auth>, mut req: Request, next: Next) -> Response {
    let caller = match auth.mode {
        AuthMode::None => Some(Caller {
            user: req
                .headers()
                .get("x-osmo-user")
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .unwrap_or("anonymous")
                .to_string(),
            admin: true,
        }),
        AuthMode::Tokens => match bearer(req.headers()) {
            Some(token) => auth.caller(token).await,
            None => None,
        },
    };
    match caller {
        Some(caller) => {
            req.extensions_mut().insert(caller);
        }
        None if is_open(req.uri().path()) => {
            req.extensions_mut().insert(Caller {
                user: "anonymous".to_string(),
                admin: false,
            });
        }
        None => {
            let has_token = bearer(req.headers()).is_some();
            let message = if has_token {
                "the token is not known to this server; `osmo token create` makes one"
            } else {
                "this server wants a token: `osmo login URL --token TOKEN`, or OSMO_TOKEN"
            };
            let body = serde_json::json!({
                "error": message, "message": message, "error_code": "USER", "diagnostics": [],
            });
            return (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_tokens_are_checked_by_their_mac() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = TaskTokens::load(dir.path()).unwrap();
        let t = tokens.token("train-3");
        assert_eq!(tokens.workflow_of(&t), Some("train-3"));
        // The last digit changed (to another one: a token ending in 0 made this pass for a forgery).
        let last = if t.ends_with('0') { '1' } else { '0' };
        let forged = format!("{}{last}", &t[..t.len() - 1]);
        assert_eq!(tokens.workflow_of(&forged), None);
        assert_eq!(tokens.workflow_of("osmowf_train-3"), None);
        // Another server's secret: not ours.
        let other = TaskTokens::load(tempfile::tempdir().unwrap().path()).unwrap();
        assert_eq!(other.workflow_of(&t), None);
    }

    #[test]
    fn tokens_are_random_and_stored_hashed() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_ne!(a, b);
        assert!(a.starts_with("osmo_") && a.len() == 5 + 64);
        assert_eq!(token_hash(&a).len(), 64);
        assert_ne!(token_hash(&a), a);
    }

    #[test]
    fn bearer_tokens_are_read_from_the_header() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
