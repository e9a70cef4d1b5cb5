//! Guest-side bindings for warden components written in Rust.
//!
//! A tool is a set of typed functions marked `#[warden_guest::tool]` and exported with
//! `export_tools!` (feature `sdk`, see [`sdk`]), or, by hand, implements
//! [`tool::Guest`] and calls [`export_tool!`]; a policy implements
//! [`policy::Guest`] and calls [`export_policy!`]. Both worlds come from `wit/v0.1.0/plugin.wit`
//! (`warden:plugin@0.1.0`). This crate only binds the contract: it never adds
//! capabilities, which come solely from the operator's grants in warden.toml.
#![no_std]

extern crate alloc;
// The generated export macros name this crate by path, from inside it too.
extern crate self as warden_guest;

#[doc(hidden)]
pub use wit_bindgen;

/// The `tool` world: export `describe` and `invoke`.
pub mod tool {
    wit_bindgen::generate!({
        path: "../wit/v0.1.0",
        world: "warden:plugin/tool@0.1.0",
        pub_export_macro: true,
        export_macro_name: "export_tool",
        default_bindings_module: "warden_guest::tool",
        runtime_path: "warden_guest::wit_bindgen::rt",
    });
    pub use self::warden::plugin::host::{
        SecretError, progress, reveal_secret, secret_placeholder,
    };
    pub use self::warden::plugin::types::Annotations;
}

/// The `policy` world: export `evaluate`.
pub mod policy {
    wit_bindgen::generate!({
        path: "../wit/v0.1.0",
        world: "warden:plugin/policy@0.1.0",
        pub_export_macro: true,
        export_macro_name: "export_policy",
        default_bindings_module: "warden_guest::policy",
        runtime_path: "warden_guest::wit_bindgen::rt",
        with: {
            "warden:plugin/types@0.1.0": crate::tool::warden::plugin::types,
            "warden:plugin/log@0.1.0": crate::tool::warden::plugin::log,
        },
    });
    pub use crate::tool::warden::plugin::types::{Annotations, ApprovalSpec, Tier};
}

pub use policy::export_policy;
pub use tool::export_tool;
pub use tool::warden::plugin::log::Level;

/// Write one line to the run's log (never to the host's stdout).
pub fn log(level: Level, message: &str) {
    tool::warden::plugin::log::log(level, message, &[]);
}

/// Write one line with key/value fields to the run's log.
pub fn log_fields(level: Level, message: &str, fields: &[(&str, &str)]) {
    let owned: alloc::vec::Vec<(alloc::string::String, alloc::string::String)> = fields
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect();
    tool::warden::plugin::log::log(level, message, &owned);
}

impl tool::ToolError {
    /// A tool error with a short machine-readable `code` and a human message.
    pub fn new(code: &str, message: impl Into<alloc::string::String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}

#[cfg(feature = "http")]
pub mod http;

// The typed-tool SDK needs std (serde_json, schemars); lean policies never turn it on.
#[cfg(feature = "sdk")]
extern crate std;

#[cfg(feature = "sdk")]
pub mod sdk;

/// Marks a function as a tool: its doc comment is the description, its argument's and
/// result's types give the input and output schemas. See [`sdk`].
#[cfg(feature = "sdk")]
pub use warden_guest_macros::tool;

/// Exports the listed `#[tool]` functions as the component's tools. See [`sdk`].
#[cfg(feature = "sdk")]
pub use warden_guest_macros::export_tools;

pub mod lean;
