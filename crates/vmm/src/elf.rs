//! ELF64 x86-64 executables: parsing and validation.
//!
//! Accepted: `ET_EXEC` (loaded at its link addresses) and `ET_DYN` (loaded at [`PIE_BASE`]).
//! A static-PIE program relocates itself, as glibc, musl and Rust static-PIE binaries do; a
//! program with `PT_INTERP` names its dynamic linker ([`ElfImage::interpreter`]), which the
//! loader loads too, as Linux does (the interpreter itself is parsed with
//! [`ElfImage::parse_interpreter`] and placed after the program).
//!
//! Every field read from the file is checked before use: a truncated or hostile file yields an
//! [`ElfError`], never a panic (this module is fuzzed, see fuzz/).

use crate::guest::layout::USER_VA_LIMIT;
use crate::guest::PAGE_SIZE;

/// Where static-PIE programs are loaded: the same address a non-PIE gcc binary uses, which
/// keeps the first 4 MiB unmapped (null-pointer accesses fault).
pub const PIE_BASE: u64 = 0x40_0000;
/// Largest span of loadable segments accepted.
pub const MAX_IMAGE_SPAN: u64 = 1 << 30;
const MAX_PHNUM: u16 = 256;

const PT_LOAD: u32 = 1;
const PT_INTERP: u32 = 3;
const PT_PHDR: u32 = 6;
const PF_X: u32 = 1;
const PF_W: u32 = 2;
const PF_R: u32 = 4;

/// Why a file cannot be run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    /// Shorter than the structure being read.
    #[error("file is truncated: {0} extends past the end of the file")]
    Truncated(&'static str),
    /// No ELF magic.
    #[error("not an ELF file (bad magic)")]
    NotElf,
    /// ELF, but not a 64-bit little-endian x86-64 executable.
    #[error("not an x86-64 ELF64 little-endian executable: {0}")]
    WrongArchitecture(&'static str),
    /// Not an executable (a relocatable object, a core dump, ...).
    #[error("ELF type {0} is not an executable (expected ET_EXEC or static-PIE ET_DYN)")]
    NotExecutable(u16),
    /// The `PT_INTERP` segment does not name an absolute path.
    #[error("bad interpreter path {0:?} in PT_INTERP")]
    BadInterpreter(String),
    /// The interpreter is not a position-independent, self-contained ELF.
    #[error("the interpreter must be an ET_DYN ELF without an interpreter of its own")]
    BadInterpreterImage,
    /// A program header is malformed.
    #[error("program header {index} is invalid: {reason}")]
    BadSegment {
        /// Index in the program header table.
        index: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// No `PT_LOAD` segment.
    #[error("no loadable segments")]
    NoLoadableSegments,
    /// Loadable segments overlap each other.
    #[error("loadable segments overlap")]
    OverlappingSegments,
    /// The entry point is not inside an executable segment.
    #[error("entry point {0:#x} is not inside an executable segment")]
    BadEntry(u64),
    /// The image is larger than tenantvm accepts or than the user address space allows.
    #[error("image spans {span:#x} bytes at {start:#x}, beyond the limits of the user address space")]
    TooLarge {
        /// First address.
        start: u64,
        /// Span in bytes.
        span: u64,
    },
}

/// `ET_EXEC` or static-PIE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElfKind {
    /// Fixed addresses.
    Executable,
    /// Position independent, loaded at [`PIE_BASE`].
    StaticPie,
}

/// One `PT_LOAD` segment, addresses already relocated to where it will be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Virtual address of the first byte.
    pub vaddr: u64,
    /// Size in memory (≥ `file_len`; the rest is zero-filled bss).
    pub mem_len: u64,
    /// Offset of its bytes in the file.
    pub file_offset: u64,
    /// Number of bytes taken from the file.
    pub file_len: u64,
    /// Readable / writable / executable.
    pub read: bool,
    /// See `read`.
    pub write: bool,
    /// See `read`.
    pub exec: bool,
}

