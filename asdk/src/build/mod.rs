//! `asdk build`: turns a static binary, a C source file or a Cargo project into an image.

mod cargo;
mod musl;
mod progress;

use std::path::{Path, PathBuf};

pub use cargo::TARGET;
pub use musl::{find_or_install as find_or_install_musl_gcc, MUSL_GCC_ENV};
pub use progress::Progress;

use crate::elf::{self, ElfError, StaticExecutable};
use crate::image::{assemble, BuiltImage};
use crate::reference::{sanitize_name, Reference};
use crate::spec::{Spec, SpecError, SpecFile};
use crate::store::{Store, StoreError};

/// Name of the spec file looked up next to what is built.
pub const SPEC_FILE_NAME: &str = "arrow.toml";

/// A build failure; nothing has been written to the store.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// Path involved.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The path is neither a file nor a Cargo project.
    #[error("{path}: {message}")]
    Source {
        /// What was given.
        path: PathBuf,
        /// What to give instead.
        message: String,
    },
    /// Binary rejected.
    #[error(transparent)]
    Elf(#[from] ElfError),
    /// Spec rejected.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A tool is missing and could not be installed.
    #[error("{tool} is needed: {message}")]
    MissingTool {
        /// The tool.
        tool: String,
        /// What to do.
        message: String,
    },
    /// A tool could not be started.
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// Command line.
        command: String,
        /// The error.
        source: std::io::Error,
    },
    /// A tool failed.
    #[error("{what} failed ({status}): `{command}`\n{output}")]
    CommandFailed {
        /// Step name.
        what: String,
        /// Command line.
        command: String,
        /// Exit status.
        status: String,
        /// End of its output (when captured).
        output: String,
    },
    /// Cargo built something unusable.
    #[error("Cargo project {dir}: {message}")]
    Cargo {
        /// Project directory.
        dir: PathBuf,
        /// What to do.
        message: String,
    },
    /// Writing to the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What `asdk build` was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A prebuilt executable (checked, not modified).
    Binary(PathBuf),
    /// A C source file, compiled with `musl-gcc -static`.
    C(PathBuf),
    /// A Cargo project directory, built with crt-static.
    Cargo(PathBuf),
}

impl Source {
    /// Classifies `path`: a directory with `Cargo.toml`, a `.c` file, or any other file.
    pub fn detect(path: &Path) -> Result<Self, BuildError> {
        let meta = std::fs::metadata(path).map_err(|e| BuildError::Io {
            path: path.to_owned(),
            source: e,
        })?;
        if meta.is_dir() {
            if path.join("Cargo.toml").is_file() {
                return Ok(Source::Cargo(path.to_owned()));
            }
            return Err(BuildError::Source {
                path: path.to_owned(),
                message: "is a directory without Cargo.toml: give a Cargo project directory, a static binary or a .c file".into(),
            });
        }
        if path.extension().is_some_and(|e| e == "c") {
            return Ok(Source::C(path.to_owned()));
        }
        Ok(Source::Binary(path.to_owned()))
    }

    fn default_spec_path(&self) -> Option<PathBuf> {
        let dir = match self {
            Source::Cargo(d) => d.clone(),
            Source::Binary(f) | Source::C(f) => f.parent()?.to_owned(),
        };
        Some(dir.join(SPEC_FILE_NAME)).filter(|p| p.is_file())
    }
}

/// Options of one build.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Spec file; default: `arrow.toml` in the project directory or next to the file, if any.
    pub spec_file: Option<PathBuf>,
    /// Cargo binary target to package when the project has several.
    pub bin: Option<String>,
    /// Progress display.
    pub progress: Progress,
}

/// The result of [`build`]: the image (not yet stored) and what was learnt on the way.
#[derive(Debug)]
pub struct Built {
    /// The assembled image.
    pub image: BuiltImage,
    /// ELF facts about the packaged binary.
    pub executable: StaticExecutable,
    /// The spec file used, if any.
    pub spec_file: Option<PathBuf>,
}

/// Builds (if needed), checks and packages `path`. Writes nothing to any store.
pub fn build(path: &Path, opts: &BuildOptions) -> Result<Built, BuildError> {
    let source = Source::detect(path)?;
    let spec_file_path = opts
        .spec_file
        .clone()
        .or_else(|| source.default_spec_path());
    // Parse the spec before a long compile so that typos fail fast.
    let spec_file = match &spec_file_path {
        Some(p) => {
            opts.progress.step(&format!("using spec {}", p.display()));
            SpecFile::load(p)?
        }
        None => SpecFile::default(),
    };
    let (bytes, origin, default_name, default_version) = match &source {
        Source::Binary(p) => {
            let (bytes, _) = elf::check_file(p)?;
            (bytes, p.clone(), stem(p), "0.0.0".to_owned())
        }
        Source::C(p) => (
            musl::compile(p, &opts.progress)?,
            p.clone(),
            stem(p),
            "0.0.0".to_owned(),
        ),
        Source::Cargo(d) => {
            let b = cargo::build(d, opts.bin.as_deref(), &opts.progress)?;
            (b.bytes, b.path, sanitize_name(&b.name), b.version)
        }
    };
    let executable = elf::check_bytes(&bytes, &origin)?;
    let base_dir = spec_file_path
        .as_deref()
        .and_then(Path::parent)
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."));
    let (spec, files) = Spec::resolve(&spec_file, &default_name, &default_version, &base_dir)?;
    opts.progress.step(&format!(
        "packaging {} ({} bytes, {:?}) as image {}",
        origin.display(),
        bytes.len(),
        executable.kind,
        spec.name
    ));
    let image = assemble(&bytes, &spec, &files).map_err(|e| BuildError::Source {
        path: origin.clone(),
        message: format!("cannot package it: {e}"),
    })?;
    Ok(Built {
        image,
        executable,
        spec_file: spec_file_path,
    })
}

/// Builds `path` and stores the image under `refs` (default: `<spec name>:latest`).
pub fn build_into(
    store: &Store,
    path: &Path,
    opts: &BuildOptions,
    refs: &[Reference],
) -> Result<(Built, Vec<Reference>), BuildError> {
    let built = build(path, opts)?;
    let refs = if refs.is_empty() {
        vec![
            Reference::new(&built.image.spec.name, crate::reference::DEFAULT_TAG)
                .map_err(StoreError::from)?,
        ]
    } else {
        refs.to_vec()
    };
    store.add(&built.image, &refs)?;
    Ok((built, refs))
}

fn stem(p: &Path) -> String {
    sanitize_name(
        &p.file_stem()
            .map(|s| s.to_string_lossy())
            .unwrap_or_default(),
    )
}
