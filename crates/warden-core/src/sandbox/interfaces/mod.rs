//! Host implementations of warden's own WIT interfaces, one file per interface.
//! WASI and `wasi:http` come from wasmtime-wasi; their policy lives in `sandbox`
//! and `egress`.

pub mod host;
pub mod log;
