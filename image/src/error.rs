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
    #[error("{path}: not a usable ELF file: {problem}")]
    Elf { path: PathBuf, problem: String },
    #[error(
        "{name}, needed by {needed_by}, is in none of the packages {packages} (looked in {dirs}): add the \
         Debian package that ships it (`apt-file search {name}`) to the list"
    )]
    Unresolved {
        name: String,
        needed_by: String,
        packages: String,
        dirs: String,
    },
    #[error("{path}: built for {found}, the image is {want}")]
    WrongMachine {
        path: PathBuf,
        found: String,
        want: &'static str,
    },
    #[error("{path} is not in the packages {packages}{detail}")]
    NotInPackages {
        path: String,
        packages: String,
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