/// A validated executable.
#[derive(Debug, Clone)]
pub struct ElfImage {
    /// Executable or static-PIE.
    pub kind: ElfKind,
    /// Load bias added to every link address (0 for `ET_EXEC`).
    pub bias: u64,
    /// Entry point (relocated).
    pub entry: u64,
    /// Loadable segments, sorted by address.
    pub segments: Vec<Segment>,
    /// Address of the program headers in memory (for `AT_PHDR`), if they are loaded.
    pub phdr_vaddr: u64,
    /// `e_phnum`.
    pub phnum: u64,
    /// `e_phentsize`.
    pub phentsize: u64,
    /// The dynamic linker named by `PT_INTERP`, if any.
    pub interpreter: Option<String>,
    /// First byte of the image, page-aligned down.
    pub start: u64,
    /// One past the last byte of the image, page-aligned up.
    pub end: u64,
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn bytes(&self, off: u64, len: u64, what: &'static str) -> Result<&[u8], ElfError> {
        let start = usize::try_from(off).map_err(|_| ElfError::Truncated(what))?;
        let len = usize::try_from(len).map_err(|_| ElfError::Truncated(what))?;
        let end = start.checked_add(len).ok_or(ElfError::Truncated(what))?;
        self.0.get(start..end).ok_or(ElfError::Truncated(what))
    }
    fn u16(&self, off: u64, what: &'static str) -> Result<u16, ElfError> {
        Ok(u16::from_le_bytes(self.bytes(off, 2, what)?.try_into().unwrap()))
    }
    fn u32(&self, off: u64, what: &'static str) -> Result<u32, ElfError> {
        Ok(u32::from_le_bytes(self.bytes(off, 4, what)?.try_into().unwrap()))
    }
    fn u64(&self, off: u64, what: &'static str) -> Result<u64, ElfError> {
        Ok(u64::from_le_bytes(self.bytes(off, 8, what)?.try_into().unwrap()))
    }
}

impl ElfImage {
    /// Parses and validates `file`.
    pub fn parse(file: &[u8]) -> Result<ElfImage, ElfError> {
        Self::parse_with_base(file, PIE_BASE)
    }

    /// Parses a dynamic linker to be loaded at `base` (page-aligned).
    pub fn parse_interpreter(file: &[u8], base: u64) -> Result<ElfImage, ElfError> {
        let image = Self::parse_with_base(file, base)?;
        if image.kind != ElfKind::StaticPie || image.interpreter.is_some() {
            return Err(ElfError::BadInterpreterImage);
        }
        Ok(image)
    }

