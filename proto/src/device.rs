//! Devices a board has (GPIO chips, I2C and SPI buses, serial ports, cameras, USB devices) and the
//! devices an app asks for. Boards report what they found under `/dev`; the scheduler places an
//! app only where every device it asks for is; the board's agent binds exactly the matching nodes
//! into the container, each with a devices-cgroup rule of its own. No privileged mode.
//!
//! An app asks by class (`"i2c"`: every I2C bus of the board), by class and USB id
//! (`"serial:10c4:ea60"`: the serial ports of that USB adapter) or by path (`"/dev/video0"`).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// What kind of device a node is, by the name the kernel gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceClass {
    /// `/dev/gpiochip*`
    Gpio,
    /// `/dev/i2c-*`
    I2c,
    /// `/dev/spidev*`
    Spi,
    /// `/dev/ttyUSB*`, `/dev/ttyACM*`, `/dev/ttyAMA*`
    Serial,
    /// `/dev/video*`
    Video,
    /// `/dev/bus/usb/BBB/DDD`: a USB device as libusb opens it
    Usb,
}

impl DeviceClass {
    pub const ALL: [DeviceClass; 6] = [
        DeviceClass::Gpio,
        DeviceClass::I2c,
        DeviceClass::Spi,
        DeviceClass::Serial,
        DeviceClass::Video,
        DeviceClass::Usb,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeviceClass::Gpio => "gpio",
            DeviceClass::I2c => "i2c",
            DeviceClass::Spi => "spi",
            DeviceClass::Serial => "serial",
            DeviceClass::Video => "video",
            DeviceClass::Usb => "usb",
        }
    }

    /// The class of a node under `/dev` by its name (`ttyUSB0`, `i2c-1`); `bus/usb/001/002` for
    /// USB devices. None: not a device Bramble hands to apps.
    pub fn of_name(rel: &str) -> Option<DeviceClass> {
        let numbered = |prefix: &str| {
            rel.strip_prefix(prefix).is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        };
        if numbered("gpiochip") {
            Some(DeviceClass::Gpio)
        } else if numbered("i2c-") {
            Some(DeviceClass::I2c)
        } else if rel.strip_prefix("spidev").is_some_and(|n| {
            n.split_once('.')
                .is_some_and(|(a, b)| [a, b].iter().all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit())))
        }) {
            Some(DeviceClass::Spi)
        } else if numbered("ttyUSB") || numbered("ttyACM") || numbered("ttyAMA") {
            Some(DeviceClass::Serial)
        } else if numbered("video") {
            Some(DeviceClass::Video)
        } else if rel.strip_prefix("bus/usb/").is_some_and(|r| {
            r.split_once('/').is_some_and(|(bus, dev)| {
                [bus, dev].iter().all(|p| p.len() == 3 && p.bytes().all(|c| c.is_ascii_digit()))
            })
        }) {
            Some(DeviceClass::Usb)
        } else {
            None
        }
    }
}

impl fmt::Display for DeviceClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeviceClass {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        DeviceClass::ALL.into_iter().find(|c| c.as_str() == s).ok_or_else(|| {
            let all: Vec<&str> = DeviceClass::ALL.iter().map(|c| c.as_str()).collect();
            format!("expected a device class ({}), found {s:?}", all.join(", "))
        })
    }
}

/// A USB vendor and product id, `10c4:ea60`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UsbId {
    pub vendor: u16,
    pub product: u16,
}

impl fmt::Display for UsbId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}:{:04x}", self.vendor, self.product)
    }
}

/// Four hex digits, as sysfs writes `idVendor` and `idProduct`.
pub fn parse_usb_word(s: &str) -> Option<u16> {
    (s.len() == 4 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| u16::from_str_radix(s, 16).ok()).flatten()
}

impl FromStr for UsbId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (v, p) = s
            .split_once(':')
            .ok_or_else(|| format!("expected a USB id VENDOR:PRODUCT (like 10c4:ea60), found {s:?}"))?;
        match (parse_usb_word(v), parse_usb_word(p)) {
            (Some(vendor), Some(product)) => Ok(UsbId { vendor, product }),
            _ => Err(format!("expected a USB id of two four-digit hex numbers (like 10c4:ea60), found {s:?}")),
        }
    }
}

impl Serialize for UsbId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for UsbId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A character or a block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Char,
    Block,
}

/// The longest device path a board may report or an app may name.
pub const MAX_DEVICE_PATH: usize = 128;
/// The most devices a board reports (what is past it is dropped, and said so).
pub const MAX_BOARD_DEVICES: usize = 128;
/// The most device requests an app may make.
pub const MAX_APP_DEVICES: usize = 16;

