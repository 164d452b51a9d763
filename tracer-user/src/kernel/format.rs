//! Parser for tracefs `format` files: field offsets and the symbolic names a
//! tracepoint prints for an enum field. Layouts and enum values differ
//! between kernels, so nothing about a record is ever hard-coded.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, bail};
use tracer_common::{ABSENT, SendResetLayout, addr_layout};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    /// The C declaration without the name, e.g. `__u8` or `const void *`.
    pub c_type: String,
    pub offset: u32,
    pub size: u32,
    /// Element count for arrays (`saddr[28]` -> 28), 0 for scalars.
    pub array_len: u32,
}

#[derive(Debug, Clone, Default)]
pub struct Format {
    pub name: String,
    pub fields: Vec<Field>,
    pub print_fmt: String,
}

impl Format {
    pub fn parse(text: &str) -> Result<Self> {
        let mut format = Format::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if let Some(name) = line.strip_prefix("name:") {
                format.name = name.trim().to_string();
            } else if let Some(fmt) = line.strip_prefix("print fmt:") {
                format.print_fmt = fmt.trim().to_string();
            } else if line.starts_with("field:") {
                let field =
                    parse_field(line).with_context(|| format!("line {}: {line:?}", n + 1))?;
                format.fields.push(field);
            }
        }
        if format.fields.is_empty() {
            bail!("no fields found: not a tracefs format file");
        }
        Ok(format)
    }

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Value -> name pairs of `__print_symbolic(REC->field, ...)` in the
    /// print format, for pairs whose value is a number (kernels print enum
    /// values resolved through TRACE_DEFINE_ENUM).
    pub fn symbols(&self, field: &str) -> BTreeMap<u64, String> {
        let needle = format!("__print_symbolic(REC->{field},");
        let Some(start) = self.print_fmt.find(&needle) else {
            return BTreeMap::new();
        };
        let rest = &self.print_fmt[start + needle.len()..];
        // The symbol list ends at the parenthesis closing __print_symbolic.
        let mut depth = 1usize;
        let mut end = rest.len();
        let mut in_str = false;
        for (i, c) in rest.char_indices() {
            match c {
                '"' => in_str = !in_str,
                '(' if !in_str => depth += 1,
                ')' if !in_str => {
                    depth -= 1;
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let mut out = BTreeMap::new();
        for pair in rest[..end].split('}') {
            let Some(open) = pair.find('{') else { continue };
            let Some((value, name)) = pair[open + 1..].split_once(',') else {
                continue;
            };
            let value = value.trim();
            let parsed = match value.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => value.parse::<u64>().ok(),
            };
            let name = name.trim().trim_matches('"');
            if let Some(v) = parsed
                && !name.is_empty()
            {
                out.insert(v, name.to_string());
            }
        }
        out
    }
}

fn parse_field(line: &str) -> Result<Field> {
    let mut decl = None;
    let mut offset = None;
    let mut size = None;
    for part in line.split(';') {
        let part = part.trim();
        if let Some(d) = part.strip_prefix("field:") {
            decl = Some(d.trim());
        } else if let Some(o) = part.strip_prefix("offset:") {
            offset = Some(o.trim().parse::<u32>().context("bad offset")?);
        } else if let Some(s) = part.strip_prefix("size:") {
            size = Some(s.trim().parse::<u32>().context("bad size")?);
        }
    }
    let (Some(decl), Some(offset), Some(size)) = (decl, offset, size) else {
        bail!("field line lacks field, offset or size");
    };
    // The name is the declaration's last word, possibly with `[N]`.
    let split = decl
        .rfind(|c: char| c.is_whitespace() || c == '*')
        .map_or(0, |i| i + 1);
    let (c_type, name) = decl.split_at(split);
    let (name, array_len) = match name.split_once('[') {
        Some((n, len)) => {
            let len = len.trim_end_matches(']');
            // Dynamic arrays print no length (`__data_loc char[] name`).
            (n, len.parse::<u32>().unwrap_or(0))
        }
        None => (name, 0),
    };
    if name.is_empty() {
        bail!("field has no name");
    }
    Ok(Field {
        name: name.to_string(),
        c_type: c_type.trim().to_string(),
        offset,
        size,
        array_len,
    })
}

/// What userspace needs to know about `tcp:tcp_send_reset` on this kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendResetFormat {
    pub layout: SendResetLayout,
    /// Reason value -> kernel name (`NO_SOCKET`, ...); empty without a
    /// reason field (before 6.10).
    pub reasons: BTreeMap<u64, String>,
}

