//! JPEG through libjpeg-turbo's codec (as vendored by `mozjpeg-sys`).
//!
//! Why not the `image` crate here: JPEG is where thumbnailing spends its time,
//! and libjpeg can *shrink on load* — decode at 1/2, 1/4 or 1/8 scale by
//! running a smaller inverse DCT — as libvips does. On top of that, for
//! progressive JPEGs decoded at 1/8 scale only the DC coefficients matter
//! (the 1x1 inverse DCT reads nothing else), so [`decode`] runs libjpeg in
//! buffered-image mode and stops reading once every component's DC
//! coefficients are complete, skipping the AC scans — usually most of the
//! file. For 4:2:0 files the chroma planes then come from their DC terms
//! alone (an 8x8 block average instead of a 2x2 inverse DCT), which changes
//! colours by well under one level on average; the tests measure it.
//!
//! Errors: libjpeg reports errors through a callback that must not return.
//! Ours unwinds with [`std::panic::resume_unwind`] (which skips the panic
//! hook) carrying the message; every entry point here catches it and returns
//! [`JpegError`]. The C library is built with `-fexceptions` (the crate's
//! `unwinding` feature) so unwinding through its frames is defined. Warnings
//! — corrupt data, premature end of file — are treated as errors, so a
//! truncated file fails instead of coming out half grey.
//!
//! This module must not know about pipelines or specs: bytes in, pixels out.

use std::ffi::{CStr, c_int, c_long, c_uint, c_ulong};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::{mem, ptr};

use mozjpeg_sys as ffi;

/// A JPEG the codec refused, with libjpeg's own message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct JpegError(pub String);

/// What the file header says, read without decoding any pixels.
#[derive(Debug, Clone)]
pub struct Header {
    /// Full-size width.
    pub width: u32,
    /// Full-size height.
    pub height: u32,
    /// True for progressive (multi-scan) files.
    pub progressive: bool,
    /// The EXIF block (the APP1 payload after `Exif\0\0`), if any.
    pub exif: Option<Vec<u8>>,
    /// The embedded ICC profile, if any.
    pub icc: Option<Vec<u8>>,
}

/// Decoded RGB pixels.
#[derive(Debug)]
pub struct Decoded {
    /// Width after scaling.
    pub width: u32,
    /// Height after scaling.
    pub height: u32,
    /// Row-major RGB8.
    pub rgb: Vec<u8>,
    /// True when the DC-only fast path was used.
    pub dc_only: bool,
}

/// The payload our error handler unwinds with.
struct Failure(String);

/// Default cap on the scans of a progressive JPEG. Real encoders use about
/// ten; each scan costs a pass over the whole coefficient buffer, so
/// thousands of tiny scans are a cheap way to make a decoder spin
/// (libjpeg-turbo's own advice is to cap them).
pub const MAX_SCANS: u32 = 500;

/// libjpeg's progress hook plus our scan cap; `public` must stay first so
/// a pointer to it is a pointer to the whole.
#[repr(C)]
struct Progress {
    public: ffi::jpeg_progress_mgr,
    max_scans: c_int,
}

unsafe extern "C-unwind" fn progress_monitor(cinfo: &mut ffi::jpeg_common_struct) {
    if cinfo.is_decompressor == 0 || cinfo.progress.is_null() {
        return;
    }
    // SAFETY: for a decompressor, the common struct is the first field of
    // the #[repr(C)] jpeg_decompress_struct it belongs to; `progress` points
    // at the `public` field, first in the #[repr(C)] Progress the Session owns.
    let (d, max) = unsafe {
        let d = &*(cinfo as *mut ffi::jpeg_common_struct as *const ffi::jpeg_decompress_struct);
        (d, (*(cinfo.progress as *const Progress)).max_scans)
    };
    if d.input_scan_number > max {
        resume_unwind(Box::new(Failure(format!(
            "more than {max} progressive scans (refused as a decoding bomb)"
        ))));
    }
}

const APP1: c_int = 0xE1;
const APP2: c_int = 0xE2;

// jpeg_consume_input return codes (jpeglib.h).
const JPEG_SUSPENDED: c_int = 0;
const JPEG_REACHED_EOI: c_int = 2;
const JPEG_SCAN_COMPLETED: c_int = 4;

