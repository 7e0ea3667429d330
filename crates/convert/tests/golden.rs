//! Golden files: `golden/NAME.in.eml` through the outbound pipeline must give
//! exactly `golden/NAME.out.eml` (fixed time and token, a fixed policy).
//! `UPDATE_GOLDEN=1 cargo test -p postern-convert --test golden` rewrites the
//! expected files after a deliberate change; review the diff.

use postern_convert::{convert_outbound, Message, OutboundPolicy, TnefMode};
use std::path::Path;

fn policy() -> OutboundPolicy {
    OutboundPolicy {
        tnef: Some(TnefMode::Convert),
        strip_internal_received: true,
        strip_headers: vec!["x-ms-exchange-organization-".into()],
        masquerade: [("corp.example.test".to_string(), "example.test".to_string())].into(),
        add_missing: true,
        hostname: "gw.example.test".into(),
        disclaimer: Some("Sent through the example.test gateway.".into()),
        ..Default::default()
    }
}

#[test]
fn golden_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let Some(stem) = name.strip_suffix(".in.eml") else {
            continue;
        };
        n += 1;
        let input = std::fs::read(&path).unwrap();
        let view = Message::parse(&input);
        let out = convert_outbound(&view, &["far.test".into()], &policy(), 0, "golden").unwrap();
        let expected_path = dir.join(format!("{stem}.out.eml"));
        if std::env::var("UPDATE_GOLDEN").is_ok() {
            std::fs::write(&expected_path, &out.body).unwrap();
            continue;
        }
        let expected = std::fs::read(&expected_path)
            .unwrap_or_else(|_| panic!("missing {}", expected_path.display()));
        assert_eq!(
            String::from_utf8_lossy(&out.body),
            String::from_utf8_lossy(&expected),
            "golden file {stem}"
        );
    }
    assert!(n >= 3, "golden inputs missing");
}
