//! The browser peer's page (issue 14): `/` and `/r/ROOM` serve the page, `/app.js`,
//! `/worker.js` and `/style.css` its code, all embedded in the binary at build time
//! (`build.rs`, docs/DECISIONS.md D10). Every response carries a strict Content-Security-Policy:
//! scripts, styles and connections from this origin only, no inline code, nothing from
//! anywhere else. The server only serves files: the page's keys never reach it.
//!
//! Also the `Origin` check of the WebSocket upgrade: a browser page from another origin may
//! not use this server (a page elsewhere could otherwise join rooms with its visitors' IP
//! addresses and TURN credentials).
#![forbid(unsafe_code)]

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));

/// The page's Content-Security-Policy. `connect-src 'self'` covers `ws:`/`wss:` to this host
/// (CSP Level 3); `media-src blob:` is for nothing but the WebVTT download link, which the
/// page builds from a Blob.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; worker-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; media-src 'self' blob:; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Security headers on every page response.
fn security_headers() -> [(HeaderName, HeaderValue); 7] {
    [
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        ),
        (
            HeaderName::from_static("permissions-policy"),
            HeaderValue::from_static("microphone=(self), camera=(), geolocation=()"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ]
}

/// Whether the page was built into this binary.
pub(crate) fn page_built() -> bool {
    !ASSETS.is_empty()
}

fn asset(name: &str) -> Response {
    asset_from(ASSETS, name)
}

/// `name` from `assets`; with no page built at all, the page that says how to build it.
fn asset_from(
    assets: &'static [(&'static str, &'static str, &'static [u8])],
    name: &str,
) -> Response {
    match assets.iter().find(|(n, ..)| *n == name) {
        Some((_, content_type, bytes)) => (
            security_headers(),
            [(header::CONTENT_TYPE, *content_type)],
            *bytes,
        )
            .into_response(),
        None if assets.is_empty() => (
            StatusCode::SERVICE_UNAVAILABLE,
            security_headers(),
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            NOT_BUILT,
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// What `/` says when the binary was built without the page.
const NOT_BUILT: &str = "<!doctype html><meta charset=utf-8><title>aparté</title>\
    <h1>The web page is not built into this server</h1>\
    <p>This aparte-signaling binary was built without the browser page. Run \
    <code>bash scripts/build-web</code> in the source tree (it needs Node.js and npm), then \
    build the server again. Calls with the <code>aparte</code> command line work as before.";

/// `GET /`.
pub(crate) async fn index() -> Response {
    asset("index.html")
}

/// `GET /r/{room}`: the page, for a well-formed room id only.
pub(crate) async fn room(Path(room): Path<String>) -> Response {
    if aparte_signaling_protocol::RoomId::parse(&room).is_err() {
        return (StatusCode::NOT_FOUND, "no such room link\n").into_response();
    }
    asset("index.html")
}

/// `GET /app.js`.
pub(crate) async fn app_js() -> Response {
    asset("app.js")
}

/// `GET /worker.js`.
pub(crate) async fn worker_js() -> Response {
    asset("worker.js")
}

/// `GET /style.css`.
pub(crate) async fn style_css() -> Response {
    asset("style.css")
}

/// `scheme://host[:port]` in lowercase, if `origin` is an http(s) origin without path,
/// query or credentials.
pub(crate) fn normalise_origin(origin: &str) -> Option<String> {
    let origin = origin.trim().to_ascii_lowercase();
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))?;
    let valid = !rest.is_empty()
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    valid.then_some(origin)
}

/// Whether a WebSocket upgrade with these headers may proceed: no `Origin` (not a browser),
/// the server's own origin (same `Host`), or one of `allowed`.
pub(crate) fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Some(origin) = origin.to_str().ok().and_then(normalise_origin) else {
        // `null` (sandboxed frames, file: pages) and anything malformed.
        return false;
    };
    if allowed.contains(&origin) {
        return true;
    }
    let Some(host) = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_ascii_lowercase)
    else {
        return false;
    };
    origin == format!("https://{host}") || origin == format!("http://{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, o.parse().unwrap());
        }
        h
    }

    #[test]
    fn same_origin_or_listed_origins_only() {
        let none: Vec<String> = Vec::new();
        assert!(origin_allowed(&headers(None, "call.example"), &none), "CLI");
        assert!(origin_allowed(
            &headers(Some("https://call.example"), "call.example"),
            &none
        ));
        assert!(origin_allowed(
            &headers(Some("http://127.0.0.1:8443"), "127.0.0.1:8443"),
            &none
        ));
        assert!(!origin_allowed(
            &headers(Some("https://evil.example"), "call.example"),
            &none
        ));
        assert!(!origin_allowed(
            &headers(Some("null"), "call.example"),
            &none
        ));
        assert!(!origin_allowed(
            &headers(Some("https://call.example.evil.example"), "call.example"),
            &none
        ));
        assert!(!origin_allowed(
            &headers(Some("https://call.example:444"), "call.example"),
            &none
        ));
        let listed = vec!["https://app.example".to_owned()];
        assert!(origin_allowed(
            &headers(Some("https://APP.example"), "call.example"),
            &listed
        ));
    }

    #[test]
    fn origins_are_normalised_strictly() {
        assert_eq!(
            normalise_origin("HTTPS://A.example:8443").as_deref(),
            Some("https://a.example:8443")
        );
        assert_eq!(normalise_origin("https://a.example/path"), None);
        assert_eq!(normalise_origin("ftp://a.example"), None);
        assert_eq!(normalise_origin("https://user@a.example"), None);
        assert_eq!(normalise_origin("https://"), None);
    }

    #[tokio::test]
    async fn without_a_built_page_the_server_says_how_to_build_it() {
        let res = asset_from(&[], "index.html");
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(res.headers().contains_key(header::CONTENT_SECURITY_POLICY));
        assert!(NOT_BUILT.contains("bash scripts/build-web"));
        let built: &'static [(&str, &str, &[u8])] = &[("index.html", "text/html", b"<p>hi")];
        assert_eq!(asset_from(built, "index.html").status(), StatusCode::OK);
        assert_eq!(asset_from(built, "app.js").status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn the_policy_allows_nothing_from_elsewhere_and_no_inline_code() {
        assert!(!CSP.contains("unsafe-inline") && !CSP.contains("unsafe-eval"));
        assert!(!CSP.contains("http") && !CSP.contains('*'));
        assert!(CSP.contains("default-src 'none'"));
    }
}
