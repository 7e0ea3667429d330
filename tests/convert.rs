//! The conversion core end to end through the real binary: 8BITMIME
//! downgrade for a 7-bit next hop.

mod common;

use common::{route, wait_until, Gateway, RawClient, Sink};
use postern_convert::encode::{base64_decode, quoted_printable_decode};
use postern_convert::Message;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn eight_bit_message_is_downgraded_for_a_seven_bit_hop() {
    let sink = Sink::start_7bit("127.0.0.1:0").await;
    let gw = Gateway::start("", &route("*", sink.addr));
    let text = "Grüße aus Köln — ünïcödé text\r\nzweite Zeile\r\n";
    let binary: Vec<u8> = (0u8..=255).collect();
    let mut msg = format!(
        "From: Jörg <j@example.test>\r\nSubject: Größe\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"zz\"\r\n\r\n--zz\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{text}\r\n--zz\r\n\
         Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n"
    )
    .into_bytes();
    // Binary without CR, LF or NUL (DATA needs CRLF line endings and no NUL).
    let bin: Vec<u8> = binary
        .iter()
        .copied()
        .filter(|b| !matches!(*b, b'\r' | b'\n' | 0))
        .collect();
    msg.extend_from_slice(&bin);
    msg.extend_from_slice(b"\r\n--zz--\r\n.\r\n");
    let mut c = RawClient::connect(gw.smtp).await;
    c.cmd("EHLO t.test").await;
    let r = c
        .transaction(
            "<a@example.test> BODY=8BITMIME",
            &["<b@example.test>"],
            &msg,
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    wait_until(Duration::from_secs(30), "delivery", || sink.count() == 1).await;
    let got = sink.all()[0].data.clone();
    assert!(got.is_ascii() && !got.contains("!!8-BIT"), "{got}");
    assert!(got.contains("Subject: =?UTF-8?B?"));
    let parts = Message::parse(got.as_bytes()).parts();
    assert_eq!(parts.len(), 2);
    assert_eq!(
        parts[0].header("Content-Transfer-Encoding").as_deref(),
        Some("quoted-printable")
    );
    assert_eq!(
        String::from_utf8(quoted_printable_decode(parts[0].body())).unwrap(),
        text
    );
    assert_eq!(
        parts[1].header("Content-Transfer-Encoding").as_deref(),
        Some("base64")
    );
    assert_eq!(base64_decode(parts[1].body()).unwrap(), bin);
}
