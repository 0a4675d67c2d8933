//! `pipeline aggregate FILE --out DIR [options]`: aggregation on its own, for comparing with
//! other tools and for crowds outside a pipeline. Input: crowd-kit style CSV
//! (`worker,task,label`) or an AMT batch-results file (detected by its `WorkerId` and `HITId`
//! columns). Takes every option of the `dawid-skene` stage (method, class prior, tol,
//! max_iter, seed, ...) and of the `amt` stage's class check (`classes`, `on_unknown_label`),
//! with the same defaults. Output: `labels.csv` (`task,label`), `posteriors.csv`
//! (`task,<class>...`) and the stage's report files (`workers.csv`, `worker_matrices.json`,
//! `prior.json`, `loglik.csv`, `report.md` with its plots, `summary.json`).
//!
//! Built for large files: the CSV is read once into memory and split without per-row
//! allocation (see `parse_crowdkit_csv_with`), and the two CSV outputs are formatted in
//! parallel into buffers and written with one `write` per chunk (`pipeline_crowd::report`,
//! the writer the `dawid-skene` stage uses too).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use pipeline_crowd::aggregate::{aggregate as run_method, Method};
use pipeline_crowd::amt::{parse_crowdkit_csv_with, OnUnknownLabel};
use pipeline_crowd::report::{method_line, write_labels, write_posteriors, write_report};
use pipeline_crowd::{parse_amt_batch, AmtOptions};

use crate::stages::dawid_skene::{em_options, DawidSkeneParams, PriorParam};

/// Options of `pipeline aggregate` (defaults = the `dawid-skene` and `amt` stages' defaults).
#[derive(Args, Debug, Clone)]
pub struct AggregateArgs {
    /// A crowd-kit CSV (worker,task,label) or an AMT batch-results file.
    pub file: PathBuf,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// auto (the default: every model fitted, the one that best predicts held-out answers
    /// kept), majority-vote, dawid-skene (classic), one-coin, pooled or shrunk.
    #[arg(long, default_value = "auto")]
    pub method: String,
    /// learned (default, smoothed), uniform, or comma-separated weights, one per class.
    #[arg(long, default_value = "learned")]
    pub class_prior: String,
    /// The class list, comma-separated, in order. Default: the study's seven emotions for an
    /// AMT file (as the amt stage), the labels seen for a crowd-kit CSV.
    #[arg(long, value_delimiter = ',')]
    pub classes: Option<Vec<String>>,
    /// An answer outside `--classes`: error (default, naming the row) or drop (counted).
    #[arg(long, default_value = "error", value_parser = ["error", "drop"])]
    pub on_unknown_label: String,
    /// Stop EM when the objective rises by less than this fraction.
    #[arg(long)]
    pub tol: Option<f64>,
    #[arg(long)]
    pub max_iter: Option<usize>,
    /// Seed of tie-breaks.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Pseudo-count per confusion cell.
    #[arg(long)]
    pub smoothing: Option<f64>,
    /// `shrunk`: a fixed strength (answers per true class) instead of the estimated ones.
    #[arg(long)]
    pub shrink_strength: Option<f64>,
    /// Extra pseudo-count on the pooled matrix's diagonal.
    #[arg(long)]
    pub diag_prior: Option<f64>,
    /// AMT file: AssignmentStatus values kept (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "Submitted,Approved")]
    pub statuses: Vec<String>,
    /// Spammer detection: only workers with at least this many answers.
    #[arg(long)]
    pub spammer_min_answers: Option<usize>,
    /// A worker's repeated answer to a task: `first` (default: the first row kept, the others
    /// dropped and counted, as the amt stage does: the models assume one answer per worker
    /// and task) or `keep` (every row counts, as crowd-kit reads a file).
    #[arg(long, default_value = "first", value_parser = ["first", "keep"])]
    pub duplicates: String,
    /// Write into an `--out` directory that is not empty (only the files aggregate writes are
    /// replaced; never when the input file is inside it).
    #[arg(long)]
    pub force: bool,
}

