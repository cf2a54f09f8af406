//! The initial process stack, laid out as Linux's `execve` does (System V x86-64 ABI §3.4.1):
//!
//! ```text
//!  top of stack   execfn string, argv and envp strings, "x86_64"
//!                 16 random bytes (AT_RANDOM), padding to 16 bytes
//!                 auxv: (type, value) pairs ending with AT_NULL
//!                 envp[], NULL
//!                 argv[], NULL
//!  rsp ->         argc                      (rsp is 16-byte aligned)
//! ```

/// Auxiliary vector types (from `<elf.h>`).
pub mod at {
    #![allow(missing_docs)]
    pub const NULL: u64 = 0;
    pub const PHDR: u64 = 3;
    pub const PHENT: u64 = 4;
    pub const PHNUM: u64 = 5;
    pub const PAGESZ: u64 = 6;
    pub const BASE: u64 = 7;
    pub const FLAGS: u64 = 8;
    pub const ENTRY: u64 = 9;
    pub const UID: u64 = 11;
    pub const EUID: u64 = 12;
    pub const GID: u64 = 13;
    pub const EGID: u64 = 14;
    pub const PLATFORM: u64 = 15;
    pub const HWCAP: u64 = 16;
    pub const CLKTCK: u64 = 17;
    pub const SECURE: u64 = 23;
    pub const RANDOM: u64 = 25;
    pub const HWCAP2: u64 = 26;
    pub const EXECFN: u64 = 31;
}

/// What the program learns about itself at start-up.
#[derive(Debug, Clone)]
pub struct ProcessInfo<'a> {
    /// argv (without NULs).
    pub args: &'a [Vec<u8>],
    /// envp entries, `KEY=VALUE` (without NULs).
    pub env: &'a [Vec<u8>],
    /// AT_EXECFN.
    pub execfn: &'a [u8],
    /// AT_PHDR.
    pub phdr: u64,
    /// AT_PHNUM.
    pub phnum: u64,
    /// AT_ENTRY.
    pub entry: u64,
    /// AT_BASE: where the dynamic linker is loaded (0: none).
    pub base: u64,
    /// AT_HWCAP.
    pub hwcap: u64,
    /// AT_HWCAP2.
    pub hwcap2: u64,
    /// AT_UID/AT_EUID.
    pub uid: u64,
    /// AT_GID/AT_EGID.
    pub gid: u64,
    /// AT_RANDOM's 16 bytes.
    pub random: [u8; 16],
}

/// A built stack: bytes to place so that they end at `top`, and the initial rsp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialStack {
    /// Stack contents from `rsp` to `top`.
    pub bytes: Vec<u8>,
    /// Initial rsp (points at argc).
    pub rsp: u64,
}

/// Why the stack cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StackError {
    /// An argument or environment string contains a NUL byte.
    #[error("argument or environment string contains a NUL byte")]
    NulInString,
    /// Arguments and environment exceed the space allowed for them.
    #[error("arguments and environment take {0} bytes, more than the {1} allowed")]
    TooLarge(usize, usize),
}

