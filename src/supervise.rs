//! `pipeline __supervise -- PROG ARGS...`: the process a `command` stage's shell runs under,
//! so that nothing the command starts outlives the stage.
//!
//! A process group and an environment token (see `stages::command`) catch most of what a
//! command leaves behind, but not a process that does both `setsid` and `env -i` (a daemon
//! that double-forks does the first; a clean-environment wrapper the second). Such a process
//! could keep an open file of `$OUT` and write into the store after the commit. The
//! supervisor makes itself a **child subreaper** (Linux `PR_SET_CHILD_SUBREAPER`): every
//! orphan among its descendants is re-parented to it instead of to init, so after the shell
//! exits it finds all of them as its own children, kills them, and reaps them before it
//! exits with the shell's status. On SIGTERM/SIGINT/SIGHUP it passes SIGTERM to every
//! descendant and SIGKILLs them after [`GRACE`].
//!
//! Linux only; elsewhere the stage runs its shell directly (the group and token remain).

use std::ffi::OsString;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// The orchestrator's pid, set in the supervisor's environment: a supervisor whose parent is
/// another process by the time it has asked to die with its parent found it dead.
pub const PARENT_VAR: &str = "PIPELINE_SUPERVISOR_PARENT";

/// The hidden first argument that selects the supervisor (not a clap subcommand: it must
/// start before anything else, and never be listed).
pub const ARG: &str = "__supervise";

/// Between the SIGTERM it forwards and the SIGKILL: shorter than the orchestrator's own
/// grace (`stages::command`, 3 s), so the supervisor has cleaned up before the orchestrator
/// escalates.
pub const GRACE: Duration = Duration::from_secs(2);

/// How long it keeps killing descendants after the shell exited before it gives up (a
/// process in uninterruptible sleep cannot die); it then exits with [`STUCK_EXIT`].
const KILL_BUDGET: Duration = Duration::from_secs(8);
pub const STUCK_EXIT: i32 = 125;

static SIGNALLED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNALLED.store(sig, Ordering::SeqCst);
}

/// Run `args` (program and arguments) supervised; returns the exit code for the process, or
/// does not return (re-raises the signal that killed the child, so the orchestrator's
/// message says "killed by signal N").
pub fn main(args: &[OsString]) -> i32 {
    let Some((prog, rest)) = args.split_first() else {
        eprintln!("pipeline {ARG}: nothing to run");
        return 127;
    };
    #[cfg(target_os = "linux")]
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::signal(sig, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t);
        }
        // The orchestrator killed (SIGKILL, OOM) must not leave the command running for hours
        // (found by a hostile pass): its death is a SIGTERM here, handled as any other. The
        // parent is the thread that spawned us and waits for us for our whole life.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0);
        // Dead already, before the line above took effect: we were re-parented.
        let expected = std::env::var(PARENT_VAR).ok().and_then(|v| v.parse::<i32>().ok());
        if expected.is_some_and(|p| p != libc::getppid()) {
            eprintln!("pipeline {ARG}: the pipeline that started this command has exited; not running it");
            return 130;
        }
    }
    let child = match std::process::Command::new(prog).args(rest).env_remove(PARENT_VAR).spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pipeline {ARG}: cannot start {}: {e}", prog.to_string_lossy());
            return 127;
        }
    };
    let main_pid = child.id() as i32;
    // Reap everything ourselves (std's Child would only wait for its own pid).
    std::mem::forget(child);
    let me = std::process::id() as i32;
    let mut status: Option<i32> = None;
    let mut term_sent: Option<Instant> = None;
    let mut killed_after: Option<Instant> = None;
    loop {
        // Reap whatever has exited: the shell, and orphans re-parented to us.
        loop {
            let mut st = 0;
            let pid = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
            if pid <= 0 {
                if pid < 0 && status.is_some() {
                    // ECHILD: no children left at all.
                    return finish(status.unwrap_or(0));
                }
                break;
            }
            if pid == main_pid {
                status = Some(st);
            }
        }
        let sig = SIGNALLED.load(Ordering::SeqCst);
        if sig != 0 && term_sent.is_none() {
            signal_all(me, libc::SIGTERM);
            term_sent = Some(Instant::now());
        }
        if status.is_some() || term_sent.is_some_and(|t| t.elapsed() >= GRACE) {
            let t0 = *killed_after.get_or_insert_with(Instant::now);
            signal_all(me, libc::SIGKILL);
            if t0.elapsed() > KILL_BUDGET {
                eprintln!("pipeline {ARG}: processes the command started would not die within {} s of SIGKILL", KILL_BUDGET.as_secs());
                return STUCK_EXIT;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The exit code for the shell's wait status (or the same death by signal).
fn finish(st: i32) -> i32 {
    if libc::WIFEXITED(st) {
        return libc::WEXITSTATUS(st);
    }
    if libc::WIFSIGNALED(st) {
        let sig = libc::WTERMSIG(st);
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
        return 128 + sig;
    }
    1
}

/// Send `sig` to every live descendant of `root` (found through /proc's parent links).
fn signal_all(root: i32, sig: i32) {
    for pid in descendants(root) {
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// One live (not zombie) process, as /proc lists it.
pub struct ProcInfo {
    pub pid: i32,
    pub ppid: i32,
    pub pgrp: i32,
}

/// Every live (not zombie) process, from /proc (empty where there is no /proc). A killed
/// process stays a zombie until its parent reaps it, and `kill(pid, 0)` counts zombies: this
/// does not.
pub fn live_processes() -> Vec<ProcInfo> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else { return out };
    for d in rd.flatten() {
        let name = d.file_name();
        let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())).and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
        let mut f = rest.split_whitespace();
        let state = f.next().unwrap_or("");
        if state == "Z" || state == "X" {
            continue;
        }
        let Some(ppid) = f.next().and_then(|x| x.parse::<i32>().ok()) else { continue };
        let pgrp = f.next().and_then(|x| x.parse().ok()).unwrap_or(0);
        out.push(ProcInfo { pid, ppid, pgrp });
    }
    out
}

/// The live (not zombie) descendants of `root`, children before grandchildren.
pub fn descendants(root: i32) -> Vec<i32> {
    let procs = live_processes();
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for c in &procs {
            if c.ppid == p && c.pid != root && !out.contains(&c.pid) {
                out.push(c.pid);
                frontier.push(c.pid);
            }
        }
    }
    out
}

/// The supervisor binary to run a stage's shell under: this executable when it is the
/// `pipeline` CLI (a test harness or another program embedding the library is not), or
/// `PIPELINE_SUPERVISOR` when set (`off`: none). `None`: run the shell directly.
pub fn binary() -> Option<std::path::PathBuf> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    if let Some(p) = std::env::var_os("PIPELINE_SUPERVISOR").filter(|p| !p.is_empty()) {
        return (p != "off").then(|| p.into());
    }
    let exe = std::env::current_exe().ok()?;
    (exe.file_name()? == "pipeline").then_some(exe)
}
