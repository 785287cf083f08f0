//! The bundled config-space corpus: 91 real images in `devices/` with their
//! provenance in `devices/index.toml`.

use std::path::PathBuf;

use crate::function::{ImageError, SimFunction};

/// One corpus entry, as listed in `devices/index.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorpusEntry {
    /// File name of the image in the devices directory.
    pub file: String,
    /// One-line description.
    pub description: String,
}

/// Absolute path of the bundled `devices/` directory.
pub fn devices_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("devices")
}

fn unquote(value: &str) -> String {
    value.trim().trim_matches('"').to_string()
}

/// Parses the `file` and `description` keys of every `[[device]]` table of
/// `devices/index.toml` (a line-oriented reader: no TOML dependency). Returns an empty
/// list if the index cannot be read.
pub fn entries() -> Vec<CorpusEntry> {
    let text = std::fs::read_to_string(devices_dir().join("index.toml")).unwrap_or_default();
    let mut out: Vec<CorpusEntry> = Vec::new();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("file = ") {
            out.push(CorpusEntry {
                file: unquote(v),
                description: String::new(),
            });
        } else if let Some(v) = line.strip_prefix("description = ") {
            if let Some(last) = out.last_mut() {
                last.description = unquote(v);
            }
        }
    }
    out
}

/// Reads image `file` from the devices directory (`None` when unreadable or when `file`
/// is not a plain file name).
pub fn image(file: &str) -> Option<Vec<u8>> {
    if file.contains('/') || file.contains('\\') || file.starts_with('.') {
        return None;
    }
    std::fs::read(devices_dir().join(file)).ok()
}

/// Why a corpus image could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadError {
    /// The file is missing or unreadable.
    Missing(String),
    /// The image was refused.
    Image(ImageError),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Missing(file) => write!(f, "corpus image {file} not found"),
            LoadError::Image(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for LoadError {}

/// Loads corpus image `file` as a [`SimFunction`].
///
/// # Errors
/// [`LoadError::Missing`], or the [`ImageError`] of [`SimFunction::from_image`].
pub fn load(file: &str) -> Result<SimFunction, LoadError> {
    let bytes = image(file).ok_or_else(|| LoadError::Missing(file.to_string()))?;
    SimFunction::from_image(&bytes).map_err(LoadError::Image)
}
