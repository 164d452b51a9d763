//! Where counts are exported for Prometheus (`--metrics ADDR`): each scrape
//! encodes a summary freshly built from the kernel's counters, so metrics
//! and the final summary never disagree.
//!
//! Cardinality stays bounded: per-remote series exist only for the top K
//! remote IPs by total at scrape time. Their counters are exact and never go
//! down (a remote leaving the top K only stops being exported); the RSTs of
//! every other remote IP are a gauge, since that sum shrinks whenever a
//! remote enters the top K.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use anyhow::{Context as _, Result};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
};

use tracer_common::Direction;

use crate::{
    attribution::cause::Cause,
    report::summary::{RemoteSummary, Summary},
    untrusted::Untrusted,
};

/// Port of `--metrics PORT` alone, bound to loopback: metrics name remote
/// IPs, which is nobody else's business unless the user says so.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    if let Some(port) = s.strip_prefix(':') {
        // ":9477" is a common spelling of "every address"; make it explicit.
        return Err(format!(
            "give the address to listen on: 127.0.0.1:{port} (loopback) or 0.0.0.0:{port} (every address)"
        ));
    }
    s.parse()
        .map_err(|_| format!("not an address: {s:?} (examples: 9477, 127.0.0.1:9477, [::]:9477)"))
}

/// What the encoder needs besides the counts.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub sent: bool,
    pub received: bool,
    /// Remote IPs exported per direction.
    pub top: usize,
}

/// OpenMetrics text for `summary`.
pub fn encode(summary: &Summary, shape: Shape) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot {
        summary: summary.clone(),
        shape,
    }));
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug)]
struct Snapshot {
    summary: Summary,
    shape: Shape,
}

type Labels = Vec<(&'static str, String)>;

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels, u64)>,
) -> std::fmt::Result {
    let series = series.into_iter().map(|(l, v)| (l, ConstCounter::new(v)));
    family(enc, name, help, MetricType::Counter, series)
}

