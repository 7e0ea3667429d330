//! A real DNS server on loopback (UDP and TCP) answering from a test zone.
//!
//! UDP answers larger than 512 octets are sent truncated (TC bit, no
//! records), as an authoritative server without EDNS would, so a resolver
//! must retry over TCP to see them. Names not in the zone get NXDOMAIN;
//! names in the zone without records of the asked type get NODATA.

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, MX};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

/// Records by (lower-case name with trailing dot, type).
#[derive(Default, Clone)]
pub struct Zone {
    records: HashMap<(String, RecordType), Vec<Record>>,
    names: std::collections::HashSet<String>,
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

    /// Declares a name that exists but has no records (NODATA for all).
    pub fn exists(mut self, name: &str) -> Zone {
        self.names.insert(key(name));
        self
    }

    fn answer(&self, req: &Message) -> Message {
        let mut resp = Message::new();
        resp.set_id(req.id())
            .set_message_type(MessageType::Response)
            .set_op_code(OpCode::Query)
            .set_authoritative(true)
            .set_recursion_desired(req.recursion_desired())
            .set_recursion_available(true);
        resp.add_queries(req.queries().to_vec());
        let Some(q) = req.queries().first() else {
            resp.set_response_code(ResponseCode::FormErr);
            return resp;
        };
        let name = key(&q.name().to_ascii());
        match self.records.get(&(name.clone(), q.query_type())) {
            Some(rs) => {
                resp.add_answers(rs.clone());
            }
            None if self.names.contains(&name) => {}
            None => {
                resp.set_response_code(ResponseCode::NXDomain);
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
                let Ok(req) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                uq.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut resp = z.answer(&req);
                let mut bytes = resp.to_vec().unwrap();
                if bytes.len() > 512 {
                    tr.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    resp.take_answers();
                    resp.set_truncated(true);
                    bytes = resp.to_vec().unwrap();
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
                        let Ok(req) = Message::from_vec(&buf) else {
                            return;
                        };
                        tq.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let bytes = z.answer(&req).to_vec().unwrap();
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
