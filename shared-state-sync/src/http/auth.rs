//! The filter API's access check: the deployment's bearer token, compared in constant
//! time, and the JSON error bodies of refused calls.

use crate::settings::ApiSettings;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// An OpenAI-style JSON error (`{"error": {"message", "type", "code"}}`).
pub fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body =
        serde_json::json!({"error": {"message": message, "type": "kvgate_sidecar", "code": code}});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Whether the `authorization` header value carries `token`.
pub fn authorized(header_value: Option<&[u8]>, token: &[u8]) -> bool {
    let Some(v) = header_value else { return false };
    let Some(given) = v.strip_prefix(b"Bearer ") else {
        return false;
    };
    bool::from(given.ct_eq(token))
}

/// Middleware of the filter routes: 401 without the token (when the deployment has one).
pub async fn require_token(
    State(access): State<Arc<ApiSettings>>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(token) = &access.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        if !authorized(given, token.expose().as_bytes()) {
            let mut r = json_error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this sidecar API needs `authorization: Bearer <token>` (sidecar_token)",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return r;
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let t = b"0123456789abcdef";
        assert!(authorized(Some(b"Bearer 0123456789abcdef"), t));
        assert!(!authorized(None, t));
        assert!(!authorized(Some(b"Bearer 0123456789abcde"), t));
        assert!(!authorized(Some(b"Bearer 0123456789abcdefX"), t));
        assert!(!authorized(Some(b"bearer 0123456789abcdef"), t));
        assert!(!authorized(Some(b"0123456789abcdef"), t));
        assert!(!authorized(Some(b"Basic 0123456789abcdef"), t));
    }
}
