//! ELF files, read by hand (64-bit little-endian: x86_64 and aarch64): the machine, the program interpreter
//! (`PT_INTERP`, the dynamic loader) and the dynamic section's `DT_NEEDED` libraries and `DT_SONAME`. `ldd`
//! cannot do this for a foreign architecture (it runs the loader); this reads the file and runs nothing.
//!
//! Used to check that our own binaries are static ([`check_static`]) and to find the libraries a Debian
//! executable needs in the image ([`crate::debbins`]).

use std::path::Path;

use crate::error::{ImageError, Result};

pub const EM_X86_64: u16 = 62;
pub const EM_AARCH64: u16 = 183;
const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_STRSZ: u64 = 10;
const DT_SONAME: u64 = 14;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}
fn usize_at(b: &[u8], at: usize) -> Option<usize> {
    usize::try_from(u64_at(b, at)?).ok()
}

/// What the loader needs to know about an ELF file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ElfInfo {
    pub machine: u16,
    /// `PT_INTERP`: the dynamic loader's absolute path (executables only).
    pub interp: Option<String>,
    /// `DT_NEEDED`, in order.
    pub needed: Vec<String>,
    /// `DT_SONAME` (shared libraries).
    pub soname: Option<String>,
}

/// One program header's fields that matter here.
struct Segment {
    kind: u32,
    offset: usize,
    vaddr: u64,
    filesz: usize,
}

/// The NUL-terminated string at `at`.
fn c_str(b: &[u8], at: usize) -> std::result::Result<String, String> {
    let rest = b
        .get(at..)
        .ok_or_else(|| format!("string at {at} past the end"))?;
    let end = rest
        .iter()
        .position(|&c| c == 0)
        .ok_or_else(|| format!("string at {at} has no terminating NUL"))?;
    String::from_utf8(rest[..end].to_vec()).map_err(|_| format!("string at {at} is not UTF-8"))
}

/// Parses a 64-bit little-endian ELF file; the error says what is wrong with it.
pub fn parse(b: &[u8]) -> std::result::Result<ElfInfo, String> {
    if b.get(..4) != Some(b"\x7fELF") {
        return Err("not an ELF file".into());
    }
    if b.get(4) != Some(&2) || b.get(5) != Some(&1) {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let short = || "truncated ELF header".to_string();
    let machine = u16_at(b, 18).ok_or_else(short)?;
    let phoff = usize_at(b, 32).ok_or_else(short)?;
    let phentsize = usize::from(u16_at(b, 54).ok_or_else(short)?);
    let phnum = usize::from(u16_at(b, 56).ok_or_else(short)?);
    if phnum > 0 && phentsize < 56 {
        return Err(format!(
            "program header entries of {phentsize} bytes (56 expected)"
        ));
    }
    let mut segments = Vec::with_capacity(phnum);
    for i in 0..phnum {
        let at = phoff
            .checked_add(i * phentsize)
            .ok_or("program header offset overflows")?;
        let bad = || format!("program header {i} lies past the end of the file");
        segments.push(Segment {
            kind: u32_at(b, at).ok_or_else(bad)?,
            offset: usize_at(b, at + 8).ok_or_else(bad)?,
            vaddr: u64_at(b, at + 16).ok_or_else(bad)?,
            filesz: usize_at(b, at + 32).ok_or_else(bad)?,
        });
    }
    let mut info = ElfInfo {
        machine,
        ..ElfInfo::default()
    };
    if let Some(s) = segments.iter().find(|s| s.kind == PT_INTERP) {
        let bytes = s
            .offset
            .checked_add(s.filesz)
            .and_then(|end| b.get(s.offset..end))
            .ok_or("PT_INTERP lies past the end of the file")?;
        let text = bytes.split(|&c| c == 0).next().unwrap_or_default();
        let path = String::from_utf8(text.to_vec()).map_err(|_| "PT_INTERP is not UTF-8")?;
        info.interp = Some(path);
    }
    let Some(dynamic) = segments.iter().find(|s| s.kind == PT_DYNAMIC) else {
        return Ok(info);
    };
    // The dynamic section: (tag, value) pairs up to DT_NULL.
    let mut entries = Vec::new();
    let mut at = dynamic.offset;
    let end = dynamic.offset.saturating_add(dynamic.filesz);
    while at + 16 <= end {
        let (Some(tag), Some(val)) = (u64_at(b, at), u64_at(b, at + 8)) else {
            return Err("the dynamic section lies past the end of the file".into());
        };
        if tag == DT_NULL {
            break;
        }
        entries.push((tag, val));
        at += 16;
    }
    let value = |tag| entries.iter().find(|(t, _)| *t == tag).map(|(_, v)| *v);
    let names: Vec<(u64, u64)> = entries
        .iter()
        .copied()
        .filter(|(t, _)| *t == DT_NEEDED || *t == DT_SONAME)
        .collect();
    if names.is_empty() {
        return Ok(info);
    }
    let strtab = value(DT_STRTAB).ok_or("DT_NEEDED without DT_STRTAB")?;
    // DT_STRTAB is an address: the file offset is where a PT_LOAD segment maps it.
    let table = segments
        .iter()
        .filter(|s| s.kind == PT_LOAD)
        .find(|s| strtab >= s.vaddr && strtab - s.vaddr < s.filesz as u64)
        .map(|s| s.offset + (strtab - s.vaddr) as usize)
        .ok_or_else(|| format!("DT_STRTAB {strtab:#x} is in no loaded segment"))?;
    let size = value(DT_STRSZ).map(|v| v as usize).unwrap_or(usize::MAX);
    for (tag, off) in names {
        let off = usize::try_from(off).map_err(|_| "string offset overflows")?;
        if off >= size {
            return Err(format!("string offset {off} past DT_STRSZ {size}"));
        }
        let name = c_str(b, table + off)?;
        if tag == DT_NEEDED {
            info.needed.push(name);
        } else {
            info.soname = Some(name);
        }
    }
    Ok(info)
}

/// (machine, has an interpreter) of a little-endian ELF64 file.
pub fn inspect(bytes: &[u8]) -> Option<(u16, bool)> {
    parse(bytes).ok().map(|i| (i.machine, i.interp.is_some()))
}

/// The name of an ELF machine the image supports.
pub fn machine_name(machine: u16) -> &'static str {
    match machine {
        EM_X86_64 => "x86_64",
        EM_AARCH64 => "aarch64",
        _ => "another machine",
    }
}

