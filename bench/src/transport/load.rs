//! Closed-loop load shared by every system: who may start the next operation, per-worker
//! counters, and the measurement a run produces.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::host;
use crate::stats::LatencyRecorder;
use crate::transport::case::Budget;

/// Errors after which one worker gives up: a dead connection fails every operation at once, and
/// spinning on it until the deadline would only burn the CPU being measured.
pub const WORKER_ERRORS_MAX: u64 = 100;

/// Decides whether another operation may start in a phase. Shared by the workers of a phase
/// (atomics, so tokio workers on a current-thread runtime and glommio tasks can both use it).
#[derive(Debug)]
pub struct Gate {
    deadline: Instant,
    ops_left: AtomicU64,
}

impl Gate {
    /// A gate for one phase: `budget` operations or time, never past `time_cap` from now.
    pub fn new(budget: Budget, time_cap: Duration) -> Gate {
        let now = Instant::now();
        let (ops, duration) = match budget {
            Budget::Ops(ops) => (ops, time_cap),
            Budget::Time(duration) => (u64::MAX, duration.min(time_cap)),
        };
        Gate {
            deadline: now + duration,
            ops_left: AtomicU64::new(ops),
        }
    }

    /// Takes a ticket for one operation; false once the budget or the time is spent.
    pub fn take(&self) -> bool {
        if Instant::now() >= self.deadline {
            return false;
        }
        self.ops_left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// What one worker (one in-flight slot) saw.
#[derive(Clone, Debug, Default)]
pub struct WorkerOutcome {
    pub ops: u64,
    pub bytes: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub latency: LatencyRecorder,
    pub finished: Option<Instant>,
}

impl WorkerOutcome {
    pub fn record_ok(&mut self, latency: Duration, bytes: u64) {
        self.ops += 1;
        self.bytes += bytes;
        self.latency.record(latency);
    }

    pub fn record_error(&mut self, error: String) {
        self.errors += 1;
        self.first_error.get_or_insert(error);
    }

    pub fn merge(&mut self, other: &WorkerOutcome) {
        self.ops += other.ops;
        self.bytes += other.bytes;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        self.latency.merge(&other.latency);
        self.finished = self.finished.max(other.finished);
    }
}

/// Runs operations one after another while the gate allows: one in-flight slot. Runtime-agnostic:
/// the caller spawns `in_flight` of these on its own runtime.
pub async fn closed_loop_worker<F, Fut>(gate: &Gate, bytes_per_op: u64, mut op: F) -> WorkerOutcome
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut outcome = WorkerOutcome::default();
    while outcome.errors < WORKER_ERRORS_MAX && gate.take() {
        let started = Instant::now();
        match op().await {
            Ok(()) => outcome.record_ok(started.elapsed(), bytes_per_op),
            Err(error) => outcome.record_error(error),
        }
    }
    outcome.finished = Some(Instant::now());
    outcome
}

/// Start of a measured phase: wall clock and process CPU.
#[derive(Clone, Copy, Debug)]
pub struct PhaseStart {
    at: Instant,
    cpu: Duration,
    machine_busy: Option<Duration>,
}

impl PhaseStart {
    pub fn now() -> PhaseStart {
        PhaseStart {
            at: Instant::now(),
            cpu: host::process_cpu_time(),
            machine_busy: host::machine_busy_cpu_time(),
        }
    }

    pub fn at(&self) -> Instant {
        self.at
    }

    /// Closes the phase: elapsed up to the last completion, CPU up to now.
    pub fn finish(self, outcome: WorkerOutcome) -> Measurement {
        let cpu = host::process_cpu_time().saturating_sub(self.cpu);
        let end = outcome.finished.unwrap_or_else(Instant::now);
        let elapsed = end.saturating_duration_since(self.at);
        let mut extra = BTreeMap::new();
        if let (Some(before), Some(after)) = (self.machine_busy, host::machine_busy_cpu_time()) {
            let others = after.saturating_sub(before).saturating_sub(cpu);
            if elapsed > Duration::ZERO {
                extra.insert(
                    OTHER_PROCESSES_CORES.to_string(),
                    others.as_secs_f64() / elapsed.as_secs_f64(),
                );
            }
        }
        Measurement {
            elapsed,
            bytes: outcome.bytes,
            ops: outcome.ops,
            latency: (outcome.latency.count() > 0).then_some(outcome.latency),
            cpu: Some(cpu),
            errors: outcome.errors,
            first_error: outcome.first_error,
            extra,
        }
    }
}

/// Extra field of every run: cores' worth of CPU that other processes on the machine used during
/// the measured phase (0 on a quiet machine; near the core count means the run was starved).
pub const OTHER_PROCESSES_CORES: &str = "other_processes_cores";

/// Merges the outcomes of a phase's workers.
pub fn merge_workers(outcomes: &[WorkerOutcome]) -> WorkerOutcome {
    let mut total = WorkerOutcome::default();
    for outcome in outcomes {
        total.merge(outcome);
    }
    total
}

/// What a system reports for one measured run of a case.
#[derive(Clone, Debug)]
pub struct Measurement {
    pub elapsed: Duration,
    /// Payload bytes moved, both directions together.
    pub bytes: u64,
    pub ops: u64,
    /// Per-operation latency; `None` where latency does not apply.
    pub latency: Option<LatencyRecorder>,
    /// Process CPU (user + system) over the measured interval; `None` where not measured.
    pub cpu: Option<Duration>,
    pub errors: u64,
    pub first_error: Option<String>,
    /// System-specific observations (e.g. quinn's mean UDP datagram size), reported as is.
    pub extra: BTreeMap<String, f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_hands_out_exactly_the_op_budget() {
        let gate = Gate::new(Budget::Ops(3), Duration::from_secs(10));
        assert_eq!((0..10).filter(|_| gate.take()).count(), 3);
    }

    #[test]
    fn gate_closes_at_the_deadline() {
        let gate = Gate::new(
            Budget::Time(Duration::from_millis(20)),
            Duration::from_secs(10),
        );
        assert!(gate.take());
        std::thread::sleep(Duration::from_millis(30));
        assert!(!gate.take());
        let capped = Gate::new(Budget::Ops(1_000), Duration::ZERO);
        assert!(!capped.take());
    }

    #[test]
    fn worker_counts_successes_and_stops_on_errors() {
        let gate = Gate::new(Budget::Ops(5), Duration::from_secs(10));
        let mut calls = 0;
        let outcome = block_on(closed_loop_worker(&gate, 10, || {
            calls += 1;
            let result = if calls % 2 == 0 {
                Err(format!("fail {calls}"))
            } else {
                Ok(())
            };
            std::future::ready(result)
        }));
        assert_eq!((outcome.ops, outcome.bytes, outcome.errors), (3, 30, 2));
        assert_eq!(outcome.first_error.as_deref(), Some("fail 2"));

        let endless = Gate::new(Budget::Ops(u64::MAX), Duration::from_secs(10));
        let failing = block_on(closed_loop_worker(&endless, 1, || {
            std::future::ready(Err("x".into()))
        }));
        assert_eq!(failing.errors, WORKER_ERRORS_MAX);
    }

    /// Polls a future that never waits (the test futures are all ready at once).
    fn block_on<F: Future>(future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        loop {
            if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut context) {
                return output;
            }
        }
    }
}
