//! A real DNS server on loopback (UDP and TCP) answering from a test zone.
//!
//! UDP answers larger than 512 octets are sent truncated (TC bit, no
//! records), as an authoritative server without EDNS would, so a resolver
//! must retry over TCP to see them. Names not in the zone get NXDOMAIN;
//! names in the zone without records of the asked type get NODATA.

use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, MX};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

/// Misbehaviour for one name, for robustness tests.
#[derive(Clone, Copy, Debug)]
pub enum Hostile {
    /// SERVFAIL.
    Servfail,
    /// No answer at all (the client times out).
    Silent,
    /// An answer whose name is a compression pointer to itself.
    PointerLoop,
    /// A header claiming 5 answers followed by none.
    WrongCounts,
    /// Five bytes of nothing.
    Garbage,
}

/// Records by (lower-case name with trailing dot, type).
#[derive(Default, Clone)]
pub struct Zone {
    records: HashMap<(String, RecordType), Vec<Record>>,
    names: std::collections::HashSet<String>,
    hostile: HashMap<String, Hostile>,
    /// After [`Zone::sign`]: RRSIGs by the (name, type) they cover.
    sigs: HashMap<(String, RecordType), Vec<Record>>,
    /// After [`Zone::sign`]: the NSEC record (and its RRSIG) of each signed
    /// name, for NODATA proofs.
    nsec: HashMap<String, Vec<Record>>,
    /// After [`Zone::sign`]: the root SOA and its RRSIG, for NODATA.
    soa: Vec<Record>,
}

fn key(name: &str) -> String {
    let n = name.to_ascii_lowercase();
    if n.ends_with('.') {
        n
    } else {
        format!("{n}.")
    }
}

impl Zone {
    pub fn new() -> Zone {
        Zone::default()
    }

    fn add(mut self, name: &str, rt: RecordType, rdata: RData) -> Zone {
        let n = Name::from_str(&key(name)).unwrap();
        self.names.insert(key(name));
        self.records
            .entry((key(name), rt))
            .or_default()
            .push(Record::from_rdata(n, 60, rdata));
        self
    }

    pub fn mx(self, name: &str, pref: u16, exchange: &str) -> Zone {
        let ex = Name::from_str(&key(exchange)).unwrap();
        self.add(name, RecordType::MX, RData::MX(MX::new(pref, ex)))
    }

    pub fn a(self, name: &str, ip: &str) -> Zone {
        let ip: Ipv4Addr = ip.parse().unwrap();
        self.add(name, RecordType::A, RData::A(A(ip)))
    }

    pub fn cname(self, name: &str, target: &str) -> Zone {
        let t = Name::from_str(&key(target)).unwrap();
        self.add(
            name,
            RecordType::CNAME,
            RData::CNAME(hickory_proto::rr::rdata::CNAME(t)),
        )
    }

    /// A TXT record; strings longer than 255 octets are split as DNS requires.
    pub fn txt(self, name: &str, value: &str) -> Zone {
        let chunks: Vec<String> = value
            .as_bytes()
            .chunks(255)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        self.add(
            name,
            RecordType::TXT,
            RData::TXT(hickory_proto::rr::rdata::TXT::new(chunks)),
        )
    }

    /// A TLSA record at `_<port>._tcp.<host>`.
    pub fn tlsa(
        self,
        host: &str,
        port: u16,
        usage: u8,
        selector: u8,
        matching: u8,
        data: &[u8],
    ) -> Zone {
        use hickory_proto::rr::rdata::tlsa::{CertUsage, Matching, Selector, TLSA};
        let rdata = RData::TLSA(TLSA::new(
            CertUsage::from(usage),
            Selector::from(selector),
            Matching::from(matching),
            data.to_vec(),
        ));
        self.add(&format!("_{port}._tcp.{host}"), RecordType::TLSA, rdata)
    }

    /// Makes every query for `name` misbehave.
    pub fn hostile(mut self, name: &str, how: Hostile) -> Zone {
        self.hostile.insert(key(name), how);
        self
    }

