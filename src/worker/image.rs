//! What a node hands every worker, read-only: the startup snapshot and the
//! shared code cache (`engine::code_cache`), in one sealed memfd that each
//! worker maps, so their pages are shared by every worker through the page
//! cache and no worker can change them for another.
//!
//! Layout: the snapshot, zeros to the next multiple of 8 (V8 reads a code
//! cache in place only when it is aligned, and copies it otherwise), the
//! code cache, then a trailer of their lengths (u64 little endian each) and
//! `WTIMAGE1`.

use std::os::fd::OwnedFd;

use anyhow::Context as _;

const MAGIC: &[u8; 8] = b"WTIMAGE1";
const TRAILER: usize = 8 + 8 + MAGIC.len();

/// A mapped image.
pub struct Image {
    pub snapshot: &'static [u8],
    /// Empty when the node has none.
    pub code_cache: &'static [u8],
}

/// `snapshot` and `code_cache` as an image in a sealed memfd.
pub fn create(snapshot: &[u8], code_cache: &[u8]) -> std::io::Result<OwnedFd> {
    use nix::fcntl::{FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MFdFlags};
    use std::io::Write;
    let fd = memfd_create("webtask-image", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
    let mut file = std::io::BufWriter::new(std::fs::File::from(fd));
    file.write_all(snapshot)?;
    file.write_all(&[0; 8][..padding(snapshot.len())])?;
    file.write_all(code_cache)?;
    file.write_all(&(snapshot.len() as u64).to_le_bytes())?;
    file.write_all(&(code_cache.len() as u64).to_le_bytes())?;
    file.write_all(MAGIC)?;
    let file = file.into_inner().map_err(|e| e.into_error())?;
    let seals = SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_SEAL;
    nix::fcntl::fcntl(&file, FcntlArg::F_ADD_SEALS(seals))?;
    Ok(OwnedFd::from(file))
}

/// Maps the image in `fd` for the life of the process.
pub fn map(fd: OwnedFd) -> anyhow::Result<Image> {
    let len = nix::sys::stat::fstat(&fd).context("fstat image")?.st_size as usize;
    let len = std::num::NonZeroUsize::new(len).context("empty image")?;
    // SAFETY: a read-only shared mapping of the memfd the node sealed
    // against writes, growing and shrinking, so its bytes never change.
    let ptr = unsafe {
        nix::sys::mman::mmap(None, len, nix::sys::mman::ProtFlags::PROT_READ, nix::sys::mman::MapFlags::MAP_SHARED, &fd, 0)
    }
    .context("mmap image")?;
    // SAFETY: the mapping is never unmapped.
    split(unsafe { std::slice::from_raw_parts(ptr.as_ptr() as *const u8, len.get()) })
}

/// Zeros after a snapshot of `snapshot` bytes (0..=7; 0 if the length
/// could not be padded, which [`split`] then refuses).
fn padding(snapshot: usize) -> usize {
    snapshot.checked_next_multiple_of(8).map_or(0, |end| end - snapshot)
}

fn split(image: &'static [u8]) -> anyhow::Result<Image> {
    let body = image.len().checked_sub(TRAILER).context("image too short")?;
    let trailer = &image[body..];
    anyhow::ensure!(&trailer[16..] == MAGIC, "not a webtask image");
    let word = |at: usize| u64::from_le_bytes(trailer[at..at + 8].try_into().expect("8 bytes")) as usize;
    let (snapshot, cache) = (word(0), word(8));
    let cache_at = snapshot.checked_add(padding(snapshot)).context("image lengths overflow")?;
    anyhow::ensure!(cache_at.checked_add(cache) == Some(body), "image lengths do not add up");
    Ok(Image { snapshot: &image[..snapshot], code_cache: &image[cache_at..body] })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_maps_back_to_its_parts_and_a_broken_one_is_refused() {
        let image = map(create(b"snap", b"cache").unwrap()).unwrap();
        assert_eq!((image.snapshot, image.code_cache), (&b"snap"[..], &b"cache"[..]));
        assert_eq!(image.code_cache.as_ptr() as usize % 8, 0, "the cache starts aligned");
        let empty = map(create(b"snap", b"").unwrap()).unwrap();
        assert_eq!((empty.snapshot, empty.code_cache), (&b"snap"[..], &b""[..]));
        let leak = |v: Vec<u8>| -> &'static [u8] { Box::leak(v.into_boxed_slice()) };
        let mut bad = b"snap\0\0\0\0cache".to_vec();
        bad.extend_from_slice(&4u64.to_le_bytes());
        bad.extend_from_slice(&6u64.to_le_bytes());
        bad.extend_from_slice(MAGIC);
        assert!(split(leak(bad)).is_err(), "lengths past the body");
        assert!(split(leak(b"short".to_vec())).is_err());
    }
}
