//! What every component load and every call shares: one engine (and its epoch ticker),
//! the linkers of both worlds, and the compile cache.
//!
//! Built with each loaded runtime (a reload builds a new one; the compile cache on disk
//! spares it recompiling unchanged components). It must never hold anything of one
//! call.

use std::path::Path;

use wasmtime::Engine;
use wasmtime::component::Linker;

use crate::sandbox::cache::CompileCache;
use crate::sandbox::component::{self, ComponentError, Loaded, World};
use crate::sandbox::context::{self, PolicyState, ToolState};
use crate::sandbox::engine::{EngineOptions, SharedEngine};

/// What every component load and every call shares: one engine, its linkers, the cache.
pub struct Shared {
    pub engine: Engine,
    pub cache: CompileCache,
    pub tool_linker: Linker<ToolState>,
    pub policy_linker: Linker<PolicyState>,
    /// The engine counts fuel (some component has a fuel limit).
    pub fuel: bool,
    // Last: dropping it stops the epoch ticker.
    _ticker: SharedEngine,
}

impl Shared {
    /// Load the component at `path` (checking the `pin`, if any) and check it
    /// implements `world`.
    pub fn component(
        &self,
        path: &Path,
        pin: Option<&str>,
        world: World,
    ) -> Result<Loaded, ComponentError> {
        let loaded = component::load(&self.engine, &self.cache, path, pin)?;
        loaded.expect_world(path, world)?;
        Ok(loaded)
    }

    /// An engine with `options`, caching compiled components under `cache_dir`.
    pub fn new(options: EngineOptions, cache_dir: Option<&Path>) -> anyhow::Result<Shared> {
        let ticker = SharedEngine::new(options)?;
        let engine = ticker.engine.clone();
        Ok(Shared {
            cache: CompileCache::new(&engine, cache_dir),
            tool_linker: context::tool_linker(&engine)?,
            policy_linker: context::policy_linker(&engine)?,
            fuel: options.fuel,
            engine,
            _ticker: ticker,
        })
    }
}
