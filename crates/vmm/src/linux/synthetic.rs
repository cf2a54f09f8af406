//! Generated files: what Linux's `/proc` and `/sys` would say about this VM.

/// `/proc/cpuinfo` for the VM's one CPU.
pub fn cpuinfo() -> Vec<u8> {
    let mut s = String::new();
    s.push_str("processor\t: 0\nvendor_id\t: tenantvm\ncpu family\t: 6\nmodel\t\t: 0\n");
    s.push_str("model name\t: tenantvm virtual CPU\nphysical id\t: 0\nsiblings\t: 1\ncore id\t\t: 0\ncpu cores\t: 1\n");
    s.push_str("flags\t\t: fpu tsc cx8 cmov mmx fxsr sse sse2 syscall nx lm\n\n");
    s.into_bytes()
}

/// `/sys/devices/system/cpu/online` (and `possible`).
pub fn cpu_online() -> Vec<u8> {
    b"0\n".to_vec()
}

/// One line of `/proc/self/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapsLine {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// Readable, writable, executable.
    pub rwx: (bool, bool, bool),
    /// Pathname column (`[heap]`, `[stack]`, the program), or empty.
    pub name: String,
}

/// `/proc/self/maps` text for `lines` (sorted here).
pub fn maps(mut lines: Vec<MapsLine>) -> Vec<u8> {
    lines.sort_by_key(|l| l.start);
    let mut out = String::new();
    for l in lines {
        let (r, w, x) = l.rwx;
        let rights =
            format!("{}{}{}p", if r { 'r' } else { '-' }, if w { 'w' } else { '-' }, if x { 'x' } else { '-' });
        let (s, e) = (l.start, l.end);
        if l.name.is_empty() {
            out.push_str(&format!("{s:012x}-{e:012x} {rights} 00000000 00:00 0\n"));
        } else {
            out.push_str(&format!("{s:012x}-{e:012x} {rights} 00000000 00:00 0                          {}\n", l.name));
        }
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_are_sorted_and_formatted_as_linux_does() {
        let line = |start, end, rwx, name: &str| MapsLine { start, end, rwx, name: name.into() };
        let text = String::from_utf8(maps(vec![
            line(0x80_1000, 0x90_0000, (true, true, false), "[stack]"),
            line(0x40_0000, 0x40_1000, (true, false, true), "/bin/x"),
            line(0x7f_0000, 0x80_0000, (true, false, false), ""),
        ]))
        .unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].starts_with("000000400000-000000401000 r-xp 00000000 00:00 0 ") && lines[0].ends_with(" /bin/x")
        );
        assert_eq!(lines[1], "0000007f0000-000000800000 r--p 00000000 00:00 0");
        assert!(lines[2].ends_with("[stack]"));
    }
}
