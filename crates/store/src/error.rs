//! The one error type of the store.
//!
//! Messages are lower case, carry their cause inline (so a plain `{}` is enough to act on them),
//! and end with what to do next.

/// `Result` with the store's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL names no database kind the store speaks.
    #[error(
        "unsupported database url `{0}`: use `sqlite://PATH?mode=rwc` for a file or \
         `postgres://USER@HOST:PORT/DATABASE` for a server"
    )]
    UnsupportedUrl(String),

    /// The database could not be reached, created or configured.
    #[error(
        "cannot open the database at `{url}`: {cause}; check the url, that the database server \
         is running, and that a sqlite file's directory exists and is writable \
         (add `?mode=rwc` to create the file)"
    )]
    Open {
        /// The URL, password removed.
        url: String,
        /// What the driver said.
        cause: sqlx::Error,
    },

    /// The schema could not be brought up to date.
    #[error(
        "cannot bring the database schema up to date: {0}; if a newer osmo wrote this database \
         run that version, otherwise restore the database from a backup"
    )]
    Migrate(sqlx::migrate::MigrateError),

    /// No workflow has this id.
    #[error("no workflow `{0}` in the store: check the id (`osmo workflow list` shows them)")]
    UnknownWorkflow(String),

    /// A log line named a workflow that is not in the store.
    #[error(
        "a log line names a workflow that is not in the store ({0}); send logs only for \
         submitted workflows"
    )]
    LogsForUnknownWorkflow(sqlx::Error),

    /// A stored JSON document no longer parses.
    #[error(
        "the stored {what} of workflow `{id}` is not valid json ({cause}); the database was \
         changed outside osmo: restore it from a backup"
    )]
    Corrupt {
        /// The workflow.
        id: String,
        /// Which document: `state`, `event` or `command`.
        what: &'static str,
        /// What the parser said.
        cause: serde_json::Error,
    },

    /// Any other database failure.
    #[error(
        "database error: {0}; retry, and check that the database is reachable and its disk \
         is not full"
    )]
    Database(sqlx::Error),
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::Database(e)
    }
}

impl From<sqlx::migrate::MigrateError> for Error {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        Error::Migrate(e)
    }
}
