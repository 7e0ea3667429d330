//! MIME inspection and the whole outbound pipeline (TNEF conversion, header
//! hygiene, rewriting, disclaimer, long-line repair) on arbitrary messages.
#![no_main]
use postern_convert::{convert_outbound, inspect, ContentLimits, Message, OutboundPolicy, TnefMode};
use std::sync::OnceLock;

fn policy() -> &'static OutboundPolicy {
    static P: OnceLock<OutboundPolicy> = OnceLock::new();
    P.get_or_init(|| OutboundPolicy {
        limits: ContentLimits::default(),
        tnef: Some(TnefMode::Convert),
        strip_internal_received: true,
        strip_headers: vec!["x-internal-".into()],
        masquerade: [("corp.test".to_string(), "example.test".to_string())].into(),
        disclaimer: Some("--\r\nThis message was sent through a fuzzed gateway.".into()),
        add_missing: true,
        hostname: "gw.example.test".into(),
        ..OutboundPolicy::default()
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let msg = Message::parse(data);
    let _ = inspect(&msg, &ContentLimits::default());
    let _ = convert_outbound(&msg, &["far.test".to_string()], policy(), 0, "fuzz");
});