    fn parse_with_base(file: &[u8], pie_base: u64) -> Result<ElfImage, ElfError> {
        let r = Reader(file);
        if r.bytes(0, 4, "ELF magic").map_err(|_| ElfError::NotElf)? != b"\x7fELF" {
            return Err(ElfError::NotElf);
        }
        let ident = r.bytes(0, 16, "ELF identification")?;
        if ident[4] != 2 {
            return Err(ElfError::WrongArchitecture("not ELF64"));
        }
        if ident[5] != 1 {
            return Err(ElfError::WrongArchitecture("not little-endian"));
        }
        let e_type = r.u16(16, "ELF header")?;
        if r.u16(18, "ELF header")? != 62 {
            return Err(ElfError::WrongArchitecture("e_machine is not x86-64"));
        }
        let kind = match e_type {
            2 => ElfKind::Executable,
            3 => ElfKind::StaticPie,
            other => return Err(ElfError::NotExecutable(other)),
        };
        let entry = r.u64(24, "ELF header")?;
        let phoff = r.u64(32, "ELF header")?;
        let phentsize = r.u16(54, "ELF header")?;
        let phnum = r.u16(56, "ELF header")?;
        if phentsize != 56 {
            return Err(ElfError::WrongArchitecture("e_phentsize is not 56"));
        }
        if phnum == 0 || phnum > MAX_PHNUM {
            return Err(ElfError::BadSegment { index: 0, reason: "program header count is 0 or above 256" });
        }
        r.bytes(phoff, u64::from(phnum) * 56, "program header table")?;

        let mut segments = Vec::new();
        let mut phdr_link: Option<u64> = None;
        let mut interpreter = None;
        for index in 0..usize::from(phnum) {
            let at = phoff + index as u64 * 56;
            let p_type = r.u32(at, "program header")?;
            let flags = r.u32(at + 4, "program header")?;
            let offset = r.u64(at + 8, "program header")?;
            let vaddr = r.u64(at + 16, "program header")?;
            let filesz = r.u64(at + 32, "program header")?;
            let memsz = r.u64(at + 40, "program header")?;
            match p_type {
                PT_INTERP => {
                    let raw = r.bytes(offset, filesz.min(4096), "PT_INTERP")?;
                    let path = String::from_utf8_lossy(raw.split(|&b| b == 0).next().unwrap_or(raw)).into_owned();
                    if !path.starts_with('/') || path.len() >= 4096 {
                        return Err(ElfError::BadInterpreter(path));
                    }
                    interpreter = Some(path);
                }
                PT_PHDR => phdr_link = Some(vaddr),
                PT_LOAD => {
                    if memsz == 0 {
                        continue;
                    }
                    if filesz > memsz {
                        return Err(ElfError::BadSegment { index, reason: "file size larger than memory size" });
                    }
                    r.bytes(offset, filesz, "segment contents")?;
                    if vaddr.checked_add(memsz).is_none() {
                        return Err(ElfError::BadSegment { index, reason: "address range overflows" });
                    }
                    segments.push(Segment {
                        vaddr,
                        mem_len: memsz,
                        file_offset: offset,
                        file_len: filesz,
                        read: flags & PF_R != 0,
                        write: flags & PF_W != 0,
                        exec: flags & PF_X != 0,
                    });
                }
                _ => {}
            }
        }
        if segments.is_empty() {
            return Err(ElfError::NoLoadableSegments);
        }
        segments.sort_by_key(|s| s.vaddr);
        for pair in segments.windows(2) {
            if pair[0].vaddr + pair[0].mem_len > pair[1].vaddr {
                return Err(ElfError::OverlappingSegments);
            }
        }
        let link_start = segments[0].vaddr / PAGE_SIZE * PAGE_SIZE;
        let last = segments.last().unwrap();
        let link_end = (last.vaddr + last.mem_len)
            .checked_next_multiple_of(PAGE_SIZE)
            .ok_or(ElfError::TooLarge { start: link_start, span: u64::MAX })?;
        let span = link_end - link_start;
        let bias = match kind {
            ElfKind::Executable => 0,
            ElfKind::StaticPie => pie_base.wrapping_sub(link_start),
        };
        let start = link_start.wrapping_add(bias);
        if span > MAX_IMAGE_SPAN || start < PAGE_SIZE || start.checked_add(span).is_none_or(|e| e > USER_VA_LIMIT) {
            return Err(ElfError::TooLarge { start, span });
        }
        for s in &mut segments {
            s.vaddr = s.vaddr.wrapping_add(bias);
        }
        let entry = entry.wrapping_add(bias);
        if !segments.iter().any(|s| s.exec && entry >= s.vaddr && entry < s.vaddr + s.mem_len) {
            return Err(ElfError::BadEntry(entry));
        }
        // AT_PHDR: PT_PHDR if present, else the loaded segment that contains the table.
        let phdr_vaddr = match phdr_link {
            Some(v) => v.wrapping_add(bias),
            None => segments
                .iter()
                .find(|s| phoff >= s.file_offset && phoff + u64::from(phnum) * 56 <= s.file_offset + s.file_len)
                .map(|s| s.vaddr + (phoff - s.file_offset))
                .unwrap_or(0),
        };
        Ok(ElfImage {
            kind,
            bias,
            entry,
            segments,
            phdr_vaddr,
            phnum: phnum.into(),
            phentsize: phentsize.into(),
            interpreter,
            start,
            end: start + span,
        })
    }
}

