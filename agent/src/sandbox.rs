//! The WebAssembly plugin host (plugin ABI v1, see `docs/plugin-abi.md`).
//!
//! Plugins come from strangers, so the host assumes every module is hostile:
//!
//! - **Validated when added** ([`PluginHost::load`]): the only import allowed
//!   is `pixmesh.log`; the required exports must exist with the right
//!   signatures; `pixmesh_abi_version()` must return 1; and a dry run on a
//!   1x1 frame must not trap, time out or return a malformed frame.
//! - **Compiled once** and cached on local disk, keyed by the module's
//!   BLAKE3 hash and the engine's configuration. Compiled code is only ever
//!   loaded from that cache, which only this host writes — never from a peer.
//! - **A fresh instance per image** (pooling allocator + `InstancePre`), so
//!   no state leaks between images or jobs.
//! - **Bounded**: a linear-memory cap (`StoreLimits`, growth beyond it
//!   traps), a wall-clock deadline per call (epoch interruption, ticked by
//!   one background thread), and at most `max_instances` instances at once.
//! - **Checked output**: magic, channels, length, bounds and the pixel limit
//!   are verified before a byte of output is trusted.
//!
//! A trap, timeout or bad output fails that image with a [`PluginError`];
//! the host carries on.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use wasmtime::{
    Config, Engine, ExternType, FuncType, InstanceAllocationStrategy, InstancePre, Linker, Module,
    PoolingAllocationConfig, Store, StoreLimits, StoreLimitsBuilder, Trap, ValType,
};

/// The ABI version this host speaks.
pub const ABI_VERSION: i32 = 1;
const HEADER_LEN: usize = 16;
const MAX_ERROR_MESSAGE: usize = 4096;
const MAX_LOG_MESSAGE: usize = 4096;
/// How often the epoch advances; deadlines are rounded up to it.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Sandbox limits and where compiled code is cached.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Largest linear memory one plugin instance may have.
    pub max_memory_bytes: usize,
    /// Wall-clock deadline for one `pixmesh_transform` call.
    pub timeout: Duration,
    /// Instances that may run at once (callers beyond it wait).
    pub max_instances: u32,
    /// Directory for compiled code; `None` compiles in memory every time.
    pub cache_dir: Option<PathBuf>,
    /// Bytes of each instance slot's memory kept mapped between instances
    /// (reset with `memset` instead of `madvise`), so large frames do not
    /// page-fault afresh on every image. Costs up to this much resident
    /// memory per slot once used.
    pub keep_resident_bytes: usize,
    /// Counters by plugin; register them to export them.
    pub metrics: PluginMetrics,
}

/// A plugin label: its hash.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct PluginLabel {
    /// BLAKE3 hash of the module.
    pub plugin: String,
}

/// Per-plugin counters: instances created, traps (including the memory
/// cap) and timeouts.
#[derive(Debug, Clone, Default)]
pub struct PluginMetrics {
    instantiations: Family<PluginLabel, Counter>,
    traps: Family<PluginLabel, Counter>,
    timeouts: Family<PluginLabel, Counter>,
}

impl PluginMetrics {
    /// Register under `pixmesh_plugin_*`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "pixmesh_plugin_instantiations",
            "Plugin instances created (one per call)",
            self.instantiations.clone(),
        );
        registry.register(
            "pixmesh_plugin_traps",
            "Plugin calls that trapped or hit the memory cap",
            self.traps.clone(),
        );
        registry.register(
            "pixmesh_plugin_timeouts",
            "Plugin calls stopped at their deadline",
            self.timeouts.clone(),
        );
    }

    fn observe<T>(&self, plugin: &Plugin, result: &Result<T, PluginError>) {
        let label = PluginLabel {
            plugin: plugin.hash.clone(),
        };
        self.instantiations.get_or_create(&label).inc();
        match result {
            Err(PluginError::Trap(_) | PluginError::MemoryLimit(_)) => {
                self.traps.get_or_create(&label).inc();
            }
            Err(PluginError::Timeout(_)) => {
                self.timeouts.get_or_create(&label).inc();
            }
            _ => {}
        }
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            max_memory_bytes: 1 << 30,
            timeout: Duration::from_secs(10),
            max_instances: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1)
                .max(1),
            cache_dir: None,
            keep_resident_bytes: 64 << 20,
            metrics: PluginMetrics::default(),
        }
    }
}

