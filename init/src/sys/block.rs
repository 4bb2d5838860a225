//! Block devices and their ioctls, behind growing the data partition on first boot: the size of a device, the
//! last GPT partition extended to the end of its disk (and the kernel told, `BLKPG_RESIZE_PARTITION`, which
//! works while it is mounted), and a mounted ext4 filesystem grown online (`EXT4_IOC_RESIZE_FS`).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::errno::Errno;

use crate::error::SysError;

nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
nix::ioctl_write_ptr!(ext4_resize_fs, b'f', 16, u64);

/// `struct blkpg_partition` of <linux/blkpg.h>.
#[repr(C)]
struct BlkpgPartition {
    start: libc::c_longlong,
    length: libc::c_longlong,
    pno: libc::c_int,
    devname: [libc::c_char; 64],
    volname: [libc::c_char; 64],
}

/// `struct blkpg_ioctl_arg` of <linux/blkpg.h>.
#[repr(C)]
struct BlkpgIoctlArg {
    op: libc::c_int,
    flags: libc::c_int,
    datalen: libc::c_int,
    data: *mut libc::c_void,
}

const BLKPG: libc::c_ulong = 0x1269;
const BLKPG_RESIZE_PARTITION: libc::c_int = 3;

fn block_device_size(file: &File) -> Result<u64, Errno> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at `size`; `file` is open.
    unsafe { blkgetsize64(file.as_raw_fd(), &mut size) }?;
    Ok(size)
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// When `device` is the last GPT partition of a disk larger than the table says, extends it to the end of the
/// disk and tells the kernel the new size. `sys_block` and `dev` are where /sys/class/block and /dev are.
pub(super) fn grow_partition(sys_block: &Path, dev: &Path, device: &Path) -> Result<(), SysError> {
    let Some(name) = device.file_name().and_then(|n| n.to_str()) else {
        return Ok(());
    };
    let sys = sys_block.join(name);
    let Ok(partno) = std::fs::read_to_string(sys.join("partition")) else {
        return Ok(()); // a whole disk: nothing to grow but the filesystem
    };
    let partno: u32 = partno.trim().parse().unwrap_or(0);
    let link = std::fs::read_link(&sys).unwrap_or_default();
    let Some(disk) = link
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
    else {
        return Ok(());
    };
    let disk_path = dev.join(disk);
    let other = |what: String, errno: Errno| SysError::Other { what, errno };
    let mut f = File::options()
        .read(true)
        .write(true)
        .open(&disk_path)
        .map_err(|e| other(format!("open {}", disk_path.display()), io_errno(&e)))?;
    let disk_bytes =
        block_device_size(&f).map_err(|e| other(format!("size of {}", disk_path.display()), e))?;
    let grown = match crate::gpt::grow_last_partition(&mut f, disk_bytes, partno) {
        Ok(Some(g)) => g,
        Ok(None) => return Ok(()),
        Err(e) => {
            let what = format!("grow partition {partno} of {}: {e}", disk_path.display());
            return Err(other(what, Errno::EIO));
        }
    };
    let mut part = BlkpgPartition {
        start: grown.start.saturating_mul(512) as libc::c_longlong,
        length: grown.new_sectors.saturating_mul(512) as libc::c_longlong,
        pno: partno as libc::c_int,
        devname: [0; 64],
        volname: [0; 64],
    };
    let mut arg = BlkpgIoctlArg {
        op: BLKPG_RESIZE_PARTITION,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as libc::c_int,
        data: (&mut part as *mut BlkpgPartition).cast(),
    };
    // SAFETY: BLKPG reads a blkpg_ioctl_arg whose data points at a blkpg_partition; both live on this stack
    // frame for the duration of the call, and `f` is the open whole-disk device.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), BLKPG as _, &mut arg) };
    if rc < 0 {
        return Err(other(
            format!("BLKPG_RESIZE_PARTITION {name}"),
            Errno::last(),
        ));
    }
    crate::log::info!(
        "partition {name} grown from {} MiB to {} MiB (the GPT of {disk} now spans the disk)",
        grown.old_sectors.saturating_mul(512) >> 20,
        grown.new_sectors.saturating_mul(512) >> 20
    );
    Ok(())
}

/// Grows the ext4 filesystem on `device`, mounted at `mountpoint` (`host_mountpoint` on this system), to fill
/// the device. The old and new size in bytes, or None when it is not ext4 or already fills the device.
pub(super) fn grow_ext4(
    device: &Path,
    mountpoint: &Path,
    host_mountpoint: &Path,
) -> Result<Option<(u64, u64)>, SysError> {
    let other = |what: &str, errno: Errno| SysError::Other {
        what: format!(
            "grow {} on {}: {what}",
            device.display(),
            mountpoint.display()
        ),
        errno,
    };
    let Some(sb) = crate::mounts::ext4_super(device) else {
        return Ok(None);
    };
    let dev = File::open(device).map_err(|e| other("open device", io_errno(&e)))?;
    let meta = dev
        .metadata()
        .map_err(|e| other("stat device", io_errno(&e)))?;
    let device_bytes = if std::os::unix::fs::FileTypeExt::is_block_device(&meta.file_type()) {
        block_device_size(&dev).map_err(|e| other("BLKGETSIZE64", e))?
    } else {
        meta.len()
    };
    let Some(blocks) = crate::mounts::grow_target(&sb, device_bytes) else {
        return Ok(None);
    };
    let dir = File::open(host_mountpoint).map_err(|e| other("open mount point", io_errno(&e)))?;
    // SAFETY: EXT4_IOC_RESIZE_FS reads one u64 (the new block count) through the pointer, which points at
    // `blocks`; `dir` is an open file on the mounted filesystem.
    unsafe { ext4_resize_fs(dir.as_raw_fd(), &blocks) }
        .map_err(|e| other("EXT4_IOC_RESIZE_FS", e))?;
    Ok(Some((
        sb.blocks.saturating_mul(sb.block_size),
        blocks.saturating_mul(sb.block_size),
    )))
}