impl SendResetFormat {
    pub fn from_format(format: &Format) -> Result<Self> {
        let opt = |name: &str, size: u32| -> Result<u32> {
            match format.field(name) {
                None => Ok(ABSENT),
                Some(f) if f.offset + f.size > tracer_common::SEND_RESET_RECORD_MAX => bail!(
                    "field {name} ends at byte {}, beyond the {} bytes rsttrace reads: unsupported layout",
                    f.offset + f.size,
                    tracer_common::SEND_RESET_RECORD_MAX
                ),
                Some(f) if f.size == size => Ok(f.offset),
                Some(f) => bail!(
                    "field {name} has size {} (expected {size}): unsupported layout",
                    f.size
                ),
            }
        };
        let req = |name: &str, size: u32| -> Result<u32> {
            let off = opt(name, size)?;
            if off == ABSENT {
                bail!("field {name} is missing: unsupported layout");
            }
            Ok(off)
        };

        let saddr = format
            .field("saddr")
            .context("field saddr is missing: unsupported layout")?;
        let mut layout = SendResetLayout {
            skbaddr: opt("skbaddr", 8)?,
            skaddr: opt("skaddr", 8)?,
            state: opt("state", 4)?,
            reason: opt("reason", 4)?,
            ..SendResetLayout::UNSET
        };
        match saddr.size {
            // sockaddr_in6 is 28 bytes: the 6.10+ layout.
            28 => {
                layout.addr_layout = addr_layout::SOCKADDR;
                layout.saddr = req("saddr", 28)?;
                layout.daddr = req("daddr", 28)?;
            }
            4 => {
                layout.addr_layout = addr_layout::SPLIT;
                layout.saddr = req("saddr", 4)?;
                layout.daddr = req("daddr", 4)?;
                layout.sport = req("sport", 2)?;
                layout.dport = req("dport", 2)?;
                layout.saddr_v6 = req("saddr_v6", 16)?;
                layout.daddr_v6 = req("daddr_v6", 16)?;
                layout.family = opt("family", 2)?;
            }
            n => bail!("field saddr has size {n}: unsupported layout"),
        }
        let reasons = if layout.reason == ABSENT {
            BTreeMap::new()
        } else {
            format.symbols("reason")
        };
        Ok(Self { layout, reasons })
    }
}

/// `skb:kfree_skb` on this kernel: its layout, and its drop reasons'
/// names by value (none before 5.17, where drops can't be told apart).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KfreeSkbFormat {
    pub layout: tracer_common::KfreeSkbLayout,
    pub reasons: BTreeMap<u64, String>,
}

pub fn kfree_skb_format(format: &Format) -> Result<KfreeSkbFormat> {
    let layout = kfree_skb_layout(format)?;
    let reasons = if layout.netfilter_drop == ABSENT {
        BTreeMap::new()
    } else {
        format.symbols("reason")
    };
    Ok(KfreeSkbFormat { layout, reasons })
}