/// Why a plugin was refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    /// The module is not acceptable (bad wasm, imports, exports, ABI version).
    #[error("plugin refused: {0}")]
    Invalid(String),
    /// The plugin returned an error; the message is the plugin's.
    #[error("plugin error: {0}")]
    Failed(String),
    /// The plugin trapped.
    #[error("plugin trapped: {0}")]
    Trap(String),
    /// The call ran past its deadline.
    #[error("plugin timed out after {0:?}")]
    Timeout(Duration),
    /// The plugin tried to grow its memory past the cap.
    #[error("plugin exceeded its memory limit of {0} bytes")]
    MemoryLimit(usize),
    /// The plugin returned something that is not a valid frame.
    #[error("plugin returned a bad frame: {0}")]
    BadOutput(String),
    /// The host could not run it (engine setup, cache I/O).
    #[error("plugin host: {0}")]
    Host(String),
}

/// An RGBA8 image, as plugins see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbaFrame {
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// `width * height * 4` bytes, non-premultiplied, row-major.
    pub pixels: Vec<u8>,
}

/// A validated, compiled plugin ready to instantiate.
pub struct Plugin {
    hash: String,
    pre: InstancePre<CallState>,
    has_error_export: bool,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

impl Plugin {
    /// BLAKE3 hash of the module bytes (64 hex digits).
    pub fn hash(&self) -> &str {
        &self.hash
    }
}

#[derive(Debug)]
struct CallState {
    limits: StoreLimits,
    plugin: String,
}

/// A counting semaphore for instance slots.
#[derive(Debug)]
struct Slots {
    free: Mutex<u32>,
    ready: Condvar,
}

struct SlotGuard<'a>(&'a Slots);

impl Slots {
    fn acquire(&self) -> SlotGuard<'_> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            free = self.ready.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
        SlotGuard(self)
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        let mut free = self.0.free.lock().unwrap_or_else(|p| p.into_inner());
        *free += 1;
        self.0.ready.notify_one();
    }
}

/// Advances the engine's epoch until dropped.
#[derive(Debug)]
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs plugins. One per process; share it behind an `Arc`.
#[derive(Debug)]
pub struct PluginHost {
    engine: Engine,
    linker: Linker<CallState>,
    config: SandboxConfig,
    engine_key: u64,
    slots: Slots,
    _ticker: EpochTicker,
}

fn host_error(e: impl std::fmt::Display) -> PluginError {
    PluginError::Host(e.to_string())
}

