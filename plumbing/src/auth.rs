//! The cluster token: reading it, checking it in constant time, and the one middleware (with the
//! one 401 body) every internal route of every process uses.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The environment variable that carries the cluster token (it wins over a token file).
pub const TOKEN_ENV: &str = "BANK_CLUSTER_TOKEN";

/// The shortest token a file may hold: a guessable token is no token.
pub const MIN_TOKEN_FILE_CHARS: usize = 16;

/// The error text of every 401, in the body `{"error": ..., "code": "unauthorized"}`.
pub const UNAUTHORIZED_TEXT: &str = "a valid cluster token is required (Authorization: Bearer ...)";

/// Constant-time comparison of a presented token with the expected one: the time taken does not
/// reveal how much of it matched. An empty expected token matches nothing.
pub fn token_matches(presented: &str, expected: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    !expected.is_empty() && bool::from(presented.as_bytes().ct_eq(expected.as_bytes()))
}

/// Whether `Authorization: Bearer <token>` carries `expected`.
pub fn bearer_matches(headers: &HeaderMap, expected: &str) -> bool {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    token_matches(presented, expected)
}

/// The answer to a request without a valid token: 401, `WWW-Authenticate: Bearer`, and the
/// bank's error body with code `unauthorized`.
pub fn unauthorized() -> Response {
    let body = serde_json::json!({ "error": UNAUTHORIZED_TEXT, "code": "unauthorized" });
    let mut response = (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// The tokens a listener accepts: the cluster token on every route, and an optional read-only
/// token that reads `GET /metrics` and nothing else (for Prometheus).
#[derive(Clone, Debug)]
pub struct Tokens {
    cluster: Arc<str>,
    metrics: Option<Arc<str>>,
}

impl Tokens {
    /// The cluster token and, if any, the metrics token.
    pub fn new(cluster: impl Into<Arc<str>>, metrics: Option<impl Into<Arc<str>>>) -> Tokens {
        Tokens {
            cluster: cluster.into(),
            metrics: metrics.map(Into::into),
        }
    }

    /// True if the request's headers carry the cluster token.
    pub fn is_cluster(&self, headers: &HeaderMap) -> bool {
        bearer_matches(headers, &self.cluster)
    }

    /// True if a request for `path` with these headers may pass.
    pub fn admits(&self, path: &str, headers: &HeaderMap) -> bool {
        let scrape = path == "/metrics"
            && (self.metrics.as_deref()).is_some_and(|metrics| bearer_matches(headers, metrics));
        scrape || self.is_cluster(headers)
    }
}

/// Middleware: `axum::middleware::from_fn_with_state(tokens, plumbing::require_token)`.
pub async fn require_token(State(tokens): State<Tokens>, request: Request, next: Next) -> Response {
    if tokens.admits(request.uri().path(), request.headers()) {
        next.run(request).await
    } else {
        unauthorized()
    }
}

/// A token from a file: trimmed, and at least [`MIN_TOKEN_FILE_CHARS`] characters.
pub fn read_token_file(path: &Path) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("reading the token file {}", path.display()))?;
    let token = token.trim();
    anyhow::ensure!(
        token.len() >= MIN_TOKEN_FILE_CHARS,
        "the token in {} is shorter than {MIN_TOKEN_FILE_CHARS} characters",
        path.display()
    );
    Ok(token.to_owned())
}

/// The cluster token: `BANK_CLUSTER_TOKEN` if set and not blank, else the file (trimmed, not
/// empty). `env` is the variable's value, passed in so callers and tests need no `set_var`.
pub fn read_cluster_token(env: Option<String>, file: Option<&Path>) -> anyhow::Result<String> {
    if let Some(token) = env.filter(|t| !t.trim().is_empty()) {
        return Ok(token.trim().to_owned());
    }
    let path = file.with_context(|| format!("set {TOKEN_ENV} or --cluster-token-file"))?;
    let token =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    anyhow::ensure!(
        !token.trim().is_empty(),
        "cluster token file {} is empty",
        path.display()
    );
    Ok(token.trim().to_owned())
}

/// The token in `path` (trimmed, not empty), or, if there is no such file, a new random one
/// (64 hex digits) written there with mode 0600 and synced. True in the second place if it was
/// generated now.
pub fn read_or_generate_token(path: &Path) -> anyhow::Result<(String, bool)> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => return Ok((text.trim().to_owned(), false)),
        Ok(_) => anyhow::bail!("token file {} is empty", path.display()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => {
            return Err(err).with_context(|| format!("reading token file {}", path.display()));
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(token.as_bytes())?;
    file.sync_all()?;
    Ok((token, true))
}

/// `BANK_CLUSTER_TOKEN` from the environment, if set.
pub fn token_from_env() -> Option<String> {
    std::env::var(TOKEN_ENV).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        headers
    }

    #[test]
    fn an_empty_token_matches_nothing() {
        assert!(!token_matches("", ""));
        assert!(token_matches("secret", "secret"));
        assert!(!token_matches("secre", "secret"));
    }

    #[test]
    fn the_metrics_token_reads_metrics_and_nothing_else() {
        let tokens = Tokens::new("cluster-token-0123", Some("metrics-token-0123"));
        assert!(tokens.admits("/metrics", &bearer("metrics-token-0123")));
        assert!(!tokens.admits("/status", &bearer("metrics-token-0123")));
        assert!(tokens.admits("/status", &bearer("cluster-token-0123")));
        assert!(tokens.admits("/metrics", &bearer("cluster-token-0123")));
        assert!(!tokens.admits("/metrics", &HeaderMap::new()));
        let no_metrics = Tokens::new("cluster-token-0123", None::<String>);
        assert!(!no_metrics.admits("/metrics", &bearer("")));
    }

    #[test]
    fn the_environment_wins_and_files_are_trimmed_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "  from-the-file-0123\n").unwrap();
        assert_eq!(
            read_cluster_token(Some(" from-env ".into()), Some(&file)).unwrap(),
            "from-env"
        );
        assert_eq!(
            read_cluster_token(Some("  ".into()), Some(&file)).unwrap(),
            "from-the-file-0123"
        );
        assert_eq!(read_token_file(&file).unwrap(), "from-the-file-0123");
        std::fs::write(&file, "short\n").unwrap();
        let err = read_token_file(&file).unwrap_err().to_string();
        assert!(err.contains("shorter than 16"), "{err}");
        std::fs::write(&file, "\n").unwrap();
        let err = read_cluster_token(None, Some(&file))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is empty"), "{err}");
        let err = read_cluster_token(None, None).unwrap_err().to_string();
        assert!(err.contains(TOKEN_ENV), "{err}");
    }

    #[test]
    fn a_generated_token_is_private_and_reused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/token");
        let (token, generated) = read_or_generate_token(&path).unwrap();
        assert!(generated && token.len() == 64, "{token}");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(read_or_generate_token(&path).unwrap(), (token, false));
        std::fs::write(&path, " \n").unwrap();
        assert!(
            read_or_generate_token(&path).is_err(),
            "an empty file is an error"
        );
    }

    #[tokio::test]
    async fn every_refusal_is_the_same_401() {
        let response = unauthorized();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["code"], "unauthorized");
        assert_eq!(body["error"], UNAUTHORIZED_TEXT);
    }
}
