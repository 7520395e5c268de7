//! The one HTTP error type and the JSON extractor that reports through it.

use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use contract::ApiErrorBody;
use serde::de::DeserializeOwned;

/// Every failed request, as a status plus the contract's JSON error body.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Sent as `Retry-After` (whole seconds) with 429 and 503.
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after: None }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", message)
    }
    pub fn unavailable(code: &'static str, message: impl Into<String>, retry_after: Duration) -> Self {
        Self { retry_after: Some(retry_after), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message) }
    }
    pub fn too_many(code: &'static str, message: impl Into<String>, retry_after: Duration) -> Self {
        Self { retry_after: Some(retry_after), ..Self::new(StatusCode::TOO_MANY_REQUESTS, code, message) }
    }
}

/// The `code` of an error answer, left in the response's extensions for middleware (an
/// audit log) that records how a call ended without reading the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorCode(pub &'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ApiErrorBody { code: self.code.to_string(), message: self.message };
        let mut resp = (self.status, axum::Json(body)).into_response();
        resp.extensions_mut().insert(ErrorCode(self.code));
        if let Some(after) = self.retry_after {
            let secs = after.as_secs_f64().ceil().max(1.0) as u64;
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let message = rejection.body_text().to_lowercase();
        match rejection {
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected content-type: application/json",
            ),
            JsonRejection::JsonSyntaxError(_) => Self::bad_request("malformed_json", message),
            JsonRejection::JsonDataError(_) => Self::unprocessable(message),
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("request body is larger than {} bytes", contract::MAX_BODY_BYTES),
            ),
            other => Self::new(other.status(), "bad_request", message),
        }
    }
}

/// Time a client has to send a whole request body. Bodies are at most 64 KiB, so
/// anything slower is a client holding a connection and a task hostage byte by byte.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// `axum::Json`, but rejections come back as [`ApiError`] with the contract's body, and
/// the body must arrive within [`BODY_TIMEOUT`].
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match tokio::time::timeout(BODY_TIMEOUT, axum::Json::<ObjectOnly<T>>::from_request(req, state)).await {
            Ok(json) => Ok(Self(json?.0.0)),
            Err(_) => Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!("the request body did not arrive within {} s", BODY_TIMEOUT.as_secs()),
            )),
        }
    }
}

/// A body that must be a JSON object. Serde's derived structs also accept an array of
/// their fields in order, so `[]` decoded into a request whose fields all have defaults
/// (found by schemathesis on `POST .../drain`); every Apiary body is an object, so
/// anything else is refused here, once, for every endpoint. One pass, no extra copy.
#[derive(Debug)]
struct ObjectOnly<T>(T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Object<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Object<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Object(std::marker::PhantomData)).map(ObjectOnly)
    }
}

/// `axum::extract::Query`, but a query string that does not parse is a JSON 400.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> axum::extract::FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
    }
}

/// `axum::extract::Path`, but a path segment that does not decode is a JSON 400.
pub struct PathParam<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> axum::extract::FromRequestParts<S> for PathParam<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Self(p.0))
            .map_err(|e| ApiError::bad_request("invalid_id", e.body_text()))
    }
}

/// JSON 404 for unknown paths.
pub async fn not_found_fallback() -> ApiError {
    ApiError::not_found("no such endpoint")
}

/// JSON 405 for a known path with the wrong method.
pub async fn method_not_allowed_fallback() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this endpoint")
}

/// The token in an `Authorization: Bearer <token>` header, if there is one.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

/// The request's idempotency key, if it has a valid one.
pub fn idempotency_key(headers: &axum::http::HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(contract::IDEMPOTENCY_KEY) else { return Ok(None) };
    let invalid = |why: String| ApiError::bad_request("invalid_idempotency_key", why);
    let key = value.to_str().map_err(|_| invalid("an idempotency key is plain ASCII".into()))?;
    contract::check_idempotency_key(key).map_err(invalid)?;
    Ok(Some(key.to_string()))
}

#[cfg(test)]
mod tests {
    use super::ObjectOnly;

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Body {
        #[serde(default)]
        n: u32,
    }

    #[derive(serde::Deserialize, Debug, PartialEq)]
    #[serde(tag = "kind", rename_all = "snake_case")]
    enum Tagged {
        Sleep { ms: u64 },
    }

    #[test]
    fn only_objects_are_bodies() {
        let ok: ObjectOnly<Body> = serde_json::from_str(r#"{"n": 3}"#).expect("an object");
        assert_eq!(ok.0, Body { n: 3 });
        let err = serde_json::from_str::<ObjectOnly<Body>>("[]").expect_err("an array is not a body");
        assert!(err.is_data() && err.to_string().contains("a JSON object"), "{err}");
        assert!(serde_json::from_str::<ObjectOnly<Body>>("[7]").is_err());
        let tagged: ObjectOnly<Tagged> = serde_json::from_str(r#"{"kind": "sleep", "ms": 5}"#).expect("tagged");
        assert_eq!(tagged.0, Tagged::Sleep { ms: 5 });
    }
}