/// Whether `path` is a plain path under `/dev`: `/dev/` and then names of letters, digits, `.`,
/// `_`, `-`, `:` (no `.` or `..` component, no empty one), at most four deep.
pub fn check_device_path(path: &str) -> Result<(), String> {
    let Some(rest) = path.strip_prefix("/dev/") else {
        return Err(format!("expected a path under /dev/, found {path:?}"));
    };
    if path.len() > MAX_DEVICE_PATH {
        return Err(format!("a device path is at most {MAX_DEVICE_PATH} bytes, found {}", path.len()));
    }
    let parts: Vec<&str> = rest.split('/').collect();
    let plain = |p: &&str| {
        !p.is_empty()
            && *p != "."
            && *p != ".."
            && p.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
    };
    if parts.len() > 4 || !parts.iter().all(plain) {
        return Err(format!(
            "expected a plain device path such as /dev/ttyUSB0 (no `..`, no empty part), found {path:?}"
        ));
    }
    Ok(())
}

/// One device node of a board, as its agent found it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Device {
    pub class: DeviceClass,
    /// Where it is on the board, and where the container sees it: `/dev/ttyUSB0`.
    pub path: String,
    pub kind: DeviceKind,
    pub major: u32,
    pub minor: u32,
    /// The node's permission bits (`0o660`).
    pub mode: u32,
    /// The node's group: a container's user gets it as a supplementary group.
    pub gid: u32,
    /// The USB device it belongs to, when the kernel says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usb: Option<UsbId>,
    /// That USB device's serial number, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

impl Device {
    /// Whether what a board reported is well formed; what is not is dropped where it lands.
    pub fn check(&self) -> Result<(), String> {
        check_device_path(&self.path)?;
        let rel = &self.path["/dev/".len()..];
        if DeviceClass::of_name(rel) != Some(self.class) {
            return Err(format!("{} is not a {} device by its name", self.path, self.class));
        }
        if self.mode > 0o7777 {
            return Err(format!("{}: mode {:o} is not a permission", self.path, self.mode));
        }
        if let Some(s) = &self.serial {
            if s.is_empty() || s.len() > 64 || !s.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!("{}: the USB serial number is not 1 to 64 printable characters", self.path));
            }
        }
        Ok(())
    }
}

/// What an app asks for: `"i2c"`, `"serial:10c4:ea60"` or `"/dev/video0"`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeviceRequest {
    /// Every device of the class on the board (at least one must be there).
    Class(DeviceClass),
    /// Every device of the class that belongs to a USB device with this id.
    Usb(DeviceClass, UsbId),
    /// Exactly this node.
    Path(String),
}

impl DeviceRequest {
    pub fn matches(&self, d: &Device) -> bool {
        match self {
            DeviceRequest::Class(c) => d.class == *c,
            DeviceRequest::Usb(c, id) => d.class == *c && d.usb == Some(*id),
            DeviceRequest::Path(p) => d.path == *p,
        }
    }

    /// The devices of `have` that this request binds.
    pub fn select<'a>(&'a self, have: &'a [Device]) -> impl Iterator<Item = &'a Device> + 'a {
        have.iter().filter(move |d| self.matches(d))
    }
}

impl fmt::Display for DeviceRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceRequest::Class(c) => write!(f, "{c}"),
            DeviceRequest::Usb(c, id) => write!(f, "{c}:{id}"),
            DeviceRequest::Path(p) => f.write_str(p),
        }
    }
}

impl FromStr for DeviceRequest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.starts_with('/') {
            check_device_path(s)?;
            return Ok(DeviceRequest::Path(s.to_string()));
        }
        match s.split_once(':') {
            None => Ok(DeviceRequest::Class(s.parse()?)),
            Some((class, id)) => Ok(DeviceRequest::Usb(class.parse()?, id.parse()?)),
        }
    }
}

