//! Parsing one SMTP command line (RFC 5321 section 4.1.1).
//!
//! [`parse`] turns the text of one line into a [`Command`] or a ready reply
//! explaining what was wrong with it. Verbs are case-insensitive; MAIL and
//! RCPT parameters are parsed here so the session sees typed values.

use crate::Reply;
use postern_core::address::{parse_path, AddressError};
use postern_core::Address;

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    Mail {
        sender: Option<Address>,
        size: Option<u64>,
        eight_bit: bool,
        smtputf8: bool,
        /// RFC 3461 RET: Some(true) FULL, Some(false) HDRS.
        ret_full: Option<bool>,
        envid: Option<String>,
    },
    Rcpt {
        address: Address,
        notify: Option<String>,
        orcpt: Option<String>,
    },
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    StartTls,
    /// BDAT chunk-size [LAST] (RFC 3030).
    Bdat {
        size: u64,
        last: bool,
    },
    /// AUTH mechanism [initial-response].
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
    /// Known verbs Postern does not offer (yet): answered 502.
    NotImplemented(String),
}

fn syntax(text: &str) -> Reply {
    Reply::new(501, "5.5.4", text)
}

fn path_error(e: AddressError) -> Reply {
    match e {
        AddressError::SourceRoute => Reply::new(501, "5.1.3", "source routes are not accepted"),
        AddressError::TooLong => Reply::new(501, "5.1.3", "path too long"),
        e => Reply::new(501, "5.1.3", format!("bad address syntax: {e}")),
    }
}

/// Parses one command line (without its line ending).
pub fn parse(line: &[u8]) -> Result<Command, Reply> {
    let line = std::str::from_utf8(line)
        .map_err(|_| Reply::new(500, "5.5.2", "command is not valid UTF-8"))?;
    let (verb, arg) = match line.find(' ') {
        Some(i) => (&line[..i], line[i + 1..].trim()),
        None => (line, ""),
    };
    let verb = verb.to_ascii_uppercase();
    match verb.as_str() {
        "EHLO" | "HELO" if arg.is_empty() || arg.contains(' ') => {
            Err(syntax("EHLO/HELO needs one domain or address literal"))
        }
        "EHLO" => Ok(Command::Ehlo(arg.to_string())),
        "HELO" => Ok(Command::Helo(arg.to_string())),
        "MAIL" => parse_mail(arg),
        "RCPT" => parse_rcpt(arg),
        "DATA" | "RSET" | "QUIT" if !arg.is_empty() => Err(syntax("no arguments allowed")),
        "DATA" => Ok(Command::Data),
        "RSET" => Ok(Command::Rset),
        "QUIT" => Ok(Command::Quit),
        "NOOP" => Ok(Command::Noop),
        "VRFY" => Ok(Command::Vrfy),
        "HELP" => Ok(Command::Help),
        "STARTTLS" if !arg.is_empty() => Err(syntax("no arguments allowed")),
        "STARTTLS" => Ok(Command::StartTls),
        "AUTH" => {
            let mut it = arg.split_whitespace();
            let mechanism = it.next().ok_or_else(|| syntax("AUTH needs a mechanism"))?;
            Ok(Command::Auth {
                mechanism: mechanism.to_ascii_uppercase(),
                initial: it.next().map(String::from),
            })
        }
        "BDAT" => {
            let mut it = arg.split_whitespace();
            let size = it
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| syntax("syntax: BDAT size [LAST]"))?;
            let last = match it.next() {
                None => false,
                Some(l) if l.eq_ignore_ascii_case("LAST") && it.next().is_none() => true,
                Some(_) => return Err(syntax("syntax: BDAT size [LAST]")),
            };
            Ok(Command::Bdat { size, last })
        }
        "EXPN" | "TURN" | "ETRN" => Ok(Command::NotImplemented(verb)),
        _ => Err(Reply::new(500, "5.5.1", "command unrecognized")),
    }
}

/// Splits `FROM:<path> PARAMS` after the given keyword.
fn split_keyword<'a>(arg: &'a str, kw: &str) -> Option<(&'a str, Vec<&'a str>)> {
    let head = arg.get(..kw.len())?;
    if !head.eq_ignore_ascii_case(kw) {
        return None;
    }
    let rest = arg[kw.len()..].trim_start();
    let mut parts = rest.split(' ').filter(|p| !p.is_empty());
    let path = parts.next()?;
    Some((path, parts.collect()))
}

fn parse_mail(arg: &str) -> Result<Command, Reply> {
    let (path, params) =
        split_keyword(arg, "FROM:").ok_or_else(|| syntax("syntax: MAIL FROM:<address>"))?;
    let sender = parse_path(path, true).map_err(path_error)?;
    let (mut size, mut eight_bit, mut smtputf8) = (None, false, false);
    let (mut ret_full, mut envid) = (None, None);
    for p in params {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        match k.to_ascii_uppercase().as_str() {
            "SIZE" => {
                size = Some(v.parse().map_err(|_| syntax("SIZE needs a number"))?);
            }
            "SMTPUTF8" if v.is_empty() => smtputf8 = true,
            "RET" => match v.to_ascii_uppercase().as_str() {
                "FULL" => ret_full = Some(true),
                "HDRS" => ret_full = Some(false),
                _ => return Err(syntax("RET must be FULL or HDRS")),
            },
            "ENVID" if is_xtext(v) && v.len() <= 100 => envid = Some(v.to_string()),
            "ENVID" => return Err(syntax("ENVID must be xtext of at most 100 characters")),
            "BODY" => match v.to_ascii_uppercase().as_str() {
                "7BIT" => eight_bit = false,
                "8BITMIME" => eight_bit = true,
                _ => return Err(syntax("BODY must be 7BIT or 8BITMIME")),
            },
            _ => {
                return Err(Reply::new(
                    555,
                    "5.5.4",
                    format!("unsupported parameter {k}"),
                ))
            }
        }
    }
    Ok(Command::Mail {
        sender,
        size,
        eight_bit,
        smtputf8,
        ret_full,
        envid,
    })
}

