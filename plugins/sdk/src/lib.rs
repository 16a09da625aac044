//! Write pixmesh image plugins in safe Rust.
//!
//! A pixmesh plugin is a core WebAssembly module that turns one RGBA image
//! (a [`Frame`]) into another, given string parameters ([`Params`]). The host
//! runs it in a sandbox with no filesystem, network, clock or randomness, a
//! memory cap and a deadline. This crate hides the ABI (v1, documented in
//! `docs/plugin-abi.md`): you write one function and the [`export_plugin!`]
//! macro generates the exports.
//!
//! ```
//! use pixmesh_plugin_sdk::{export_plugin, Error, Frame, Params};
//!
//! /// Darken by `amount` (0..=1, default 0.5).
//! fn darken(mut frame: Frame, params: &Params) -> Result<Frame, Error> {
//!     let amount = params.f32_in("amount", 0.5, 0.0, 1.0)?;
//!     for px in frame.pixels_mut().chunks_exact_mut(4) {
//!         for c in &mut px[..3] {
//!             *c = (f32::from(*c) * (1.0 - amount)) as u8;
//!         }
//!     }
//!     Ok(frame)
//! }
//!
//! export_plugin!(darken);
//! ```
//!
//! Build for `wasm32-unknown-unknown` as a `cdylib` with `panic = "abort"`;
//! see `plugins/build.sh`. The crate has no dependencies and builds with
//! Rust 1.63.
//!
//! # Layout
//! - [`Frame`]: width, height and RGBA8 pixels, owned; return the same frame
//!   or a new one of other dimensions ([`Frame::new`]).
//! - [`Params`]: the `key=value` parameters with typed getters whose errors
//!   name the parameter.
//! - [`Error`]: a message that reaches the user as the task's failure reason.
//! - [`log`]: write to the host's log.
//! - [`export_plugin!`]: generates `pixmesh_abi_version`, `pixmesh_alloc`,
//!   `pixmesh_transform` and `pixmesh_error`.

#![deny(missing_docs)]

use std::fmt;

/// The ABI version this SDK implements.
pub const ABI_VERSION: i32 = 1;

/// Length of the frame header: `PXF1`, width, height, channels.
pub const HEADER_LEN: usize = 16;

/// An RGBA8 image, non-premultiplied, row-major.
///
/// The frame owns one buffer holding the ABI header and the pixels, so the
/// input arrives and the output leaves without a copy.
pub struct Frame {
    buf: Vec<u8>,
    width: u32,
    height: u32,
}

impl Frame {
    /// A new transparent black frame. Fails when the size overflows memory.
    pub fn new(width: u32, height: u32) -> Result<Frame, Error> {
        let len = (width as usize)
            .checked_mul(height as usize)
            .and_then(|n| n.checked_mul(4))
            .and_then(|n| n.checked_add(HEADER_LEN))
            .ok_or_else(|| Error::new(format!("a {}x{} frame is too large", width, height)))?;
        let mut buf = vec![0u8; len];
        write_header(&mut buf, width, height);
        Ok(Frame { buf, width, height })
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// The pixels: `width * height * 4` bytes of RGBA.
    pub fn pixels(&self) -> &[u8] {
        &self.buf[HEADER_LEN..]
    }

    /// The pixels, writable.
    pub fn pixels_mut(&mut self) -> &mut [u8] {
        &mut self.buf[HEADER_LEN..]
    }

    /// The pixel at (x, y). Panics (a trap) when outside the frame.
    pub fn get(&self, x: u32, y: u32) -> [u8; 4] {
        let i = self.index(x, y);
        let p = &self.buf[i..i + 4];
        [p[0], p[1], p[2], p[3]]
    }

    /// Set the pixel at (x, y). Panics (a trap) when outside the frame.
    pub fn set(&mut self, x: u32, y: u32, rgba: [u8; 4]) {
        let i = self.index(x, y);
        self.buf[i..i + 4].copy_from_slice(&rgba);
    }

    fn index(&self, x: u32, y: u32) -> usize {
        assert!(x < self.width && y < self.height, "pixel ({}, {}) outside the frame", x, y);
        HEADER_LEN + (y as usize * self.width as usize + x as usize) * 4
    }

    /// Parse a frame from the host's buffer. Used by [`export_plugin!`].
    #[doc(hidden)]
    pub fn from_abi(buf: Vec<u8>) -> Result<Frame, Error> {
        if buf.len() < HEADER_LEN || &buf[0..4] != b"PXF1" {
            return Err(Error::new("input is not a PXF1 frame"));
        }
        let word = |i: usize| u32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
        let (width, height, channels) = (word(4), word(8), word(12));
        let expected = (width as u64) * (height as u64) * 4 + HEADER_LEN as u64;
        if channels != 4 || buf.len() as u64 != expected {
            return Err(Error::new("frame header does not match its length"));
        }
        Ok(Frame { buf, width, height })
    }

    /// The ABI buffer (header + pixels). Used by [`export_plugin!`].
    #[doc(hidden)]
    pub fn into_abi(self) -> Vec<u8> {
        self.buf
    }
}

fn write_header(buf: &mut [u8], width: u32, height: u32) {
    buf[0..4].copy_from_slice(b"PXF1");
    buf[4..8].copy_from_slice(&width.to_le_bytes());
    buf[8..12].copy_from_slice(&height.to_le_bytes());
    buf[12..16].copy_from_slice(&4u32.to_le_bytes());
}

/// A failure the user will read: say which parameter or condition is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(String);

impl Error {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Error {
        Error(message.into())
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The plugin's parameters: `key=value` lines from the job spec.
#[derive(Debug, Clone, Default)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// Parse `key=value` lines; lines without `=` are ignored.
    pub fn parse(text: &str) -> Params {
        let pairs = text
            .split('\n')
            .filter_map(|line| {
                let mut it = line.splitn(2, '=');
                match (it.next(), it.next()) {
                    (Some(k), Some(v)) if !k.is_empty() => Some((k.to_string(), v.to_string())),
                    _ => None,
                }
            })
            .collect();
        Params { pairs }
    }

