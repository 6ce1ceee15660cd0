//! Names and predicates of the statuses declared in [`crate::api`].

use std::fmt;

use crate::api::{TaskStatus, WorkflowStatus};

impl TaskStatus {
    /// Every task status, in declaration (lifecycle) order.
    pub const ALL: [TaskStatus; 20] = [
        TaskStatus::Submitting,
        TaskStatus::Waiting,
        TaskStatus::Processing,
        TaskStatus::Scheduling,
        TaskStatus::Initializing,
        TaskStatus::Running,
        TaskStatus::Completed,
        TaskStatus::Rescheduled,
        TaskStatus::Failed,
        TaskStatus::FailedCanceled,
        TaskStatus::FailedServerError,
        TaskStatus::FailedBackendError,
        TaskStatus::FailedExecTimeout,
        TaskStatus::FailedQueueTimeout,
        TaskStatus::FailedImagePull,
        TaskStatus::FailedUpstream,
        TaskStatus::FailedEvicted,
        TaskStatus::FailedStartError,
        TaskStatus::FailedStartTimeout,
        TaskStatus::FailedPreempted,
    ];

    /// The SCREAMING_SNAKE name, as serialized and shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Submitting => "SUBMITTING",
            TaskStatus::Waiting => "WAITING",
            TaskStatus::Processing => "PROCESSING",
            TaskStatus::Scheduling => "SCHEDULING",
            TaskStatus::Initializing => "INITIALIZING",
            TaskStatus::Running => "RUNNING",
            TaskStatus::Completed => "COMPLETED",
            TaskStatus::Rescheduled => "RESCHEDULED",
            TaskStatus::Failed => "FAILED",
            TaskStatus::FailedCanceled => "FAILED_CANCELED",
            TaskStatus::FailedServerError => "FAILED_SERVER_ERROR",
            TaskStatus::FailedBackendError => "FAILED_BACKEND_ERROR",
            TaskStatus::FailedExecTimeout => "FAILED_EXEC_TIMEOUT",
            TaskStatus::FailedQueueTimeout => "FAILED_QUEUE_TIMEOUT",
            TaskStatus::FailedImagePull => "FAILED_IMAGE_PULL",
            TaskStatus::FailedUpstream => "FAILED_UPSTREAM",
            TaskStatus::FailedEvicted => "FAILED_EVICTED",
            TaskStatus::FailedStartError => "FAILED_START_ERROR",
            TaskStatus::FailedStartTimeout => "FAILED_START_TIMEOUT",
            TaskStatus::FailedPreempted => "FAILED_PREEMPTED",
        }
    }

    /// The status named `name` (exact SCREAMING_SNAKE spelling).
    pub fn parse(name: &str) -> Option<TaskStatus> {
        TaskStatus::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// COMPLETED, RESCHEDULED or any FAILED*: the attempt will never change again.
    pub fn is_finished(self) -> bool {
        self.progress() == FINAL
    }

    /// Any FAILED* status.
    pub fn is_failed(self) -> bool {
        self.is_finished() && !matches!(self, TaskStatus::Completed | TaskStatus::Rescheduled)
    }

    /// Position in the lifecycle: statuses only move to an equal or higher
    /// progress, and every finished status shares the highest one.
    pub fn progress(self) -> u8 {
        match self {
            TaskStatus::Submitting => 0,
            TaskStatus::Waiting => 1,
            TaskStatus::Processing => 2,
            TaskStatus::Scheduling => 3,
            TaskStatus::Initializing => 4,
            TaskStatus::Running => 5,
            _ => FINAL,
        }
    }

    /// The workflow status of the same name, for failed group statuses;
    /// FAILED_UPSTREAM and RESCHEDULED (no workflow equivalent) map to FAILED.
    pub(crate) fn as_workflow_failure(self) -> WorkflowStatus {
        match self {
            TaskStatus::FailedCanceled => WorkflowStatus::FailedCanceled,
            TaskStatus::FailedServerError => WorkflowStatus::FailedServerError,
            TaskStatus::FailedBackendError => WorkflowStatus::FailedBackendError,
            TaskStatus::FailedExecTimeout => WorkflowStatus::FailedExecTimeout,
            TaskStatus::FailedQueueTimeout => WorkflowStatus::FailedQueueTimeout,
            TaskStatus::FailedImagePull => WorkflowStatus::FailedImagePull,
            TaskStatus::FailedEvicted => WorkflowStatus::FailedEvicted,
            TaskStatus::FailedStartError => WorkflowStatus::FailedStartError,
            TaskStatus::FailedStartTimeout => WorkflowStatus::FailedStartTimeout,
            TaskStatus::FailedPreempted => WorkflowStatus::FailedPreempted,
            _ => WorkflowStatus::Failed,
        }
    }
}

