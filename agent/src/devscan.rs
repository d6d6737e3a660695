//! The board's devices for apps: the nodes under `/dev` whose names say what they are (GPIO chips,
//! I2C and SPI buses, serial ports, cameras, USB devices), with their numbers, mode and group as
//! the node has them, and, where sysfs says, the USB device they belong to (vendor, product and
//! serial number). Symbolic links are never followed under `/dev`: a node is taken as it is.

use bramble_proto::device::{parse_usb_word, Device, DeviceClass, DeviceKind, UsbId, MAX_BOARD_DEVICES};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// The devices of the offered `classes` under `dev` (the board's `/dev`), sysfs at `sys`; sorted
/// by path, at most [`MAX_BOARD_DEVICES`].
pub fn scan(dev: &Path, sys: &Path, classes: &[DeviceClass]) -> Vec<Device> {
    let mut names: Vec<String> = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dev) {
        names.extend(rd.flatten().filter_map(|e| e.file_name().into_string().ok()));
    }
    // USB devices as libusb opens them: /dev/bus/usb/BBB/DDD.
    if let Ok(buses) = std::fs::read_dir(dev.join("bus/usb")) {
        for bus in buses.flatten().filter_map(|e| e.file_name().into_string().ok()) {
            if let Ok(rd) = std::fs::read_dir(dev.join("bus/usb").join(&bus)) {
                names.extend(
                    rd.flatten().filter_map(|e| e.file_name().into_string().ok()).map(|d| format!("bus/usb/{bus}/{d}")),
                );
            }
        }
    }
    names.sort();
    let mut out = Vec::new();
    for rel in names {
        let Some(class) = DeviceClass::of_name(&rel).filter(|c| classes.contains(c)) else { continue };
        // (Not followed: a link is not a device node.)
        let Ok(meta) = std::fs::symlink_metadata(dev.join(&rel)) else { continue };
        let kind = if meta.file_type().is_char_device() {
            DeviceKind::Char
        } else if meta.file_type().is_block_device() {
            DeviceKind::Block
        } else {
            continue;
        };
        let (major, minor) = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
        let (usb, serial) = usb_of(sys, kind, major, minor).map_or((None, None), |(id, s)| (Some(id), s));
        out.push(Device {
            class,
            path: format!("/dev/{rel}"),
            kind,
            major,
            minor,
            mode: meta.mode() & 0o7777,
            gid: meta.gid(),
            usb,
            serial,
        });
        if out.len() == MAX_BOARD_DEVICES {
            break;
        }
    }
    out
}