/// Reads and parses the ELF file at `path`.
pub fn read(path: &Path) -> Result<ElfInfo> {
    let bytes = std::fs::read(path).map_err(|e| ImageError::io(path, e))?;
    parse(&bytes).map_err(|problem| ImageError::Elf {
        path: path.to_path_buf(),
        problem,
    })
}

pub fn check_static(path: &std::path::Path, machine: u16, what: &str) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| ImageError::io(path, e))?;
    let name = machine_name(machine);
    match inspect(&bytes) {
        None => Err(ImageError::Input(format!(
            "{}: {what} is not a 64-bit little-endian ELF executable",
            path.display()
        ))),
        Some((m, _)) if m != machine => Err(ImageError::Input(format!(
            "{}: {what} is built for ELF machine {m}, the image is {name} ({machine})",
            path.display()
        ))),
        Some((_, true)) => Err(ImageError::Input(format!(
            "{}: {what} is dynamically linked; build it with RUSTFLAGS='-C target-feature=+crt-static' \
             and an explicit --target",
            path.display()
        ))),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_static_from_dynamic() {
        // This test binary itself is dynamically linked for the host.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let (m, interp) = inspect(&me).unwrap();
        assert!(interp);
        assert!(m == EM_X86_64 || m == EM_AARCH64);
        assert!(inspect(b"not an elf").is_none());
        assert!(inspect(b"\x7fELF").is_none());
    }

    /// The host's libc: it names the loader as DT_NEEDED and has a soname; this test binary needs libc.
    #[test]
    fn reads_needed_libraries_interpreter_and_soname_of_real_binaries() {
        let me = read(&std::env::current_exe().unwrap()).unwrap();
        assert!(me.needed.iter().any(|n| n == "libc.so.6"), "{me:?}");
        let interp = me.interp.clone().unwrap();
        assert!(
            interp.starts_with('/') && interp.contains("ld-linux"),
            "{interp}"
        );
        assert_eq!(me.soname, None);

        let e2fsck = read(Path::new("/usr/sbin/e2fsck")).unwrap();
        for lib in ["libext2fs.so.2", "libcom_err.so.2", "libc.so.6"] {
            assert!(e2fsck.needed.iter().any(|n| n == lib), "{lib}: {e2fsck:?}");
        }
        assert_eq!(e2fsck.interp, me.interp);

        let libc = read(&Path::new(&interp).with_file_name("libc.so.6"))
            .or_else(|_| read(Path::new("/lib/x86_64-linux-gnu/libc.so.6")))
            .unwrap();
        assert_eq!(libc.soname.as_deref(), Some("libc.so.6"));
        assert!(
            libc.needed.iter().any(|n| n.starts_with("ld-linux")),
            "{libc:?}"
        );
    }

    /// A foreign architecture's library (Debian's cross libc, which scripts/setup.sh installs for the aarch64
    /// build): read without running anything.
    #[test]
    fn reads_an_aarch64_library() {
        let p = Path::new("/usr/aarch64-linux-gnu/lib/libc.so.6");
        if !p.exists() {
            eprintln!(
                "{} absent (libc6-arm64-cross not installed): skipped",
                p.display()
            );
            return;
        }
        let libc = read(p).unwrap();
        assert_eq!(libc.machine, EM_AARCH64);
        assert_eq!(libc.soname.as_deref(), Some("libc.so.6"));
        assert_eq!(libc.needed, ["ld-linux-aarch64.so.1"]);
    }

    #[test]
    fn damaged_files_are_errors_not_panics() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        for cut in [20, 64, 200, 1000] {
            assert!(parse(&me[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = me.clone();
        bad[4] = 1; // 32-bit class
        assert_eq!(
            parse(&bad).unwrap_err(),
            "not a 64-bit little-endian ELF file"
        );
    }
}
