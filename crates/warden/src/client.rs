//! A small HTTP client for the commands that talk to a running `warden serve` over its
//! operator API (JSON in and out, a bearer token).

use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;

/// Send `method url` with `token` and an optional JSON `body`; the status and the JSON
/// answer (`Null` when the answer is not JSON).
pub async fn request(
    method: &str,
    url: &str,
    token: &str,
    body: Option<Value>,
) -> Result<(u16, Value)> {
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let request = http::Request::builder()
        .method(method)
        .uri(url)
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("warden/", env!("CARGO_PKG_VERSION")),
        )
        .body(
            Full::new(Bytes::from(payload))
                .map_err(|never| match never {})
                .boxed(),
        )
        .with_context(|| format!("{method} {url}"))?;
    let send = async {
        let (response, io) = wasmtime_wasi_http::default_send_request(request, None)
            .await
            .map_err(|e| anyhow::anyhow!("{method} {url}: {e:?}"))?;
        let conn = tokio::spawn(io);
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("{method} {url}: reading the answer: {e:?}"))?
            .to_bytes();
        conn.abort();
        Ok::<_, anyhow::Error>((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    };
    tokio::time::timeout(Duration::from_secs(30), send)
        .await
        .with_context(|| format!("{method} {url}: no answer within 30 s"))?
}
