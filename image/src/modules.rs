//! The kernel modules init loads from the initramfs, in dependency order (from `modprobe --show-depends`).

/// Modules in load order from `modprobe --show-depends` output (paths relative to the modules dir; built-in
/// ones skipped), appended to `order` without repeats.
pub fn module_order(show_depends: &str, modules_dir: &str, order: &mut Vec<String>) {
    for line in show_depends.lines() {
        let mut f = line.split_whitespace();
        if f.next() != Some("insmod") {
            continue;
        }
        let Some(path) = f.next() else { continue };
        let rel = path
            .strip_prefix(modules_dir)
            .unwrap_or(path)
            .trim_start_matches('/')
            .to_string();
        if !order.contains(&rel) {
            order.push(rel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_in_order_without_builtins_or_repeats() {
        let dir = "/c/lib/modules/6.1.0-56-arm64";
        let a = "insmod /c/lib/modules/6.1.0-56-arm64/kernel/drivers/virtio/virtio.ko \n\
                 insmod /c/lib/modules/6.1.0-56-arm64/kernel/drivers/virtio/virtio_pci.ko \n";
        let b = "builtin crc32c\ninsmod /c/lib/modules/6.1.0-56-arm64/kernel/drivers/virtio/virtio.ko \n\
                 insmod /c/lib/modules/6.1.0-56-arm64/kernel/drivers/block/virtio_blk.ko \n";
        let mut order = Vec::new();
        module_order(a, dir, &mut order);
        module_order(b, dir, &mut order);
        assert_eq!(
            order,
            [
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/virtio/virtio_pci.ko",
                "kernel/drivers/block/virtio_blk.ko"
            ]
        );
    }
}
