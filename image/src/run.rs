//! The external tools the builder drives (apt, dpkg, kmod, mksquashfs, mkfs, mtools, objcopy, genimage, cargo),
//! behind one small trait so that the pure parts can be tested without them.

use std::process::{Command, Stdio};

use crate::error::{ImageError, Result};

pub trait Runner {
    /// Runs a command to completion; returns its standard output. A non-zero exit is an error that names the
    /// command and ends with the last lines of its standard error.
    fn output(&self, cmd: &mut Command) -> Result<String>;
    /// Runs a command with its output shown to the user (long builds).
    fn status(&self, cmd: &mut Command) -> Result<()>;
}

/// The real thing.
pub struct System;

pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn tail(text: &[u8]) -> String {
    let text = String::from_utf8_lossy(text);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(8);
    if lines.is_empty() {
        String::new()
    } else {
        format!(":\n  {}", lines[start..].join("\n  "))
    }
}

fn failed(cmd: &Command, status: impl ToString, detail: String) -> ImageError {
    ImageError::Tool {
        command: describe(cmd),
        status: status.to_string(),
        detail,
    }
}

impl Runner for System {
    fn output(&self, cmd: &mut Command) -> Result<String> {
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(|e| failed(cmd, e, String::new()))?;
        if !out.status.success() {
            return Err(failed(cmd, out.status, tail(&out.stderr)));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn status(&self, cmd: &mut Command) -> Result<()> {
        let st = cmd
            .stdin(Stdio::null())
            .status()
            .map_err(|e| failed(cmd, e, String::new()))?;
        if !st.success() {
            return Err(failed(cmd, st, String::new()));
        }
        Ok(())
    }
}

/// Checks that every `(tool, Debian package)` is installed; the error lists the missing ones with their
/// packages.
pub fn require(tools: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<String> = tools
        .iter()
        .filter(|(t, _)| !have(t))
        .map(|(t, p)| format!("{t} (package {p})"))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ImageError::MissingTools(format!(
            "{}; scripts/setup.sh installs them",
            missing.join(", ")
        )))
    }
}

/// Is `prog` on PATH (or an existing path)?
pub fn have(prog: &str) -> bool {
    if prog.contains('/') {
        return std::path::Path::new(prog).is_file();
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
}
