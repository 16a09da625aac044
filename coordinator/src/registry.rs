//! The local plugin registry: `pixmesh plugin add | list | remove`.
//!
//! Layout under the pixmesh home (`--home`, `$PIXMESH_HOME`, else
//! `$XDG_DATA_HOME/pixmesh` or `~/.local/share/pixmesh`):
//!
//! ```text
//! plugins/<blake3>.wasm   the module bytes, named by their hash
//! plugins/names.json      {"sepia": "<blake3>", ...}
//! cache/                  compiled code, written only by this host
//! ```
//!
//! A module is validated (interface, ABI version, dry run) before it is
//! stored, so a broken plugin never reaches a job.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use pixmesh_agent::pipeline::PluginSet;
use pixmesh_agent::sandbox::{PluginHost, SandboxConfig};
use pixmesh_protocol::spec::{is_plugin_hash, is_valid_plugin_name};
use pixmesh_protocol::{JobSpec, PluginRef, Step};

/// The pixmesh home directory to use.
pub fn home(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("PIXMESH_HOME") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(p).join("pixmesh");
    }
    let base = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    base.join(".local/share/pixmesh")
}

/// The registry in one home directory.
#[derive(Debug)]
pub struct Registry {
    dir: PathBuf,
    cache: PathBuf,
}

/// One registered plugin.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Entry {
    /// Names pointing at it.
    pub names: Vec<String>,
    /// BLAKE3 of the bytes.
    pub hash: String,
    /// Module size.
    pub bytes: u64,
}

impl Registry {
    /// Open (and create) the registry under `home`.
    pub fn open(home: &Path) -> Result<Registry> {
        let dir = home.join("plugins");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Registry {
            dir,
            cache: home.join("cache"),
        })
    }

    /// Sandbox settings with this registry's compiled-code cache.
    pub fn sandbox_config(&self, base: SandboxConfig) -> SandboxConfig {
        SandboxConfig {
            cache_dir: Some(self.cache.clone()),
            ..base
        }
    }

    fn names_path(&self) -> PathBuf {
        self.dir.join("names.json")
    }

    fn names(&self) -> Result<BTreeMap<String, String>> {
        match std::fs::read_to_string(self.names_path()) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("{} is corrupt", self.names_path().display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(e).context("cannot read the plugin names"),
        }
    }

    fn save_names(&self, names: &BTreeMap<String, String>) -> Result<()> {
        let text = serde_json::to_string_pretty(names)?;
        crate::local::write_atomically(&self.names_path(), text.as_bytes())
            .context("cannot save the plugin names")
    }

    fn module_path(&self, hash: &str) -> PathBuf {
        self.dir.join(format!("{hash}.wasm"))
    }

    /// Validate and store a module under `name`. Returns its hash.
    pub fn add(&self, host: &PluginHost, wasm: &[u8], name: &str) -> Result<String> {
        if !is_valid_plugin_name(name) {
            bail!(
                "plugin name must be 1-64 characters of A-Z a-z 0-9 . _ - (and not a hash), got {name:?}"
            );
        }
        let plugin = host.load(wasm)?;
        let hash = plugin.hash().to_owned();
        crate::local::write_atomically(&self.module_path(&hash), wasm)
            .context("cannot store the plugin")?;
        let mut names = self.names()?;
        names.insert(name.to_owned(), hash.clone());
        self.save_names(&names)?;
        Ok(hash)
    }

    /// Every stored plugin with its names.
    pub fn list(&self) -> Result<Vec<Entry>> {
        let names = self.names()?;
        let mut entries = Vec::new();
        for item in std::fs::read_dir(&self.dir)? {
            let path = item?.path();
            let Some(hash) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".wasm"))
            else {
                continue;
            };
            let hash = hash.to_owned();
            let bytes = std::fs::metadata(&path)?.len();
            let names = names
                .iter()
                .filter(|(_, h)| **h == hash)
                .map(|(n, _)| n.clone())
                .collect();
            entries.push(Entry { names, hash, bytes });
        }
        entries.sort_by(|a, b| a.names.cmp(&b.names).then(a.hash.cmp(&b.hash)));
        Ok(entries)
    }

    /// Remove a name, or a hash with all its names. The module file goes
    /// when no name points at it any more.
    pub fn remove(&self, what: &str) -> Result<Vec<String>> {
        let mut names = self.names()?;
        let hash = if is_plugin_hash(what) {
            what.to_owned()
        } else {
            names
                .get(what)
                .cloned()
                .with_context(|| format!("no plugin named {what:?}"))?
        };
        let removed: Vec<String> = if is_plugin_hash(what) {
            let gone: Vec<String> = names
                .iter()
                .filter(|(_, h)| **h == hash)
                .map(|(n, _)| n.clone())
                .collect();
            if gone.is_empty() && !self.module_path(&hash).exists() {
                bail!("no plugin with hash {hash}");
            }
            gone
        } else {
            vec![what.to_owned()]
        };
        for n in &removed {
            names.remove(n);
        }
        self.save_names(&names)?;
        if !names.values().any(|h| *h == hash) {
            let _ = std::fs::remove_file(self.module_path(&hash));
        }
        Ok(removed)
    }

    /// Load every plugin a spec names into a [`PluginSet`]. Errors name the step.
    pub fn resolve(&self, spec: &JobSpec, host: Arc<PluginHost>) -> Result<PluginSet> {
        let names = self.names()?;
        let mut set = PluginSet::new(host.clone());
        for (i, step) in spec.steps.iter().enumerate() {
            let Step::Plugin(p) = step else { continue };
            let hash = match &p.plugin {
                PluginRef::Hash(h) => h.clone(),
                PluginRef::Name(n) => names.get(n).cloned().with_context(|| {
                    format!(
                        "step {} (plugin): no plugin named `{n}` (add it with `pixmesh plugin add FILE --name {n}`)",
                        i + 1
                    )
                })?,
            };
            let wasm = std::fs::read(self.module_path(&hash)).with_context(|| {
                format!(
                    "step {} (plugin): plugin {hash} is not in the registry",
                    i + 1
                )
            })?;
            let plugin = host
                .load(&wasm)
                .with_context(|| format!("step {} (plugin): cannot load `{}`", i + 1, p.plugin))?;
            set.insert(p.plugin.clone(), Arc::new(plugin));
        }
        Ok(set)
    }
}
