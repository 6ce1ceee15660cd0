//! What an exit code means: the seed's table of exit codes (SEMANTICS §2),
//! kept once in `osmo_spec::codes` and shared with the engine's messages.

pub use osmo_spec::codes::meaning as describe_code;
