//! One error type. Every variant says whether retrying can help ([`Error::is_transient`]) and
//! carries a label so that logs, events and metrics agree on what kind of failure happened.

use std::time::Duration;

/// An EC2 API failure, reduced to what the controller needs to decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsFault {
    /// The EC2 operation, e.g. `RunInstances`.
    pub operation: &'static str,
    /// The EC2 error code, e.g. `InvalidAMIID.NotFound`, or a local kind such as `Timeout`.
    pub code: String,
    pub message: String,
    pub retryable: bool,
}

impl std::fmt::Display for AwsFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed: {}: {}", self.operation, self.code, self.message)
    }
}

#[derive(thiserror::Error, Debug)]
pub enum Error {
    /// EC2 refused or failed a call; `AwsFault::retryable` says whether it may pass.
    #[error("{0}")]
    Aws(AwsFault),

    /// The Kubernetes API server failed a call (always worth retrying).
    #[error("Kubernetes API error: {0}")]
    Kube(#[source] kube::Error),

    /// The finalizer helper failed to add or remove the finalizer, or the wrapped reconcile failed.
    #[error("finalizer error: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),

    /// Not a failure: deletion waits for EC2 to finish terminating. Keeps the finalizer in
    /// place (the finalizer helper only keeps it on error) and requeues without backoff.
    #[error("waiting: {0}")]
    Waiting(String),

    /// The object cannot be reconciled as written (something admission could not catch).
    #[error("invalid object: {0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Transient errors are retried with per-object exponential backoff; terminal ones mark the
    /// object `Ready=False` and are retried slowly, so a bad spec never becomes a retry storm.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Aws(fault) => fault.retryable,
            Error::Kube(_) => true,
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => {
                    e.is_transient()
                }
                _ => true,
            },
            Error::Waiting(_) => true,
            Error::Invalid(_) => false,
        }
    }

    /// Label for the `errors_total` metric and the reason of Warning events.
    pub fn metric_label(&self) -> String {
        match self {
            Error::Aws(fault) => format!("aws:{}", fault.code),
            Error::Kube(_) => "kube".into(),
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => {
                    e.metric_label()
                }
                _ => "finalizer".into(),
            },
            Error::Waiting(_) => "waiting".into(),
            Error::Invalid(_) => "invalid".into(),
        }
    }

    /// The innermost error the reconcile returned, unwrapped from the finalizer helper.
    pub fn root(&self) -> &Error {
        match self {
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => {
                    e.root()
                }
                _ => self,
            },
            _ => self,
        }
    }
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Error::Kube(e)
    }
}

/// Per-object retry delay: exponential with full jitter for transient errors, a slow fixed
/// cadence (with jitter) for terminal ones. `failures` counts consecutive failures, from 1.
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

    fn aws(code: &str, retryable: bool) -> Error {
        Error::Aws(AwsFault {
            operation: "RunInstances",
            code: code.into(),
            message: "m".into(),
            retryable,
        })
    }

    #[test]
    fn throttling_is_transient_and_bad_ami_is_terminal() {
        assert!(aws("RequestLimitExceeded", true).is_transient());
        assert!(!aws("InvalidAMIID.NotFound", false).is_transient());
        assert_eq!(
            aws("InvalidAMIID.NotFound", false).metric_label(),
            "aws:InvalidAMIID.NotFound"
        );
    }

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
}
