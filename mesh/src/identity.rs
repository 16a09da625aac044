//! A node's persistent identity: an ed25519 key in its data directory.
//!
//! The key file holds the keypair in libp2p's protobuf encoding and is
//! created with mode 0600; the peer id derived from it is the node's name in
//! the coordinator's node table, so it must survive restarts.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use anyhow::{Context, Result};
pub use libp2p::identity::Keypair;

/// Load the key at `path`, creating a new one there if there is none.
pub fn load_or_create(path: &Path) -> Result<Keypair> {
    match std::fs::read(path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes)
            .with_context(|| format!("{} is not a libp2p key file", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            let key = Keypair::generate_ed25519();
            let bytes = key
                .to_protobuf_encoding()
                .context("cannot encode the new key")?;
            create_private(path, &bytes)?;
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Create `path` with `bytes`, readable by the owner only (mode 0600), and
/// sync it. Fails if the file exists: secrets are never overwritten.
pub fn create_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identity_survives_a_restart_and_the_file_is_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub").join("identity.key");
        let first = load_or_create(&path).expect("create");
        let again = load_or_create(&path).expect("load");
        assert_eq!(first.public().to_peer_id(), again.public().to_peer_id());
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, b"garbage").expect("write");
        let err = load_or_create(&path).expect_err("garbage is not a key");
        assert!(
            format!("{err:#}").contains("not a libp2p key file"),
            "{err:#}"
        );
    }
}