impl AggregateArgs {
    /// Plain defaults for `file` and `out` (what the command line gives without options).
    pub fn new(file: &Path, out: &Path) -> AggregateArgs {
        AggregateArgs {
            file: file.to_path_buf(),
            out: out.to_path_buf(),
            method: "auto".into(),
            class_prior: "learned".into(),
            classes: None,
            on_unknown_label: "error".into(),
            tol: None,
            max_iter: None,
            seed: None,
            smoothing: None,
            shrink_strength: None,
            diag_prior: None,
            statuses: vec!["Submitted".into(), "Approved".into()],
            spammer_min_answers: None,
            duplicates: "first".into(),
            force: false,
        }
    }

    /// The `dawid-skene` stage's params these options amount to (checked as the stage does).
    pub fn params(&self) -> anyhow::Result<DawidSkeneParams> {
        let d = DawidSkeneParams::default();
        let class_prior = match self.class_prior.as_str() {
            "learned" | "uniform" => PriorParam::Named(self.class_prior.clone()),
            w => PriorParam::Weights(
                w.split(',')
                    .map(|x| x.trim().parse::<f64>())
                    .collect::<Result<_, _>>()
                    .map_err(|_| anyhow::anyhow!("--class-prior: \"{w}\": expected learned, uniform or comma-separated weights"))?,
            ),
        };
        let p = DawidSkeneParams {
            method: self.method.clone(),
            class_prior,
            max_iter: self.max_iter.unwrap_or(d.max_iter),
            tol: self.tol.unwrap_or(d.tol),
            smoothing: self.smoothing.unwrap_or(d.smoothing),
            shrink_strength: self.shrink_strength.or(d.shrink_strength),
            diag_prior: self.diag_prior.unwrap_or(d.diag_prior),
            seed: self.seed.unwrap_or(d.seed),
            spammer_min_answers: self.spammer_min_answers.unwrap_or(d.spammer_min_answers),
            ..d
        };
        use crate::stages::Stage;
        crate::stages::dawid_skene::DawidSkene::check_params(&p).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(p)
    }
}

/// What `aggregate_file` did, for the command's one-line summary.
#[derive(Debug)]
pub struct Done {
    pub items: usize,
    pub answers: usize,
    pub method_line: String,
}