/// `skb:kfree_skb` on this kernel: which reason value means NETFILTER_DROP,
/// and where the classic build finds its fields. It stays ABSENT on kernels
/// whose kfree_skb has no reason (before 5.17), where drops can't be told
/// apart. The raw build reads the arguments: the record must show them in
/// their order (skb, location, reason), as every kernel since 5.17 does.
pub fn kfree_skb_layout(format: &Format) -> Result<tracer_common::KfreeSkbLayout> {
    let off = |name: &str, size: u32| -> Result<u32> {
        let f = format
            .field(name)
            .with_context(|| format!("kfree_skb has no {name} field"))?;
        anyhow::ensure!(f.size == size, "kfree_skb field {name} has size {}", f.size);
        Ok(f.offset)
    };
    let (skbaddr, location) = (off("skbaddr", 8)?, off("location", 8)?);
    let mut l = tracer_common::KfreeSkbLayout::UNSET;
    if format.field("reason").is_some() {
        let value = format
            .symbols("reason")
            .into_iter()
            .find(|(_, n)| n == "NETFILTER_DROP")
            .map(|(v, _)| v as u32);
        if let Some(v) = value {
            let reason = off("reason", 4)?;
            anyhow::ensure!(
                skbaddr < location && location < reason,
                "kfree_skb's record is not (skb, location, reason): its arguments moved"
            );
            l = tracer_common::KfreeSkbLayout {
                netfilter_drop: v,
                skbaddr,
                location,
                reason,
            };
        }
    }
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Format {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        Format::parse(&text).unwrap()
    }

    #[test]
    fn host_6_18_layout_and_reasons() {
        let f = fixture("6.18/tcp_send_reset");
        assert_eq!(f.name, "tcp_send_reset");
        let s = SendResetFormat::from_format(&f).unwrap();
        assert_eq!(
            s.layout,
            SendResetLayout {
                addr_layout: addr_layout::SOCKADDR,
                skbaddr: 8,
                skaddr: 16,
                state: 24,
                reason: 28,
                saddr: 32,
                daddr: 60,
                ..SendResetLayout::UNSET
            }
        );
        assert_eq!(s.reasons[&1], "NO_SOCKET");
        assert_eq!(s.reasons[&11], "TCP_ABORT_ON_CLOSE");
        assert_eq!(s.reasons[&14], "TCP_STATE");
        assert_eq!(s.reasons[&15], "TCP_KEEPALIVE_TIMEOUT");
        assert_eq!(s.reasons[&24], "ERROR");
    }

    #[test]
    fn kernel_6_12_and_7_2_match_the_host() {
        let host = SendResetFormat::from_format(&fixture("6.18/tcp_send_reset")).unwrap();
        for k in ["6.12/tcp_send_reset", "7.2/tcp_send_reset"] {
            let s = SendResetFormat::from_format(&fixture(k)).unwrap();
            assert_eq!(s.layout, host.layout, "{k}");
            assert_eq!(s.reasons[&1], "NO_SOCKET", "{k}");
        }
    }

    #[test]
    fn kernel_6_1_split_layout_with_family_and_no_reason() {
        let s = SendResetFormat::from_format(&fixture("6.1/tcp_send_reset")).unwrap();
        assert_eq!(
            s.layout,
            SendResetLayout {
                addr_layout: addr_layout::SPLIT,
                skbaddr: 8,
                skaddr: 16,
                state: 24,
                sport: 28,
                dport: 30,
                family: 32,
                saddr: 34,
                daddr: 38,
                saddr_v6: 42,
                daddr_v6: 58,
                ..SendResetLayout::UNSET
            }
        );
        assert!(s.reasons.is_empty());
    }

    #[test]
    fn kernel_5_10_split_layout_without_family() {
        let s = SendResetFormat::from_format(&fixture("5.10/tcp_send_reset")).unwrap();
        assert_eq!(s.layout.addr_layout, addr_layout::SPLIT);
        assert_eq!(s.layout.family, ABSENT);
        assert_eq!(s.layout.reason, ABSENT);
        assert_eq!(
            (s.layout.sport, s.layout.saddr, s.layout.daddr_v6),
            (28, 32, 56)
        );
    }

    #[test]
    fn symbols_of_a_field_without_numbers_are_empty() {
        // The state field prints TCP_* names, not numbers.
        let f = fixture("6.18/tcp_send_reset");
        assert!(f.symbols("state").is_empty());
        assert!(f.symbols("nonexistent").is_empty());
    }

    #[test]
    fn kfree_skb_reason_values_move_between_kernels() {
        let pos = |k: &str| {
            fixture(&format!("{k}/kfree_skb"))
                .symbols("reason")
                .into_iter()
                .find(|(_, n)| n == "NETFILTER_DROP")
                .map(|(v, _)| v)
        };
        assert_eq!(pos("6.1"), Some(7));
        assert_eq!(pos("6.12"), Some(11));
        assert_eq!(pos("7.2"), Some(12));
    }

    #[test]
    fn kfree_skb_layouts_of_every_kernel() {
        let l = |k: &str| kfree_skb_layout(&fixture(&format!("{k}/kfree_skb"))).unwrap();
        let host = l("6.18");
        assert_eq!(
            host,
            tracer_common::KfreeSkbLayout {
                netfilter_drop: 12,
                skbaddr: 8,
                location: 16,
                reason: 36,
            }
        );
        assert_eq!(l("6.1").netfilter_drop, 7);
        assert_eq!(l("6.1").reason, 28);
        assert_eq!(l("6.12").netfilter_drop, 11);
        assert_eq!(l("7.2").netfilter_drop, 12);
        assert_eq!(l("5.10").netfilter_drop, ABSENT, "5.10 has no drop reason");
        assert_eq!(l("5.10").reason, ABSENT);
    }

    /// Which drop causes each kernel's reasons name: 5.10 none (no
    /// reason at all), TCP_LISTEN_OVERFLOW only from 6.18 (7.2 too).
    #[test]
    fn drop_causes_of_every_kernel() {
        use crate::attribution::cause::{DropCause as D, drop_causes_named, drop_reason_table};
        let f = |k: &str| kfree_skb_format(&fixture(&format!("{k}/kfree_skb"))).unwrap();
        // An ICMP reject is seen at the egress hook, with no drop reason.
        let all: Vec<D> = D::ALL
            .into_iter()
            .filter(|c| *c != D::NetfilterRejectIcmp)
            .collect();
        let older = vec![D::NetfilterDrop, D::TcDrop, D::XdpDrop, D::CgroupDrop];
        assert_eq!(drop_causes_named(&f("5.10").reasons), vec![]);
        assert_eq!(drop_causes_named(&f("6.1").reasons), older);
        assert_eq!(drop_causes_named(&f("6.12").reasons), older);
        assert_eq!(drop_causes_named(&f("7.2").reasons), all);
        assert_eq!(drop_causes_named(&f("6.18").reasons), all);
        let t = drop_reason_table(&f("6.18").reasons, &all);
        let want = [
            (5, D::CgroupDrop),
            (12, D::NetfilterDrop),
            (40, D::ListenOverflow),
            (55, D::CgroupDrop),
            (62, D::TcDrop),
            (72, D::XdpDrop),
            (73, D::TcDrop),
        ];
        assert_eq!(t, want);
        let t = drop_reason_table(&f("6.1").reasons, &all);
        assert!(
            t.contains(&(7, D::NetfilterDrop)) && t.contains(&(48, D::TcDrop)),
            "{t:?}"
        );
        // Only the causes in scope go into the table.
        let t = drop_reason_table(&f("6.18").reasons, &[D::TcDrop]);
        assert_eq!(t, [(62, D::TcDrop), (73, D::TcDrop)]);
    }

    #[test]
    fn rejects_garbage_and_odd_layouts() {
        assert!(Format::parse("").is_err());
        assert!(Format::parse("name: x\nformat:\n\tfield:int a;\toffset:zz;\tsize:4;").is_err());
        let odd = Format::parse(
            "name: tcp_send_reset\nformat:\n\tfield:__u8 saddr[8];\toffset:8;\tsize:8;\tsigned:0;\n",
        )
        .unwrap();
        let err = SendResetFormat::from_format(&odd).unwrap_err().to_string();
        assert!(err.contains("unsupported layout"), "{err}");
    }

    #[test]
    fn parses_pointer_and_dynamic_array_fields() {
        let f = Format::parse(
            "name: t\nformat:\n\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
             \tfield:__data_loc char[] name;\toffset:16;\tsize:4;\tsigned:0;\n",
        )
        .unwrap();
        assert_eq!(f.field("skbaddr").unwrap().c_type, "const void *");
        assert_eq!(f.field("name").unwrap().offset, 16);
    }
}