unsafe extern "C-unwind" fn error_exit(cinfo: &mut ffi::jpeg_common_struct) {
    // mozjpeg-sys declares format_message's buffer as `&[u8; 80]`, but C
    // writes into it; call it through the true signature with a mutable
    // pointer so no shared reference is written through.
    type FormatMessage = unsafe extern "C-unwind" fn(&mut ffi::jpeg_common_struct, *mut u8);
    let mut buf = [0u8; 80];
    // SAFETY: `err` was set to a live jpeg_error_mgr by `new_error_mgr`'s
    // caller; format_message writes a NUL-terminated string of at most 80
    // bytes, and the two signatures have the same ABI.
    let message = unsafe {
        match (*cinfo.err).format_message {
            Some(format) => {
                let format: FormatMessage = mem::transmute(format);
                format(cinfo, buf.as_mut_ptr());
                CStr::from_bytes_until_nul(&buf)
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|_| "unknown libjpeg error".to_owned())
            }
            None => "unknown libjpeg error".to_owned(),
        }
    };
    resume_unwind(Box::new(Failure(message)));
}

unsafe extern "C-unwind" fn emit_message(cinfo: &mut ffi::jpeg_common_struct, level: c_int) {
    // level -1 is a warning: corrupt or truncated data that libjpeg would
    // paper over. We refuse the file instead. Higher levels are trace output.
    if level < 0 {
        // SAFETY: same contract as error_exit, which never returns.
        unsafe { error_exit(cinfo) }
    }
}

/// Run `f`, turning a libjpeg error unwind into [`JpegError`].
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, JpegError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| match payload.downcast::<Failure>() {
        Ok(failure) => JpegError(failure.0),
        // Not ours: a real bug. Let it continue as the panic it is.
        Err(other) => resume_unwind(other),
    })
}

fn new_error_mgr() -> Box<ffi::jpeg_error_mgr> {
    // SAFETY: jpeg_error_mgr is a plain C struct; jpeg_std_error fills every field.
    let mut err: Box<ffi::jpeg_error_mgr> = Box::new(unsafe { mem::zeroed() });
    unsafe { ffi::jpeg_std_error(&mut err) };
    err.error_exit = Some(error_exit);
    err.emit_message = Some(emit_message);
    err
}

/// Where a decompressor reads the compressed bytes from.
enum Input<'a> {
    /// All of them, in memory.
    Bytes(&'a [u8]),
    /// Chunk by chunk as they arrive; `None` ends the input.
    Chunks(&'a mut dyn FnMut() -> Option<Vec<u8>>),
}

/// libjpeg's source manager over [`Input::Chunks`]; `public` must stay
/// first so a pointer to it is a pointer to the whole. `fill_input_buffer`
/// blocks in `next` until the next chunk is in, so this runs on a thread
/// that may block; it never suspends.
#[repr(C)]
struct ChunkSource<'a> {
    public: ffi::jpeg_source_mgr,
    next: &'a mut dyn FnMut() -> Option<Vec<u8>>,
    /// The chunk `public` points into.
    current: Vec<u8>,
}

unsafe extern "C-unwind" fn chunk_init(_: &mut ffi::jpeg_decompress_struct) {}

unsafe extern "C-unwind" fn chunk_term(_: &mut ffi::jpeg_decompress_struct) {}

