//! The unified kernel image: systemd's EFI stub (Debian's `systemd-boot-efi` for the target architecture) with
//! the kernel, the initramfs, the command line and an os-release added as PE sections by binutils' objcopy.
//! UEFI firmware boots it straight from the ESP's removable-media path, with no boot loader to configure.

use std::path::Path;
use std::process::Command;

use crate::error::{ImageError, Result};
use crate::run::Runner;

/// (SectionAlignment, end of the last section) from `objdump -p` and `objdump -h` of the stub.
pub fn layout(private_headers: &str, headers: &str) -> Option<(u64, u64)> {
    let align = private_headers.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next()? == "SectionAlignment")
            .then(|| u64::from_str_radix(it.next()?, 16).ok())
            .flatten()
    })?;
    let mut end = 0;
    for l in headers.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() == 7 && f[0].parse::<u32>().is_ok() {
            let size = u64::from_str_radix(f[2], 16).ok()?;
            let vma = u64::from_str_radix(f[3], 16).ok()?;
            end = end.max(size + vma);
        }
    }
    (align > 0 && end > 0).then_some((align, end))
}

fn up(x: u64, align: u64) -> u64 {
    x.div_ceil(align) * align
}

/// Where each added section goes: after the stub's sections, each aligned, in the given order.
pub fn placements(align: u64, end: u64, sizes: &[u64]) -> Vec<u64> {
    let mut at = up(end, align);
    let mut out = Vec::new();
    for s in sizes {
        out.push(at);
        at = up(at + s, align);
    }
    out
}

pub struct Parts<'a> {
    pub stub: &'a Path,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub cmdline: &'a Path,
    pub osrel: &'a Path,
    /// The PE header's timestamp.
    pub epoch: u32,
}

pub fn build(run: &dyn Runner, objcopy: &str, parts: &Parts, out: &Path) -> Result<()> {
    let objdump = format!("{}objdump", objcopy.trim_end_matches("objcopy"));
    let p = run.output(Command::new(&objdump).arg("-p").arg(parts.stub))?;
    let h = run.output(Command::new(&objdump).arg("-h").arg(parts.stub))?;
    let (align, end) = layout(&p, &h).ok_or_else(|| {
        ImageError::Input(format!(
            "{}: cannot read the EFI stub's sections with {objdump}",
            parts.stub.display()
        ))
    })?;
    let sections = [
        (".osrel", parts.osrel),
        (".cmdline", parts.cmdline),
        (".linux", parts.kernel),
        (".initrd", parts.initrd),
    ];
    let mut sizes = Vec::new();
    for (_, f) in &sections {
        sizes.push(
            std::fs::metadata(f)
                .map_err(|e| ImageError::io(f, e))?
                .len(),
        );
    }
    let at = placements(align, end, &sizes);
    let mut cmd = Command::new(objcopy);
    for ((name, file), vma) in sections.iter().zip(at) {
        cmd.arg("--add-section")
            .arg(format!("{name}={}", file.display()))
            .arg("--change-section-vma")
            .arg(format!("{name}={vma:#x}"));
    }
    cmd.arg(parts.stub).arg(out);
    run.output(&mut cmd)?;
    let mut pe = std::fs::read(out).map_err(|e| ImageError::io(out, e))?;
    if !normalize_pe(&mut pe, parts.epoch) {
        return Err(ImageError::Input(format!(
            "{}: objcopy wrote no PE header",
            out.display()
        )));
    }
    std::fs::write(out, pe).map_err(|e| ImageError::io(out, e))
}

/// objcopy stamps the PE header with the current time (and a checksum over it): set the time to `epoch` and
/// the checksum to 0 ("none", which UEFI accepts) so that the same inputs give the same bytes.
pub fn normalize_pe(pe: &mut [u8], epoch: u32) -> bool {
    let Some(at) = pe
        .get(0x3c..0x40)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .and_then(|v| usize::try_from(v).ok())
    else {
        return false;
    };
    if pe.get(at..at + 4) != Some(b"PE\0\0") || pe.len() < at + 24 + 68 {
        return false;
    }
    pe[at + 8..at + 12].copy_from_slice(&epoch.to_le_bytes());
    pe[at + 24 + 64..at + 24 + 68].copy_from_slice(&[0; 4]);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_sections_after_the_stub() {
        let p = "Magic\t\t\t020b\nSectionAlignment\t00001000\nFileAlignment\t\t00000200\n";
        let h = "Sections:\nIdx Name          Size      VMA               LMA               File off  Algn\n  \
                 0 .text         0000bff0  0000000000004000  0000000000004000  00000400  2**4\n                  \
                 CONTENTS, ALLOC, LOAD, READONLY, CODE\n  \
                 6 .sbat         000000e2  0000000000019000  0000000000019000  00011000  2**2\n";
        let (align, end) = layout(p, h).unwrap();
        assert_eq!((align, end), (0x1000, 0x190e2));
        assert_eq!(
            placements(align, end, &[0x2e, 0x1000, 0x1001]),
            [0x1a000, 0x1b000, 0x1c000]
        );
        assert!(layout("", h).is_none());

        let mut pe = vec![0u8; 256];
        pe[0x3c] = 0x80;
        pe[0x80..0x84].copy_from_slice(b"PE\0\0");
        pe[0x88..0x8c].copy_from_slice(&[1, 2, 3, 4]);
        pe[0xd8..0xdc].copy_from_slice(&[9, 9, 9, 9]);
        assert!(normalize_pe(&mut pe, 1_700_000_000));
        assert_eq!(pe[0x88..0x8c], 1_700_000_000u32.to_le_bytes());
        assert_eq!(pe[0xd8..0xdc], [0; 4]);
        assert!(!normalize_pe(&mut [0u8; 16], 1));
    }
}
