//! CPU time of the processes a run watches, so that a profile says where its cores went: the
//! functions by pid (`--watch NAME=PID`), the servers by program name (`--cpu NAME`: every
//! process of that name, so PostgreSQL's backends count with their postmaster).
//!
//! Read from `/proc/<pid>/stat` (user and system time) before the first command and after the
//! last outcome; a process that exits in between takes its time with it.

use std::collections::{BTreeMap, HashMap};

/// CPU seconds used so far by each watched process, and by each process of each watched program.
#[derive(Debug)]
pub struct Sample {
    watched: BTreeMap<String, Option<f64>>,
    programs: BTreeMap<String, HashMap<u32, f64>>,
}

pub fn sample(watch: &[(String, u32)], programs: &[String]) -> Sample {
    let watched = watch
        .iter()
        .map(|(name, pid)| (name.clone(), cpu_seconds(*pid)))
        .collect();
    let pids: Vec<u32> = if programs.is_empty() {
        Vec::new()
    } else {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect()
    };
    let programs = programs
        .iter()
        .map(|program| {
            let processes = pids
                .iter()
                .filter(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|comm| comm.trim_end() == program)
                })
                .filter_map(|pid| Some((*pid, cpu_seconds(*pid)?)))
                .collect();
            (program.clone(), processes)
        })
        .collect();
    Sample { watched, programs }
}

/// What each used between two samples, seconds. A program's is summed process by process (one
/// that started in between counts whole), so that processes of it that exited in between (the
/// backends of other clients of a shared PostgreSQL) do not take time off the others'.
pub fn used(before: &Sample, after: &Sample) -> BTreeMap<String, Option<f64>> {
    let watched = after.watched.iter().map(|(name, a)| {
        let b = before.watched.get(name).copied().flatten();
        (name.clone(), a.zip(b).map(|(a, b)| (a - b).max(0.0)))
    });
    let programs = after.programs.iter().map(|(name, processes)| {
        let earlier = before.programs.get(name);
        let total = processes
            .iter()
            .map(|(pid, a)| {
                let b = earlier.and_then(|e| e.get(pid)).copied().unwrap_or(0.0);
                (a - b).max(0.0)
            })
            .sum();
        (name.clone(), Some(total))
    });
    watched.chain(programs).collect()
}

/// User plus system time of one process, seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces, so after its closing parenthesis):
    // state is the first, utime the 12th, stime the 13th (proc(5) numbers them 3, 14, 15).
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / ticks_per_second())
}

fn ticks_per_second() -> f64 {
    use nix::unistd::{SysconfVar, sysconf};
    match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(ticks)) if ticks > 0 => ticks as f64,
        _ => 100.0, // Linux's USER_HZ
    }
}
