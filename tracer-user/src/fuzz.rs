//! Property tests: every parser of kernel-provided input (tracefs format
//! files, BTF, /proc/kallsyms, nftables netlink messages) returns an error
//! or a value on arbitrary, truncated and mutated input, and never panics.

use proptest::prelude::*;

use crate::{
    attribution::nftmon, kernel::btf::Btf, kernel::format::Format, kernel::ksyms::Kallsyms,
};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// Truncates `data` at `cut` and overwrites one byte at `at` with `byte`.
fn mutate(data: &[u8], cut: usize, at: usize, byte: u8) -> Vec<u8> {
    let mut d = data[..cut.min(data.len())].to_vec();
    if !d.is_empty() {
        let i = at % d.len();
        d[i] = byte;
    }
    d
}

fn parse_format(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    if let Ok(f) = Format::parse(&text) {
        let _ = crate::kernel::format::SendResetFormat::from_format(&f);
        let _ = crate::kernel::format::kfree_skb_layout(&f);
        for field in ["reason", "state", "x"] {
            let _ = f.symbols(field);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn format_files_never_panic(cut in 0usize..4096, at in 0usize..4096, byte in any::<u8>()) {
        for k in ["6.18/tcp_send_reset", "5.10/tcp_send_reset", "6.18/kfree_skb"] {
            parse_format(&mutate(&fixture(k), cut, at, byte));
        }
    }

    #[test]
    fn arbitrary_text_is_not_a_format_file_panic(s in ".{0,400}") {
        parse_format(s.as_bytes());
    }

    #[test]
    fn kallsyms_never_panics(s in "([0-9a-f]{0,16} [tTdDwW] [a-z_]{0,12}( \\[[a-z_]{1,8}\\])?\n){0,20}", addr in any::<u64>()) {
        if let Ok(k) = Kallsyms::parse(&s) {
            let _ = k.symbolize(addr);
            let _ = k.range("a");
            let _ = k.module_area();
        }
    }

    #[test]
    fn btf_never_panics(cut in 0usize..512, at in 0usize..512, byte in any::<u8>()) {
        let good = crate::kernel::btf::tests::blob(
            &[
                ("int", 1 << 24, 4, vec![32]),
                ("s", (4 << 24) | 1, 4, vec![1, 1, 0]),
            ],
            &["a"],
        );
        if let Ok(b) = Btf::parse(&mutate(&good, cut, at, byte)) {
            let _ = b.member("s", &["a"]);
        }
    }

    #[test]
    fn arbitrary_bytes_are_not_btf_panic(d in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = Btf::parse(&d);
    }

    #[test]
    fn netlink_messages_never_panic(d in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut log = nftmon::Log::default();
        for m in nftmon::messages(&d) {
            log.apply(1, m);
        }
        let _ = log.author(1, nftmon::Verdict::Reject);
        let _ = nftmon::verdict(&d);
    }

    #[test]
    fn rule_expressions_never_panic(d in proptest::collection::vec(any::<u8>(), 0..512), at in 0usize..512, byte in any::<u8>()) {
        use crate::attribution::nft::{expr, matcher, render, snapshot};
        for bytes in [d.clone(), mutate(&crate::attribution::nft::matcher::tests::crowdsec_exprs(), at, at, byte)] {
            let rule = snapshot::Rule {
                family: 2,
                table: "t".into(),
                chain: "c".into(),
                handle: 1,
                exprs: expr::parse_list(&bytes),
                comment: None,
            };
            let _ = render::rule(None, &rule);
            let snap = matcher::tests::one_chain(vec![rule]);
            let pkt = matcher::tests::packet("198.18.0.10", 22);
            let _ = matcher::evaluate(&snap, &pkt, 1, nftmon::Verdict::Reject, &mut |_, _| Ok(None));
        }
    }
}
