//! The ELF loader on arbitrary bytes: parsing must return a value or an `ElfError`, never
//! panic or read out of bounds, and an accepted image must be self-consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::fuzzing::ElfImage;

fuzz_target!(|data: &[u8]| {
    if let Ok(img) = ElfImage::parse(data) {
        assert!(img.start < img.end);
        assert!(img.start % 4096 == 0 && img.end % 4096 == 0);
        assert!(!img.segments.is_empty());
        for s in &img.segments {
            assert!(s.file_len <= s.mem_len);
            assert!(s.vaddr >= img.start && s.vaddr + s.mem_len <= img.end);
            assert!((s.file_offset + s.file_len) as usize <= data.len());
        }
        assert!(img.segments.iter().any(|s| s.exec && img.entry >= s.vaddr && img.entry < s.vaddr + s.mem_len));
        // Planning where it goes in a VM must not panic either.
        let _ = vmm::fuzzing::window(img.start, img.end, 64 << 20, 1 << 20);
        if let Some(path) = &img.interpreter {
            assert!(path.starts_with('/'));
        }
    }
    // The same bytes as a dynamic linker placed after a program: a value or an error.
    if let Ok(interp) = ElfImage::parse_interpreter(data, 0x80_0000) {
        assert!(interp.start >= 0x80_0000 && interp.interpreter.is_none());
    }
});