/// Lays out the stack for a process whose stack ends (exclusive) at `top` (16-byte aligned),
/// allowing at most `limit` bytes.
pub fn build(info: &ProcessInfo<'_>, top: u64, limit: usize) -> Result<InitialStack, StackError> {
    let strings: Vec<&[u8]> = std::iter::once(info.execfn)
        .chain(info.args.iter().map(Vec::as_slice))
        .chain(info.env.iter().map(Vec::as_slice))
        .collect();
    if strings.iter().any(|s| s.contains(&0)) {
        return Err(StackError::NulInString);
    }
    // Strings, highest first, growing down from top.
    let mut area: Vec<u8> = Vec::new(); // built low-to-high, placed to end at `top`
    let mut offsets = Vec::new();
    let platform = b"x86_64";
    for s in strings.iter().copied().chain(std::iter::once(&platform[..])) {
        offsets.push(area.len());
        area.extend_from_slice(s);
        area.push(0);
    }
    let random_at = area.len();
    area.extend_from_slice(&info.random);
    let strings_start = (top - area.len() as u64) & !15;
    let addr = |i: usize| strings_start + offsets[i] as u64;
    let execfn_va = addr(0);
    let argv_va: Vec<u64> = (0..info.args.len()).map(|i| addr(1 + i)).collect();
    let envp_va: Vec<u64> = (0..info.env.len()).map(|i| addr(1 + info.args.len() + i)).collect();
    let platform_va = addr(offsets.len() - 1);
    let random_va = strings_start + random_at as u64;

    let auxv = [
        (at::PHDR, info.phdr),
        (at::PHENT, 56),
        (at::PHNUM, info.phnum),
        (at::PAGESZ, 4096),
        (at::BASE, info.base),
        (at::FLAGS, 0),
        (at::ENTRY, info.entry),
        (at::UID, info.uid),
        (at::EUID, info.uid),
        (at::GID, info.gid),
        (at::EGID, info.gid),
        (at::PLATFORM, platform_va),
        (at::HWCAP, info.hwcap),
        (at::CLKTCK, 100),
        (at::SECURE, 0),
        (at::RANDOM, random_va),
        (at::HWCAP2, info.hwcap2),
        (at::EXECFN, execfn_va),
        (at::NULL, 0),
    ];
    let mut words: Vec<u64> = Vec::new();
    words.push(info.args.len() as u64);
    words.extend(&argv_va);
    words.push(0);
    words.extend(&envp_va);
    words.push(0);
    for (k, v) in auxv {
        words.push(k);
        words.push(v);
    }
    let vector_bytes = words.len() as u64 * 8;
    let rsp = (strings_start - vector_bytes) & !15;
    let total = (top - rsp) as usize;
    if total > limit {
        return Err(StackError::TooLarge(total, limit));
    }
    let mut bytes = vec![0u8; total];
    for (i, w) in words.iter().enumerate() {
        bytes[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
    }
    let s = (strings_start - rsp) as usize;
    bytes[s..s + area.len()].copy_from_slice(&area);
    Ok(InitialStack { bytes, rsp })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(stack: &InitialStack, va: u64) -> u64 {
        let o = (va - stack.rsp) as usize;
        u64::from_le_bytes(stack.bytes[o..o + 8].try_into().unwrap())
    }

    fn cstr(stack: &InitialStack, va: u64) -> Vec<u8> {
        let o = (va - stack.rsp) as usize;
        stack.bytes[o..].split(|&b| b == 0).next().unwrap().to_vec()
    }

    #[test]
    fn layout_matches_the_abi() {
        let args = vec![b"prog".to_vec(), b"a b".to_vec()];
        let env = vec![b"K=V".to_vec()];
        let info = ProcessInfo {
            args: &args,
            env: &env,
            execfn: b"/app/prog",
            phdr: 0x40_0040,
            phnum: 4,
            entry: 0x40_1000,
            base: 0,
            hwcap: 0x178b_fbff,
            hwcap2: 2,
            uid: 1000,
            gid: 1000,
            random: [7; 16],
        };
        let top = 0x7fff_0000;
        let s = build(&info, top, 1 << 20).unwrap();
        assert_eq!(s.rsp % 16, 0);
        assert_eq!(s.rsp + s.bytes.len() as u64, top);
        assert_eq!(word(&s, s.rsp), 2);
        assert_eq!(cstr(&s, word(&s, s.rsp + 8)), b"prog");
        assert_eq!(cstr(&s, word(&s, s.rsp + 16)), b"a b");
        assert_eq!(word(&s, s.rsp + 24), 0);
        assert_eq!(cstr(&s, word(&s, s.rsp + 32)), b"K=V");
        assert_eq!(word(&s, s.rsp + 40), 0);
        let mut aux = std::collections::HashMap::new();
        let mut p = s.rsp + 48;
        loop {
            let (k, v) = (word(&s, p), word(&s, p + 8));
            aux.insert(k, v);
            p += 16;
            if k == at::NULL {
                break;
            }
        }
        assert_eq!(aux[&at::PAGESZ], 4096);
        assert_eq!(aux[&at::ENTRY], 0x40_1000);
        assert_eq!(cstr(&s, aux[&at::PLATFORM]), b"x86_64");
        assert_eq!(cstr(&s, aux[&at::EXECFN]), b"/app/prog");
        let r = (aux[&at::RANDOM] - s.rsp) as usize;
        assert_eq!(&s.bytes[r..r + 16], &[7; 16]);
    }

    #[test]
    fn refuses_nul_and_oversize() {
        let args = vec![b"a\0b".to_vec()];
        let info = ProcessInfo {
            args: &args,
            env: &[],
            execfn: b"x",
            phdr: 0,
            phnum: 0,
            entry: 0,
            base: 0,
            hwcap: 0,
            hwcap2: 0,
            uid: 0,
            gid: 0,
            random: [0; 16],
        };
        assert_eq!(build(&info, 0x10000, 4096), Err(StackError::NulInString));
        let big = vec![vec![b'x'; 5000]];
        let info = ProcessInfo { args: &big, ..info };
        assert!(matches!(build(&info, 0x10000, 4096), Err(StackError::TooLarge(_, 4096))));
    }
}