/// Read, aggregate, write. Errors name the file.
pub fn aggregate_file(args: &AggregateArgs) -> anyhow::Result<Done> {
    let p = args.params()?;
    let method: Method = p.method.parse()?;
    let opts = em_options(&p).map_err(|e| anyhow::anyhow!("{e}"))?;
    let input = &args.file;
    let name = input.display().to_string();
    let on_unknown = match args.on_unknown_label.as_str() {
        "drop" => OnUnknownLabel::Drop,
        _ => OnUnknownLabel::Error,
    };
    let given_classes = args.classes.as_deref().map(check_classes).transpose()?;
    check_out(&args.out, input, args.force)?;
    let dedupe = args.duplicates != "keep";
    let t0 = std::time::Instant::now();
    let text = read_input(input, &name)?;
    let first = text.lines().next().unwrap_or("");
    let answers = if first.contains("WorkerId") && first.contains("HITId") {
        // the amt stage's defaults: the study's classes unless given, an unknown label fails
        let classes = given_classes.clone().unwrap_or_else(|| pipeline_crowd::EMOTIONS.iter().map(|s| s.to_string()).collect());
        let o = AmtOptions { classes: classes.clone(), on_unknown_label: on_unknown, statuses: args.statuses.clone(), dedupe, ..AmtOptions::default() };
        let batch = parse_amt_batch(&text, &name, &o)?;
        drop(text);
        if batch.records.is_empty() {
            let r = &batch.report;
            let mut why = Vec::new();
            for (status, n) in &r.dropped_status {
                if status.is_empty() {
                    why.push(format!("{n} without an AssignmentStatus (row cut short?)"));
                } else {
                    why.push(format!("{n} with AssignmentStatus \"{status}\" (kept: {})", o.statuses.join(", ")));
                }
            }
            if r.duplicates > 0 {
                why.push(format!("{} repeated answers of a worker on an item", r.duplicates));
            }
            if !r.unknown_labels.is_empty() {
                why.push(format!("{} with a label outside the classes", r.unknown_labels.len()));
            }
            bail!(
                "{name}: no usable answers: {} data row(s){}{}",
                r.rows,
                if why.is_empty() { "" } else { ", dropped: " },
                why.join(", ")
            );
        }
        if batch.report.duplicates > 0 {
            eprintln!("{name}: {} repeated answer(s) of a worker on an item dropped, the first kept (--duplicates keep counts them all)", batch.report.duplicates);
        }
        batch.to_answers(&classes)?
    } else {
        let classes = given_classes.clone().unwrap_or_default();
        let (answers, dropped) = parse_crowdkit_csv_with(&text, &name, &classes, on_unknown)?;
        drop(text);
        if answers.n_answers() == 0 {
            bail!(
                "{name}: no usable answers: {} after the header{}",
                if dropped == 0 { "no data rows".to_string() } else { format!("{dropped} row(s), all") },
                if dropped == 0 { String::new() } else { " dropped for a label outside --classes".to_string() }
            );
        }
        if dropped > 0 {
            eprintln!("{name}: {dropped} answer(s) with a label outside --classes dropped");
        }
        let mut answers = answers;
        if dedupe {
            let (n, conflicting) = answers.drop_repeated_workers();
            if n > 0 {
                eprintln!(
                    "{name}: {n} repeated answer(s) of a worker on a task dropped ({conflicting} of them a different label), the first kept (--duplicates keep counts them all)"
                );
            }
        }
        answers
    };
    let t1 = std::time::Instant::now();
    let r = run_method(&answers, method, &opts).with_context(|| format!("{name}: {method}"))?;
    let t2 = std::time::Instant::now();
    // Everything is written into a staging directory beside `--out`, then moved in: a failure
    // or a kill leaves `--out` as it was, never half-written.
    let staging = staging_dir(&args.out)?;
    let out = staging.path();
    // The report (worker table, peer agreement, plots) is written beside labels and
    // posteriors, not after them: on the scale case that hides most of its 0.25 s.
    let (files, report) = std::thread::scope(|s| {
        let report = s.spawn(|| write_report(out, &answers, &r, &p.method, p.spammer_min_answers, ""));
        let files = (|| -> anyhow::Result<std::time::Instant> {
            write_labels(&out.join("labels.csv"), &answers, &r)?;
            write_posteriors(&out.join("posteriors.csv"), "task", &answers, &r)?;
            Ok(std::time::Instant::now())
        })();
        (files, report.join())
    });
    let t3 = files?;
    let rep = match report {
        Ok(rep) => rep?,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    for e in &rep.plot_errors {
        tracing::warn!("dawid-skene report: {e}");
    }
    install(staging, &args.out, input, args.force)?;
    tracing::info!(
        "aggregate {name}: read+parse {:.2} s, fit {:.2} s, labels+posteriors {:.2} s, report after them {:.2} s",
        (t1 - t0).as_secs_f64(),
        (t2 - t1).as_secs_f64(),
        (t3 - t2).as_secs_f64(),
        t3.elapsed().as_secs_f64()
    );
    Ok(Done {
        items: answers.n_items(),
        answers: answers.n_answers(),
        method_line: method_line(&p.method, &r),
    })
}

/// Refuse an `--out` that is a file, that holds the input, or (without `--force`) that is a
/// directory with files in it: `aggregate` must never overwrite what is not its own.
/// `--classes` as given, each name trimmed (labels are read trimmed, so `--classes "a, b"`
/// never matched " b"); an empty name, a name given twice (its second column was never
/// used) or fewer than two classes is an error naming the option, before anything is read.
fn check_classes(given: &[String]) -> anyhow::Result<Vec<String>> {
    let c: Vec<String> = given.iter().map(|s| s.trim().to_string()).collect();
    if c.iter().any(String::is_empty) {
        bail!("--classes {}: an empty class name", given.join(","));
    }
    for (i, x) in c.iter().enumerate() {
        if c[..i].contains(x) {
            bail!("--classes {}: \"{x}\" given twice", given.join(","));
        }
    }
    if c.len() < 2 {
        bail!("--classes {}: at least 2 classes needed, got {}", given.join(","), c.len());
    }
    Ok(c)
}

/// The input's text. A device (`/dev/zero`, a terminal) or a socket is refused before it is
/// read: its reading may never end (`/dev/zero` grew until memory ran out); files, symlinks
/// to them and pipes are read as before. Invalid UTF-8 is reported with its line.
fn read_input(input: &Path, name: &str) -> anyhow::Result<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if let Ok(m) = std::fs::metadata(input) {
            let t = m.file_type();
            if t.is_char_device() || t.is_block_device() || t.is_socket() {
                let kind = crate::cache::ingest::special_kind(&t);
                bail!("reading {name}: not a file or a pipe ({kind}), refused: its reading may never end");
            }
        }
    }
    let bytes = std::fs::read(input).with_context(|| format!("reading {name}"))?;
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        anyhow::anyhow!("reading {name}: line {line}: invalid UTF-8 (byte offset {at})")
    })
}