/// The USB device a node belongs to: `sys/dev/{char,block}/MAJ:MIN` leads to the node's device
/// directory; the USB device is the nearest one up the tree with `idVendor` and `idProduct`.
fn usb_of(sys: &Path, kind: DeviceKind, major: u32, minor: u32) -> Option<(UsbId, Option<String>)> {
    let dir = match kind {
        DeviceKind::Char => "char",
        DeviceKind::Block => "block",
    };
    let root = std::fs::canonicalize(sys).ok()?;
    let mut at = std::fs::canonicalize(sys.join("dev").join(dir).join(format!("{major}:{minor}"))).ok()?;
    // Never above sysfs itself; a USB interface is a few levels below its device.
    for _ in 0..8 {
        if !at.starts_with(&root) || at == root {
            return None;
        }
        let word = |f: &str| std::fs::read_to_string(at.join(f)).ok().and_then(|s| parse_usb_word(s.trim()));
        if let (Some(vendor), Some(product)) = (word("idVendor"), word("idProduct")) {
            let serial = std::fs::read_to_string(at.join("serial"))
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_graphic()));
            return Some((UsbId { vendor, product }, serial));
        }
        at = at.parent()?.to_path_buf();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};

    /// A sysfs-shaped tree: a CP2102 adapter (10c4:ea60, serial 0001) whose interface holds
    /// ttyUSB0 (188:0), and a UART (ttyAMA0, 204:64) that is on no USB bus.
    fn sysfs(sys: &Path) {
        let usb = sys.join("devices/platform/usb1/1-1");
        let tty = usb.join("1-1:1.0/ttyUSB0/tty/ttyUSB0");
        std::fs::create_dir_all(&tty).unwrap();
        std::fs::write(usb.join("idVendor"), "10c4\n").unwrap();
        std::fs::write(usb.join("idProduct"), "ea60\n").unwrap();
        std::fs::write(usb.join("serial"), "0001\n").unwrap();
        std::fs::create_dir_all(sys.join("devices/platform/serial0/tty/ttyAMA0")).unwrap();
        std::fs::create_dir_all(sys.join("dev/char")).unwrap();
        std::os::unix::fs::symlink(
            "../../devices/platform/usb1/1-1/1-1:1.0/ttyUSB0/tty/ttyUSB0",
            sys.join("dev/char/188:0"),
        )
        .unwrap();
        std::os::unix::fs::symlink("../../devices/platform/serial0/tty/ttyAMA0", sys.join("dev/char/204:64")).unwrap();
    }

    fn node(dir: &Path, name: &str, major: u64, minor: u64) -> bool {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let made = mknod(&path, SFlag::S_IFCHR, Mode::from_bits_truncate(0o660), makedev(major, minor)).is_ok();
        // (mknod honours the umask.)
        made && std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o660)).is_ok()
    }

    #[test]
    fn finds_nodes_by_name_with_their_usb_ids() {
        let t = tempfile::tempdir().unwrap();
        let (dev, sys) = (t.path().join("dev"), t.path().join("sys"));
        std::fs::create_dir_all(&dev).unwrap();
        sysfs(&sys);
        if !node(&dev, "ttyUSB0", 188, 0) {
            panic!("this test makes device nodes with mknod: it needs root (CAP_MKNOD)");
        }
        node(&dev, "ttyAMA0", 204, 64);
        node(&dev, "i2c-1", 89, 1);
        node(&dev, "bus/usb/001/002", 189, 1);
        node(&dev, "mem", 1, 1);
        node(&dev, "ttyS0", 4, 64);
        // Not a node, and a link to one: neither is a device.
        std::fs::write(dev.join("video0"), "").unwrap();
        std::os::unix::fs::symlink(dev.join("ttyUSB0"), dev.join("ttyACM0")).unwrap();
        let found = scan(&dev, &sys, &DeviceClass::ALL);
        let paths: Vec<&str> = found.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(paths, ["/dev/bus/usb/001/002", "/dev/i2c-1", "/dev/ttyAMA0", "/dev/ttyUSB0"]);
        let usb = found.iter().find(|d| d.path == "/dev/ttyUSB0").unwrap();
        assert_eq!(
            (usb.class, usb.kind, usb.major, usb.minor, usb.mode),
            (DeviceClass::Serial, DeviceKind::Char, 188, 0, 0o660)
        );
        assert_eq!(usb.usb.map(|u| u.to_string()).as_deref(), Some("10c4:ea60"));
        assert_eq!(usb.serial.as_deref(), Some("0001"));
        let uart = found.iter().find(|d| d.path == "/dev/ttyAMA0").unwrap();
        assert_eq!((uart.usb, uart.serial.as_deref()), (None, None), "a UART on no USB bus has no USB id");
        for d in &found {
            d.check().unwrap();
        }
        // Only the offered classes.
        let serial_only = scan(&dev, &sys, &[DeviceClass::Serial]);
        assert_eq!(serial_only.len(), 2);
        assert!(scan(&dev, &sys, &[]).is_empty());
    }

    #[test]
    fn sysfs_is_never_left() {
        let t = tempfile::tempdir().unwrap();
        let (dev, sys) = (t.path().join("dev"), t.path().join("sys"));
        std::fs::create_dir_all(sys.join("dev/char")).unwrap();
        // An id file above the sysfs root must not be taken: the walk stops at the root.
        std::fs::write(t.path().join("idVendor"), "dead\n").unwrap();
        std::fs::write(t.path().join("idProduct"), "beef\n").unwrap();
        std::os::unix::fs::symlink("../../..", sys.join("dev/char/188:0")).unwrap();
        if !node(&dev, "ttyUSB0", 188, 0) {
            panic!("this test makes device nodes with mknod: it needs root (CAP_MKNOD)");
        }
        let found = scan(&dev, &sys, &DeviceClass::ALL);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].usb, None);
    }
}
