//! A minimal blocking HTTP client over `wasi:http/outgoing-handler`.
//!
//! Whether a request may leave the sandbox is decided by the host, per request,
//! against the operator's grant; a refused request comes back as an error here.
//! Redirects are never followed implicitly: a caller that wants to follow one makes
//! a new request, which the host checks again.
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use wasip2::http::outgoing_handler;
pub use wasip2::http::types::Method;
use wasip2::http::types::{Fields, OutgoingBody, OutgoingRequest, Scheme};
use wasip2::io::streams::StreamError;

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body was longer than the caller's limit and was cut there.
    pub truncated: bool,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// GET `url` (`http://` or `https://`), reading at most `max_body` bytes of body.
pub fn get(url: &str, headers: &[(&str, &str)], max_body: usize) -> Result<Response, String> {
    request(Method::Get, url, headers, None, max_body)
}

/// Send `method` to `url` with `headers` and an optional `body`, reading at most
/// `max_body` bytes of the response body.
pub fn request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    max_body: usize,
) -> Result<Response, String> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else {
        return Err(format!(
            "unsupported URL {url:?}: only http:// and https://"
        ));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };

    let fields = Fields::new();
    for (name, value) in headers {
        fields
            .append(name, value.as_bytes())
            .map_err(|e| format!("header {name}: {e:?}"))?;
    }
    let request = OutgoingRequest::new(fields);
    let set = request.set_method(&method).is_ok()
        && request.set_scheme(Some(&scheme)).is_ok()
        && request.set_authority(Some(authority)).is_ok()
        && request.set_path_with_query(Some(path)).is_ok();
    if !set {
        return Err(format!("invalid URL {url:?}"));
    }

    let outgoing = match body {
        Some(_) => Some(
            request
                .body()
                .map_err(|()| String::from("request body already taken"))?,
        ),
        None => None,
    };
    // Send first, then write: the host may read the body while the request is in flight.
    let pending = outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
    if let (Some(outgoing), Some(bytes)) = (outgoing, body) {
        {
            let stream = outgoing
                .write()
                .map_err(|()| String::from("request body stream already taken"))?;
            for chunk in bytes.chunks(4096) {
                stream
                    .blocking_write_and_flush(chunk)
                    .map_err(|e| format!("writing request body: {e:?}"))?;
            }
        }
        OutgoingBody::finish(outgoing, None)
            .map_err(|e| format!("finishing request body: {e:?}"))?;
    }
    pending.subscribe().block();
    let response = match pending.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(e))) => return Err(format!("{e:?}")),
        Some(Err(())) | None => return Err("response already taken".into()),
    };

    let status = response.status();
    let headers = response
        .headers()
        .entries()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect();
    let body = response
        .consume()
        .map_err(|()| String::from("body already taken"))?;
    let stream = body
        .stream()
        .map_err(|()| String::from("body stream already taken"))?;
    let mut bytes = Vec::new();
    let mut truncated = false;
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => {
                if bytes.len() + chunk.len() > max_body {
                    let room = max_body - bytes.len();
                    bytes.extend_from_slice(&chunk[..room]);
                    truncated = true;
                    break;
                }
                bytes.extend_from_slice(&chunk);
            }
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(format!("reading body: {}", e.to_debug_string()));
            }
        }
    }
    Ok(Response {
        status,
        headers,
        body: bytes,
        truncated,
    })
}
