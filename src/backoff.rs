//! Per-object backoff after failures. Every trigger (inventory poll, watch event, our own status
//! write, a requeue) passes this gate, so a failing object is retried on its schedule and never
//! faster; a spec change or a deletion is acted on at once. Kept in memory on purpose: losing it
//! on restart only resets the schedule.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::runtime::reflector::ObjectRef;

use crate::crd::Ec2Instance;

/// Consecutive failures of one object and when it may be tried again.
struct Entry {
    failures: u32,
    retry_at: Instant,
    /// The generation that failed: a changed spec is tried at once.
    generation: Option<i64>,
}

pub struct Backoff {
    /// Delay after a terminal error (bad AMI, no permission): slow, no retry storm.
    terminal_delay: Duration,
    entries: Mutex<HashMap<ObjectRef<Ec2Instance>, Entry>>,
}

impl Backoff {
    pub fn new(terminal_delay: Duration) -> Self {
        Self {
            terminal_delay,
            entries: Mutex::default(),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<Ec2Instance>, Entry>> {
        self.entries.lock().expect("backoff map poisoned")
    }

    /// Time left before `obj` may be tried again after a failure of its current generation.
    pub fn remaining(&self, obj: &Ec2Instance) -> Option<Duration> {
        let entries = self.entries();
        let entry = entries.get(&ObjectRef::from(obj))?;
        let wait = entry.retry_at.checked_duration_since(Instant::now())?;
        (entry.generation == obj.metadata.generation).then_some(wait)
    }

    /// One more failure of `obj`; returns the consecutive count and the delay before the next try.
    pub fn failed(&self, obj: &Ec2Instance, transient: bool) -> (u32, Duration) {
        let mut entries = self.entries();
        let entry = entries.entry(ObjectRef::from(obj)).or_insert(Entry {
            failures: 0,
            retry_at: Instant::now(),
            generation: obj.metadata.generation,
        });
        entry.failures += 1;
        entry.generation = obj.metadata.generation;
        let delay = retry_delay(transient, entry.failures, self.terminal_delay);
        entry.retry_at = Instant::now() + delay;
        (entry.failures, delay)
    }

    pub fn succeeded(&self, obj: &Ec2Instance) {
        self.entries().remove(&ObjectRef::from(obj));
    }
}

/// Per-object retry delay: exponential with full jitter for transient errors (1 s doubling up to
/// a 300 s base, so at most 600 s with jitter), a slow fixed cadence (plus up to 20% jitter) for
/// terminal ones. `failures` counts consecutive failures, from 1.
pub fn retry_delay(transient: bool, failures: u32, terminal_delay: Duration) -> Duration {
    use backon::{BackoffBuilder, ExponentialBuilder};
    if !transient {
        let jitter = terminal_delay.mul_f64(fastrand::f64() * 0.2);
        return terminal_delay + jitter;
    }
    let n = failures.saturating_sub(1).min(16) as usize;
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(300))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
        .nth(n)
        .unwrap_or(Duration::from_secs(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_delay_grows_and_is_capped() {
        let first = retry_delay(true, 1, Duration::from_secs(600));
        assert!(first <= Duration::from_secs(2), "first retry is quick: {first:?}");
        for failures in 1..40 {
            let d = retry_delay(true, failures, Duration::from_secs(600));
            assert!(d <= Duration::from_secs(600), "capped: {d:?}");
        }
        // The 9th failure waits at least 256 s before jitter (1 s * 2^8): no retry storm.
        assert!(retry_delay(true, 9, Duration::from_secs(600)) >= Duration::from_secs(256));
    }

    #[test]
    fn terminal_delay_is_slow() {
        let d = retry_delay(false, 1, Duration::from_secs(300));
        assert!(d >= Duration::from_secs(300) && d <= Duration::from_secs(360));
    }

    #[test]
    fn a_failed_object_waits_until_it_succeeds_or_its_spec_changes() {
        let backoff = Backoff::new(Duration::from_secs(300));
        let obj = Ec2Instance::test();
        assert_eq!(backoff.remaining(&obj), None);
        let (failures, delay) = backoff.failed(&obj, false);
        assert_eq!(failures, 1);
        assert!(backoff.remaining(&obj).is_some_and(|left| left <= delay));
        let mut changed = obj.clone();
        changed.metadata.generation = Some(2);
        assert_eq!(backoff.remaining(&changed), None, "a new generation is tried at once");
        assert_eq!(backoff.failed(&obj, false).0, 2);
        backoff.succeeded(&obj);
        assert_eq!(backoff.remaining(&obj), None);
    }
}