unsafe extern "C-unwind" fn chunk_fill(cinfo: &mut ffi::jpeg_decompress_struct) -> ffi::boolean {
    // SAFETY: `src` points at the `public` field, first in the #[repr(C)]
    // ChunkSource the Session owns (a separate allocation from cinfo).
    let src = unsafe { &mut *(cinfo.src as *mut ChunkSource<'_>) };
    loop {
        match (src.next)() {
            Some(chunk) if chunk.is_empty() => continue,
            Some(chunk) => {
                src.current = chunk;
                src.public.next_input_byte = src.current.as_ptr();
                src.public.bytes_in_buffer = src.current.len();
                return 1;
            }
            // What libjpeg's memory source reports (as a warning, which we
            // treat as an error) when the data runs out.
            None => resume_unwind(Box::new(Failure("Premature end of JPEG file".into()))),
        }
    }
}

unsafe extern "C-unwind" fn chunk_skip(cinfo: &mut ffi::jpeg_decompress_struct, num_bytes: c_long) {
    let Ok(mut left) = usize::try_from(num_bytes) else {
        return;
    };
    loop {
        // SAFETY: as in chunk_fill; the borrow ends before chunk_fill runs.
        let src = unsafe { &mut *(cinfo.src as *mut ChunkSource<'_>) };
        if left <= src.public.bytes_in_buffer {
            // SAFETY: stays within the current chunk.
            src.public.next_input_byte = unsafe { src.public.next_input_byte.add(left) };
            src.public.bytes_in_buffer -= left;
            return;
        }
        left -= src.public.bytes_in_buffer;
        src.public.bytes_in_buffer = 0;
        // SAFETY: same contract; it returns only with a non-empty chunk.
        unsafe { chunk_fill(cinfo) };
    }
}

unsafe extern "C-unwind" fn chunk_resync(
    cinfo: &mut ffi::jpeg_decompress_struct,
    desired: c_int,
) -> ffi::boolean {
    // SAFETY: libjpeg's default, as every source manager uses.
    unsafe { ffi::jpeg_resync_to_restart(cinfo, desired) }
}

/// A decompressor reading from an [`Input`]. Dropping it (also while
/// unwinding) releases libjpeg's memory.
struct Session<'a> {
    cinfo: Box<ffi::jpeg_decompress_struct>,
    _err: Box<ffi::jpeg_error_mgr>,
    progress: Box<Progress>,
    /// Set for [`Input::Chunks`]; dropped after cinfo is destroyed. Its
    /// lifetime also ties the session to an [`Input::Bytes`] buffer.
    _source: Option<Box<ChunkSource<'a>>>,
}

impl<'a> Session<'a> {
    /// Create a decompressor and read the header. Must run inside [`guarded`].
    /// libjpeg may allocate at most `max_memory` bytes (it has no backing
    /// store, so a larger need, such as a huge progressive coefficient
    /// buffer, is an error rather than an allocation).
    fn new(input: Input<'a>, max_memory: u64, max_scans: u32) -> Session<'a> {
        let mut err = new_error_mgr();
        let progress = Box::new(Progress {
            public: ffi::jpeg_progress_mgr {
                progress_monitor: Some(progress_monitor),
                pass_counter: 0,
                pass_limit: 0,
                completed_passes: 0,
                total_passes: 0,
            },
            max_scans: c_int::try_from(max_scans).unwrap_or(c_int::MAX),
        });
        // SAFETY: zeroed is the documented starting state before
        // jpeg_create_decompress; `err`, `progress` and `input` outlive
        // `cinfo` (owned by or borrowed for the Session, which destroys
        // cinfo first).
        let mut cinfo: Box<ffi::jpeg_decompress_struct> = Box::new(unsafe { mem::zeroed() });
        cinfo.common.err = &mut *err;
        let mut session = Session {
            cinfo,
            _err: err,
            progress,
            _source: None,
        };
        unsafe {
            // Creation zeroes everything but `err`: set the rest after it.
            ffi::jpeg_create_decompress(&mut *session.cinfo);
            session.cinfo.common.progress = &mut session.progress.public;
            (*session.cinfo.common.mem).max_memory_to_use =
                std::ffi::c_long::try_from(max_memory).unwrap_or(std::ffi::c_long::MAX);
            match input {
                Input::Bytes(bytes) => {
                    ffi::jpeg_mem_src(&mut session.cinfo, bytes.as_ptr(), bytes.len() as c_ulong)
                }
                Input::Chunks(next) => {
                    let mut source = Box::new(ChunkSource {
                        public: ffi::jpeg_source_mgr {
                            next_input_byte: ptr::null(),
                            bytes_in_buffer: 0,
                            init_source: Some(chunk_init),
                            fill_input_buffer: Some(chunk_fill),
                            skip_input_data: Some(chunk_skip),
                            resync_to_restart: Some(chunk_resync),
                            term_source: Some(chunk_term),
                        },
                        next,
                        current: Vec::new(),
                    });
                    session.cinfo.src = &mut source.public;
                    session._source = Some(source);
                }
            }
            ffi::jpeg_save_markers(&mut session.cinfo, APP1, 0xFFFF);
            ffi::jpeg_save_markers(&mut session.cinfo, APP2, 0xFFFF);
            ffi::jpeg_read_header(&mut session.cinfo, 1);
        }
        session
    }

    fn header(&mut self) -> Header {
        let cinfo = &mut *self.cinfo;
        let mut exif = None;
        let mut marker = cinfo.marker_list;
        while !marker.is_null() {
            // SAFETY: libjpeg keeps a valid linked list of saved markers,
            // each with `data_length` bytes at `data`, until destroy.
            let m = unsafe { &*marker };
            if c_int::from(m.marker) == APP1 {
                let data = unsafe { std::slice::from_raw_parts(m.data, m.data_length as usize) };
                if let Some(rest) = data.strip_prefix(b"Exif\0\0") {
                    exif = Some(rest.to_vec());
                }
            }
            marker = m.next;
        }
        let mut icc = None;
        let (mut icc_ptr, mut icc_len): (*mut u8, c_uint) = (ptr::null_mut(), 0);
        // SAFETY: on success libjpeg hands us a malloc'd buffer we must free.
        if unsafe { ffi::jpeg_read_icc_profile(cinfo, &mut icc_ptr, &mut icc_len) } != 0
            && !icc_ptr.is_null()
        {
            icc = Some(unsafe { std::slice::from_raw_parts(icc_ptr, icc_len as usize) }.to_vec());
            unsafe { libc_free(icc_ptr.cast()) };
        }
        Header {
            width: cinfo.image_width,
            height: cinfo.image_height,
            progressive: unsafe { ffi::jpeg_has_multiple_scans(cinfo) } != 0,
            exif,
            icc,
        }
    }

    /// True once every component's DC coefficient is known to full precision.
    fn dc_complete(&self) -> bool {
        let cinfo = &*self.cinfo;
        if cinfo.coef_bits.is_null() {
            return false;
        }
        let rows = cinfo.coef_bits.cast::<[c_int; 64]>();
        (0..cinfo.num_components as usize).all(|c| {
            // SAFETY: for progressive files coef_bits points at
            // num_components rows of 64 ints (jdinput.c).
            unsafe { (*rows.add(c))[0] == 0 }
        })
    }

    fn read_rgb(&mut self) -> Vec<u8> {
        let cinfo = &mut *self.cinfo;
        let stride = cinfo.output_width as usize * 3;
        let mut rgb = vec![0u8; stride * cinfo.output_height as usize];
        while cinfo.output_scanline < cinfo.output_height {
            let row = cinfo.output_scanline as usize;
            let mut rows = [rgb[row * stride..].as_mut_ptr()];
            // SAFETY: `rows` points at a full row inside `rgb`.
            let n = unsafe { ffi::jpeg_read_scanlines(cinfo, rows.as_mut_ptr(), 1) };
            if n == 0 {
                resume_unwind(Box::new(Failure(
                    "decoder stopped before the last row".into(),
                )));
            }
        }
        rgb
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        // SAFETY: cinfo was created by jpeg_create_decompress; destroy is
        // valid in any state and frees everything libjpeg allocated.
        unsafe { ffi::jpeg_destroy_decompress(&mut self.cinfo) };
    }
}

unsafe extern "C" {
    #[link_name = "free"]
    fn libc_free(p: *mut std::ffi::c_void);
}

/// Memory libjpeg may use while only reading headers.
const HEADER_MEMORY: u64 = 64 << 20;

/// Read the header: dimensions, progressive flag, EXIF and ICC.
pub fn read_header(input: &[u8]) -> Result<Header, JpegError> {
    guarded(|| Session::new(Input::Bytes(input), HEADER_MEMORY, MAX_SCANS).header())
}

/// Decode to RGB, shrinking by `1/denom` (1, 2, 4 or 8) in the inverse DCT.
///
/// The caller has checked the dimensions against its pixel limit with
/// [`read_header`] first; `max_memory` caps libjpeg's own allocations (the
/// output buffer is ours and bounded by that pixel limit) and `max_scans`
/// the scans of a progressive file (normally [`MAX_SCANS`]).
pub fn decode(
    input: &[u8],
    denom: u8,
    max_memory: u64,
    max_scans: u32,
) -> Result<Decoded, JpegError> {
    guarded(|| {
        let mut s = Session::new(Input::Bytes(input), max_memory, max_scans);
        decode_session(&mut s, denom)
    })
}

/// Read the header and decode in one pass over bytes that arrive chunk by
/// chunk from `next` (`None` ends them; blocking in `next` is expected).
/// `choose` takes the header and returns the shrink to decode at, or `None`
/// to stop there (the caller records why); then the result is `Ok(None)`.
/// Same pixels as [`read_header`] + [`decode`] on the whole buffer.
pub fn decode_chunks(
    next: &mut dyn FnMut() -> Option<Vec<u8>>,
    max_memory: u64,
    max_scans: u32,
    choose: &mut dyn FnMut(Header) -> Option<u8>,
) -> Result<Option<Decoded>, JpegError> {
    guarded(|| {
        let mut s = Session::new(Input::Chunks(next), max_memory, max_scans);
        let denom = choose(s.header())?;
        Some(decode_session(&mut s, denom))
    })
}

/// Decode a session whose header has been read. Must run inside [`guarded`].
fn decode_session(s: &mut Session<'_>, denom: u8) -> Decoded {
    let denom = match denom {
        1 | 2 | 4 | 8 => denom,
        _ => 8,
    };
    let progressive = unsafe { ffi::jpeg_has_multiple_scans(&s.cinfo) } != 0;
    let dc_only = progressive && denom == 8;
    {
        let c = &mut *s.cinfo;
        c.out_color_space = ffi::J_COLOR_SPACE::JCS_RGB;
        c.scale_num = 1;
        c.scale_denom = c_uint::from(denom);
        if dc_only {
            c.buffered_image = 1;
            c.do_block_smoothing = 0;
        }
    }
    unsafe { ffi::jpeg_start_decompress(&mut s.cinfo) };
    let rgb = if dc_only {
        loop {
            match unsafe { ffi::jpeg_consume_input(&mut s.cinfo) } {
                JPEG_REACHED_EOI => break,
                JPEG_SCAN_COMPLETED if s.dc_complete() => break,
                JPEG_SUSPENDED => {
                    resume_unwind(Box::new(Failure("premature end of JPEG data".into())))
                }
                _ => {}
            }
        }
        let scan = s.cinfo.input_scan_number;
        unsafe { ffi::jpeg_start_output(&mut s.cinfo, scan) };
        let rgb = s.read_rgb();
        unsafe { ffi::jpeg_finish_output(&mut s.cinfo) };
        // The AC scans are deliberately left unread.
        unsafe { ffi::jpeg_abort_decompress(&mut s.cinfo) };
        rgb
    } else {
        let rgb = s.read_rgb();
        unsafe { ffi::jpeg_finish_decompress(&mut s.cinfo) };
        rgb
    };
    Decoded {
        width: s.cinfo.output_width,
        height: s.cinfo.output_height,
        rgb,
        dc_only,
    }
}

/// Which DCT shrink (1, 2, 4 or 8) to decode at, given the full size and the
/// size the pipeline needs. Like libvips, leave at least a factor of two for
/// the resampling filter, so the shrink never decides the final quality.
pub fn shrink_for(full: (u32, u32), needed: (u32, u32)) -> u8 {
    let fx = f64::from(full.0) / f64::from(needed.0.max(1));
    let fy = f64::from(full.1) / f64::from(needed.1.max(1));
    let factor = fx.min(fy);
    match factor {
        f if f >= 16.0 => 8,
        f if f >= 8.0 => 4,
        f if f >= 4.0 => 2,
        _ => 1,
    }
}

/// Encode RGB8 as a baseline JPEG with libjpeg-turbo's defaults (4:2:0,
/// no trellis: the fast profile) at `quality`, optionally with an ICC profile
/// and EXIF block.
pub fn encode(
    rgb: &[u8],
    width: u32,
    height: u32,
    quality: u8,
    icc: Option<&[u8]>,
    exif: Option<&[u8]>,
) -> Result<Vec<u8>, JpegError> {
    let stride = width as usize * 3;
    if rgb.len() != stride * height as usize {
        return Err(JpegError(format!(
            "pixel buffer holds {} bytes, {width}x{height} RGB needs {}",
            rgb.len(),
            stride * height as usize
        )));
    }
    struct Compressor {
        cinfo: Box<ffi::jpeg_compress_struct>,
        _err: Box<ffi::jpeg_error_mgr>,
        out: *mut u8,
    }
    impl Drop for Compressor {
        fn drop(&mut self) {
            // SAFETY: created by jpeg_create_compress; `out` is libjpeg's
            // malloc'd destination buffer (or null).
            unsafe {
                ffi::jpeg_destroy_compress(&mut self.cinfo);
                if !self.out.is_null() {
                    libc_free(self.out.cast());
                }
            }
        }
    }
    guarded(|| {
        let mut err = new_error_mgr();
        // SAFETY: as in Session::new; the Compressor owns everything it points at.
        let mut cinfo: Box<ffi::jpeg_compress_struct> = Box::new(unsafe { mem::zeroed() });
        cinfo.common.err = &mut *err;
        let mut c = Compressor {
            cinfo,
            _err: err,
            out: ptr::null_mut(),
        };
        let mut out_len: c_ulong = 0;
        unsafe {
            ffi::jpeg_create_compress(&mut *c.cinfo);
            ffi::jpeg_mem_dest(&mut c.cinfo, &mut c.out, &mut out_len);
            c.cinfo.image_width = width;
            c.cinfo.image_height = height;
            c.cinfo.input_components = 3;
            c.cinfo.in_color_space = ffi::J_COLOR_SPACE::JCS_RGB;
            ffi::jpeg_c_set_int_param(
                &mut c.cinfo,
                ffi::J_INT_PARAM::JINT_COMPRESS_PROFILE,
                ffi::JCP_FASTEST as c_int,
            );
            ffi::jpeg_set_defaults(&mut c.cinfo);
            ffi::jpeg_set_quality(&mut c.cinfo, c_int::from(quality), 1);
            ffi::jpeg_start_compress(&mut c.cinfo, 1);
            if let Some(exif) = exif {
                let mut app1 = Vec::with_capacity(exif.len() + 6);
                app1.extend_from_slice(b"Exif\0\0");
                app1.extend_from_slice(exif);
                if app1.len() <= 65_533 {
                    ffi::jpeg_write_marker(&mut c.cinfo, APP1, app1.as_ptr(), app1.len() as c_uint);
                }
            }
            if let Some(icc) = icc {
                ffi::jpeg_write_icc_profile(&mut c.cinfo, icc.as_ptr(), icc.len() as c_uint);
            }
            while c.cinfo.next_scanline < c.cinfo.image_height {
                let row = c.cinfo.next_scanline as usize;
                let rows = [rgb[row * stride..].as_ptr()];
                ffi::jpeg_write_scanlines(&mut c.cinfo, rows.as_ptr(), 1);
            }
            ffi::jpeg_finish_compress(&mut c.cinfo);
            std::slice::from_raw_parts(c.out, out_len as usize).to_vec()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> Vec<u8> {
        let mut v = Vec::with_capacity((w * h * 3) as usize);
        for y in 0..h {
            for x in 0..w {
                v.extend_from_slice(&[(x * 255 / w) as u8, (y * 255 / h) as u8, 128]);
            }
        }
        v
    }

    #[test]
    fn encode_decode_round_trip_and_scaled_decode() {
        let jpeg = encode(&gradient(64, 48), 64, 48, 90, None, None).expect("encode");
        let h = read_header(&jpeg).expect("header");
        assert_eq!((h.width, h.height, h.progressive), (64, 48, false));
        let full = decode(&jpeg, 1, 1 << 30, MAX_SCANS).expect("decode");
        assert_eq!((full.width, full.height), (64, 48));
        // A smooth gradient survives q90 within a few levels.
        let px = &full.rgb[(20 * 64 + 32) * 3..][..3];
        assert!((i32::from(px[0]) - 127).abs() <= 6, "{px:?}");
        let eighth = decode(&jpeg, 8, 1 << 30, MAX_SCANS).expect("decode 1/8");
        assert_eq!((eighth.width, eighth.height), (8, 6));
    }

    #[test]
    fn garbage_and_truncation_are_errors_not_panics() {
        assert!(read_header(b"").is_err());
        assert!(read_header(b"\xff\xd8\xff\xe0 not really a jpeg").is_err());
        let jpeg = encode(&gradient(64, 64), 64, 64, 90, None, None).expect("encode");
        let truncated = &jpeg[..jpeg.len() / 2];
        let e = decode(truncated, 1, 1 << 30, MAX_SCANS).expect_err("truncated file must fail");
        assert!(e.0.to_lowercase().contains("premature end"), "{e}");
    }

    #[test]
    fn exif_block_round_trips() {
        let exif = b"MM\0*\0\0\0\x08\0\0".to_vec();
        let jpeg = encode(&gradient(8, 8), 8, 8, 80, None, Some(&exif)).expect("encode");
        assert_eq!(read_header(&jpeg).expect("header").exif, Some(exif));
    }

    #[test]
    fn shrink_leaves_a_factor_of_two() {
        assert_eq!(shrink_for((5640, 3172), (256, 144)), 8);
        assert_eq!(shrink_for((1920, 1080), (256, 144)), 2);
        assert_eq!(shrink_for((3840, 2160), (256, 144)), 4);
        assert_eq!(shrink_for((1000, 1000), (400, 400)), 1);
        assert_eq!(shrink_for((1000, 1000), (250, 250)), 2);
    }
}