fn check_out(out: &Path, input: &Path, force: bool) -> anyhow::Result<()> {
    let meta = match std::fs::symlink_metadata(out) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return check_new_out(out),
        Err(e) => bail!("--out {}: {e}", out.display()),
    };
    if meta.file_type().is_symlink() {
        // not followed: the results would land wherever the link points
        bail!("--out {} is a symbolic link: name the directory itself", out.display());
    }
    if !meta.is_dir() {
        bail!("--out {} exists and is not a directory", out.display());
    }
    if meta.permissions().readonly() {
        bail!("--out {} is not writable", out.display());
    }
    if let (Ok(o), Ok(i)) = (out.canonicalize(), input.canonicalize()) {
        if i.starts_with(&o) {
            bail!("--out {} contains the input file {}: choose another output directory", out.display(), input.display());
        }
    }
    let non_empty = std::fs::read_dir(out).with_context(|| format!("--out {}", out.display()))?.next().is_some();
    if non_empty && !force {
        bail!("--out {} is not empty: choose a new directory, or pass --force to replace the files aggregate writes there", out.display());
    }
    Ok(())
}

/// A new `--out` is created with its parents (as `mkdir -p`), but not through `..` after a
/// directory that does not exist: `a/b/c/../../..` names the current directory only once
/// `a/b/c` is made, and the refusal came after it had been.
fn check_new_out(out: &Path) -> anyhow::Result<()> {
    let mut at = PathBuf::new();
    for c in out.components() {
        if c == std::path::Component::ParentDir && !at.as_os_str().is_empty() && std::fs::symlink_metadata(&at).is_err() {
            bail!(
                "--out {}: goes up (`..`) out of {}, which does not exist: name the directory without `..` (nothing was created)",
                out.display(),
                at.display()
            );
        }
        at.push(c);
    }
    Ok(())
}