impl PluginHost {
    /// Set up the engine, the pooling allocator and the epoch ticker.
    pub fn new(config: SandboxConfig) -> Result<PluginHost, PluginError> {
        let slots = config.max_instances.max(1);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_core_instances(slots)
            .total_memories(slots)
            .total_tables(slots)
            .max_memories_per_module(1)
            .max_memory_size(config.max_memory_bytes)
            .linear_memory_keep_resident(config.keep_resident_bytes.min(config.max_memory_bytes));
        let mut wasm = Config::new();
        wasm.epoch_interruption(true)
            .memory_init_cow(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wasm).map_err(host_error)?;
        let mut linker = Linker::new(&engine);
        linker
            .func_wrap(
                "pixmesh",
                "log",
                |mut caller: wasmtime::Caller<'_, CallState>, level: i32, ptr: i32, len: i32| {
                    let Some(mem) = caller.get_export("memory").and_then(|e| e.into_memory())
                    else {
                        return;
                    };
                    let (start, len) = (
                        ptr as u32 as usize,
                        (len as u32 as usize).min(MAX_LOG_MESSAGE),
                    );
                    let data = mem.data(&caller);
                    let Some(bytes) = start.checked_add(len).and_then(|end| data.get(start..end))
                    else {
                        return;
                    };
                    let msg = String::from_utf8_lossy(bytes);
                    let plugin = caller.data().plugin.as_str();
                    match level {
                        1 => tracing::error!(plugin, "{msg}"),
                        2 => tracing::warn!(plugin, "{msg}"),
                        3 => tracing::info!(plugin, "{msg}"),
                        _ => tracing::debug!(plugin, "{msg}"),
                    }
                },
            )
            .map_err(host_error)?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = hasher.finish();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (engine, stop) = (engine.clone(), stop.clone());
            std::thread::Builder::new()
                .name("pixmesh-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(host_error)?
        };
        Ok(PluginHost {
            engine,
            linker,
            engine_key,
            slots: Slots {
                free: Mutex::new(slots),
                ready: Condvar::new(),
            },
            config,
            _ticker: EpochTicker {
                stop,
                thread: Some(thread),
            },
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// Validate, compile (or load from the local cache), check the ABI
    /// version and dry-run a module. `wasm` may also be WebAssembly text.
    pub fn load(&self, wasm: &[u8]) -> Result<Plugin, PluginError> {
        let hash = blake3::hash(wasm).to_hex().to_string();
        let module = self.compile(&hash, wasm)?;
        let has_error_export = check_interface(&module)?;
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| PluginError::Invalid(format!("cannot link: {e:#}")))?;
        let plugin = Plugin {
            hash,
            pre,
            has_error_export,
        };
        let version = self.call_version(&plugin)?;
        if version != ABI_VERSION {
            return Err(PluginError::Invalid(format!(
                "pixmesh_abi_version() returned {version}; this host speaks ABI {ABI_VERSION}"
            )));
        }
        // A dry run: a broken plugin is refused before any job uses it. A
        // plugin that cleanly reports an error (say, for a missing
        // parameter) is not broken.
        let one = RgbaFrame {
            width: 1,
            height: 1,
            pixels: vec![128, 128, 128, 255],
        };
        match self.run(&plugin, one, &BTreeMap::new(), 1 << 20) {
            Ok(_) | Err(PluginError::Failed(_)) => Ok(plugin),
            Err(e) => Err(PluginError::Invalid(format!(
                "dry run on a 1x1 frame failed: {e}"
            ))),
        }
    }

    fn compile(&self, hash: &str, wasm: &[u8]) -> Result<Module, PluginError> {
        let cached = self
            .config
            .cache_dir
            .as_ref()
            .map(|dir| dir.join(format!("{hash}-{:016x}.cwasm", self.engine_key)));
        if let Some(path) = &cached
            && path.is_file()
        {
            // SAFETY: this file was written by `compile` below, from
            // `Module::serialize` of this engine configuration, into a
            // directory only this host writes; it is keyed by the hash of
            // the source module. Compiled code is never taken from anywhere else.
            match unsafe { Module::deserialize_file(&self.engine, path) } {
                Ok(module) => return Ok(module),
                Err(e) => tracing::warn!(cause = %e, path = %path.display(), "recompiling plugin"),
            }
        }
        let module = Module::new(&self.engine, wasm)
            .map_err(|e| PluginError::Invalid(format!("not a valid WebAssembly module: {e:#}")))?;
        if let Some(path) = cached {
            let bytes = module.serialize().map_err(host_error)?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(host_error)?;
            }
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, bytes)
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|e| host_error(format!("cannot cache compiled plugin: {e}")))?;
        }
        Ok(module)
    }

    fn store(&self, plugin: &Plugin) -> Store<CallState> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.config.max_memory_bytes)
            .memories(1)
            .tables(1)
            .instances(1)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(
            &self.engine,
            CallState {
                limits,
                plugin: plugin.hash[..12].to_owned(),
            },
        );
        store.limiter(|s| &mut s.limits);
        let ticks = self
            .config
            .timeout
            .as_nanos()
            .div_ceil(EPOCH_TICK.as_nanos())
            .max(1);
        store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX));
        store.epoch_deadline_trap();
        store
    }

    fn classify(&self, e: wasmtime::Error) -> PluginError {
        if let Some(trap) = e.downcast_ref::<Trap>()
            && *trap == Trap::Interrupt
        {
            return PluginError::Timeout(self.config.timeout);
        }
        let text = format!("{e:#}");
        if text.contains("forcing trap when growing memory") {
            return PluginError::MemoryLimit(self.config.max_memory_bytes);
        }
        PluginError::Trap(text)
    }

    /// Take an instance slot (waiting for one) and instantiate afresh.
    fn instantiate(
        &self,
        plugin: &Plugin,
    ) -> Result<(SlotGuard<'_>, Store<CallState>, wasmtime::Instance), PluginError> {
        let slot = self.slots.acquire();
        let mut store = self.store(plugin);
        let instance = plugin
            .pre
            .instantiate(&mut store)
            .map_err(|e| self.classify(e))?;
        Ok((slot, store, instance))
    }

    fn call_version(&self, plugin: &Plugin) -> Result<i32, PluginError> {
        let (_slot, mut store, instance) = self.instantiate(plugin)?;
        let f = instance
            .get_typed_func::<(), i32>(&mut store, "pixmesh_abi_version")
            .map_err(host_error)?;
        f.call(&mut store, ()).map_err(|e| self.classify(e))
    }

    /// Run the plugin on one frame in a fresh instance. The frame's buffer
    /// is reused for the output when the plugin keeps the dimensions.
    pub fn run(
        &self,
        plugin: &Plugin,
        frame: RgbaFrame,
        params: &BTreeMap<String, String>,
        max_pixels: u64,
    ) -> Result<RgbaFrame, PluginError> {
        let _span = tracing::debug_span!("plugin", plugin = %plugin.hash).entered();
        let result = self.run_once(plugin, frame, params, max_pixels);
        self.config.metrics.observe(plugin, &result);
        result
    }

    fn run_once(
        &self,
        plugin: &Plugin,
        frame: RgbaFrame,
        params: &BTreeMap<String, String>,
        max_pixels: u64,
    ) -> Result<RgbaFrame, PluginError> {
        let frame_len = HEADER_LEN + frame.pixels.len();
        let frame_len_i32 = i32::try_from(frame_len).map_err(|_| {
            PluginError::Failed(format!(
                "a {}x{} frame does not fit a 32-bit plugin memory",
                frame.width, frame.height
            ))
        })?;
        let params_text: String = params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("\n");

        let (_slot, mut store, instance) = self.instantiate(plugin)?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| PluginError::Invalid("no memory export".into()))?;
        let alloc = instance
            .get_typed_func::<i32, i32>(&mut store, "pixmesh_alloc")
            .map_err(host_error)?;
        let transform = instance
            .get_typed_func::<(i32, i32, i32, i32), i64>(&mut store, "pixmesh_transform")
            .map_err(host_error)?;

        let frame_ptr = alloc
            .call(&mut store, frame_len_i32)
            .map_err(|e| self.classify(e))?;
        if frame_ptr == 0 {
            return Err(PluginError::Failed(format!(
                "pixmesh_alloc({frame_len}) returned 0 (out of plugin memory?)"
            )));
        }
        let mut header = [0u8; HEADER_LEN];
        header[0..4].copy_from_slice(b"PXF1");
        header[4..8].copy_from_slice(&frame.width.to_le_bytes());
        header[8..12].copy_from_slice(&frame.height.to_le_bytes());
        header[12..16].copy_from_slice(&4u32.to_le_bytes());
        let at = frame_ptr as u32 as usize;
        let bad_alloc =
            |_| PluginError::BadOutput("pixmesh_alloc returned memory outside the plugin".into());
        memory.write(&mut store, at, &header).map_err(bad_alloc)?;
        memory
            .write(&mut store, at + HEADER_LEN, &frame.pixels)
            .map_err(bad_alloc)?;
        let (params_ptr, params_len) = if params_text.is_empty() {
            (0, 0)
        } else {
            let len = params_text.len() as i32;
            let p = alloc.call(&mut store, len).map_err(|e| self.classify(e))?;
            if p == 0 {
                return Err(PluginError::Failed(
                    "pixmesh_alloc for params returned 0".into(),
                ));
            }
            memory
                .write(&mut store, p as u32 as usize, params_text.as_bytes())
                .map_err(bad_alloc)?;
            (p, len)
        };

        let result = transform
            .call(
                &mut store,
                (frame_ptr, frame_len_i32, params_ptr, params_len),
            )
            .map_err(|e| self.classify(e))?;
        if result < 0 {
            return Err(PluginError::Failed(
                self.error_message(plugin, &instance, &mut store),
            ));
        }
        let (ptr, len) = (
            (result >> 32) as u32 as usize,
            (result & 0xFFFF_FFFF) as usize,
        );
        let data = memory.data(&store);
        let out = ptr
            .checked_add(len)
            .and_then(|end| data.get(ptr..end))
            .ok_or_else(|| {
                PluginError::BadOutput(format!(
                    "output at {ptr}+{len} lies outside the plugin's {} bytes of memory",
                    data.len()
                ))
            })?;
        parse_frame(out, max_pixels, frame.pixels)
    }

    fn error_message(
        &self,
        plugin: &Plugin,
        instance: &wasmtime::Instance,
        store: &mut Store<CallState>,
    ) -> String {
        let fallback = "the plugin failed without a message".to_owned();
        if !plugin.has_error_export {
            return fallback;
        }
        let Ok(f) = instance.get_typed_func::<(), i64>(&mut *store, "pixmesh_error") else {
            return fallback;
        };
        let Ok(r) = f.call(&mut *store, ()) else {
            return fallback;
        };
        let (ptr, len) = (
            (r >> 32) as u32 as usize,
            ((r & 0xFFFF_FFFF) as usize).min(MAX_ERROR_MESSAGE),
        );
        let Some(mem) = instance.get_memory(&mut *store, "memory") else {
            return fallback;
        };
        match ptr
            .checked_add(len)
            .and_then(|end| mem.data(&*store).get(ptr..end))
        {
            Some(bytes) if !bytes.is_empty() => String::from_utf8_lossy(bytes).into_owned(),
            _ => fallback,
        }
    }
}