    /// The raw answer to a raw query; `None` means stay silent.
    fn respond(&self, raw: &[u8], udp: bool) -> Option<Vec<u8>> {
        let req = Message::from_vec(raw).ok()?;
        let name = req.queries.first().map(|q| key(&q.name().to_ascii()))?;
        if let Some(h) = self.hostile.get(&name) {
            return hostile_bytes(*h, raw, &req);
        }
        let mut resp = self.answer(&req);
        let mut bytes = resp.to_vec().ok()?;
        if udp && bytes.len() > 512 {
            resp.answers.clear();
            resp.metadata.truncation = true;
            bytes = resp.to_vec().ok()?;
        }
        Some(bytes)
    }

    /// Declares a name that exists but has no records (NODATA for all).
    pub fn exists(mut self, name: &str) -> Zone {
        self.names.insert(key(name));
        self
    }

    fn answer(&self, req: &Message) -> Message {
        let mut resp = Message::response(req.metadata.id, OpCode::Query);
        resp.metadata.authoritative = true;
        resp.metadata.recursion_desired = req.metadata.recursion_desired;
        resp.metadata.recursion_available = true;
        resp.add_queries(req.queries.clone());
        let Some(q) = req.queries.first() else {
            resp.metadata.response_code = ResponseCode::FormErr;
            return resp;
        };
        let name = key(&q.name().to_ascii());
        match self.records.get(&(name.clone(), q.query_type())) {
            Some(rs) => {
                resp.add_answers(rs.clone());
                if let Some(sig) = self.sigs.get(&(name.clone(), q.query_type())) {
                    resp.add_answers(sig.clone());
                }
            }
            None if self
                .records
                .contains_key(&(name.clone(), RecordType::CNAME)) =>
            {
                // Follow CNAMEs inside the zone, at most 16, as servers do.
                let mut cur = name.clone();
                for _ in 0..16 {
                    let Some(c) = self.records.get(&(cur.clone(), RecordType::CNAME)) else {
                        break;
                    };
                    resp.add_answers(c.clone());
                    let RData::CNAME(t) = &c[0].data else {
                        break;
                    };
                    cur = key(&t.0.to_ascii());
                    if let Some(rs) = self.records.get(&(cur.clone(), q.query_type())) {
                        resp.add_answers(rs.clone());
                        break;
                    }
                }
            }
            None if self.names.contains(&name) => {
                // NODATA; in a signed zone proven by the name's NSEC.
                if let Some(nsec) = self.nsec.get(&name) {
                    resp.add_authorities(self.soa.clone());
                    resp.add_authorities(nsec.clone());
                }
            }
            None => {
                resp.metadata.response_code = ResponseCode::NXDomain;
            }
        }
        resp
    }

