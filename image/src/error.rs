use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}){detail}")]
    Tool {
        command: String,
        status: String,
        detail: String,
    },
    #[error("missing tools: {0}")]
    MissingTools(String),
    #[error("{0}")]
    Input(String),
}

impl ImageError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        ImageError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

pub type Result<T, E = ImageError> = std::result::Result<T, E>;