fn family<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    series: impl IntoIterator<Item = (Labels, M)>,
) -> std::fmt::Result {
    let mut family = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, m) in series {
        // The encoder escapes only backslash, quote and newline: a CR or
        // an ESC would go out raw, and a label value may come from outside
        // rsttrace. Every value takes the text output's escaping here, the
        // one place values are written, so each sample stays on its line
        // and reads back as the text output shows it.
        let labels: Labels = labels
            .into_iter()
            .map(|(k, v)| (k, Untrusted::from(v).to_string()))
            .collect();
        m.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn direction(d: Direction) -> (&'static str, String) {
    ("direction", d.name().to_string())
}

impl Snapshot {
    /// (direction, per-remote summaries, RSTs in that direction).
    fn directions(&self) -> Vec<(Direction, &[RemoteSummary], u64)> {
        let s = &self.summary;
        let mut v = vec![];
        if self.shape.sent {
            v.push((Direction::Out, &s.by_remote_ip[..], s.total));
        }
        if self.shape.received {
            v.push((Direction::In, &s.received[..], s.received_total));
        }
        v
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.summary;
        let mut by_cause: Vec<(Labels, u64)> = vec![];
        if self.shape.sent {
            // Every cause from the start, so dashboards and alerts see zeros
            // rather than absent series.
            for c in Cause::ALL
                .iter()
                .filter(|c| c.direction() == Direction::Out)
            {
                let n = s.by_cause.get(c).copied().unwrap_or(0);
                by_cause.push((vec![direction(Direction::Out), ("cause", c.to_string())], n));
            }
        }
        if self.shape.received {
            let labels = vec![
                direction(Direction::In),
                ("cause", Cause::Received.to_string()),
            ];
            by_cause.push((labels, s.received_total));
        }
        counter(
            &mut enc,
            "rsttrace_rsts",
            "TCP RSTs by direction (out: sent by this host, in: received) and cause.",
            by_cause,
        )?;

        let mut per_remote: Vec<(Labels, u64)> = vec![];
        let mut others: Vec<(Labels, i64)> = vec![];
        for (dir, remotes, total) in self.directions() {
            let top = &remotes[..remotes.len().min(self.shape.top)];
            for r in top {
                for (c, n) in &r.by_cause {
                    let labels = vec![
                        direction(dir),
                        ("remote_ip", r.remote_ip.to_string()),
                        ("cause", c.to_string()),
                    ];
                    per_remote.push((labels, *n));
                }
            }
            let listed: u64 = top.iter().map(|r| r.total).sum();
            let rest = total.saturating_sub(listed);
            others.push((
                vec![direction(dir)],
                i64::try_from(rest).unwrap_or(i64::MAX),
            ));
        }
        counter(
            &mut enc,
            "rsttrace_remote_rsts",
            "TCP RSTs per remote IP and cause, for the remote IPs with the most RSTs \
             (--metrics-remote-ips); the rest are in rsttrace_other_remotes_rsts.",
            per_remote,
        )?;
        family(
            &mut enc,
            "rsttrace_other_remotes_rsts",
            "TCP RSTs of remote IPs not listed in rsttrace_remote_rsts_total; it shrinks \
             when a remote IP enters the list.",
            MetricType::Gauge,
            others.into_iter().map(|(l, v)| (l, ConstGauge::new(v))),
        )?;
        counter(
            &mut enc,
            "rsttrace_drops",
            "TCP segments to or from remote peers dropped silently (no RST sent), by drop \
             cause: netfilter-drop, tc-drop, xdp-drop, cgroup-drop, listen-overflow; and \
             those a netfilter REJECT answered with an ICMP error instead of a RST: \
             netfilter-reject-icmp.",
            tracer_common::DropCause::ALL.into_iter().map(|c| {
                let n = s
                    .drops
                    .iter()
                    .filter_map(|d| d.by_cause.get(&c))
                    .sum::<u64>();
                (vec![("cause", c.to_string())], n)
            }),
        )?;
        // Its name before drops had causes: kept so that dashboards built on
        // it keep working.
        counter(
            &mut enc,
            "rsttrace_netfilter_drops",
            "Segments from remote peers silently dropped by netfilter (no RST sent); \
             the same as rsttrace_drops_total{cause=\"netfilter-drop\"}.",
            [(
                vec![],
                s.drops
                    .iter()
                    .filter_map(|d| d.by_cause.get(&tracer_common::DropCause::NetfilterDrop))
                    .sum::<u64>(),
            )],
        )?;
        counter(
            &mut enc,
            "rsttrace_drop_overflow",
            "Silent drops counted without their remote IP and cause: the drop map was full.",
            [(vec![], s.drop_overflow)],
        )?;
        let c = s.coverage;
        counter(
            &mut enc,
            "rsttrace_egress_rsts",
            "RSTs seen leaving through a network device, by what explained them: the TCP \
             stack, an egress rule (netfilter, raw socket, module), or nothing (cause unknown).",
            [
                (vec![("explained_by", "tcp_stack".to_string())], c.tcp_stack),
                (
                    vec![("explained_by", "egress_rule".to_string())],
                    c.by_egress_rule(),
                ),
                (vec![("explained_by", "none".to_string())], c.unexplained),
            ],
        )?;
        counter(
            &mut enc,
            "rsttrace_lost_events",
            "RST events that did not reach rsttrace (ring buffer full); counts stay exact.",
            [(vec![], s.lost)],
        )?;
        counter(
            &mut enc,
            "rsttrace_skipped_program_runs",
            "Runs of rsttrace's programs the kernel skipped because a BPF program was already \
             running on that CPU: RSTs or drops not counted at all.",
            s.skipped_runs
                .iter()
                .map(|(prog, n)| (vec![("program", prog.clone())], *n)),
        )?;
        counter(
            &mut enc,
            "rsttrace_unreadable_rsts",
            "RSTs tcp_send_reset saw but rsttrace could not read: in no other count.",
            [(vec![], s.unreadable)],
        )?;
        counter(
            &mut enc,
            "rsttrace_remote_ip_overflow",
            "RSTs counted by cause but not per remote IP: the kernel's per-remote map was \
             full (--max-remote-ips).",
            [(vec![], s.remote_ip_overflow)],
        )?;
        family(
            &mut enc,
            "rsttrace_build_info",
            "rsttrace version; always 1.",
            MetricType::Gauge,
            [(
                vec![("version", env!("CARGO_PKG_VERSION").to_string())],
                ConstGauge::new(1i64),
            )],
        )?;
        Ok(())
    }
}

/// A scrape waiting for the trace loop, which owns the kernel maps.
pub type Scrape = oneshot::Sender<String>;

/// Binds `addr` and serves GET /metrics; each scrape is handed to the trace
/// loop through the returned channel.
pub async fn serve(addr: SocketAddr) -> Result<mpsc::Receiver<Scrape>> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics: can't listen on {addr}"))?;
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                // Out of fds and the like: try again shortly, never give up.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                // A client that stalls only loses its own scrape.
                let _ = tokio::time::timeout(Duration::from_secs(10), respond(conn, tx)).await;
            });
        }
    });
    Ok(rx)
}

