//! One error type. Every variant says whether retrying can help ([`Error::is_transient`]) and
//! carries a label so that logs, events and metrics agree on what kind of failure happened.

use kube::runtime::finalizer;

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

    /// Not a failure: deletion waits for EC2 to finish terminating. Keeps the finalizer in
    /// place (the finalizer helper only keeps it on error); `reconcile` turns it into a requeue.
    #[error("waiting: {0}")]
    Waiting(String),

    /// Not a failure either: waits for a good fleet poll, which reconciles every object when
    /// it comes; `reconcile` requeues it a poll interval later, as a safety net only.
    #[error("waiting for a good poll of EC2")]
    WaitingForPoll,

    /// The instance died on its own at launch for a reason a new launch would meet again (a
    /// `Client.*` state reason such as a bad KMS key): not replaced until the spec changes.
    #[error("instance {id} died at launch: {reason}; change the spec to try again")]
    InstanceDied { id: String, reason: String },

    /// The instance `k106.com/adopt-instance-id` names cannot be taken over: gone, owned by
    /// another object or cluster, or launched with other fixed fields than the spec's.
    #[error("cannot adopt instance {id}: {reason}")]
    AdoptionRefused { id: String, reason: String },

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
            Error::Waiting(_) | Error::WaitingForPoll => true,
            Error::InstanceDied { .. } | Error::AdoptionRefused { .. } | Error::Invalid(_) => false,
        }
    }

    /// Label for the `errors_total` metric and the reason of Warning events.
    pub fn metric_label(&self) -> String {
        match self {
            Error::Aws(fault) => format!("aws:{}", fault.code),
            Error::Kube(_) => "kube".into(),
            Error::Waiting(_) | Error::WaitingForPoll => "waiting".into(),
            Error::InstanceDied { .. } => "instance_died".into(),
            Error::AdoptionRefused { .. } => "adoption_refused".into(),
            Error::Invalid(_) => "invalid".into(),
        }
    }
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Error::Kube(e)
    }
}

/// The finalizer helper's error, unwrapped once: the reconcile's own error as it was returned,
/// or the API call that added or removed the finalizer.
impl From<finalizer::Error<Error>> for Error {
    fn from(e: finalizer::Error<Error>) -> Self {
        match e {
            finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
            // The finalizer patch tests the list it read; a pass that ran on a cached object
            // from before its own finalizer landed fails that test (422). Not a failure: the
            // next pass reads the object with the finalizer.
            finalizer::Error::AddFinalizer(kube::Error::Api(e)) if e.code == 422 => {
                Error::Waiting("the finalizer was added meanwhile".into())
            }
            finalizer::Error::AddFinalizer(e) | finalizer::Error::RemoveFinalizer(e) => Error::Kube(e),
            other => Error::Invalid(other.to_string()),
        }
    }
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
    fn the_finalizer_helpers_error_is_unwrapped_to_the_reconciles_own() {
        let err: Error = finalizer::Error::ApplyFailed(aws("InvalidAMIID.NotFound", false)).into();
        assert!(matches!(&err, Error::Aws(fault) if fault.code == "InvalidAMIID.NotFound"));
        assert!(!err.is_transient());
        let stale = kube::core::Status::failure(
            "the server rejected our request due to an error in our request",
            "Invalid",
        )
        .with_code(422)
        .boxed();
        let err: Error = finalizer::Error::<Error>::AddFinalizer(kube::Error::Api(stale)).into();
        assert!(matches!(err, Error::Waiting(_)), "a stale read, not a failure");
        let err: Error = finalizer::Error::<Error>::UnnamedObject.into();
        assert_eq!(err.metric_label(), "invalid");
    }
}
