//! Types shared by the eBPF programs and the `rsttrace` binary.
//!
//! Everything here is `#[repr(C)]` and plain data: the kernel side writes it,
//! userspace reads it byte for byte. Field order keeps every struct free of
//! implicit padding so the verifier never sees uninitialised stack bytes.
#![no_std]

mod config;
mod ids;
mod wire;

pub use config::*;
pub use ids::*;
pub use wire::*;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all three are repr(C), made of integers and byte arrays, with
    // no implicit padding; any bit pattern is valid.
    unsafe impl aya::Pod for super::SendResetLayout {}
    unsafe impl aya::Pod for super::SockAddrOffsets {}
    unsafe impl aya::Pod for super::RemoteKey {}
    unsafe impl aya::Pod for super::RemoteStats {}
    unsafe impl aya::Pod for super::Budget {}
    unsafe impl aya::Pod for super::RstEvent {}
    unsafe impl aya::Pod for super::StackRules {}
    unsafe impl aya::Pod for super::StackRule {}
    unsafe impl aya::Pod for super::NetnsOffsets {}
    unsafe impl aya::Pod for super::EgressOffsets {}
    unsafe impl aya::Pod for super::NftOffsets {}
    unsafe impl aya::Pod for super::NftChainNames {}
    unsafe impl aya::Pod for super::KfreeSkbLayout {}
    unsafe impl aya::Pod for super::DropKey {}
    unsafe impl aya::Pod for super::Filter {}
    unsafe impl aya::Pod for super::KillRecord {}
    unsafe impl aya::Pod for super::TaskOffsets {}
    unsafe impl aya::Pod for super::SignalLayout {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn cause_ids_round_trip() {
        for c in Cause::ALL {
            assert_eq!(Cause::from_id(c as u8), c);
        }
        assert_eq!(Cause::from_id(200), Cause::Unknown);
    }

    #[test]
    fn cause_names_are_unique_kebab_case() {
        for c in Cause::ALL {
            let n = c.name();
            assert!(
                n.chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch == '-' || ch == '2'),
                "{n}"
            );
            for d in Cause::ALL {
                assert!(c == d || n != d.name(), "{n} twice");
            }
        }
    }

    #[test]
    fn tcp_states_have_the_kernels_names() {
        assert_eq!(tcp_state::name(1), Some("TCP_ESTABLISHED"));
        assert_eq!(tcp_state::name(7), Some("TCP_CLOSE"));
        assert_eq!(
            tcp_state::name(u32::from(tcp_state::NEW_SYN_RECV)),
            Some("TCP_NEW_SYN_RECV")
        );
        assert_eq!(tcp_state::name(0), None);
        assert_eq!(tcp_state::name(13), None);
        assert!(usize::from(tcp_state::NEW_SYN_RECV) < tcp_state::SLOTS);
    }

    #[test]
    fn only_received_rsts_go_in() {
        for c in Cause::ALL {
            let want = if c == Cause::Received {
                Direction::In
            } else {
                Direction::Out
            };
            assert_eq!(c.direction(), want, "{c}");
        }
    }

    #[test]
    fn structs_have_no_implicit_padding() {
        assert_eq!(size_of::<SendResetLayout>(), 12 * 4);
        assert_eq!(size_of::<NetnsOffsets>(), 7 * 4);
        assert_eq!(size_of::<EgressOffsets>(), 19 * 4);
        assert_eq!(size_of::<DropKey>(), 32);
        assert_eq!(size_of::<KfreeSkbLayout>(), 4 * 4);
        assert_eq!(size_of::<SockAddrOffsets>(), 7 * 4);
        assert_eq!(size_of::<RemoteKey>(), 20);
        assert_eq!(size_of::<StackRules>(), 8 + MAX_STACK_RULES * 40);
        assert_eq!(size_of::<RemoteStats>(), 24);
        assert_eq!(size_of::<Budget>(), 24);
        assert_eq!(
            size_of::<RstEvent>(),
            6 * 8 + 4 * 4 + 32 + 2 * 2 + 4 + 16 + 4 * 4
        );
        assert_eq!(size_of::<KillRecord>(), 2 * 8 + 4 * 4 + 16);
        assert_eq!(size_of::<TaskOffsets>(), 7 * 4);
        assert_eq!(size_of::<SignalLayout>(), 4 * 4);
        assert_eq!(size_of::<NftOffsets>(), 4 * 4);
        assert_eq!(size_of::<NftChainNames>(), 2 * NFT_NAME_LEN);
    }
}