    /// The raw value of `key`, if given.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// A number in `lo..=hi`, or `default` when absent.
    pub fn f32_in(&self, key: &str, default: f32, lo: f32, hi: f32) -> Result<f32, Error> {
        let v = match self.get(key) {
            None => return Ok(default),
            Some(text) => text.trim().parse::<f32>().map_err(|_| {
                Error::new(format!("param {}: expected a number, got {:?}", key, text))
            })?,
        };
        if v.is_finite() && v >= lo && v <= hi {
            Ok(v)
        } else {
            Err(Error::new(format!("param {}: must be {}..={}, got {}", key, lo, hi, v)))
        }
    }

    /// A whole number in `lo..=hi`, or `default` when absent.
    pub fn u32_in(&self, key: &str, default: u32, lo: u32, hi: u32) -> Result<u32, Error> {
        let v = match self.get(key) {
            None => return Ok(default),
            Some(text) => text.trim().parse::<u32>().map_err(|_| {
                Error::new(format!("param {}: expected a whole number, got {:?}", key, text))
            })?,
        };
        if v >= lo && v <= hi {
            Ok(v)
        } else {
            Err(Error::new(format!("param {}: must be {}..={}, got {}", key, lo, hi, v)))
        }
    }

    /// A colour `#rgb`, `#rrggbb` or `#rrggbbaa`, or `default` when absent.
    pub fn colour(&self, key: &str, default: [u8; 4]) -> Result<[u8; 4], Error> {
        let text = match self.get(key) {
            None => return Ok(default),
            Some(t) => t.trim(),
        };
        let bad = || Error::new(format!("param {}: expected #rgb, #rrggbb or #rrggbbaa, got {:?}", key, text));
        let hex = text.strip_prefix('#').ok_or_else(bad)?;
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| bad());
        let nib = |i: usize| u8::from_str_radix(&hex[i..i + 1], 16).map(|n| n * 17).map_err(|_| bad());
        match hex.len() {
            3 => Ok([nib(0)?, nib(1)?, nib(2)?, 255]),
            6 => Ok([byte(0)?, byte(2)?, byte(4)?, 255]),
            8 => Ok([byte(0)?, byte(2)?, byte(4)?, byte(6)?]),
            _ => Err(bad()),
        }
    }
}

/// Log levels for [`log`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Something went wrong.
    Error = 1,
    /// Something looks wrong.
    Warn = 2,
    /// Progress worth knowing.
    Info = 3,
    /// Detail for debugging.
    Debug = 4,
}

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "pixmesh")]
extern "C" {
    #[link_name = "log"]
    fn host_log(level: i32, ptr: i32, len: i32);
}

/// Write a message to the host's log (the agent's tracing output).
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    // SAFETY: the host reads `len` bytes at `ptr` from our memory.
    unsafe {
        host_log(level as i32, message.as_ptr() as i32, message.len() as i32)
    };
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = (level, message);
    }
}

/// Support for [`export_plugin!`]; not for direct use.
#[doc(hidden)]
pub mod abi {
    use super::{Error, Frame, Params};
    use std::cell::RefCell;

    thread_local! {
        static LAST_ERROR: RefCell<Vec<u8>> = RefCell::new(Vec::new());
    }

