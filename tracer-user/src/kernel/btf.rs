//! A small reader for the kernel's BTF (/sys/kernel/btf/vmlinux): just
//! enough to find struct member offsets, which the eBPF side receives as
//! globals (aya's Rust eBPF has no CO-RE field relocations). Written here
//! rather than taken from a crate: the maintained BTF crates are LGPL, this
//! project is MIT/Apache, and the part needed is small.

use anyhow::{Context as _, Result, bail};

const MAGIC: u16 = 0xeb9f;

// BTF kinds (include/uapi/linux/btf.h).
const INT: u32 = 1;
const PTR: u32 = 2;
const ARRAY: u32 = 3;
const STRUCT: u32 = 4;
const UNION: u32 = 5;
const ENUM: u32 = 6;
const FWD: u32 = 7;
const TYPEDEF: u32 = 8;
const VOLATILE: u32 = 9;
const CONST: u32 = 10;
const RESTRICT: u32 = 11;
const FUNC: u32 = 12;
const FUNC_PROTO: u32 = 13;
const VAR: u32 = 14;
const DATASEC: u32 = 15;
const FLOAT: u32 = 16;
const DECL_TAG: u32 = 17;
const TYPE_TAG: u32 = 18;
const ENUM64: u32 = 19;

#[derive(Debug, Clone)]
struct Type {
    name_off: u32,
    kind: u32,
    kind_flag: bool,
    /// Size for INT/STRUCT/UNION/ENUM, referenced type id for the others.
    size_or_type: u32,
    members: Vec<RawMember>,
    /// ARRAY: (element type, count).
    array: Option<(u32, u32)>,
}

#[derive(Debug, Clone, Copy)]
struct RawMember {
    name_off: u32,
    type_id: u32,
    offset: u32,
}

/// A struct member found by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Offset from the start of the outer struct, in bytes.
    pub offset: u32,
    /// Size in bytes of the member's type.
    pub size: u32,
    pub type_id: u32,
}

pub struct Btf {
    /// Index = type id; id 0 is `void`.
    types: Vec<Type>,
    strings: Vec<u8>,
}

fn u16_at(d: &[u8], o: usize) -> Result<u16> {
    d.get(o..o + 2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .context("truncated BTF")
}

fn u32_at(d: &[u8], o: usize) -> Result<u32> {
    d.get(o..o + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .context("truncated BTF")
}

/// The kernel's BTF, read once at start-up and parsed twice from the same
/// bytes: by this reader (struct offsets: aya keeps BTF members private)
/// and by aya (for the loader and the BTF tracepoints, which want aya's
/// type). aya's `EbpfLoader::new` still parses the file once more by
/// itself (aya 0.14 has no constructor without it); every other parse is
/// gone. About 15 ms each here, against the verifier's hundreds.
pub fn load_vmlinux() -> (Result<Btf>, Option<aya::Btf>) {
    let path = "/sys/kernel/btf/vmlinux";
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) => {
            return (
                Err(anyhow::anyhow!(
                    "can't read {path} (kernel built without CONFIG_DEBUG_INFO_BTF?): {e}"
                )),
                None,
            );
        }
    };
    let own = Btf::parse(&data).with_context(|| format!("parsing {path}"));
    let aya = aya::Btf::parse(&data, aya::Endianness::default()).ok();
    (own, aya)
}

impl Btf {
    #[cfg(test)]
    pub fn from_sys_fs() -> Result<Self> {
        load_vmlinux().0
    }

    pub fn parse(d: &[u8]) -> Result<Self> {
        let mut btf = Self {
            types: vec![Type {
                name_off: 0,
                kind: 0,
                kind_flag: false,
                size_or_type: 0,
                members: vec![],
                array: None,
            }],
            strings: vec![],
        };
        btf.append(d)?;
        Ok(btf)
    }

    /// Adds a module's BTF (/sys/kernel/btf/<module>): split BTF, whose
    /// type ids and string offsets continue those of vmlinux.
    pub fn add_module(&mut self, module: &str) -> Result<()> {
        let path = format!("/sys/kernel/btf/{module}");
        let data = std::fs::read(&path).with_context(|| {
            format!("can't read {path} (module not loaded, or a kernel without module BTF)")
        })?;
        self.add_split(&data)
            .with_context(|| format!("parsing {path}"))
    }

