//! The process exit codes of `osmo`, in one place. Only the CLI turns
//! results into numbers; the library crates return errors.

/// The command did what was asked: the spec is valid, the request was
/// accepted, the workflow (`osmo workflow run`) COMPLETED.
pub const SUCCESS: u8 = 0;

/// The command ran but the answer is a failure: validation errors, a
/// workflow that ended in a FAILED status, an API error, an unreachable
/// service, an unreadable file.
pub const FAILURE: u8 = 1;

/// The command line itself was not understood (clap's usage errors).
pub const USAGE: u8 = 2;

/// How a command that returned normally ended. Errors (`Err`) always exit
/// with [`FAILURE`] after their message is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Exit [`SUCCESS`].
    Success,
    /// Exit [`FAILURE`]: the command already told the user why.
    Failure,
    /// Exit with a command's own code (`osmo workflow exec`, as ssh does).
    Code(u8),
}

impl Outcome {
    pub fn code(self) -> u8 {
        match self {
            Outcome::Success => SUCCESS,
            Outcome::Failure => FAILURE,
            Outcome::Code(code) => code,
        }
    }

    /// Success when `ok`.
    pub fn from_ok(ok: bool) -> Outcome {
        if ok {
            Outcome::Success
        } else {
            Outcome::Failure
        }
    }
}
