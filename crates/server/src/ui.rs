//! The web UI: a page and its script and style, inside the binary (no
//! network and no Node toolchain at build or run time). Every page path
//! answers the same document; the script draws the page the path names, so
//! a link such as `/workflows/<id>` can be shared. The script speaks the
//! REST API under `/api` with the browser's token, as the CLI does.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

const INDEX: &str = include_str!("../ui/index.html");
const SCRIPT: &str = include_str!("../ui/app.js");
const STYLE: &str = include_str!("../ui/app.css");

/// The UI's routes; open to all (the data behind them is the API's, which
/// asks for a token when the server has `auth: tokens`).
pub fn router() -> Router {
    Router::new()
        .route("/", get(page))
        .route("/workflows", get(page))
        .route("/workflows/{id}", get(page))
        .route("/pools", get(page))
        .route("/login", get(page))
        .route("/ui/app.js", get(script))
        .route("/ui/app.css", get(style))
}

fn cached(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // The assets change with the binary: a browser asks again each time.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

async fn page() -> impl IntoResponse {
    cached("text/html; charset=utf-8", INDEX)
}

async fn script() -> impl IntoResponse {
    cached("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> impl IntoResponse {
    cached("text/css; charset=utf-8", STYLE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    #[tokio::test]
    async fn pages_share_one_document_and_assets_have_their_types() {
        for (path, kind) in [
            ("/", "text/html"),
            ("/workflows/wf-1", "text/html"),
            ("/pools", "text/html"),
            ("/ui/app.js", "text/javascript"),
            ("/ui/app.css", "text/css"),
        ] {
            let response = router()
                .oneshot(Request::get(path).body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            let got = response.headers()[header::CONTENT_TYPE].to_str().unwrap();
            assert!(got.starts_with(kind), "{path}: {got}");
        }
        assert!(INDEX.contains("/ui/app.js") && SCRIPT.contains("/api/workflow"));
    }
}