/// Builds a minimal valid static ELF executable around `code` (loaded at 0x400000, entry at
/// its first byte): used by tests, the fuzzers and `tenantvm doctor`'s round-trip probe.
pub fn tiny_executable(code: &[u8]) -> Vec<u8> {
    let vaddr = 0x40_0000u64;
    let header_len = 64 + 56;
    let mut f = vec![0u8; header_len];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = 2;
    f[5] = 1;
    f[6] = 1;
    f[16..18].copy_from_slice(&2u16.to_le_bytes());
    f[18..20].copy_from_slice(&62u16.to_le_bytes());
    f[20..24].copy_from_slice(&1u32.to_le_bytes());
    f[24..32].copy_from_slice(&(vaddr + header_len as u64).to_le_bytes());
    f[32..40].copy_from_slice(&64u64.to_le_bytes());
    f[52..54].copy_from_slice(&64u16.to_le_bytes());
    f[54..56].copy_from_slice(&56u16.to_le_bytes());
    f[56..58].copy_from_slice(&1u16.to_le_bytes());
    let total = (header_len + code.len()) as u64;
    let ph = &mut f[64..120];
    ph[0..4].copy_from_slice(&PT_LOAD.to_le_bytes());
    ph[4..8].copy_from_slice(&(PF_R | PF_X).to_le_bytes());
    ph[16..24].copy_from_slice(&vaddr.to_le_bytes());
    ph[24..32].copy_from_slice(&vaddr.to_le_bytes());
    ph[32..40].copy_from_slice(&total.to_le_bytes());
    ph[40..48].copy_from_slice(&total.to_le_bytes());
    ph[48..56].copy_from_slice(&PAGE_SIZE.to_le_bytes());
    f.extend_from_slice(code);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_executable_parses() {
        let img = ElfImage::parse(&tiny_executable(&[0xf4])).unwrap();
        assert_eq!(img.kind, ElfKind::Executable);
        assert_eq!(img.entry, 0x40_0078);
        assert_eq!((img.start, img.end), (0x40_0000, 0x40_1000));
        assert_eq!(img.phdr_vaddr, 0x40_0040);
        assert!(img.segments[0].exec && !img.segments[0].write);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let f = tiny_executable(&[0x90; 16]);
        for len in 0..f.len() - 16 {
            assert!(ElfImage::parse(&f[..len]).is_err(), "length {len}");
        }
    }

    #[test]
    fn rejects_garbage_and_wrong_kinds() {
        assert_eq!(ElfImage::parse(b"#!/bin/sh\necho hi\n").unwrap_err(), ElfError::NotElf);
        let mut f = tiny_executable(&[0x90]);
        f[4] = 1;
        assert!(matches!(ElfImage::parse(&f), Err(ElfError::WrongArchitecture(_))));
        let mut f = tiny_executable(&[0x90]);
        f[16] = 1;
        assert_eq!(ElfImage::parse(&f).unwrap_err(), ElfError::NotExecutable(1));
        let mut f = tiny_executable(&[0x90]);
        f[18] = 3;
        assert!(matches!(ElfImage::parse(&f), Err(ElfError::WrongArchitecture(_))));
    }

    #[test]
    fn records_the_interpreter_and_checks_its_path() {
        // Two program headers: PT_LOAD and PT_INTERP.
        let with_interp = |path: &[u8]| {
            let mut f = tiny_executable(&[0x90]);
            let total = f.len() as u64;
            let mut ph = f[64..120].to_vec();
            ph[0..4].copy_from_slice(&PT_INTERP.to_le_bytes());
            ph[8..16].copy_from_slice(&total.to_le_bytes());
            ph[32..40].copy_from_slice(&(path.len() as u64).to_le_bytes());
            f.extend_from_slice(path);
            // Put the PT_INTERP header where the code byte was and move the code after it.
            f.truncate(120);
            f.extend_from_slice(&ph);
            let code_at = f.len() as u64;
            f.push(0x90);
            let interp_at = f.len() as u64;
            f.extend_from_slice(path);
            f[56..58].copy_from_slice(&2u16.to_le_bytes());
            f[120 + 8..120 + 16].copy_from_slice(&interp_at.to_le_bytes());
            f[24..32].copy_from_slice(&(0x40_0000 + code_at).to_le_bytes());
            let len = f.len() as u64;
            f[64 + 32..64 + 40].copy_from_slice(&len.to_le_bytes());
            f[64 + 40..64 + 48].copy_from_slice(&len.to_le_bytes());
            f
        };
        let img = ElfImage::parse(&with_interp(b"/lib64/ld-linux-x86-64.so.2\0")).unwrap();
        assert_eq!(img.interpreter.as_deref(), Some("/lib64/ld-linux-x86-64.so.2"));
        assert_eq!(ElfImage::parse(&with_interp(b"ld.so\0")).unwrap_err(), ElfError::BadInterpreter("ld.so".into()));
        assert_eq!(
            ElfImage::parse_interpreter(&with_interp(b"/x\0"), 0x100_0000).unwrap_err(),
            ElfError::BadInterpreterImage
        );
    }

    #[test]
    fn rejects_bad_segments_and_entry() {
        let mut f = tiny_executable(&[0x90]);
        f[64 + 32..64 + 40].copy_from_slice(&0x10_0000u64.to_le_bytes()); // filesz > file
        assert!(matches!(ElfImage::parse(&f), Err(ElfError::Truncated(_)) | Err(ElfError::BadSegment { .. })));
        let mut f = tiny_executable(&[0x90]);
        f[24..32].copy_from_slice(&0x90_0000u64.to_le_bytes());
        assert_eq!(ElfImage::parse(&f).unwrap_err(), ElfError::BadEntry(0x90_0000));
        let mut f = tiny_executable(&[0x90]);
        f[64 + 16..64 + 24].copy_from_slice(&0x7fff_ffff_f000u64.to_le_bytes());
        assert!(matches!(ElfImage::parse(&f), Err(ElfError::TooLarge { .. })));
    }
}
