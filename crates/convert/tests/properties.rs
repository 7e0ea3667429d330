//! Property test: the converter on arbitrary and mutated bytes never
//! panics, and whatever it produces is itself acceptable input (inspects
//! cleanly and converts again). Deterministic pseudo-random cases, so a
//! failure reproduces; `cargo test` runs 3,000 of them.

use postern_convert::{
    convert_outbound, inspect, tnef, to_seven_bit, ContentLimits, Message, OutboundPolicy,
};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const SEED_MSG: &[u8] = b"From: A <a@corp.example.test>\r\nSubject: s\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nGr\xc3\xbc\xc3\x9fe\r\n--b\r\nContent-Type: application/ms-tnef\r\n\r\nxx\r\n--b--\r\n";
const ALPHABET: &[u8] = b"\r\n-:; =\"<>@abB\x80\xff\t.";

fn mutate(rng: &mut Rng) -> Vec<u8> {
    let mut v = SEED_MSG.to_vec();
    for _ in 0..rng.below(12) {
        let pos = rng.below(v.len() + 1);
        match rng.below(3) {
            0 if pos < v.len() => {
                v.remove(pos);
            }
            1 => v.insert(pos, ALPHABET[rng.below(ALPHABET.len())]),
            _ => {
                let start = rng.below(v.len());
                let chunk: Vec<u8> = v[start..(start + rng.below(40)).min(v.len())].to_vec();
                for (i, b) in chunk.into_iter().enumerate() {
                    v.insert((pos + i).min(v.len()), b);
                }
            }
        }
    }
    v
}

#[test]
fn converter_never_panics_and_output_reparses() {
    let policy = OutboundPolicy {
        tnef: Some(tnef::TnefMode::Convert),
        strip_internal_received: true,
        masquerade: [("corp.example.test".to_string(), "example.test".to_string())].into(),
        add_missing: true,
        hostname: "gw".into(),
        disclaimer: Some("d".into()),
        ..Default::default()
    };
    let lim = ContentLimits::default();
    let mut rng = Rng(0x5eed);
    for case in 0..3000 {
        let input = if case % 3 == 0 {
            (0..rng.below(600))
                .map(|_| ALPHABET[rng.below(ALPHABET.len())])
                .collect()
        } else {
            mutate(&mut rng)
        };
        let _ = tnef::parse(&input);
        if let Ok(out) = convert_outbound(&Message::parse(&input), &[], &policy, 0, "t") {
            let re = inspect(&Message::parse(&out.body), &lim);
            assert!(
                re.is_ok(),
                "case {case}: output does not reparse: {re:?}\nIN {:?}\nOUT {:?}",
                String::from_utf8_lossy(&input),
                String::from_utf8_lossy(&out.body)
            );
            assert!(
                convert_outbound(&Message::parse(&out.body), &[], &policy, 0, "t").is_ok(),
                "case {case}"
            );
        }
        let valid = inspect(&Message::parse(&input), &lim).is_ok();
        if let (Ok(seven), true) = (to_seven_bit(&input, &lim), valid) {
            assert!(
                seven.is_ascii(),
                "case {case}: downgrade left 8-bit data\nIN {:?}\nOUT {:?}",
                String::from_utf8_lossy(&input),
                String::from_utf8_lossy(&seven)
            );
            let re = inspect(&Message::parse(&seven), &lim);
            assert!(
                re.is_ok(),
                "case {case}: downgraded output does not reparse: {re:?}\nIN {:?}\nOUT {:?}",
                String::from_utf8_lossy(&input),
                String::from_utf8_lossy(&seven)
            );
        }
    }
}
