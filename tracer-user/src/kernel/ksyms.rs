//! /proc/kallsyms: kernel function address ranges, for stack rules and for
//! naming the frames of a stack.

use anyhow::{Result, bail};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    pub addr: u64,
    pub name: String,
    pub module: Option<String>,
}

#[derive(Debug, Default)]
pub struct Kallsyms {
    /// Text symbols, sorted by address.
    syms: Vec<Symbol>,
    /// See `core_text`.
    core: Option<(u64, u64)>,
    /// Module name -> end of its memory, from /proc/modules.
    module_ends: std::collections::HashMap<String, u64>,
}

impl Kallsyms {
    pub fn load() -> Result<Self> {
        let text = std::fs::read_to_string("/proc/kallsyms")
            .map_err(|e| anyhow::anyhow!("can't read /proc/kallsyms: {e}"))?;
        let mut k = Self::parse(&text)?;
        // Without it, a module's last function reaches up to the next
        // module: a guess the BPF programs' own code can fall into.
        if let Ok(modules) = std::fs::read_to_string("/proc/modules") {
            k.bound_modules(&modules);
        }
        Ok(k)
    }

    /// Ends each module's functions at the end of its memory (`name size
    /// refcount deps state address` lines; addresses hidden as 0 are left
    /// out). BPF programs and trampolines live among the modules, never
    /// inside one.
    pub fn bound_modules(&mut self, proc_modules: &str) {
        for line in proc_modules.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(name), Some(size), Some(addr)) = (f.first(), f.get(1), f.get(5)) else {
                continue;
            };
            let (Ok(size), Ok(addr)) = (
                size.parse::<u64>(),
                u64::from_str_radix(addr.trim_start_matches("0x"), 16),
            ) else {
                continue;
            };
            if addr != 0 {
                self.module_ends.insert(name.to_string(), addr + size);
            }
        }
    }

    pub fn parse(text: &str) -> Result<Self> {
        let mut syms = Vec::new();
        for line in text.lines() {
            let mut f = line.split_whitespace();
            let (Some(addr), Some(kind), Some(name)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            if !matches!(kind, "t" | "T" | "w" | "W") {
                continue;
            }
            let Ok(addr) = u64::from_str_radix(addr, 16) else {
                continue;
            };
            let module = f
                .next()
                .map(|m| m.trim_start_matches('[').trim_end_matches(']').to_string());
            syms.push(Symbol {
                addr,
                name: name.to_string(),
                module,
            });
        }
        if syms.is_empty() {
            bail!("no function symbols in /proc/kallsyms");
        }
        if syms.iter().all(|s| s.addr == 0) {
            bail!(
                "kernel symbol addresses are hidden (kernel.kptr_restrict; run as root with CAP_SYSLOG)"
            );
        }
        syms.sort_by_key(|s| s.addr);
        let core = span(syms.iter().filter(|s| s.module.is_none()));
        Ok(Self {
            syms,
            core,
            module_ends: Default::default(),
        })
    }

    /// [start, end) of a function: up to the next symbol's address, and
    /// within its module's memory when that is known.
    pub fn range(&self, name: &str) -> Option<(u64, u64)> {
        let i = self.syms.iter().position(|s| s.name == name)?;
        let start = self.syms[i].addr;
        let mut end = self.syms[i + 1..]
            .iter()
            .map(|s| s.addr)
            .find(|a| *a > start)
            .unwrap_or(start + 1);
        if let Some(module_end) = self.syms[i]
            .module
            .as_ref()
            .and_then(|m| self.module_ends.get(m))
            && *module_end > start
        {
            end = end.min(*module_end);
        }
        Some((start, end))
    }

    /// [lowest, highest] address of module functions, when modules are
    /// loaded: frames in there belong to a module.
    pub fn module_area(&self) -> Option<(u64, u64)> {
        span(self.syms.iter().filter(|s| s.module.is_some()))
    }

    /// [lowest, highest] address of the core kernel's functions (not a
    /// module's, a BPF program's or a trampoline's).
    pub fn core_text(&self) -> Option<(u64, u64)> {
        self.core
    }

    /// `ips` (a stack, innermost first) without its leading frames outside
    /// the core kernel: the tracer's own BPF program, which would read as
    /// a module's code.
    pub fn without_own_frames(&self, ips: Vec<u64>) -> Vec<u64> {
        let Some((start, end)) = self.core_text() else {
            return ips;
        };
        let first = ips
            .iter()
            .position(|ip| (start..end).contains(ip))
            .unwrap_or(ips.len());
        ips[first..].to_vec()
    }

    /// The function containing `addr`, and the offset into it.
    pub fn symbolize(&self, addr: u64) -> Option<(&Symbol, u64)> {
        let i = self.syms.partition_point(|s| s.addr <= addr);
        let s = self.syms.get(i.checked_sub(1)?)?;
        Some((s, addr - s.addr))
    }
}