/// Check a plugin's output frame before trusting it, and copy its pixels
/// into `reuse` (the input's buffer, already the right size when the plugin
/// kept the dimensions).
fn parse_frame(out: &[u8], max_pixels: u64, mut reuse: Vec<u8>) -> Result<RgbaFrame, PluginError> {
    let bad = |m: String| Err(PluginError::BadOutput(m));
    if out.len() < HEADER_LEN {
        return bad(format!(
            "{} bytes is shorter than the 16-byte header",
            out.len()
        ));
    }
    if &out[0..4] != b"PXF1" {
        return bad("magic is not PXF1".into());
    }
    let word = |i: usize| u32::from_le_bytes([out[i], out[i + 1], out[i + 2], out[i + 3]]);
    let (width, height, channels) = (word(4), word(8), word(12));
    if channels != 4 {
        return bad(format!("channels is {channels}, must be 4"));
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels == 0 {
        return bad(format!("{width}x{height} has no pixels"));
    }
    if pixels > max_pixels {
        return bad(format!(
            "{width}x{height} is over the limit of {max_pixels} pixels"
        ));
    }
    let want = HEADER_LEN as u64 + pixels * 4;
    if out.len() as u64 != want {
        return bad(format!(
            "length {} does not match {width}x{height}x4 + 16 = {want}",
            out.len()
        ));
    }
    reuse.clear();
    reuse.extend_from_slice(&out[HEADER_LEN..]);
    Ok(RgbaFrame {
        width,
        height,
        pixels: reuse,
    })
}

fn signature(f: &FuncType) -> String {
    let list = |v: Vec<String>| v.join(", ");
    let params = list(f.params().map(|t| t.to_string()).collect());
    let results = list(f.results().map(|t| t.to_string()).collect());
    format!("({params}) -> ({results})")
}

fn matches(f: &FuncType, params: &[ValType], results: &[ValType]) -> bool {
    f.params().len() == params.len()
        && f.results().len() == results.len()
        && f.params().zip(params).all(|(a, b)| ValType::eq(&a, b))
        && f.results().zip(results).all(|(a, b)| ValType::eq(&a, b))
}

/// Check imports and exports against ABI v1. Returns whether `pixmesh_error` exists.
fn check_interface(module: &Module) -> Result<bool, PluginError> {
    use ValType::{I32, I64};
    for import in module.imports() {
        let ok = import.module() == "pixmesh"
            && import.name() == "log"
            && matches!(import.ty(), ExternType::Func(f) if matches(&f, &[I32, I32, I32], &[]));
        if !ok {
            return Err(PluginError::Invalid(format!(
                "imports `{}.{}`; the only import allowed is `pixmesh.log(i32, i32, i32)` \
                 (plugins get no WASI, filesystem, network, clock or randomness)",
                import.module(),
                import.name()
            )));
        }
    }
    let required: [(&str, &[ValType], &[ValType]); 3] = [
        ("pixmesh_abi_version", &[], &[I32]),
        ("pixmesh_alloc", &[I32], &[I32]),
        ("pixmesh_transform", &[I32, I32, I32, I32], &[I64]),
    ];
    let exports: BTreeMap<&str, ExternType> =
        module.exports().map(|e| (e.name(), e.ty())).collect();
    match exports.get("memory") {
        Some(ExternType::Memory(m)) if !m.is_64() => {}
        Some(_) => {
            return Err(PluginError::Invalid(
                "export `memory` is not a 32-bit memory".into(),
            ));
        }
        None => return Err(PluginError::Invalid("missing export `memory`".into())),
    }
    for (name, params, results) in required {
        let want = FuncType::new(
            module.engine(),
            params.iter().cloned(),
            results.iter().cloned(),
        );
        match exports.get(name) {
            Some(ExternType::Func(f)) if matches(f, params, results) => {}
            Some(ExternType::Func(f)) => {
                return Err(PluginError::Invalid(format!(
                    "export `{name}` has type {}, expected {}",
                    signature(f),
                    signature(&want)
                )));
            }
            _ => {
                return Err(PluginError::Invalid(format!(
                    "missing export `{name}` {}",
                    signature(&want)
                )));
            }
        }
    }
    match exports.get("pixmesh_error") {
        None => Ok(false),
        Some(ExternType::Func(f)) if matches(f, &[], &[I64]) => Ok(true),
        Some(_) => Err(PluginError::Invalid(
            "export `pixmesh_error` must be () -> i64".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_frames_are_checked() {
        let mut ok = b"PXF1".to_vec();
        for v in [1u32, 1, 4] {
            ok.extend_from_slice(&v.to_le_bytes());
        }
        ok.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(
            parse_frame(&ok, 10, vec![9; 4]).map(|f| f.pixels),
            Ok(vec![1, 2, 3, 4])
        );
        assert!(
            parse_frame(&ok[..19], 10, Vec::new()).is_err(),
            "length mismatch"
        );
        assert!(parse_frame(&ok, 0, Vec::new()).is_err(), "pixel limit");
        let mut bad = ok.clone();
        bad[0] = b'X';
        assert!(parse_frame(&bad, 10, Vec::new()).is_err(), "magic");
        let mut bad = ok.clone();
        bad[12] = 3;
        assert!(parse_frame(&bad, 10, Vec::new()).is_err(), "channels");
    }
}
