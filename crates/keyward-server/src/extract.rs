//! Extractors that turn every malformed request into a clear [`ApiError`] with a stable code,
//! instead of axum's plain-text rejections.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use keyward_service::Operation;

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

/// Every request body is a JSON object; serde would otherwise also read a struct from an array.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(ApiError::field("", "the body must be a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = field_of(&e);
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => ApiError::field(field, scrub(&inner.to_string())),
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

/// The field an error is about, as a path (`quota.refill.amount`, `permissions[2]`). For an
/// unknown field that is its parent: the unknown name came from the client and is not repeated.
fn field_of<E: std::fmt::Display>(e: &serde_path_to_error::Error<E>) -> String {
    let mut segments: Vec<String> = e.path().iter().map(ToString::to_string).collect();
    let message = e.inner().to_string();
    let unknown = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(name, _)| name);
    if unknown.is_some() && segments.last().map(String::as_str) == unknown {
        segments.pop();
    }
    let mut out = String::new();
    for segment in segments {
        if !(out.is_empty() || segment.starts_with('[')) {
            out.push('.');
        }
        out.push_str(&segment);
    }
    if out == "?" { String::new() } else { out }
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
    // serde names an unknown field or enum value between backticks; it came from the client.
    // The names it expected (ours) stay.
    for marker in [
        "unknown field `",
        "unknown variant `",
        "integer `",
        "floating point `",
        "character `",
    ] {
        if let Some(start) = out.find(marker) {
            let from = start + marker.len();
            if let Some(len) = out.get(from..).and_then(|r| r.find('`')) {
                out.replace_range(from..from + len, "…");
            }
        }
    }
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
                let field = field_of(&e);
                ApiError::field(field, scrub(&e.into_inner().to_string()))
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
            scrub("unknown field `kw_live_x`, expected `a`"),
            "unknown field `…`, expected `a`"
        );
        assert_eq!(
            scrub("unknown variant `secret`, expected `daily` or `monthly`"),
            "unknown variant `…`, expected `daily` or `monthly`"
        );
        assert_eq!(scrub(r#"dangling "quote"#), "dangling ");
    }
}

/// Who is calling: the bearer key and the client's address. The address is the socket's peer,
/// or, when the peer is a configured trusted proxy, the nearest address in `Forwarded` or
/// `X-Forwarded-For` that is not itself a trusted proxy.
#[derive(Debug)]
pub struct Caller {
    pub bearer: Option<String>,
    pub ip: Option<std::net::IpAddr>,
}

impl Caller {
    /// Authenticates the caller as an admin key that may perform `op` (the use case decides
    /// again once it knows the target).
    pub async fn authenticate(
        &self,
        state: &crate::AppState,
        op: Operation,
    ) -> Result<keyward_service::Actor, ApiError> {
        self.authenticate_with(&*state.authority()?, op).await
    }

    /// [`Caller::authenticate`] with the request's session already in hand.
    pub async fn authenticate_with(
        &self,
        authority: &keyward_service::Authority,
        op: Operation,
    ) -> Result<keyward_service::Actor, ApiError> {
        Ok(authority
            .verifier()
            .authenticate(self.bearer.as_deref(), op, self.ip)
            .await?)
    }

    /// [`Caller::authenticate`] for an operation on a secret path (or a listing glob).
    pub async fn authenticate_for(
        &self,
        state: &crate::AppState,
        op: Operation,
        path: &str,
    ) -> Result<keyward_service::Actor, ApiError> {
        Ok(state
            .authority()?
            .verifier()
            .authenticate_for(self.bearer.as_deref(), op, Some(path), self.ip)
            .await?)
    }
}

impl FromRequestParts<crate::AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &crate::AppState,
    ) -> Result<Self, Self::Rejection> {
        let Bearer(bearer) = Bearer::from_request_parts(parts, state).await?;
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        let ip = peer.map(|peer| client_ip(peer, &parts.headers, &state.config.trusted_proxies));
        Ok(Caller { bearer, ip })
    }
}