/// [first, last] of symbols sorted by address, as a range of code.
fn span<'a>(mut syms: impl DoubleEndedIterator<Item = &'a Symbol>) -> Option<(u64, u64)> {
    let first = syms.next()?.addr;
    let last = syms.next_back().map_or(first, |s| s.addr);
    // The last function extends past its start; a page covers it.
    Some((first, last + 4096))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
ffffffff8206b520 T tcp_abort
ffffffff820711c0 T __tcp_close
ffffffff820715f0 T tcp_close
ffffffff820719a0 T tcp_disconnect
ffffffff82071000 d some_data
ffffffffc0a01000 t nft_do_chain\t[nf_tables]
ffffffff820719f0 t next_fn
";

    #[test]
    fn ranges_end_at_the_next_function() {
        let k = Kallsyms::parse(SAMPLE).unwrap();
        assert_eq!(
            k.range("tcp_close"),
            Some((0xffffffff820715f0, 0xffffffff820719a0))
        );
        assert_eq!(
            k.range("tcp_disconnect"),
            Some((0xffffffff820719a0, 0xffffffff820719f0))
        );
        assert_eq!(k.range("some_data"), None, "data symbols are not functions");
        assert_eq!(k.range("missing"), None);
    }

    #[test]
    fn a_modules_last_function_ends_with_the_module() {
        let text = "\
ffffffffc0a01000 t nf_send_reset6\t[nf_reject_ipv6]
ffffffffc0b00000 t first_fn\t[other]
ffffffff81000000 T core_fn
";
        let mut k = Kallsyms::parse(text).unwrap();
        // Unbounded: up to the next module, past anything between them.
        assert_eq!(
            k.range("nf_send_reset6"),
            Some((0xffffffffc0a01000, 0xffffffffc0b00000))
        );
        k.bound_modules(
            "nf_reject_ipv6 20480 3 ip6t_REJECT, Live 0xffffffffc0a00000\n\
             other 16384 0 - Live 0x0000000000000000\n\
             garbage\n",
        );
        assert_eq!(
            k.range("nf_send_reset6"),
            Some((0xffffffffc0a01000, 0xffffffffc0a05000))
        );
        // Hidden addresses (0) bound nothing.
        assert_eq!(k.range("first_fn").unwrap().0, 0xffffffffc0b00000);
    }

    #[test]
    fn symbolizes_with_module() {
        let k = Kallsyms::parse(SAMPLE).unwrap();
        let (s, off) = k.symbolize(0xffffffff820715f0 + 0x10).unwrap();
        assert_eq!((s.name.as_str(), off), ("tcp_close", 0x10));
        let (s, _) = k.symbolize(0xffffffffc0a01010).unwrap();
        assert_eq!(s.module.as_deref(), Some("nf_tables"));
        assert!(k.symbolize(0x1000).is_none());
    }

    #[test]
    fn module_area_spans_module_functions() {
        let k = Kallsyms::parse(SAMPLE).unwrap();
        assert_eq!(
            k.module_area(),
            Some((0xffffffffc0a01000, 0xffffffffc0a02000))
        );
        let no_mods = Kallsyms::parse("ffffffff81000000 T a\n").unwrap();
        assert_eq!(no_mods.module_area(), None);
    }

    #[test]
    fn the_tracers_own_leading_frames_are_dropped() {
        let k = Kallsyms::parse(SAMPLE).unwrap();
        let (start, _) = k.core_text().unwrap();
        assert_eq!(start, 0xffffffff8206b520);
        // A BPF program's frame among the modules, then the kernel, then
        // a module deeper down: only the first goes.
        let stack = vec![0xffffffffc0a01800, 0xffffffff820715f8, 0xffffffffc0a01010];
        assert_eq!(k.without_own_frames(stack.clone()), stack[1..].to_vec());
        assert_eq!(k.without_own_frames(vec![]), Vec::<u64>::new());
    }

    #[test]
    fn hidden_addresses_and_garbage_are_errors() {
        let hidden = "0000000000000000 T tcp_abort\n0000000000000000 T tcp_close\n";
        assert!(
            Kallsyms::parse(hidden)
                .unwrap_err()
                .to_string()
                .contains("kptr_restrict")
        );
        assert!(Kallsyms::parse("garbage\n\nzz T x\n").is_err());
        assert!(Kallsyms::parse("").is_err());
    }
}