impl Serialize for DeviceRequest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceRequest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The requests of `wanted` that no device of `have` satisfies.
pub fn missing<'a>(wanted: &'a [DeviceRequest], have: &[Device]) -> Vec<&'a DeviceRequest> {
    wanted.iter().filter(|r| !have.iter().any(|d| r.matches(d))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(class: DeviceClass, path: &str, usb: Option<&str>) -> Device {
        Device {
            class,
            path: path.into(),
            kind: DeviceKind::Char,
            major: 188,
            minor: 0,
            mode: 0o660,
            gid: 20,
            usb: usb.map(|u| u.parse().unwrap()),
            serial: None,
        }
    }

    #[test]
    fn classes_by_name() {
        let cases = [
            ("gpiochip0", Some(DeviceClass::Gpio)),
            ("i2c-1", Some(DeviceClass::I2c)),
            ("spidev0.1", Some(DeviceClass::Spi)),
            ("ttyUSB0", Some(DeviceClass::Serial)),
            ("ttyACM12", Some(DeviceClass::Serial)),
            ("ttyAMA0", Some(DeviceClass::Serial)),
            ("video0", Some(DeviceClass::Video)),
            ("bus/usb/001/004", Some(DeviceClass::Usb)),
            ("ttyS0", None),
            ("ttyUSB", None),
            ("i2c-x", None),
            ("spidev0", None),
            ("video0/../mem", None),
            ("bus/usb/1/4", None),
            ("mem", None),
            ("sda", None),
        ];
        for (name, want) in cases {
            assert_eq!(DeviceClass::of_name(name), want, "{name}");
        }
    }

    #[test]
    fn requests_parse_and_print_back() {
        for s in ["i2c", "serial:10c4:ea60", "/dev/video0", "usb:1d6b:0002", "/dev/bus/usb/001/002"] {
            let r: DeviceRequest = s.parse().unwrap();
            assert_eq!(r.to_string(), s);
        }
        let r: DeviceRequest = "serial:10C4:EA60".parse().unwrap();
        assert_eq!(r, DeviceRequest::Usb(DeviceClass::Serial, UsbId { vendor: 0x10c4, product: 0xea60 }));
    }

    #[test]
    fn bad_requests_say_what_was_expected() {
        let cases = [
            ("gpu", "expected a device class (gpio, i2c, spi, serial, video, usb), found \"gpu\""),
            ("serial:10c4", "expected a USB id VENDOR:PRODUCT"),
            ("serial:10c4:xyz1", "two four-digit hex numbers"),
            ("/etc/shadow", "expected a path under /dev/"),
            ("/dev/../etc/shadow", "no `..`"),
            ("/dev/", "no `..`, no empty part"),
            ("/dev/a//b", "no empty part"),
            ("/dev/a/b/c/d/e", "plain device path"),
        ];
        for (s, want) in cases {
            let e = s.parse::<DeviceRequest>().unwrap_err();
            assert!(e.contains(want), "{s}: {e}");
        }
        let long = format!("/dev/{}", "a".repeat(200));
        assert!(long.parse::<DeviceRequest>().unwrap_err().contains("at most 128 bytes"));
    }

    #[test]
    fn requests_match_by_class_usb_id_or_path() {
        let cp2102 = dev(DeviceClass::Serial, "/dev/ttyUSB0", Some("10c4:ea60"));
        let ch340 = dev(DeviceClass::Serial, "/dev/ttyUSB1", Some("1a86:7523"));
        let uart = dev(DeviceClass::Serial, "/dev/ttyAMA0", None);
        let cam = dev(DeviceClass::Video, "/dev/video0", Some("046d:0825"));
        let have = vec![cp2102.clone(), ch340.clone(), uart.clone(), cam.clone()];
        let sel = |s: &str| -> Vec<String> {
            let r: DeviceRequest = s.parse().unwrap();
            r.select(&have).map(|d| d.path.clone()).collect()
        };
        assert_eq!(sel("serial"), ["/dev/ttyUSB0", "/dev/ttyUSB1", "/dev/ttyAMA0"]);
        assert_eq!(sel("serial:10c4:ea60"), ["/dev/ttyUSB0"]);
        assert_eq!(sel("video:10c4:ea60"), Vec::<String>::new(), "the class must match too");
        assert_eq!(sel("/dev/video0"), ["/dev/video0"]);
        assert_eq!(sel("i2c"), Vec::<String>::new());
        let wanted: Vec<DeviceRequest> =
            ["serial:10c4:ea60", "i2c", "/dev/video0"].map(|s| s.parse().unwrap()).to_vec();
        let miss: Vec<String> = missing(&wanted, &have).iter().map(|r| r.to_string()).collect();
        assert_eq!(miss, ["i2c"]);
    }

    #[test]
    fn what_a_board_reports_is_checked() {
        assert!(dev(DeviceClass::Serial, "/dev/ttyUSB0", None).check().is_ok());
        let lie = dev(DeviceClass::Serial, "/dev/mem", None);
        assert!(
            lie.check().unwrap_err().contains("not a serial device"),
            "a board cannot pass /dev/mem off as a serial port"
        );
        assert!(dev(DeviceClass::Video, "/dev/../video0", None).check().is_err());
        let mut s = dev(DeviceClass::Serial, "/dev/ttyUSB0", None);
        s.serial = Some("bad\nserial".into());
        assert!(s.check().is_err());
        s.serial = Some("A50285BI".into());
        s.mode = 0o100660;
        assert!(s.check().is_err());
    }
}
