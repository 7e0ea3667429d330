//! The outcome of delivering to one recipient, decided where it happens.
//!
//! [`Outcome`] is delivered, temporary or permanent; [`Reason`] carries the
//! remote reply or the local cause so a DSN or log can say exactly why.
//! Nobody classifies by parsing strings afterwards.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why an attempt ended the way it did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    /// SMTP reply code when a server answered (e.g. 550), else a local code.
    pub code: u16,
    /// Enhanced status code, e.g. "5.1.1".
    pub status: String,
    /// Human text: the remote reply text or a local explanation.
    pub text: String,
    /// The host that answered, when one did; for DSN `Remote-MTA`.
    pub remote: Option<String>,
}

impl Reason {
    /// A locally generated reason (no remote server involved).
    pub fn local(code: u16, status: &str, text: impl Into<String>) -> Reason {
        Reason {
            code,
            status: status.to_string(),
            text: text.into(),
            remote: None,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.code, self.status, self.text)?;
        if let Some(r) = &self.remote {
            write!(f, " (from {r})")?;
        }
        Ok(())
    }
}

/// What happened to one recipient in one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The next hop accepted responsibility.
    Delivered(Reason),
    /// Accepted by a next hop that does not offer DSN, for a recipient who
    /// asked NOTIFY=SUCCESS: we owe the sender a "relayed" DSN (RFC 3461 4.2).
    Relayed(Reason),
    /// Try again later.
    Temporary(Reason),
    /// Give up and tell the sender.
    Permanent(Reason),
}

impl Outcome {
    /// Why, whatever the outcome.
    pub fn reason(&self) -> &Reason {
        match self {
            Outcome::Delivered(r)
            | Outcome::Relayed(r)
            | Outcome::Temporary(r)
            | Outcome::Permanent(r) => r,
        }
    }
}