    /// Signs the zone as the root zone "." with `key` (DNSSEC): an RRSIG
    /// for every record set, an NSEC for every name (NODATA proofs), the
    /// root SOA, NS and DNSKEY. Names at or under an entry of `unsigned`
    /// are an unsigned delegation (an NS record at the cut, no DS: the
    /// NSEC at the cut proves it), so their answers are insecure. The
    /// RRSIGs of names in `bogus` are corrupted. NXDOMAIN answers carry no
    /// proof: tests ask only for names that exist.
    pub fn sign(mut self, signing: &TestKey, unsigned: &[&str], bogus: &[&str]) -> Zone {
        use hickory_proto::dnssec::rdata::{DNSSECRData, NSEC, RRSIG};
        use hickory_proto::rr::rdata::{NS, SOA};
        use hickory_proto::rr::{DNSClass, RecordSet};
        let root = Name::root();
        let ns = Name::from_str("ns.root.test.").unwrap();
        let soa = SOA::new(
            ns.clone(),
            Name::from_str("admin.root.test.").unwrap(),
            1,
            3600,
            600,
            86400,
            60,
        );
        self = self.add(".", RecordType::SOA, RData::SOA(soa));
        self = self.add(".", RecordType::NS, RData::NS(NS(ns)));
        self = self.add(
            ".",
            RecordType::DNSKEY,
            RData::DNSSEC(DNSSECRData::DNSKEY(signing.dnskey())),
        );
        for cut in unsigned {
            self = self.add(
                cut,
                RecordType::NS,
                RData::NS(NS(Name::from_str("ns.root.test.").unwrap())),
            );
        }
        let under = |name: &str, cuts: &[&str]| {
            cuts.iter()
                .any(|c| name == key_of(c) || name.ends_with(&format!(".{}", key_of(c))))
        };
        let is_cut = |name: &str| unsigned.iter().any(|c| name == key_of(c));
        let now = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
        let sign_set = |name: &str, rt: RecordType, records: &[Record]| -> Record {
            let mut set = RecordSet::new(Name::from_str(name).unwrap(), rt, 0);
            for r in records {
                set.insert(r.clone(), 0);
            }
            let rrsig = RRSIG::from_rrset(&set, DNSClass::IN, now, &signing.signer).unwrap();
            let rrsig = if bogus.iter().any(|b| key_of(b) == name) {
                let mut sig = rrsig.sig().to_vec();
                sig[0] ^= 0xff;
                RRSIG::from_sig(rrsig.input().clone(), sig)
            } else {
                rrsig
            };
            Record::from_rdata(
                Name::from_str(name).unwrap(),
                60,
                RData::DNSSEC(DNSSECRData::RRSIG(rrsig)),
            )
        };
        let mut sigs = HashMap::new();
        for ((name, rt), records) in &self.records {
            // Inside an unsigned delegation nothing is signed; at the cut
            // the parent signs only the NSEC (its NS is not authoritative).
            if under(name, unsigned) {
                continue;
            }
            sigs.insert((name.clone(), *rt), vec![sign_set(name, *rt, records)]);
        }
        let mut names: Vec<Name> = self
            .names
            .iter()
            .filter(|n| !under(n, unsigned) || is_cut(n))
            .map(|n| Name::from_str(n).unwrap())
            .collect();
        names.sort();
        let mut nsec = HashMap::new();
        for (i, n) in names.iter().enumerate() {
            let next = names.get(i + 1).cloned().unwrap_or_else(Name::root);
            let name = key(&n.to_ascii());
            let types: Vec<RecordType> = if is_cut(&name) {
                vec![RecordType::NS]
            } else {
                self.records
                    .keys()
                    .filter(|(k, _)| *k == name)
                    .map(|(_, t)| *t)
                    .collect()
            };
            let rdata = RData::DNSSEC(DNSSECRData::NSEC(NSEC::new_cover_self(next, types)));
            let rec = Record::from_rdata(n.clone(), 60, rdata);
            let sig = sign_set(&name, RecordType::NSEC, std::slice::from_ref(&rec));
            nsec.insert(name, vec![rec, sig]);
        }
        let root_key = key_of(".");
        let mut soa = self.records[&(root_key.clone(), RecordType::SOA)].clone();
        soa.extend(sigs[&(root_key, RecordType::SOA)].clone());
        let _ = root;
        self.sigs = sigs;
        self.nsec = nsec;
        self.soa = soa;
        self
    }
}

fn key_of(name: &str) -> String {
    if name == "." {
        ".".to_string()
    } else {
        key(name)
    }
}

/// A DNSSEC key for a test's own root zone, and the trust anchor text that
/// makes Postern trust it.
pub struct TestKey {
    signer: hickory_proto::dnssec::DnssecSigner,
}

impl TestKey {
    /// A new Ed25519 key (algorithm 15).
    pub fn generate() -> TestKey {
        use hickory_proto::dnssec::crypto::Ed25519SigningKey;
        use hickory_proto::dnssec::rdata::DNSKEY;
        use hickory_proto::dnssec::{DnssecSigner, SigningKey};
        let pkcs8 = Ed25519SigningKey::generate_pkcs8().unwrap();
        let key = Ed25519SigningKey::from_pkcs8(&pkcs8).unwrap();
        let public = key.to_public_key().unwrap();
        let dnskey = DNSKEY::from_key(&public);
        let signer = DnssecSigner::new(
            dnskey,
            Box::new(key),
            Name::root(),
            std::time::Duration::from_secs(2 * 86_400),
        );
        TestKey { signer }
    }

    fn dnskey(&self) -> hickory_proto::dnssec::rdata::DNSKEY {
        self.signer.to_dnskey()
    }