const FINAL: u8 = 6;

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl WorkflowStatus {
    /// Every workflow status, in declaration order.
    pub const ALL: [WorkflowStatus; 15] = [
        WorkflowStatus::Pending,
        WorkflowStatus::Running,
        WorkflowStatus::Completed,
        WorkflowStatus::Failed,
        WorkflowStatus::FailedSubmission,
        WorkflowStatus::FailedServerError,
        WorkflowStatus::FailedExecTimeout,
        WorkflowStatus::FailedQueueTimeout,
        WorkflowStatus::FailedCanceled,
        WorkflowStatus::FailedBackendError,
        WorkflowStatus::FailedImagePull,
        WorkflowStatus::FailedEvicted,
        WorkflowStatus::FailedStartError,
        WorkflowStatus::FailedStartTimeout,
        WorkflowStatus::FailedPreempted,
    ];

    /// The SCREAMING_SNAKE name, as serialized and shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkflowStatus::Pending => "PENDING",
            WorkflowStatus::Running => "RUNNING",
            WorkflowStatus::Completed => "COMPLETED",
            WorkflowStatus::Failed => "FAILED",
            WorkflowStatus::FailedSubmission => "FAILED_SUBMISSION",
            WorkflowStatus::FailedServerError => "FAILED_SERVER_ERROR",
            WorkflowStatus::FailedExecTimeout => "FAILED_EXEC_TIMEOUT",
            WorkflowStatus::FailedQueueTimeout => "FAILED_QUEUE_TIMEOUT",
            WorkflowStatus::FailedCanceled => "FAILED_CANCELED",
            WorkflowStatus::FailedBackendError => "FAILED_BACKEND_ERROR",
            WorkflowStatus::FailedImagePull => "FAILED_IMAGE_PULL",
            WorkflowStatus::FailedEvicted => "FAILED_EVICTED",
            WorkflowStatus::FailedStartError => "FAILED_START_ERROR",
            WorkflowStatus::FailedStartTimeout => "FAILED_START_TIMEOUT",
            WorkflowStatus::FailedPreempted => "FAILED_PREEMPTED",
        }
    }

    /// The status named `name` (exact SCREAMING_SNAKE spelling).
    pub fn parse(name: &str) -> Option<WorkflowStatus> {
        WorkflowStatus::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Anything but PENDING and RUNNING.
    pub fn is_finished(self) -> bool {
        !matches!(self, WorkflowStatus::Pending | WorkflowStatus::Running)
    }

    /// Any FAILED* status.
    pub fn is_failed(self) -> bool {
        self.is_finished() && self != WorkflowStatus::Completed
    }
}

impl fmt::Display for WorkflowStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_serde_and_parse_back() {
        for s in TaskStatus::ALL {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            assert_eq!(TaskStatus::parse(s.as_str()), Some(s));
            assert_eq!(s.to_string(), s.as_str());
        }
        for s in WorkflowStatus::ALL {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            assert_eq!(WorkflowStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(TaskStatus::parse("running"), None);
    }

    #[test]
    fn predicates() {
        use TaskStatus::*;
        for s in [
            Submitting,
            Waiting,
            Processing,
            Scheduling,
            Initializing,
            Running,
        ] {
            assert!(!s.is_finished() && !s.is_failed(), "{s}");
        }
        assert!(Completed.is_finished() && !Completed.is_failed());
        assert!(Rescheduled.is_finished() && !Rescheduled.is_failed());
        for s in TaskStatus::ALL
            .into_iter()
            .filter(|s| s.as_str().starts_with("FAILED"))
        {
            assert!(s.is_finished() && s.is_failed(), "{s}");
        }
        assert!(!WorkflowStatus::Running.is_finished());
        assert!(WorkflowStatus::Completed.is_finished() && !WorkflowStatus::Completed.is_failed());
        assert!(WorkflowStatus::FailedPreempted.is_failed());
        // Declaration order is lifecycle order for the unfinished statuses.
        let order: Vec<u8> = TaskStatus::ALL.iter().map(|s| s.progress()).collect();
        assert!(order.windows(2).all(|w| w[0] <= w[1]));
    }
}
