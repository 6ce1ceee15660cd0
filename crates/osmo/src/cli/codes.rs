//! What an exit code means: the seed's table of exit codes
//! (SEMANTICS §2), for `osmo workflow explain` and the query tables.

/// The meaning of a task exit code, from the seed's table of user, preflight,
/// runtime and service codes.
pub fn describe_code(code: u32) -> &'static str {
    match code {
        0 => "task completed",
        129 => "user failure: killed by SIGHUP (128+1)",
        130 => "user failure: killed by SIGINT (128+2)",
        131 => "user failure: killed by SIGQUIT (128+3)",
        132 => "user failure: killed by SIGILL (128+4), an illegal instruction",
        134 => "user failure: killed by SIGABRT (128+6), the program aborted",
        135 => "user failure: killed by SIGBUS (128+7), a bus error",
        136 => "user failure: killed by SIGFPE (128+8), an arithmetic error",
        137 => {
            "user failure: killed by SIGKILL (128+9), often because the task ran out of memory, \
             or someone ran `kill -9`"
        }
        139 => "user failure: killed by SIGSEGV (128+11), a segmentation fault",
        141 => "user failure: killed by SIGPIPE (128+13), it wrote to a closed pipe",
        143 => "user failure: killed by SIGTERM (128+15)",
        1..=255 => "user failure: the task's command exited with this code",
        256..=257 => "OSMO initialization failure (sandbox, files or image)",
        301 => "image pull failure (ImagePullBackOff)",
        302 => "image pull failure (ErrImagePull)",
        1001 => "OSMO preflight test failure",
        2002 => "unknown runtime error",
        2010 => "download operation failed",
        2011 => "mount operation failed",
        2012 => "upload operation failed",
        2020 => "invalid authentication token for connecting to the service",
        2021 => "service connection timed out",
        2022 => "failed to send/receive messages to/from the service",
        2023 => "failed to send/receive messages to/from the user task",
        2024 => "barrier synchronization failed",
        2025 => "failed to create or process metrics",
        2030..=2040 => "miscellaneous runtime failure",
        3000 => "upstream tasks failed",
        3001 => "backend error",
        3002 => "OSMO server error",
        3003 => "start error: the task failed to start execution",
        3004 => "evicted: the task was evicted from the node (e.g. out of memory)",
        3005 => {
            "start timeout: the task took too long to initialize (e.g. stuck pulling secrets or images)"
        }
        3006 => "preempted: the task was preempted to make space for a higher priority task",
        4000 => "unknown error",
        _ => "not a code OSMO defines; user tasks should exit with 0-255",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_table() {
        assert_eq!(describe_code(0), "task completed");
        assert!(describe_code(1).starts_with("user failure"));
        assert!(describe_code(255).starts_with("user failure"));
        assert!(describe_code(137).contains("SIGKILL") && describe_code(137).contains("memory"));
        assert!(describe_code(256).contains("initialization"));
        assert!(describe_code(257).contains("initialization"));
        assert!(describe_code(1001).contains("preflight"));
        assert_eq!(describe_code(2010), "download operation failed");
        assert_eq!(describe_code(2035), "miscellaneous runtime failure");
        assert_eq!(describe_code(3000), "upstream tasks failed");
        assert!(describe_code(3006).starts_with("preempted"));
        assert_eq!(describe_code(4000), "unknown error");
        assert!(describe_code(999).starts_with("not a code"));
    }
}
