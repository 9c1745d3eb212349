//! The store's errors.

/// The database cannot be used: the run cannot start. Every message is one line, the URL's
/// password redacted.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A `--table` name that is not a plain SQL identifier.
    #[error("{0}")]
    TableName(String),
    /// A database URL whose scheme names no supported database.
    #[error("bad database URL {url}: expected sqlite://PATH or postgres://USER@HOST:PORT/DATABASE")]
    Scheme {
        /// The URL, password redacted.
        url: String,
    },
    /// A database URL that cannot be parsed.
    #[error("bad database URL {url}: {source}")]
    Url {
        /// The URL, password redacted.
        url: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// The database cannot be reached or opened.
    #[error("cannot connect to {url}: {}", describe(.source))]
    Unreachable {
        /// The URL, password redacted.
        url: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// The directory of the SQLite file does not exist (SQLite creates the file, not its
    /// directory).
    #[error(
        "cannot create the SQLite file {file}: its directory {directory} does not exist (create the directory first, or choose another path)"
    )]
    MissingDirectory {
        /// The database file, as the URL names it.
        file: String,
        /// Its missing directory.
        directory: String,
    },
    /// No connection was made within the connect timeout.
    #[error("cannot connect to {url}: no connection within {timeout:?}")]
    Timeout {
        /// The URL, password redacted.
        url: String,
        /// The connect timeout.
        timeout: std::time::Duration,
    },
    /// The table cannot be created or has other columns.
    #[error("cannot use table `{table}` in {url}: {source}")]
    Schema {
        /// The URL, password redacted.
        url: String,
        /// The table.
        table: String,
        /// The failed statement.
        #[source]
        source: QueryError,
    },
}

/// A statement failed (a lost connection, a constraint, a timeout). `Display` is one line:
/// see [`describe`].
#[derive(Debug, thiserror::Error)]
#[error("{}", describe(.0))]
pub struct QueryError(#[from] pub sqlx::Error);

impl QueryError {
    /// Whether the database could not be reached or went away (a lost or refused
    /// connection, a pool that timed out, a server shutting down or restarting), rather
    /// than refusing the statement: the same statement may succeed once it is back.
    pub fn is_unavailable(&self) -> bool {
        match &self.0 {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            // SQLSTATE class 08 (connection exception), 57P01-57P03 (admin shutdown, crash
            // shutdown, cannot connect now).
            sqlx::Error::Database(error) => error.code().is_some_and(|code| {
                code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03")
            }),
            _ => false,
        }
    }
}

/// A one-line description of a driver error: the database's own message for errors the
/// server returned (without sqlx's "at line N" of the server's source code), the driver's
/// message otherwise.
pub fn describe(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => format!("{} (code {code})", db.message()),
            None => db.message().to_owned(),
        },
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_an_unavailable_database_from_a_refused_statement() {
        let unavailable = [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into()),
            sqlx::Error::Protocol("unexpected end of stream".into()),
        ];
        for error in unavailable {
            assert!(QueryError(error).is_unavailable());
        }
        let refused = [
            sqlx::Error::RowNotFound,
            sqlx::Error::ColumnNotFound("claimed".into()),
            sqlx::Error::InvalidArgument("x".into()),
        ];
        for error in refused {
            assert!(!QueryError(error).is_unavailable());
        }
    }
}
