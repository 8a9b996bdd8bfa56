//! Errors of the pure MySQL codec: every parser returns one of these for bad input and never panics.

use thiserror::Error;

/// What went wrong while decoding bytes of the MySQL protocol.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtoError {
    /// The input ended before `what` could be read completely.
    #[error("truncated {what}")]
    Truncated { what: &'static str },
    /// The bytes of `what` are not valid: `detail` says why.
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    /// A (logical) packet is larger than the configured maximum.
    #[error("packet of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge { len: u64, max: u64 },
    /// A packet arrived that the protocol state does not allow here.
    #[error("unexpected {what} in state {state}")]
    Unexpected {
        what: &'static str,
        state: &'static str,
    },
}

impl ProtoError {
    pub fn truncated(what: &'static str) -> Self {
        ProtoError::Truncated { what }
    }
    pub fn malformed(what: &'static str, detail: impl Into<String>) -> Self {
        ProtoError::Malformed {
            what,
            detail: detail.into(),
        }
    }
}

pub type Result<T, E = ProtoError> = std::result::Result<T, E>;