/// Whether `name` is a file `aggregate` writes: with `--force` these, and only these, are
/// replaced, and those of the old run the new one does not write (fewer worker plots) go too,
/// so `--out` never mixes two runs' results.
fn is_own_output(name: &str) -> bool {
    const FIXED: [&str; 10] = [
        "labels.csv",
        "posteriors.csv",
        "workers.csv",
        "worker_matrices.json",
        "prior.json",
        "loglik.csv",
        "loglik.png",
        "pooled.png",
        "report.md",
        "summary.json",
    ];
    FIXED.contains(&name)
        || name
            .strip_prefix("worker_")
            .and_then(|r| r.strip_suffix(".png"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// A fresh directory beside `out` (same file system, so the final moves are renames).
fn staging_dir(out: &Path) -> anyhow::Result<tempfile::TempDir> {
    // The parent of the absolute path: `--out .` or `--out x/..` must not stage inside itself.
    let parent = crate::cache::store::absolute(out).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    sweep_stale_staging(&parent);
    // The PID in the name lets a later run tell a killed run's leftovers from a live run's.
    tempfile::Builder::new()
        .prefix(&format!(".aggregate-{}-", std::process::id()))
        .tempdir_in(&parent)
        .with_context(|| format!("creating a staging directory in {}", parent.display()))
}

/// Remove staging directories of runs that were killed (`kill -9`, Ctrl-C): named
/// `.aggregate-<pid>-*` with a PID no process has. A live PID (or one we cannot signal) is
/// left alone, and so is anything that is not a plain directory of that name.
fn sweep_stale_staging(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(".aggregate-")) else { continue };
        let Some(pid) = rest.split_once('-').and_then(|(p, _)| p.parse::<i32>().ok()).filter(|&p| p > 0) else { continue };
        if pid as u32 == std::process::id() || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        // SAFETY: signal 0 only checks that the process exists; nothing is sent.
        let gone = unsafe { libc::kill(pid, 0) } != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Move the staged files into `out`: the whole directory when `out` is new (one rename: all
/// or nothing), else file by file under an exclusive lock on `out` (two runs never interleave
/// their files; an existing directory keeps its inode, owner and mode). Only names aggregate
/// writes are replaced (with `--force`), and its old files the new run does not write are
/// removed; a failed move rolls back (the replaced files go back: `out` is the old result or
/// the new one, never a mix). `out` is checked again here, since it may have changed during
/// the fit.
fn install(staging: tempfile::TempDir, out: &Path, input: &Path, force: bool) -> anyhow::Result<()> {
    check_out(out, input, force)?;
    if std::fs::symlink_metadata(out).is_err() {
        let dir = staging.keep();
        // tempfile's directories get the umask's mode, as mkdir's; the move never replaces a
        // directory another run made meanwhile (rename would take an empty one's place)
        return rename_noreplace(&dir, out).map_err(|e| {
            let _ = std::fs::remove_dir_all(&dir);
            anyhow::Error::from(e).context(format!("moving the results into {}", out.display()))
        });
    }
    let lock = std::fs::File::open(out).with_context(|| format!("--out {}", out.display()))?;
    lock.lock().with_context(|| format!("locking --out {}", out.display()))?;
    check_out(out, input, force)?; // what another run left while we waited
    // Every name is checked before the first is moved: a refusal changes nothing.
    let files: Vec<std::ffi::OsString> = std::fs::read_dir(staging.path())?.flatten().map(|f| f.file_name()).collect();
    for name in &files {
        let dst = out.join(name);
        if std::fs::symlink_metadata(&dst).map(|m| m.is_dir()).unwrap_or(false) {
            bail!("--out {}: {} is a directory, not replaced (nothing was written)", out.display(), dst.display());
        }
    }
    // the old run's own files that the new one does not write (plain files only)
    let stale: Vec<std::ffi::OsString> = std::fs::read_dir(out)
        .with_context(|| format!("--out {}", out.display()))?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name())
        .filter(|n| n.to_str().is_some_and(is_own_output) && !files.contains(n))
        .collect();
    let replaced = staging.path().join(".replaced");
    std::fs::create_dir(&replaced).with_context(|| format!("creating {}", replaced.display()))?;
    let (mut old_moved, mut new_moved) = (Vec::new(), Vec::new());
    let moved = (|| -> anyhow::Result<()> {
        for name in &stale {
            let dst = out.join(name);
            std::fs::rename(&dst, replaced.join(name)).with_context(|| format!("moving aside {}", dst.display()))?;
            old_moved.push(name);
        }
        for name in &files {
            let dst = out.join(name);
            if std::fs::symlink_metadata(&dst).is_ok() {
                std::fs::rename(&dst, replaced.join(name)).with_context(|| format!("moving aside {}", dst.display()))?;
                old_moved.push(name);
            }
            std::fs::rename(staging.path().join(name), &dst).with_context(|| format!("writing {}", dst.display()))?;
            new_moved.push(name);
        }
        Ok(())
    })();
    if let Err(e) = moved {
        for name in new_moved.iter().rev() {
            let _ = std::fs::rename(out.join(name), staging.path().join(name));
        }
        let mut lost = Vec::new();
        for name in old_moved.iter().rev() {
            if std::fs::rename(replaced.join(name), out.join(name)).is_err() {
                lost.push(name.to_string_lossy().to_string());
            }
        }
        if lost.is_empty() {
            return Err(e.context(format!("--out {} is as it was", out.display())));
        }
        // keep the moved-aside files where the user can find them
        let kept = staging.keep();
        return Err(e.context(format!("--out {}: could not put back {} (kept in {})", out.display(), lost.join(", "), kept.join(".replaced").display())));
    }
    Ok(())
}

/// `rename`, failing where `to` exists (Linux: `RENAME_NOREPLACE`; elsewhere a check first).
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
        let (f, t) = (c(from)?, c(to)?);
        // SAFETY: two valid NUL-terminated paths, relative to the current directory
        let r = unsafe { libc::renameat2(libc::AT_FDCWD, f.as_ptr(), libc::AT_FDCWD, t.as_ptr(), libc::RENAME_NOREPLACE) };
        if r == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        // file systems without RENAME_NOREPLACE: checked, then renamed
        if e.raw_os_error() != Some(libc::EINVAL) && e.raw_os_error() != Some(libc::ENOSYS) {
            return Err(e);
        }
    }
    if std::fs::symlink_metadata(to).is_ok() {
        return Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, format!("{} appeared meanwhile", to.display())));
    }
    std::fs::rename(from, to)
}

