//! Host-side bindings generated from `wit/plugin.wit` (`warden:plugin@0.1.0`).
//!
//! The two worlds share the `types` and `log` interfaces; the tool bindings reuse the
//! policy bindings' generated modules so each host trait is implemented once.

pub mod policy {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "warden:plugin/policy@0.1.0",
        // `tracing` makes every import call a span the audit log records (hostcalls.rs).
        imports: { default: tracing },
        exports: { default: async },
    });
}

pub mod tool {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "warden:plugin/tool@0.1.0",
        imports: { default: tracing },
        exports: { default: async },
        with: {
            "warden:plugin/types": super::policy::warden::plugin::types,
            "warden:plugin/log": super::policy::warden::plugin::log,
        },
    });
}

pub use policy::warden::plugin::log::{Host as LogHost, Level};
pub use policy::warden::plugin::types::{
    Action, Annotations, ApprovalSpec, Decision, Tier, ToolError, ToolSpec,
};
pub use tool::warden::plugin::host::{Host as ToolHost, SecretError};
