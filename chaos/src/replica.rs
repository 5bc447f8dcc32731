//! A function's replica: a process the run starts, kills, stops and restarts.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context as _;

/// One process of ours, restarted with the same arguments and environment.
pub(crate) struct Replica {
    pub(crate) name: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Child,
}

impl Replica {
    pub(crate) fn spawn(
        name: &str,
        args: Vec<String>,
        env: Vec<(String, String)>,
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let child = start(name, &args, &env, &log)?;
        Ok(Self {
            name: name.to_owned(),
            args,
            env,
            log,
            child,
        })
    }

    pub(crate) fn restart(&mut self) -> anyhow::Result<()> {
        self.child = start(&self.name, &self.args, &self.env, &self.log)?;
        Ok(())
    }

    pub(crate) fn signal(&mut self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, signal);
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binaries sit next to this one (target/<profile>/).
pub(crate) fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::current_exe()?
        .parent()
        .context("no folder for the binaries")?
        .to_owned();
    let path = dir.join(name);
    anyhow::ensure!(
        path.exists(),
        "{} is missing: cargo build --workspace --bins",
        path.display()
    );
    Ok(path)
}

fn start(
    name: &str,
    args: &[String],
    env: &[(String, String)],
    log: &Path,
) -> anyhow::Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    Ok(Command::new(binary(name)?)
        .args(args)
        .envs(env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()?)
}
