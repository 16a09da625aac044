//! Shared test helpers: the binary, the corpus, synthetic files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use image::{DynamicImage, GenericImageView};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The corpus root: `$PIXMESH_CORPUS`'s parent layout, `../shared/corpus`,
/// or the shipped samples.
pub fn corpus() -> PathBuf {
    if let Ok(dir) = std::env::var("PIXMESH_CORPUS_ROOT") {
        return PathBuf::from(dir);
    }
    let shared = root().join("../shared/corpus");
    if shared.join("photos").is_dir() {
        shared
    } else {
        root().join("samples")
    }
}

/// Every photo (JPEG) in the corpus, sorted.
pub fn photos() -> Vec<PathBuf> {
    files_in(&corpus().join("photos"))
}

/// Every graphic (PNG with alpha) in the corpus, sorted; may be empty.
pub fn graphics() -> Vec<PathBuf> {
    files_in(&corpus().join("graphics"))
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| {
        let ext = p.extension().map(|e| e.to_string_lossy().to_lowercase());
        matches!(ext.as_deref(), Some("jpg" | "jpeg" | "png"))
    });
    v.sort();
    v
}

/// The largest photo by file size (the progressive 5640x3172 in the shared corpus).
pub fn largest_photo() -> PathBuf {
    let mut v = photos();
    v.sort_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0));
    v.pop().expect("the corpus has photos")
}

/// A `pixmesh` command.
pub fn pixmesh() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pixmesh"));
    c.env_remove("RUST_LOG").env_remove("PIXMESH_MAX_PIXELS");
    c
}

/// Run and return output, printing it on failure to start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("pixmesh starts")
}

/// stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Parse the `--json` report.
pub fn report(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "bad JSON report ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            stderr(o)
        )
    })
}

/// Decode a file and return it.
pub fn open(path: &Path) -> DynamicImage {
    image::open(path).unwrap_or_else(|e| panic!("{} does not decode: {e}", path.display()))
}

/// Standard deviation of the luma: > 0 means the image is not blank.
pub fn luma_stddev(img: &DynamicImage) -> f64 {
    let l = img.to_luma8();
    let n = l.len() as f64;
    let mean = l.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    (l.iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n)
        .sqrt()
}

/// Width and height.
pub fn dims(img: &DynamicImage) -> (u32, u32) {
    img.dimensions()
}

/// CRC-32 (IEEE), for hand-made PNG chunks.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A valid PNG header whose IHDR claims `w` x `h` RGBA, followed by a tiny
/// IDAT: a decompression bomb as far as the header goes.
pub fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(b"IEND", &[]);
    out
}

/// Deterministic pseudo-random bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A big-endian TIFF/EXIF block holding only an orientation tag.
pub fn exif_with_orientation(orientation: u16) -> Vec<u8> {
    let mut v = b"MM\0*\0\0\0\x08".to_vec();
    v.extend_from_slice(&1u16.to_be_bytes()); // one entry
    v.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
    v.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    v.extend_from_slice(&1u32.to_be_bytes()); // count
    v.extend_from_slice(&orientation.to_be_bytes());
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
    v
}

/// Build the example plugins once per test run; returns plugins/dist.
pub fn dist() -> std::path::PathBuf {
    static BUILT: OnceLock<std::path::PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let script = root().join("plugins/build.sh");
            let o = std::process::Command::new("bash")
                .arg(&script)
                .output()
                .expect("run build.sh");
            assert!(
                o.status.success(),
                "plugins/build.sh failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            root().join("plugins/dist")
        })
        .clone()
}

/// A `pixmesh-agent` command.
pub fn pixmesh_agent() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pixmesh-agent"));
    c.env_remove("RUST_LOG");
    c
}

/// `pixmesh coordinator` on loopback ports the OS picks, without mDNS,
/// keeping its data in `dir`.
pub fn coordinator_command(dir: &Path) -> Command {
    let mut c = pixmesh();
    c.args(["coordinator", "--listen", "127.0.0.1:0", "--no-mdns"])
        .args(["--p2p-listen", "/ip4/127.0.0.1/udp/0/quic-v1", "--data-dir"])
        .arg(dir);
    c
}