    /// `pixmesh_alloc`: a buffer of `len` bytes the host fills, or 0.
    pub fn alloc(len: i32) -> i32 {
        if len < 0 {
            return 0;
        }
        // Reserve only: the host writes every byte before `take` claims
        // them, so zero-filling would be wasted work on large frames.
        let mut v: Vec<u8> = Vec::new();
        if v.try_reserve_exact(len as usize).is_err() {
            return 0;
        }
        let ptr = v.as_mut_ptr() as i32;
        std::mem::forget(v);
        ptr
    }

    unsafe fn take(ptr: i32, len: i32) -> Vec<u8> {
        // SAFETY: (ptr, len) came from `alloc(len)`, which leaked a Vec with
        // exactly this capacity; the host has written all `len` bytes and
        // hands each buffer over once.
        Vec::from_raw_parts(ptr as *mut u8, len as usize, len as usize)
    }

    fn fail(e: Error) -> i64 {
        LAST_ERROR.with(|slot| *slot.borrow_mut() = e.message().as_bytes().to_vec());
        -1
    }

    /// `pixmesh_transform`.
    ///
    /// # Safety
    /// The pointers must come from [`alloc`] with these lengths (the host's contract).
    pub unsafe fn transform(
        f: fn(Frame, &Params) -> Result<Frame, Error>,
        frame_ptr: i32,
        frame_len: i32,
        params_ptr: i32,
        params_len: i32,
    ) -> i64 {
        let frame = match Frame::from_abi(take(frame_ptr, frame_len)) {
            Ok(frame) => frame,
            Err(e) => return fail(e),
        };
        let params_bytes = if params_len > 0 { take(params_ptr, params_len) } else { Vec::new() };
        let params = match String::from_utf8(params_bytes) {
            Ok(text) => Params::parse(&text),
            Err(_) => return fail(Error::new("params are not UTF-8")),
        };
        match f(frame, &params) {
            Ok(out) => {
                let buf = out.into_abi();
                let (ptr, len) = (buf.as_ptr() as u32, buf.len() as u32);
                std::mem::forget(buf);
                ((ptr as i64) << 32) | len as i64
            }
            Err(e) => fail(e),
        }
    }

    /// `pixmesh_error`: the last error message as `(ptr << 32) | len`.
    pub fn error() -> i64 {
        LAST_ERROR.with(|slot| {
            let msg = slot.borrow();
            ((msg.as_ptr() as u32 as i64) << 32) | msg.len() as i64
        })
    }
}

/// Generate the ABI v1 exports for a transform function
/// `fn(Frame, &Params) -> Result<Frame, Error>`.
#[macro_export]
macro_rules! export_plugin {
    ($transform:path) => {
        /// ABI version implemented.
        #[no_mangle]
        pub extern "C" fn pixmesh_abi_version() -> i32 {
            $crate::ABI_VERSION
        }

        /// Allocate `len` bytes for the host to fill.
        #[no_mangle]
        pub extern "C" fn pixmesh_alloc(len: i32) -> i32 {
            $crate::abi::alloc(len)
        }

        /// Run the transform.
        #[no_mangle]
        pub unsafe extern "C" fn pixmesh_transform(
            frame_ptr: i32,
            frame_len: i32,
            params_ptr: i32,
            params_len: i32,
        ) -> i64 {
            $crate::abi::transform($transform, frame_ptr, frame_len, params_ptr, params_len)
        }

        /// The last error message.
        #[no_mangle]
        pub extern "C" fn pixmesh_error() -> i64 {
            $crate::abi::error()
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_parse_and_check_ranges() {
        let p = Params::parse("strength=0.8\nsize=12\ncolour=#f00\nbad\n=x");
        assert_eq!(p.f32_in("strength", 1.0, 0.0, 1.0), Ok(0.8));
        assert_eq!(p.f32_in("missing", 1.0, 0.0, 1.0), Ok(1.0));
        assert!(p.f32_in("size", 1.0, 0.0, 1.0).is_err());
        assert_eq!(p.u32_in("size", 1, 1, 64), Ok(12));
        assert_eq!(p.colour("colour", [0; 4]), Ok([255, 0, 0, 255]));
        assert!(p.u32_in("strength", 1, 1, 64).unwrap_err().message().contains("strength"));
    }

    #[test]
    fn frames_round_trip_through_the_abi_layout() {
        let mut f = Frame::new(2, 1).unwrap();
        f.set(1, 0, [1, 2, 3, 4]);
        let buf = f.into_abi();
        assert_eq!(&buf[0..4], b"PXF1");
        assert_eq!(buf.len(), 16 + 8);
        let g = Frame::from_abi(buf).unwrap();
        assert_eq!(g.get(1, 0), [1, 2, 3, 4]);
        assert!(Frame::from_abi(vec![0; 10]).is_err());
    }
}
