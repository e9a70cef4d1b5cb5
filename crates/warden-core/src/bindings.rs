//! Host-side bindings generated from `wit/v0.1.0/plugin.wit` (`warden:plugin@0.1.0`).
//!
//! The two worlds share the `types` and `log` interfaces; the tool bindings reuse the
//! policy bindings' generated modules so each host trait is implemented once.

pub mod policy {
    wasmtime::component::bindgen!({
        path: "../../wit/v0.1.0",
        world: "warden:plugin/policy@0.1.0",
        // `tracing` makes every import call a span the audit log records (hostcalls.rs).
        imports: { default: tracing },
        exports: { default: async },
    });
}

pub mod tool {
    wasmtime::component::bindgen!({
        path: "../../wit/v0.1.0",
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

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    /// `warden:plugin@0.1.0` is released: components built against it must keep
    /// loading, so its text never changes. A new contract is a new directory
    /// (`wit/v0.2.0/`) with its own bindings, beside this one.
    #[test]
    fn the_released_contract_is_frozen() {
        let wit =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../wit/v0.1.0/plugin.wit");
        let text = std::fs::read(&wit).unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(&text)),
            "de7a8e1c955797d1b43599928c78636f5464e2c7944532f800ed6ec86e7c49d1",
            "{} changed: released WIT is frozen; add a new version beside it",
            wit.display()
        );
    }
}
