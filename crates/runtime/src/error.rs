//! Why an attempt could not be prepared in the controller, before any fork.
//! Each becomes a code of SEMANTICS §2 with its detail; nothing here panics.

use osmo_spec::codes::{CodeSource, ReportedCode, well_known};

#[derive(Debug, thiserror::Error)]
pub(crate) enum PrepareError {
    #[error("cannot {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} contains a NUL byte; remove it from the spec")]
    Nul(String),
    #[error("environment variable name {0:?} is empty or contains '='; rename it in the spec")]
    BadEnvName(String),
}

impl PrepareError {
    /// Task initialisation failed: 256, source init.
    pub fn into_code(self) -> ReportedCode {
        ReportedCode {
            code: well_known::INIT_FAILURE,
            source: CodeSource::Init,
            detail: Some(format!("sandbox set-up failed: {self}")),
        }
    }
}

/// An errno as words, without std's "(os error N)" suffix.
pub(crate) fn errno_text(errno: i32) -> String {
    let text = std::io::Error::from_raw_os_error(errno).to_string();
    match text.find(" (os error") {
        Some(pos) => text[..pos].to_string(),
        None => text,
    }
}
