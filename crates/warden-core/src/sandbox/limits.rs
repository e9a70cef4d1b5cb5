//! Per-call resource limits: memory of the whole instance, wall-clock time (epochs),
//! and optional fuel. Owns turning a limit hit into a typed [`LimitExceeded`].
//! It must never let a limit hit escape as a panic or take the host down.

use std::time::{Duration, Instant};

use wasmtime::{ResourceLimiter, Store, Trap, UpdateDeadline};

use crate::call::LimitExceeded;
use crate::config::Limits;
use crate::sandbox::engine::EPOCH_TICK;

/// The server-wide bound on the guest memory of calls in flight: each tool call
/// reserves its `memory_mb` before it starts and gives it back when it ends; a call that
/// cannot reserve it within `wait` is not run. Shared by a runtime and the ones that
/// replace it on reload.
pub struct Capacity {
    permits: tokio::sync::Semaphore,
    total_mb: u64,
    wait: Duration,
}

impl Capacity {
    pub fn new(total_mb: u64, wait: Duration) -> Capacity {
        let permits = usize::try_from(total_mb)
            .unwrap_or(usize::MAX)
            .min(tokio::sync::Semaphore::MAX_PERMITS);
        Capacity {
            permits: tokio::sync::Semaphore::new(permits),
            total_mb,
            wait,
        }
    }

    /// Reserve `mb` MiB for one call, waiting up to the configured time.
    pub async fn admit(&self, mb: u64) -> Result<tokio::sync::SemaphorePermit<'_>, LimitExceeded> {
        let refused = LimitExceeded::Capacity(mb, self.total_mb);
        let n = u32::try_from(mb).map_err(|_| refused)?;
        if mb > self.total_mb {
            return Err(refused);
        }
        match tokio::time::timeout(self.wait, self.permits.acquire_many(n)).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(refused),
        }
    }
}

/// Caps the linear memory of all of an instance's memories together, and records the peak.
#[derive(Debug)]
pub struct MemoryLimiter {
    limit: usize,
    used: usize,
    pub peak: usize,
    /// A grow was refused: a trap that follows is reported as the memory limit.
    pub hit: bool,
}

impl MemoryLimiter {
    pub fn new(limit_mb: u64) -> MemoryLimiter {
        MemoryLimiter {
            limit: (limit_mb as usize) << 20,
            used: 0,
            peak: 0,
            hit: false,
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let next = self.used.saturating_sub(current).saturating_add(desired);
        if next > self.limit {
            self.hit = true;
            return Ok(false);
        }
        self.used = next;
        self.peak = self.peak.max(next);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }

    fn instances(&self) -> usize {
        64
    }
    fn tables(&self) -> usize {
        64
    }
    fn memories(&self) -> usize {
        16
    }
}

/// Store data that carries a memory limiter.
pub trait Limited: Send + 'static {
    fn limiter(&mut self) -> &mut MemoryLimiter;
}

/// Apply `limits` to a fresh store: memory, deadline (checked every epoch tick, with
/// a yield to the executor so spinning guests share threads fairly), and fuel when
/// the engine counts it.
pub fn apply<T: Limited>(
    store: &mut Store<T>,
    limits: &Limits,
    engine_counts_fuel: bool,
) -> wasmtime::Result<()> {
    store.limiter(|state| state.limiter());
    let timeout = limits.timeout_ms;
    let deadline = Instant::now() + Duration::from_millis(timeout);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if Instant::now() >= deadline {
            Err(LimitExceeded::Timeout(timeout).into())
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
    // A store in an engine that counts fuel starts with none.
    if engine_counts_fuel {
        store.set_fuel(limits.fuel.unwrap_or(u64::MAX))?;
    }
    Ok(())
}

/// The wall-clock budget for a whole call, host calls included: the epoch deadline
/// stops guest code; this stops a call stuck in a host call (e.g. a slow upstream).
pub fn call_budget(limits: &Limits) -> Duration {
    Duration::from_millis(limits.timeout_ms) + EPOCH_TICK * 2
}

/// Classify a call error: a limit, or something else (a trap, a host error).
pub fn classify(
    error: &wasmtime::Error,
    limits: &Limits,
    memory_hit: bool,
) -> Option<LimitExceeded> {
    if let Some(limit) = error.downcast_ref::<LimitExceeded>() {
        return Some(*limit);
    }
    if let Some(Trap::OutOfFuel) = error.downcast_ref::<Trap>() {
        return Some(LimitExceeded::Fuel(limits.fuel.unwrap_or(0)));
    }
    if memory_hit {
        return Some(LimitExceeded::Memory(limits.memory_mb));
    }
    None
}
