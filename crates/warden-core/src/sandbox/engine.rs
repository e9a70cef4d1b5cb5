//! The one shared wasmtime [`Engine`] and the ticker that drives its epochs.
//!
//! Owns the engine configuration (pooling allocator, epoch interruption, optional
//! fuel). It must never be configured per call: per-call limits live on the `Store`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::Result;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances while some instance runs. A call's wall-clock deadline
/// is checked on each tick, so a spinning guest is stopped within one tick of its
/// timeout.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Instances alive in this process (across engines: a reload makes another): the
/// tickers advance their epochs only while there is one, so an idle warden does not
/// wake 200 times a second. A deadline counts ticks from its instance's start, which
/// wakes the tickers first.
static RUNNING: AtomicUsize = AtomicUsize::new(0);
/// Where idle tickers wait; taken only when the count leaves or reaches 0 from the
/// tickers' side, never on a call's path otherwise.
static WAKE: (Mutex<()>, Condvar) = (Mutex::new(()), Condvar::new());

/// Held while an instance may run (from before its `Store` is made until it is gone).
pub struct Running(());

impl Running {
    pub fn start() -> Running {
        if RUNNING.fetch_add(1, Ordering::AcqRel) == 0 {
            // Under the lock, so a ticker between its check and its wait hears it.
            let _held = WAKE.0.lock().unwrap_or_else(|p| p.into_inner());
            WAKE.1.notify_all();
        }
        Running(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Wait until some instance runs or `stopped` is set.
fn wait_for_work(stopped: &AtomicBool) {
    let mut held = WAKE.0.lock().unwrap_or_else(|p| p.into_inner());
    while RUNNING.load(Ordering::Acquire) == 0 && !stopped.load(Ordering::Relaxed) {
        held = WAKE.1.wait(held).unwrap_or_else(|p| p.into_inner());
    }
}

/// Engine settings that vary with the loaded config.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// Instrument code with fuel counting (only when some component has a fuel limit:
    /// it costs every call a little).
    pub fuel: bool,
    /// Largest linear memory any component may get, in bytes (per-store limits are
    /// enforced separately and are usually much smaller).
    pub max_memory_bytes: usize,
    /// Instances that may be live at once across all concurrent calls.
    pub max_instances: u32,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            fuel: false,
            max_memory_bytes: 4096 << 20,
            max_instances: 1000,
        }
    }
}

/// The shared engine plus its epoch ticker, which stops when this is dropped.
pub struct SharedEngine {
    pub engine: Engine,
    stop: Arc<AtomicBool>,
}

impl SharedEngine {
    pub fn new(options: EngineOptions) -> Result<SharedEngine> {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(options.max_instances)
            .total_core_instances(options.max_instances * 4)
            .total_memories(options.max_instances * 2)
            .total_tables(options.max_instances * 4)
            .total_stacks(options.max_instances)
            .max_memory_size(options.max_memory_bytes)
            // Reset a slot for reuse by rewriting only the pages the last instance
            // dirtied (found with the PAGEMAP_SCAN ioctl where the kernel has it) and
            // keep them resident: a fresh instance then starts without page faults or
            // a TLB-flushing madvise. Isolation is unchanged: every page an instance
            // can see is back to its initial contents.
            .pagemap_scan(Enabled::Auto)
            .linear_memory_keep_resident(2 << 20)
            .table_keep_resident(64 << 10);

        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .consume_fuel(options.fuel)
            .memory_init_cow(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config)?;

        let stop = Arc::new(AtomicBool::new(false));
        let ticker = engine.weak();
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name("warden-epoch".into())
            .spawn(move || {
                loop {
                    wait_for_work(&stopped);
                    if stopped.load(Ordering::Relaxed) {
                        break;
                    }
                    std::thread::sleep(EPOCH_TICK);
                    match ticker.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })?;
        Ok(SharedEngine { engine, stop })
    }
}

impl Drop for SharedEngine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Under the lock, so a ticker between its check and its wait hears it.
        let _held = WAKE.0.lock().unwrap_or_else(|p| p.into_inner());
        WAKE.1.notify_all();
    }
}