async fn respond(mut conn: TcpStream, tx: mpsc::Sender<Scrape>) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let (reply, wait) = oneshot::channel();
            if tx.send(reply).await.is_err() {
                return Ok(());
            }
            match wait.await {
                Ok(body) => ("200 OK", CONTENT_TYPE, body),
                Err(_) => return Ok(()),
            }
        }
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "rsttrace serves its metrics at /metrics\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET /metrics\n".to_string(),
        ),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        out.extend_from_slice(body.as_bytes());
    }
    conn.write_all(&out).await?;
    conn.shutdown().await
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, net::IpAddr, time::SystemTime};

    use super::*;

    /// Sent RSTs only, two remotes with series of their own.
    const SENT_TOP_2: Shape = Shape {
        sent: true,
        received: false,
        top: 2,
    };

    fn remote(ip: &str, causes: &[(Cause, u64)]) -> RemoteSummary {
        RemoteSummary {
            remote_ip: ip.parse::<IpAddr>().unwrap(),
            total: causes.iter().map(|c| c.1).sum(),
            by_cause: causes.iter().copied().collect::<BTreeMap<_, _>>(),
            first_seen: SystemTime::UNIX_EPOCH,
            last_seen: SystemTime::UNIX_EPOCH,
            diagnosis: None,
        }
    }

    #[test]
    fn addresses_default_to_loopback() {
        assert_eq!(parse_addr("9477").unwrap().to_string(), "127.0.0.1:9477");
        assert_eq!(parse_addr("[::]:80").unwrap().to_string(), "[::]:80");
        assert_eq!(parse_addr("0.0.0.0:80").unwrap().to_string(), "0.0.0.0:80");
        for bad in ["", ":9477", "host:80", "70000", "1.2.3.4"] {
            assert!(parse_addr(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn top_remotes_are_listed_and_the_rest_is_one_gauge() {
        let mut s = Summary {
            total: 10,
            ..Default::default()
        };
        s.by_cause.insert(Cause::ClosedPort, 9);
        s.by_cause.insert(Cause::NetfilterReject, 1);
        s.by_remote_ip = vec![
            remote("10.0.0.1", &[(Cause::ClosedPort, 6)]),
            remote("10.0.0.2", &[(Cause::ClosedPort, 3)]),
            remote("10.0.0.3", &[(Cause::NetfilterReject, 1)]),
        ];
        let text = encode(
            &s,
            Shape {
                sent: true,
                received: false,
                top: 2,
            },
        );
        assert!(text.contains(
            "rsttrace_remote_rsts_total{direction=\"out\",remote_ip=\"10.0.0.1\",cause=\"closed-port\"} 6\n"
        ), "{text}");
        assert!(!text.contains("10.0.0.3"), "{text}");
        assert!(
            text.contains("rsttrace_other_remotes_rsts{direction=\"out\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("rsttrace_rsts_total{direction=\"out\",cause=\"socket-killed\"} 0\n"),
            "{text}"
        );
        assert!(!text.contains("direction=\"in\""), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn skipped_runs_are_a_counter_per_program() {
        let s = Summary {
            skipped_runs: [("tcp_send_reset".to_string(), 3)].into_iter().collect(),
            unreadable: 2,
            ..Default::default()
        };
        let shape = SENT_TOP_2;
        let text = encode(&s, shape);
        assert!(
            text.contains("rsttrace_skipped_program_runs_total{program=\"tcp_send_reset\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("rsttrace_unreadable_rsts_total 2\n"),
            "{text}"
        );
    }

    #[test]
    fn hostile_label_values_stay_on_their_line() {
        // Only the encoder's own escapes (backslash, quote, newline) would
        // leave the CR, ESC and BEL raw.
        let name = "\x1b[2J\x1b]0;pwn\x07X\"} 1\nforged 2\r\\";
        let s = Summary {
            skipped_runs: [(name.to_string(), 3)].into_iter().collect(),
            ..Default::default()
        };
        let shape = SENT_TOP_2;
        let text = encode(&s, shape);
        crate::untrusted::hostile::assert_clean(text.as_bytes(), b"\n");
        // The value is the text output's rendering, escaped once more for
        // the exposition format: a parser reads back `\x1b[2J...`.
        let sample = r#"rsttrace_skipped_program_runs_total{program="\\x1b[2J\\x1b]0;pwn\\x07X\"} 1\\x0aforged 2\\x0d\\\\"} 3"#;
        assert!(
            text.lines().any(|l| l == sample),
            "no line {sample:?} in:\n{text}"
        );
    }
}