    /// The key as a trust anchor file line: `. 3600 IN DNSKEY 257 3 15 <key>`.
    pub fn trust_anchor(&self) -> String {
        use hickory_proto::dnssec::PublicKey;
        let dnskey = self.dnskey();
        let b64 = postern_core::base64::base64(dnskey.public_key().public_bytes());
        format!(". 3600 IN DNSKEY {} 3 15 {b64}\n", dnskey.flags())
    }
}

pub struct DnsServer {
    pub addr: SocketAddr,
    /// UDP queries answered, and how many of those were truncated.
    pub udp_queries: Arc<std::sync::atomic::AtomicUsize>,
    pub truncated: Arc<std::sync::atomic::AtomicUsize>,
    pub tcp_queries: Arc<std::sync::atomic::AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl DnsServer {
    /// Serves `zone` on 127.0.0.1, UDP and TCP on the same port.
    pub async fn start(zone: Zone) -> DnsServer {
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let port = udp.local_addr().unwrap().port();
            if let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().unwrap();
        let zone = Arc::new(zone);
        let counters = (
            Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        );
        let z = zone.clone();
        let (uq, tr) = (counters.0.clone(), counters.1.clone());
        let udp_task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = udp.recv_from(&mut buf).await else {
                    continue;
                };
                uq.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(bytes) = z.respond(&buf[..n], true) else {
                    continue;
                };
                if bytes.len() >= 3 && bytes[2] & 0x02 != 0 {
                    tr.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                let _ = udp.send_to(&bytes, peer).await;
            }
        });
        let z = zone.clone();
        let tq = counters.2.clone();
        let tcp_task = tokio::spawn(async move {
            while let Ok((mut s, _)) = tcp.accept().await {
                let (z, tq) = (z.clone(), tq.clone());
                tokio::spawn(async move {
                    loop {
                        let mut len = [0u8; 2];
                        if s.read_exact(&mut len).await.is_err() {
                            return;
                        }
                        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
                        if s.read_exact(&mut buf).await.is_err() {
                            return;
                        }
                        tq.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let Some(bytes) = z.respond(&buf, false) else {
                            continue;
                        };
                        let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
                        out.extend_from_slice(&bytes);
                        if s.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        DnsServer {
            addr,
            udp_queries: counters.0,
            truncated: counters.1,
            tcp_queries: counters.2,
            tasks: vec![udp_task, tcp_task],
        }
    }
}

/// Hand-made hostile answers.
fn hostile_bytes(h: Hostile, raw: &[u8], req: &Message) -> Option<Vec<u8>> {
    let id = req.metadata.id.to_be_bytes();
    // The question section as the client sent it.
    let mut qend = 12;
    while qend < raw.len() && raw[qend] != 0 {
        qend += 1 + raw[qend] as usize;
    }
    let question = raw.get(12..(qend + 5).min(raw.len()))?;
    let header = |flags: u16, an: u16| {
        let mut v = id.to_vec();
        v.extend_from_slice(&flags.to_be_bytes());
        v.extend_from_slice(&1u16.to_be_bytes());
        v.extend_from_slice(&an.to_be_bytes());
        v.extend_from_slice(&[0, 0, 0, 0]);
        v
    };
    match h {
        Hostile::Silent => None,
        Hostile::Garbage => Some(vec![id[0], id[1], 0x81, 0x80, 0xff]),
        Hostile::Servfail => {
            let mut v = header(0x8182, 0);
            v.extend_from_slice(question);
            Some(v)
        }
        Hostile::WrongCounts => {
            let mut v = header(0x8180, 5);
            v.extend_from_slice(question);
            Some(v)
        }
        Hostile::PointerLoop => {
            let mut v = header(0x8180, 1);
            v.extend_from_slice(question);
            let off = v.len() as u16;
            // Name: a pointer to itself. Type MX, class IN, TTL 60.
            v.extend_from_slice(&(0xC000 | off).to_be_bytes());
            v.extend_from_slice(&[0, 15, 0, 1, 0, 0, 0, 60, 0, 4, 0, 10]);
            // Exchange: also a pointer to the looping name.
            v.extend_from_slice(&(0xC000 | off).to_be_bytes());
            Some(v)
        }
    }
}
