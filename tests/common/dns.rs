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
            None if self.names.contains(&name) => {}
            None => {
                resp.metadata.response_code = ResponseCode::NXDomain;
            }
        }
        resp
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