/// RFC 3461 4: printable ASCII except '+' and '=' unless as "+XX".
fn is_xtext(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                let hex = |c: Option<&u8>| c.is_some_and(|c| c.is_ascii_hexdigit());
                if !(hex(b.get(i + 1)) && hex(b.get(i + 2))) {
                    return false;
                }
                i += 3;
            }
            b'=' => return false,
            33..=126 => i += 1,
            _ => return false,
        }
    }
    true
}

fn parse_rcpt(arg: &str) -> Result<Command, Reply> {
    let (path, params) =
        split_keyword(arg, "TO:").ok_or_else(|| syntax("syntax: RCPT TO:<address>"))?;
    let (mut notify, mut orcpt) = (None, None);
    for p in params {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        match k.to_ascii_uppercase().as_str() {
            "NOTIFY" => {
                let v = v.to_ascii_uppercase();
                let words: Vec<&str> = v.split(',').collect();
                let never = words == ["NEVER"];
                let valid = never
                    || words
                        .iter()
                        .all(|w| matches!(*w, "SUCCESS" | "FAILURE" | "DELAY"));
                if !valid {
                    return Err(syntax("NOTIFY must be NEVER or SUCCESS, FAILURE, DELAY"));
                }
                notify = Some(v);
            }
            "ORCPT" if v.contains(';') && is_xtext(v) && v.len() <= 500 => {
                orcpt = Some(v.to_string())
            }
            "ORCPT" => return Err(syntax("ORCPT must be addr-type;xtext")),
            _ => {
                return Err(Reply::new(
                    555,
                    "5.5.4",
                    format!("unsupported parameter {k}"),
                ))
            }
        }
    }
    match parse_path(path, false).map_err(path_error)? {
        Some(address) => Ok(Command::Rcpt {
            address,
            notify,
            orcpt,
        }),
        None => Err(syntax("empty recipient")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs() {
        assert_eq!(
            parse(b"ehlo client.test"),
            Ok(Command::Ehlo("client.test".into()))
        );
        assert!(parse(b"EHLO").is_err());
        assert_eq!(parse(b"noop"), Ok(Command::Noop));
        assert_eq!(parse(b"XYZZY").unwrap_err().code, 500);
        assert_eq!(parse(b"DATA x").unwrap_err().code, 501);
        assert_eq!(parse(b"\xff\xfe").unwrap_err().code, 500);
    }

    #[test]
    fn mail_and_rcpt() {
        match parse(b"MAIL FROM:<a@b.test> SIZE=1000 BODY=8BITMIME").unwrap() {
            Command::Mail {
                sender,
                size,
                eight_bit,
                ..
            } => {
                assert_eq!(sender.unwrap().domain, "b.test");
                assert_eq!(size, Some(1000));
                assert!(eight_bit);
            }
            c => panic!("{c:?}"),
        }
        assert_eq!(
            parse(b"MAIL FROM: <>"),
            Ok(Command::Mail {
                sender: None,
                size: None,
                eight_bit: false,
                smtputf8: false,
                ret_full: None,
                envid: None
            })
        );
        assert_eq!(parse(b"MAIL FROM:<a@b.test> FOO=1").unwrap_err().code, 555);
        assert!(matches!(
            parse("MAIL FROM:<jörg@b.test> SMTPUTF8".as_bytes()),
            Ok(Command::Mail { smtputf8: true, .. })
        ));
        assert_eq!(parse(b"MAIL TO:<a@b.test>").unwrap_err().code, 501);
        assert_eq!(parse(b"RCPT TO:<>").unwrap_err().code, 501);
        assert_eq!(
            parse(b"RCPT TO:<@x,@y:a@b.test>").unwrap_err().status,
            Some("5.1.3")
        );
        assert!(matches!(
            parse(b"rcpt to:<A@B.test>"),
            Ok(Command::Rcpt { .. })
        ));
        assert!(matches!(
            parse(b"RCPT TO:<a@b.test> NOTIFY=success,failure ORCPT=rfc822;a+40b.test"),
            Ok(Command::Rcpt { notify: Some(n), orcpt: Some(_), .. }) if n == "SUCCESS,FAILURE"
        ));
        assert_eq!(
            parse(b"RCPT TO:<a@b.test> NOTIFY=NEVER,SUCCESS")
                .unwrap_err()
                .code,
            501
        );
        assert!(matches!(
            parse(b"MAIL FROM:<a@b.test> RET=HDRS ENVID=QQ314159"),
            Ok(Command::Mail {
                ret_full: Some(false),
                envid: Some(_),
                ..
            })
        ));
        assert_eq!(
            parse(b"MAIL FROM:<a@b.test> ENVID=a=b").unwrap_err().code,
            501
        );
    }
}
