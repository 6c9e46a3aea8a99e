//! Event reasons in one place, so `kubectl describe` reads the same everywhere. Plain data: the
//! decisions name a reason, the reconcile shell publishes it.

/// Why the operator did something to an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    Launched,
    /// An existing instance named by `k106.com/adopt-instance-id` is now managed.
    Adopted,
    /// The instance vanished or was terminated out of band and a new one was launched.
    Replaced,
    /// EC2 interrupted the Spot instance (reclaimed its capacity); a new one was launched.
    SpotInterrupted,

    Started,
    Stopped,
    Modified,
    SecurityGroupsUpdated,
    TagsUpdated,
    /// The instance differed from a spec it had already matched: someone changed it.
    DriftDetected,
    /// More than one live instance carries this object's owner tag.
    DuplicateInstances,
    Terminating,
    Terminated,
    Retained,
    /// An EC2 or API call failed; the note carries the AWS code and message.
    Failed,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Launched => "Launched",
            Reason::Adopted => "Adopted",
            Reason::Replaced => "Replaced",
            Reason::SpotInterrupted => "SpotInterrupted",
            Reason::Started => "Started",
            Reason::Stopped => "Stopped",
            Reason::Modified => "Modified",
            Reason::SecurityGroupsUpdated => "SecurityGroupsUpdated",
            Reason::TagsUpdated => "TagsUpdated",
            Reason::DriftDetected => "DriftDetected",
            Reason::DuplicateInstances => "DuplicateInstances",
            Reason::Terminating => "Terminating",
            Reason::Terminated => "Terminated",
            Reason::Retained => "Retained",
            Reason::Failed => "Failed",
        }
    }

    /// Warnings are what a user should look at: something changed behind the operator's back
    /// or failed.
    pub fn is_warning(self) -> bool {
        matches!(
            self,
            Reason::Replaced
                | Reason::SpotInterrupted
                | Reason::DriftDetected
                | Reason::DuplicateInstances
                | Reason::Failed
        )
    }
}

/// The events API refuses a note over 1 KiB; longer ones are cut at a character boundary.
pub const MAX_NOTE_BYTES: usize = 1024;

pub fn truncate_note(mut note: String) -> String {
    if note.len() > MAX_NOTE_BYTES {
        let mut end = MAX_NOTE_BYTES - '…'.len_utf8();
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push('…');
    }
    note
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_fit_the_events_api() {
        assert_eq!(truncate_note("short".into()), "short");
        let long = "é".repeat(1000);
        let cut = truncate_note(long);
        assert!(cut.len() <= MAX_NOTE_BYTES && cut.ends_with('…'), "{}", cut.len());
    }
}
