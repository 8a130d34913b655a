//! Errors of arrowd's operations; each maps to one HTTP status and says what to do.

/// An operation failed. The message is shown to the user as is.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong (HTTP 400).
    #[error("{0}")]
    Invalid(String),
    /// The instance or image does not exist (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state (HTTP 409).
    #[error("{0}")]
    Conflict(String),
    /// arrowd or the host failed (HTTP 500).
    #[error("{0}")]
    Internal(String),
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Internal(format!(
            "state database error: {e}; check arrowd's log and the database file"
        ))
    }
}

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