    fn add_split(&mut self, data: &[u8]) -> Result<()> {
        let (types, strings) = (self.types.len(), self.strings.len());
        self.append(data).inspect_err(|_| {
            // Nothing half-added.
            self.types.truncate(types);
            self.strings.truncate(strings);
        })
    }

    fn append(&mut self, d: &[u8]) -> Result<()> {
        if u16_at(d, 0)? != MAGIC {
            bail!("not BTF (bad magic), or big-endian BTF");
        }
        let hdr_len = u32_at(d, 4)? as usize;
        let type_off = u32_at(d, 8)? as usize;
        let type_len = u32_at(d, 12)? as usize;
        let str_off = u32_at(d, 16)? as usize;
        let str_len = u32_at(d, 20)? as usize;
        let section = |off: usize, len: usize| {
            hdr_len
                .checked_add(off)
                .and_then(|s| Some((s, s.checked_add(len)?)))
                .and_then(|(s, e)| d.get(s..e))
                .context("BTF section out of bounds")
        };
        let tsec = section(type_off, type_len)?;
        self.strings.extend_from_slice(section(str_off, str_len)?);
        let types = &mut self.types;
        let mut o = 0usize;
        while o < tsec.len() {
            let name_off = u32_at(tsec, o)?;
            let info = u32_at(tsec, o + 4)?;
            let size_or_type = u32_at(tsec, o + 8)?;
            o += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let mut t = Type {
                name_off,
                kind,
                kind_flag: info >> 31 == 1,
                size_or_type,
                members: vec![],
                array: None,
            };
            let extra = match kind {
                INT | VAR | DECL_TAG => 4,
                PTR | FWD | TYPEDEF | VOLATILE | CONST | RESTRICT | FUNC | FLOAT | TYPE_TAG => 0,
                ARRAY => {
                    t.array = Some((u32_at(tsec, o)?, u32_at(tsec, o + 8)?));
                    12
                }
                STRUCT | UNION => {
                    for i in 0..vlen {
                        let m = o + i * 12;
                        t.members.push(RawMember {
                            name_off: u32_at(tsec, m)?,
                            type_id: u32_at(tsec, m + 4)?,
                            offset: u32_at(tsec, m + 8)?,
                        });
                    }
                    vlen * 12
                }
                ENUM | FUNC_PROTO => vlen * 8,
                DATASEC | ENUM64 => vlen * 12,
                k => bail!("unknown BTF kind {k} (type {})", types.len()),
            };
            o = o.checked_add(extra).context("truncated BTF")?;
            if o > tsec.len() {
                bail!("truncated BTF type section");
            }
            types.push(t);
        }
        Ok(())
    }

    fn name(&self, off: u32) -> &str {
        let s = self.strings.get(off as usize..).unwrap_or_default();
        let end = s.iter().position(|b| *b == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).unwrap_or("")
    }

