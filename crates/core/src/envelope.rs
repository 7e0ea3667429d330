//! The envelope a message travels with through the queue.
//!
//! [`Envelope`] holds the SMTP transaction (sender, recipients, client) and
//! per-recipient status, so a partly delivered message retries only the
//! recipients still pending. It is plain data, serialised by the queue.

use crate::{Address, QueueId, Reason};
use serde::{Deserialize, Serialize};

/// Where one recipient stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecipientStatus {
    /// Not yet delivered.
    Pending {
        /// The most recent temporary failure, if any.
        last: Option<Reason>,
    },
    /// Accepted by the next hop.
    Delivered(Reason),
    /// Permanently failed; a DSN has been (or will be) generated.
    Failed(Reason),
}

/// One envelope recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// The forward path (RCPT TO).
    pub address: Address,
    /// Where delivery to it stands.
    pub status: RecipientStatus,
    /// RFC 3461 NOTIFY, upper-case ("NEVER" or a list of SUCCESS, FAILURE,
    /// DELAY); `None` means the default (failures and delays).
    #[serde(default)]
    pub notify: Option<String>,
    /// RFC 3461 ORCPT, as given ("rfc822;user@example.test").
    #[serde(default)]
    pub orcpt: Option<String>,
}

impl Recipient {
    /// A pending recipient with the default NOTIFY and no ORCPT.
    pub fn new(address: Address) -> Recipient {
        Recipient {
            address,
            status: RecipientStatus::Pending { last: None },
            notify: None,
            orcpt: None,
        }
    }

    /// Whether the sender wants a DSN when this recipient fails.
    pub fn wants_failure_dsn(&self) -> bool {
        self.notify
            .as_deref()
            .is_none_or(|n| n.split(',').any(|k| k == "FAILURE"))
    }

    /// True while it still awaits delivery.
    pub fn is_pending(&self) -> bool {
        matches!(self.status, RecipientStatus::Pending { .. })
    }
}

/// The SMTP transaction of one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The message's queue id.
    pub id: QueueId,
    /// Reverse path; `None` is the null sender `<>` (DSNs).
    pub sender: Option<Address>,
    /// Every accepted recipient, in RCPT order.
    pub recipients: Vec<Recipient>,
    /// Client IP address as text, for logs and DSNs.
    pub client: String,
    /// The client's HELO/EHLO argument.
    pub helo: String,
    /// When the message was accepted (ms since the epoch).
    pub received_ms: u64,
    /// Body size in octets as stored.
    pub size: u64,
    /// The client declared BODY=8BITMIME.
    pub eight_bit: bool,
    /// The message's Message-ID header, for logs and the queue list.
    #[serde(default)]
    pub message_id: Option<String>,
    /// The client declared SMTPUTF8; passed on to hops that offer it.
    #[serde(default)]
    pub smtputf8: bool,
    /// RFC 3461 RET=FULL (else headers only) for DSNs about this message.
    #[serde(default)]
    pub dsn_ret_full: bool,
    /// RFC 3461 ENVID, as given (xtext).
    #[serde(default)]
    pub dsn_envid: Option<String>,
    /// The client was in `trusted_networks` or authenticated: only such
    /// senders get success DSNs and whole messages back (no reflection
    /// through us for untrusted sources).
    #[serde(default)]
    pub trusted: bool,
}

impl Envelope {
    /// A new envelope with a fresh id: no BODY, SMTPUTF8 or DSN parameters,
    /// no Message-ID yet, an untrusted client (the session sets what the
    /// client declared).
    pub fn new(
        sender: Option<Address>,
        recipients: Vec<Recipient>,
        client: &str,
        helo: &str,
        received_ms: u64,
        size: u64,
    ) -> Envelope {
        Envelope {
            id: QueueId::generate(),
            sender,
            recipients,
            client: client.to_string(),
            helo: helo.to_string(),
            received_ms,
            size,
            eight_bit: false,
            message_id: None,
            smtputf8: false,
            dsn_ret_full: false,
            dsn_envid: None,
            trusted: false,
        }
    }

    /// True when the message is itself a bounce: never bounce a bounce.
    pub fn is_bounce(&self) -> bool {
        self.sender.is_none()
    }

    /// The recipients still awaiting delivery, with their index.
    pub fn pending(&self) -> impl Iterator<Item = (usize, &Recipient)> {
        self.recipients
            .iter()
            .enumerate()
            .filter(|(_, r)| r.is_pending())
    }
}
