//! Checks that a binary is a static ELF executable for the target machine (nothing can load a dynamic one in
//! an image without a libc).

use crate::error::{ImageError, Result};

pub const EM_X86_64: u16 = 62;
pub const EM_AARCH64: u16 = 183;
const PT_INTERP: u32 = 3;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// (machine, has an interpreter) of a little-endian ELF64 file.
pub fn inspect(bytes: &[u8]) -> Option<(u16, bool)> {
    if bytes.get(..4)? != b"\x7fELF" || *bytes.get(4)? != 2 || *bytes.get(5)? != 1 {
        return None;
    }
    let machine = u16_at(bytes, 18)?;
    let phoff = usize::try_from(u64_at(bytes, 32)?).ok()?;
    let phentsize = usize::from(u16_at(bytes, 54)?);
    let phnum = usize::from(u16_at(bytes, 56)?);
    let interp = (0..phnum).any(|i| u32_at(bytes, phoff + i * phentsize) == Some(PT_INTERP));
    Some((machine, interp))
}

pub fn check_static(path: &std::path::Path, machine: u16, what: &str) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| ImageError::io(path, e))?;
    let name = if machine == EM_X86_64 {
        "x86_64"
    } else {
        "aarch64"
    };
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
}