    fn ty(&self, id: u32) -> Result<&Type> {
        self.types
            .get(id as usize)
            .with_context(|| format!("BTF type id {id} out of range"))
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Result<u32> {
        for _ in 0..32 {
            let t = self.ty(id)?;
            match t.kind {
                TYPEDEF | VOLATILE | CONST | RESTRICT | TYPE_TAG => id = t.size_or_type,
                _ => return Ok(id),
            }
        }
        bail!("BTF type chain too long at id {id}")
    }

    pub fn type_size(&self, id: u32) -> Result<u32> {
        let id = self.resolve(id)?;
        let t = self.ty(id)?;
        Ok(match t.kind {
            INT | STRUCT | UNION | ENUM | ENUM64 | FLOAT => t.size_or_type,
            PTR => 8,
            ARRAY => {
                let (elem, n) = t.array.context("array without data")?;
                self.type_size(elem)?.saturating_mul(n)
            }
            k => bail!("BTF type {id} (kind {k}) has no size"),
        })
    }

    fn struct_id(&self, name: &str) -> Result<u32> {
        self.types
            .iter()
            .position(|t| {
                t.kind == STRUCT && !t.members.is_empty() && self.name(t.name_off) == name
            })
            .map(|i| i as u32)
            .with_context(|| format!("struct {name} not found in BTF"))
    }

    /// Finds `name` among the members of struct/union `id`, looking into
    /// anonymous members; returns (bit offset, type id).
    fn find(&self, id: u32, name: &str, depth: u32) -> Result<Option<(u32, u32)>> {
        if depth > 8 {
            return Ok(None);
        }
        let t = self.ty(self.resolve(id)?)?;
        for m in &t.members {
            let bits = if t.kind_flag {
                m.offset & 0xff_ffff
            } else {
                m.offset
            };
            let bitfield = t.kind_flag && (m.offset >> 24) != 0;
            if m.name_off == 0 {
                let inner = self.ty(self.resolve(m.type_id)?)?;
                if matches!(inner.kind, STRUCT | UNION)
                    && let Some((o, tid)) = self.find(m.type_id, name, depth + 1)?
                {
                    return Ok(Some((bits + o, tid)));
                }
            } else if self.name(m.name_off) == name {
                if bitfield || bits % 8 != 0 {
                    bail!("member {name} is a bitfield");
                }
                return Ok(Some((bits, m.type_id)));
            }
        }
        Ok(None)
    }

    /// The offset of a member that must be `size` bytes (what a kernel
    /// program reads there): a kernel whose layout differs is an error.
    pub fn offset(&self, struct_name: &str, path: &[&str], size: u32) -> Result<u32> {
        let m = self.member(struct_name, path)?;
        anyhow::ensure!(
            m.size == size,
            "{struct_name}.{} has size {} (expected {size})",
            path.join("."),
            m.size
        );
        Ok(m.offset)
    }

    /// Offset of `struct_name.path[0].path[1]...` (each step a member of
    /// the previous one's struct type, anonymous unions looked through).
    pub fn member(&self, struct_name: &str, path: &[&str]) -> Result<Member> {
        let mut id = self.struct_id(struct_name)?;
        let mut offset_bits = 0u32;
        let mut type_id = id;
        for (i, name) in path.iter().enumerate() {
            let (bits, tid) = self.find(id, name, 0)?.with_context(|| {
                format!("{struct_name}.{} not found in BTF", path[..=i].join("."))
            })?;
            offset_bits += bits;
            type_id = tid;
            id = tid;
        }
        Ok(Member {
            offset: offset_bits / 8,
            size: self.type_size(type_id)?,
            type_id,
        })
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// Builds a BTF blob: `types` as (name, info, size_or_type, trailing
    /// u32 words).
    pub fn blob(types: &[(&str, u32, u32, Vec<u32>)], extra_names: &[&str]) -> Vec<u8> {
        let mut strings = vec![0u8];
        let name_off = |n: &str, strings: &mut Vec<u8>| -> u32 {
            if n.is_empty() {
                return 0;
            }
            let off = strings.len() as u32;
            strings.extend_from_slice(n.as_bytes());
            strings.push(0);
            off
        };
        let mut extra_offs = vec![];
        for n in extra_names {
            extra_offs.push(name_off(n, &mut strings));
        }
        let mut tsec = vec![];
        for (name, info, sot, words) in types {
            let off = name_off(name, &mut strings);
            for w in [off, *info, *sot].iter().chain(words) {
                tsec.extend_from_slice(&w.to_le_bytes());
            }
        }
        with_header(&tsec, &strings)
    }

    /// A BTF blob of a type section and a string section.
    fn with_header(tsec: &[u8], strings: &[u8]) -> Vec<u8> {
        let mut d = vec![];
        d.extend_from_slice(&MAGIC.to_le_bytes());
        d.extend_from_slice(&[1, 0]);
        for w in [
            24u32,
            0,
            tsec.len() as u32,
            tsec.len() as u32,
            strings.len() as u32,
        ] {
            d.extend_from_slice(&w.to_le_bytes());
        }
        d.extend_from_slice(tsec);
        d.extend_from_slice(strings);
        d
    }

    fn info(kind: u32, vlen: u32) -> u32 {
        (kind << 24) | vlen
    }

    #[test]
    fn finds_members_through_anonymous_unions_and_nesting() {
        // Strings for member names are appended first, at known offsets:
        // "a"=1, "sk"=3, "net"=6, "inner"=10.
        let names = ["a", "sk", "net", "inner"];
        let types = vec![
            // 1: int, 4 bytes
            ("int", info(INT, 0), 4, vec![32]),
            // 2: pointer to int
            ("", info(PTR, 0), 1, vec![]),
            // 3: struct inner { int *net @ 8 bytes }
            ("inner_t", info(STRUCT, 1), 16, vec![6, 2, 64]),
            // 4: anonymous union { int *sk @0 }
            ("", info(UNION, 1), 8, vec![3, 2, 0]),
            // 5: struct outer { int a @0; union {sk} @ 64 bits; inner_t inner @ 128 bits }
            (
                "outer",
                info(STRUCT, 3),
                32,
                vec![1, 1, 0, 0, 4, 64, 10, 3, 128],
            ),
        ];
        let btf = Btf::parse(&blob(&types, &names)).unwrap();
        assert_eq!(
            btf.member("outer", &["a"]).unwrap(),
            Member {
                offset: 0,
                size: 4,
                type_id: 1
            }
        );
        assert_eq!(btf.member("outer", &["sk"]).unwrap().offset, 8);
        assert_eq!(
            btf.member("outer", &["inner", "net"]).unwrap().offset,
            16 + 8
        );
        assert_eq!(btf.member("outer", &["inner", "net"]).unwrap().size, 8);
        let e = btf.member("outer", &["nope"]).unwrap_err().to_string();
        assert!(e.contains("outer.nope not found"), "{e}");
        assert!(btf.member("missing", &["a"]).is_err());
    }

    #[test]
    fn module_btf_continues_the_kernels_ids_and_strings() {
        // vmlinux: 1 = int; strings "\0int\0" (5 bytes).
        let mut btf = Btf::parse(&blob(&[("int", info(INT, 0), 4, vec![32])], &[])).unwrap();
        // The module: 2 = int *, 3 = struct m { int *p; }, its names at
        // offsets past vmlinux's strings: "\0m\0p\0" -> m = 5 + 1, p = 5 + 3.
        let words: [u32; 9] = [0, info(PTR, 0), 1, 6, info(STRUCT, 1), 8, 8, 2, 0];
        let tsec: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let split = with_header(&tsec, b"\0m\0p\0");
        btf.add_split(&split).unwrap();
        let p = btf.member("m", &["p"]).unwrap();
        assert_eq!((p.offset, p.size, p.type_id), (0, 8, 2));
        // A broken module leaves the kernel's types as they were.
        assert!(btf.add_split(&split[..split.len() - 10]).is_err());
        assert!(btf.member("m", &["p"]).is_ok());
        assert_eq!(btf.types.len(), 4);
    }

    #[test]
    fn truncated_and_garbage_input_is_an_error_not_a_panic() {
        let good = blob(&[("int", info(INT, 0), 4, vec![32])], &[]);
        for n in 0..good.len() {
            let _ = Btf::parse(&good[..n]);
        }
        assert!(Btf::parse(&[]).is_err());
        assert!(Btf::parse(&[0x9f, 0xeb, 1, 0, 0xff, 0xff, 0xff, 0xff]).is_err());
        let mut bad_kind = good.clone();
        bad_kind[24 + 7] = 31; // kind 31: the info word's high byte
        assert!(Btf::parse(&bad_kind).is_err());
    }

    #[test]
    fn reads_this_kernels_sk_buff_when_btf_is_there() {
        // Every kernel in the test matrix has vmlinux BTF; fail loudly if not.
        let btf = Btf::from_sys_fs().expect("/sys/kernel/btf/vmlinux");
        let sk = btf.member("sk_buff", &["sk"]).unwrap();
        assert_eq!(sk.size, 8);
        assert_eq!(btf.member("sk_buff", &["network_header"]).unwrap().size, 2);
        let inum = btf.member("net", &["ns", "inum"]).unwrap();
        assert_eq!(inum.size, 4);
        assert!(btf.member("sock", &["__sk_common", "skc_net"]).is_ok());
    }
}