/// `aggregate` with the defaults and a method (kept for callers of the old signature).
pub fn aggregate(input: &Path, method: &str, out_dir: &Path) -> anyhow::Result<()> {
    let args = AggregateArgs { method: method.to_string(), ..AggregateArgs::new(input, out_dir) };
    aggregate_file(&args).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crowdkit_and_amt_inputs() {
        let tmp = tempfile::tempdir().unwrap();
        let ck = tmp.path().join("labels.csv");
        std::fs::write(&ck, "worker,task,label\n1,a,0\n2,a,0\n3,a,1\n1,b,1\n2,b,1\n").unwrap();
        aggregate(&ck, "mv", &tmp.path().join("o1")).unwrap();
        let l = std::fs::read_to_string(tmp.path().join("o1/labels.csv")).unwrap();
        assert_eq!(l, "task,label\na,0\nb,1\n");
        let p = std::fs::read_to_string(tmp.path().join("o1/posteriors.csv")).unwrap();
        assert!(p.starts_with("task,0,1\n"));
        assert_eq!(p, "task,0,1\na,0.666667,0.333333\nb,0.000000,1.000000\n");
        for f in ["workers.csv", "worker_matrices.json", "prior.json", "loglik.csv", "report.md", "summary.json"] {
            assert!(tmp.path().join("o1").join(f).is_file(), "{f}");
        }

        let items: Vec<(String, usize)> = (0..14).map(|i| (format!("https://x/{i}.jpg"), i % 7)).collect();
        let b = tmp.path().join("batch.csv");
        std::fs::write(&b, pipeline_crowd::simulate_amt_batch(&items, 5, 3, 2)).unwrap();
        aggregate(&b, "shrunk", &tmp.path().join("o2")).unwrap();
        let l = std::fs::read_to_string(tmp.path().join("o2/labels.csv")).unwrap();
        assert_eq!(l.lines().count(), 15);
        let p = std::fs::read_to_string(tmp.path().join("o2/posteriors.csv")).unwrap();
        assert!(p.starts_with("task,angry,disgust,fear,happy,neutral,sad,surprise\n"), "{p}");
        assert!(aggregate(&b, "nope", &tmp.path().join("o3")).unwrap_err().to_string().contains("unknown method"));
    }

    #[test]
    fn auto_writes_the_model_choice_into_report_and_summary() {
        let tmp = tempfile::tempdir().unwrap();
        let items: Vec<(String, usize)> = (0..140).map(|i| (format!("https://x/{i}.jpg"), i % 7)).collect();
        let b = tmp.path().join("batch.csv");
        std::fs::write(&b, pipeline_crowd::simulate_amt_batch(&items, 8, 3, 5)).unwrap();
        let out = tmp.path().join("o");
        let d = aggregate_file(&AggregateArgs::new(&b, &out)).unwrap();
        assert!(d.method_line.starts_with("auto -> "), "{}", d.method_line);
        let md = std::fs::read_to_string(out.join("report.md")).unwrap();
        assert!(md.contains("## Model choice") && md.contains("held-out log-lik"), "{md}");
        let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
        assert_eq!(s["method"], "auto");
        let sel = &s["selection"];
        assert_eq!(sel["chosen"], s["model"]);
        // 5 models, 4 of them with a learned and a uniform prior
        assert_eq!(sel["candidates"].as_array().unwrap().len(), 9);
        assert!(sel["margin_nats"].as_f64().unwrap() >= 0.0);
    }

    #[test]
    fn every_stage_option_is_taken() {
        let tmp = tempfile::tempdir().unwrap();
        let ck = tmp.path().join("labels.csv");
        std::fs::write(&ck, "worker,task,label\n1,a,x\n2,a,x\n3,a,y\n1,b,y\n2,b,y\n3,b,y\n").unwrap();
        let out = tmp.path().join("o");
        let args = AggregateArgs {
            method: "dawid-skene".into(),
            class_prior: "3,1".into(),
            classes: Some(vec!["x".into(), "y".into()]),
            tol: Some(0.0),
            max_iter: Some(3),
            seed: Some(4),
            ..AggregateArgs::new(&ck, &out)
        };
        aggregate_file(&args).unwrap();
        let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
        assert_eq!(s["iterations"], 3);
        assert_eq!(s["model"], "dawid-skene");
        assert!((s["class_prior"][0].as_f64().unwrap() - 0.75).abs() < 1e-12);
        // a bad option is an error naming it
        let bad = AggregateArgs { class_prior: "flat".into(), ..AggregateArgs::new(&ck, &out) };
        assert!(aggregate_file(&bad).unwrap_err().to_string().contains("class-prior"));
        let bad = AggregateArgs { max_iter: Some(0), ..AggregateArgs::new(&ck, &out) };
        assert!(aggregate_file(&bad).unwrap_err().to_string().contains("max_iter"));
    }

    #[test]
    fn classes_option_trimmed_and_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let ck = tmp.path().join("ck.csv");
        std::fs::write(&ck, "worker,task,label\n1,a,x\n2,a,y\n1,b,y\n").unwrap();
        let v = |s: &str| Some(s.split(',').map(String::from).collect::<Vec<_>>());
        // " y" was never matched (labels are trimmed): now the class "y"
        let args = AggregateArgs { classes: v("x, y"), method: "majority-vote".into(), ..AggregateArgs::new(&ck, &tmp.path().join("o")) };
        aggregate_file(&args).unwrap();
        let p = std::fs::read_to_string(tmp.path().join("o/posteriors.csv")).unwrap();
        assert!(p.starts_with("task,x,y\n"), "{p}");
        // a class given twice was accepted (an always-empty column), an empty one and a single
        // one failed with no word of the option
        for (c, why) in [("x,x,y", "\"x\" given twice"), ("x,,y", "an empty class name"), ("x", "at least 2 classes")] {
            let out = tmp.path().join("bad");
            let e = aggregate_file(&AggregateArgs { classes: v(c), ..AggregateArgs::new(&ck, &out) }).unwrap_err().to_string();
            assert!(e.contains("--classes") && e.contains(why), "{c}: {e}");
            assert!(!out.exists());
        }
    }

    #[test]
    fn a_label_typo_is_an_error_as_in_the_amt_stage_or_dropped_on_request() {
        let tmp = tempfile::tempdir().unwrap();
        let items: Vec<(String, usize)> = (0..14).map(|i| (format!("https://x/{i}.jpg"), i % 7)).collect();
        let text = pipeline_crowd::simulate_amt_batch(&items, 5, 3, 2);
        // one answer mistyped
        let typo = text.replacen("\"happy\"", "\"hapy\"", 1);
        assert_ne!(typo, text);
        let b = tmp.path().join("batch.csv");
        std::fs::write(&b, &typo).unwrap();
        let e = aggregate_file(&AggregateArgs::new(&b, &tmp.path().join("o"))).unwrap_err().to_string();
        assert!(e.contains("batch.csv") && e.contains("\"hapy\""), "{e}");
        let args = AggregateArgs { on_unknown_label: "drop".into(), ..AggregateArgs::new(&b, &tmp.path().join("o")) };
        aggregate_file(&args).unwrap();
        let p = std::fs::read_to_string(tmp.path().join("o/posteriors.csv")).unwrap();
        assert!(p.starts_with("task,angry,disgust,fear,happy,neutral,sad,surprise\n"), "the class set is unchanged: {p}");
        // crowd-kit CSV with --classes: the same rule
        let ck = tmp.path().join("ck.csv");
        std::fs::write(&ck, "worker,task,label\n1,a,x\n2,a,z\n").unwrap();
        let args = AggregateArgs { classes: Some(vec!["x".into(), "y".into()]), ..AggregateArgs::new(&ck, &tmp.path().join("o2")) };
        let e = aggregate_file(&args).unwrap_err().to_string();
        assert!(e.contains("row 3") && e.contains("\"z\""), "{e}");
    }

    #[test]
    fn no_usable_answers_is_an_error_naming_the_file_and_why_for_every_method() {
        let tmp = tempfile::tempdir().unwrap();
        let header = "\"HITId\",\"WorkerId\",\"AssignmentStatus\",\"Input.image_url\",\"Answer.category.label\"\n";
        let cases = [
            ("header.csv", header.to_string(), "0 data row"),
            (
                "rejected.csv",
                format!("{header}\"H1\",\"W1\",\"Rejected\",\"u/a.jpg\",\"happy\"\n\"H2\",\"W2\",\"Rejected\",\"u/b.jpg\",\"sad\"\n"),
                "2 with AssignmentStatus \"Rejected\"",
            ),
            ("short.csv", format!("{header}\"H1\",\"W1\"\n\"H2\",\"W2\"\n"), "2 without an AssignmentStatus"),
        ];
        for (file, text, why) in cases {
            let f = tmp.path().join(file);
            std::fs::write(&f, text).unwrap();
            for m in ["auto", "majority-vote", "dawid-skene", "one-coin", "pooled", "shrunk"] {
                let args = AggregateArgs { method: m.into(), ..AggregateArgs::new(&f, &tmp.path().join("o")) };
                let e = aggregate_file(&args).unwrap_err().to_string();
                assert!(e.contains(file) && e.contains("no usable answers") && e.contains(why), "{m}: {e}");
            }
        }
        let ck = tmp.path().join("empty.csv");
        std::fs::write(&ck, "worker,task,label\n").unwrap();
        let e = aggregate_file(&AggregateArgs::new(&ck, &tmp.path().join("o"))).unwrap_err().to_string();
        assert!(e.contains("empty.csv") && e.contains("no usable answers"), "{e}");
    }
}
