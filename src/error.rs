//! corekv's command error type: every error a client can receive, with Valkey's exact text,
//! defined once.

/// An error reply. `Display` gives the full line after the `-`, code included.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("ERR syntax error")]
    Syntax,
    #[error("WRONGTYPE Operation against a key holding the wrong kind of value")]
    WrongType,
    #[error("ERR value is not an integer or out of range")]
    NotInteger,
    #[error("ERR value is not a valid float")]
    NotFloat,
    #[error("ERR increment or decrement would overflow")]
    Overflow,
    #[error("ERR increment would produce NaN or Infinity")]
    NanOrInfinity,
    #[error("ERR no such key")]
    NoSuchKey,
    #[error("ERR DB index is out of range")]
    DbIndexOutOfRange,
    #[error("ERR invalid expire time in '{0}' command")]
    InvalidExpire(&'static str),
    #[error("ERR string exceeds maximum allowed size (proto-max-bulk-len)")]
    StringTooLong,
    #[error("ERR wrong number of arguments for '{0}' command")]
    WrongArity(String),
    #[error("ERR unknown subcommand '{0}'. Try {1} HELP.")]
    UnknownSubcommand(String, String),
    #[error("NOAUTH Authentication required.")]
    NoAuth,
    #[error("READONLY You can't write against a read only replica.")]
    ReadOnlyReplica,
    #[error("ERR {0}")]
    Generic(String),
    /// An error with its own code (`NOPROTO …`, `EXECABORT …`): the text is sent as is.
    #[error("{0}")]
    Coded(String),
}

impl CommandError {
    /// `ERR <text>`.
    pub fn err(text: impl Into<String>) -> Self {
        CommandError::Generic(text.into())
    }
}

/// Result of parsing or running a command.
pub type CommandResult<T = ()> = Result<T, CommandError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_match_valkey() {
        assert_eq!(
            CommandError::WrongArity("get".into()).to_string(),
            "ERR wrong number of arguments for 'get' command"
        );
        assert_eq!(
            CommandError::UnknownSubcommand("foo".into(), "CLIENT".into()).to_string(),
            "ERR unknown subcommand 'foo'. Try CLIENT HELP."
        );
        assert_eq!(
            CommandError::InvalidExpire("set").to_string(),
            "ERR invalid expire time in 'set' command"
        );
    }
}
