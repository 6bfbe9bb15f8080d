//! Extractors that turn every malformed request into a clear [`ApiError`] with a stable code,
//! instead of axum's plain-text rejections.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ErrorCode};

/// A JSON body parsed into `T`. Syntax errors are `INVALID_JSON`; wrong types, missing or
/// unknown fields are `INVALID_FIELD` naming the field. Any content type is accepted, since
/// `curl -d` sends form encoding by default.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(ErrorCode::PayloadTooLarge, "the request body is too large")
            } else {
                ApiError::new(ErrorCode::InvalidJson, "the request body could not be read")
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let field = if field == "." { String::new() } else { field };
                ApiError::field(field, scrub(&inner.to_string()))
            }
            _ => ApiError::new(
                ErrorCode::InvalidJson,
                format!("the body is not valid JSON: {}", scrub(&inner.to_string())),
            ),
        }
    })?;
    de.end().map_err(|_| {
        ApiError::new(
            ErrorCode::InvalidJson,
            "the body has data after the JSON value",
        )
    })?;
    Ok(value)
}

/// Removes string values quoted in a serde message (`invalid type: string "…"`), so that no
/// client-supplied text, which may be a key, is echoed back or logged. Field names stay.
fn scrub(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find('"') {
        out.push_str(rest.get(..start).unwrap_or_default());
        let after = rest.get(start + 1..).unwrap_or_default();
        match after.find('"') {
            Some(end) => {
                out.push_str("\"…\"");
                rest = after.get(end + 1..).unwrap_or_default();
            }
            None => {
                rest = "";
            }
        }
    }
    out.push_str(rest);
    // serde_json appends " at line L column C": useful for syntax errors, kept.
    out
}

/// Query parameters parsed into `T`; unknown parameters are refused.
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded_parse(query));
        serde_path_to_error::deserialize(de)
            .map(QueryParams)
            .map_err(|e| {
                let field = e.path().to_string();
                ApiError::field(
                    if field == "." { String::new() } else { field },
                    scrub(&e.into_inner().to_string()),
                )
            })
    }
}

fn form_urlencoded_parse(query: &str) -> form_urlencoded::Parse<'_> {
    form_urlencoded::parse(query.as_bytes())
}

/// The bearer token of the `Authorization` header, if any. A header that is present but not a
/// bearer token counts as none.
#[derive(Debug)]
pub struct Bearer(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for Bearer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| token.trim().to_owned())
            });
        Ok(Bearer(token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_removes_quoted_values() {
        assert_eq!(
            scrub(r#"invalid type: string "kw_live_secret", expected u64"#),
            r#"invalid type: string "…", expected u64"#
        );
        assert_eq!(
            scrub("unknown field `x`, expected `a`"),
            "unknown field `x`, expected `a`"
        );
        assert_eq!(scrub(r#"dangling "quote"#), "dangling ");
    }
}
