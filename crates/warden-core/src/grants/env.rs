//! Environment variables: the `env` grant (`NAME = "value"`), its validation and the
//! variables it sets in a call's WASI context.
//!
//! A plugin sees exactly the granted variables, never the host process's environment.

use std::collections::BTreeMap;

use wasmtime_wasi::WasiCtxBuilder;

/// Can `name = value` be set in a guest's environment?
pub(crate) fn check(name: &str, value: &str) -> Result<(), String> {
    if name.is_empty() || name.contains(['=', '\0']) || value.contains('\0') {
        return Err("invalid environment variable".into());
    }
    Ok(())
}

/// Set every granted variable in `wasi` (and nothing else).
pub fn apply(grants: &BTreeMap<String, String>, wasi: &mut WasiCtxBuilder) {
    for (key, value) in grants {
        wasi.env(key, value);
    }
}