/// The client address behind trusted proxies: walk the forwarded chain from the nearest hop and
/// stop at the first address that is not a trusted proxy. Unparsable entries end the walk at the
/// last trusted hop, so a client cannot inject an address past an untrusted one.
pub fn client_ip(
    peer: std::net::IpAddr,
    headers: &axum::http::HeaderMap,
    trusted: &keyward_core::CidrSet,
) -> std::net::IpAddr {
    if !trusted.contains(peer) {
        return peer;
    }
    let mut chain: Vec<String> = Vec::new();
    for value in headers.get_all("forwarded") {
        let Ok(text) = value.to_str() else {
            return peer;
        };
        for element in text.split(',') {
            for pair in element.split(';') {
                if let Some((name, value)) = pair.trim().split_once('=')
                    && name.eq_ignore_ascii_case("for")
                {
                    chain.push(value.trim().trim_matches('"').to_owned());
                }
            }
        }
    }
    if chain.is_empty() {
        for value in headers.get_all("x-forwarded-for") {
            let Ok(text) = value.to_str() else {
                return peer;
            };
            chain.extend(text.split(',').map(|a| a.trim().to_owned()));
        }
    }
    let mut client = peer;
    for hop in chain.iter().rev() {
        // `for=` may carry "[2001:db8::1]:4711" or "192.0.2.1:4711"; X-Forwarded-For a bare address.
        let text = hop
            .strip_prefix('[')
            .and_then(|h| h.split_once(']'))
            .map_or(hop.as_str(), |(a, _)| a);
        let parsed = text
            .parse::<std::net::IpAddr>()
            .ok()
            .or_else(|| text.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()));
        match parsed {
            Some(ip) => {
                client = ip;
                if !trusted.contains(ip) {
                    break;
                }
            }
            None => break,
        }
    }
    client
}

#[cfg(test)]
mod client_ip_tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> axum::http::HeaderMap {
        let mut h = axum::http::HeaderMap::new();
        for &(k, v) in pairs {
            h.append(k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn forwarded_headers_count_only_behind_trusted_proxies() {
        let trusted = keyward_core::CidrSet::parse(&["10.0.0.0/8"]).unwrap();
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let cases = [
            // Untrusted peer: its headers are ignored.
            (
                "203.0.113.5",
                vec![("x-forwarded-for", "198.51.100.1")],
                "203.0.113.5",
            ),
            // Trusted proxy: the client it names.
            (
                "10.0.0.2",
                vec![("x-forwarded-for", "198.51.100.1")],
                "198.51.100.1",
            ),
            // A forged entry before the real client is not believed.
            (
                "10.0.0.2",
                vec![("x-forwarded-for", "1.1.1.1, 198.51.100.1")],
                "198.51.100.1",
            ),
            // Two trusted hops.
            (
                "10.0.0.2",
                vec![("x-forwarded-for", "198.51.100.1, 10.0.0.9")],
                "198.51.100.1",
            ),
            // RFC 7239 Forwarded wins over X-Forwarded-For, IPv6 with port.
            (
                "10.0.0.2",
                vec![
                    ("forwarded", "for=\"[2001:db8::7]:4711\";proto=https"),
                    ("x-forwarded-for", "1.1.1.1"),
                ],
                "2001:db8::7",
            ),
            (
                "10.0.0.2",
                vec![("forwarded", "for=192.0.2.60;by=10.0.0.2")],
                "192.0.2.60",
            ),
            // Garbage stops the walk at the proxy.
            (
                "10.0.0.2",
                vec![("x-forwarded-for", "not-an-ip")],
                "10.0.0.2",
            ),
            ("10.0.0.2", vec![], "10.0.0.2"),
        ];
        for (peer, hs, expected) in cases {
            assert_eq!(
                client_ip(ip(peer), &headers(&hs), &trusted),
                ip(expected),
                "{peer} {hs:?}"
            );
        }
    }
}

/// For nested objects (`policy`, `quota`, …): accepts a JSON object only, never an array.
pub fn object<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: DeserializeOwned,
{
    use serde::Deserialize;
    let value = serde_json::Value::deserialize(d)?;
    if !value.is_object() {
        return Err(serde::de::Error::custom("expected a JSON object"));
    }
    serde_json::from_value(value).map_err(serde::de::Error::custom)
}

/// [`object`] for an optional field.
pub fn optional_object<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: DeserializeOwned,
{
    use serde::Deserialize;
    let value = serde_json::Value::deserialize(d)?;
    if value.is_null() {
        return Ok(None);
    }
    if !value.is_object() {
        return Err(serde::de::Error::custom("expected a JSON object"));
    }
    serde_json::from_value(value)
        .map(Some)
        .map_err(serde::de::Error::custom)
}
