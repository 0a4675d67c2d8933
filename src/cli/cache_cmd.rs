//! `pipeline cache ...`: ls, show, export, gc, push, pull, verify.

use std::collections::HashSet;

use anyhow::{bail, Context, Result};
use comfy_table::Cell;

use super::{fmt_ms, human_age, human_bytes, resolve_noting_others, table, CacheCmd, RemoteArgs};
use crate::cache::remote::RemoteMode;
use crate::cache::remote::Remote;
use crate::cache::Cache;
use crate::engine::RunRecord;

/// `cache gc --remote`: the remote only; no local cache is opened (or made).
pub(super) fn remote_gc(url: String, grace: u64) -> Result<i32> {
    let url = Some(url).filter(|u| !u.is_empty()).or_else(|| std::env::var("PIPELINE_REMOTE").ok());
    let remote = RemoteArgs { remote: url, remote_mode: RemoteMode::ReadWrite }.require(false)?;
    let (n, bytes) = crate::cache::remote::transfer::gc(&remote, grace)?;
    println!("removed {n} objects from {}, freed {}", remote_url(&remote), human_bytes(bytes));
    Ok(0)
}

pub(super) fn cache_cmd(cache: &Cache, cmd: CacheCmd) -> Result<i32> {
    match cmd {
        CacheCmd::Ls => {
            let mut entries = cache.entries();
            entries.sort_by(|a, b| b.created.cmp(&a.created));
            let now = crate::cache::store::now_secs();
            let mut t = table(&["stage", "kind", "key", "files", "size", "age", "run"]);
            for e in &entries {
                t.add_row(vec![
                    Cell::new(&e.stage),
                    Cell::new(&e.key_inputs.kind),
                    Cell::new(e.key.short()),
                    Cell::new(e.files),
                    Cell::new(human_bytes(e.size)),
                    Cell::new(human_age(now.saturating_sub(e.created))),
                    Cell::new(e.run_id),
                ]);
            }
            outln!("{t}");
            outln!("{} entries", entries.len());
        }
        CacheCmd::Show { what } => {
            let e = resolve_noting_others(&cache, &what)?;
            outln!("key       {}", e.key);
            outln!("stage     {} ({} v{}) in pipeline {}", e.stage, e.key_inputs.kind, e.key_inputs.kind_version, e.pipeline);
            outln!("output    {} ({} files, {})", e.output, e.files, human_bytes(e.size));
            outln!("created   {} s ago by run {}, took {}", crate::cache::store::now_secs().saturating_sub(e.created), e.run_id, fmt_ms(e.duration_ms));
            outln!("params    {}", serde_json::to_string(&e.key_inputs.params)?);
            for (name, d) in &e.key_inputs.inputs {
                outln!("input     {name} = {} ({})", &d[..12], e.input_sources.get(name).map(|s| s.as_str()).unwrap_or(""));
            }
            for (name, d) in &e.key_inputs.param_files {
                outln!("file      {name} = {}", &d[..12]);
            }
            for (k, v) in &e.outcome.provenance {
                outln!("provenance {k} = {v}");
            }
            for (k, v) in &e.outcome.metrics {
                outln!("metric    {k} = {v:.4}");
            }
            if let Some(m) = cache.manifest(&e.output)? {
                outln!("files:");
                for f in &m.files {
                    outln!("  {:<48} {:>10}  {}", crate::text::strip_controls(&f.path), human_bytes(f.size), &f.digest[..12]);
                }
            }
            outln!("view      {}", cache.view(&e.output)?.display());
        }
        CacheCmd::Export { what, dir, force } => {
            let e = resolve_noting_others(&cache, &what)?;
            let n = export(&cache, &e.output, &dir, force)?;
            println!("exported {n} files of {} ({}) to {}", e.stage, e.key.short(), dir.components().collect::<std::path::PathBuf>().display());
        }
        CacheCmd::Gc { remote: Some(url), grace, .. } => {
            remote_gc(url, grace)?;
        }
        CacheCmd::Push { what, all, verify, remote } => {
            if remote.remote_mode != RemoteMode::ReadWrite {
                bail!("cache push writes to the remote: --remote-mode {} forbids it", clap::ValueEnum::to_possible_value(&remote.remote_mode).map(|v| v.get_name().to_string()).unwrap_or_default());
            }
            let remote = remote.require(true)?;
            let entries = pick_entries(cache, what.as_deref(), all)?;
            let (mut files, mut bytes) = (0, 0);
            for e in &entries {
                let m = crate::cache::remote::transfer::push(cache, &remote, e, verify)?;
                files += m.files;
                bytes += m.bytes;
            }
            println!("pushed {} entries to {} ({files} blobs uploaded, {})", entries.len(), remote_url(&remote), human_bytes(bytes));
        }
        CacheCmd::Pull { what, all, remote } => {
            let remote = remote.require(false)?;
            // what a pull killed mid-download left (the cache is locked: nobody else's)
            cache.clear_tmp()?;
            if what.is_none() && !all {
                bail!("cache pull: name a key prefix or stage, or pass --all");
            }
            let mut keys = Vec::new();
            for (rel, _, _) in remote.list("entries")? {
                let Some(k) = rel.strip_prefix("entries/") else { continue };
                let key = crate::cache::CacheKey(k.to_string());
                let wanted = match &what {
                    None => true,
                    Some(w) => k.starts_with(w.as_str()) || remote_entry_stage(&remote, &key).as_deref() == Some(w.as_str()),
                };
                if wanted {
                    keys.push(key);
                }
            }
            if keys.is_empty() {
                bail!("cache pull: the remote {} has no entry matching {}", remote_url(&remote), what.as_deref().unwrap_or("anything"));
            }
            let (mut n, mut files, mut bytes, mut failed) = (0, 0, 0, 0);
            for k in &keys {
                if cache.usable_entry(k)?.is_some() {
                    continue;
                }
                match crate::cache::remote::transfer::pull(cache, &remote, k, None) {
                    Ok(Some((_, m))) => {
                        n += 1;
                        files += m.files;
                        bytes += m.bytes;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        failed += 1;
                        eprintln!("warning: {}", crate::text::clean(&e.to_string()));
                    }
                }
            }
            println!("pulled {n} entries from {} ({files} blobs, {})", remote_url(&remote), human_bytes(bytes));
            if failed > 0 {
                eprintln!("error: {failed} entries could not be pulled (why is named above)");
                return Ok(1);
            }
        }
        CacheCmd::Gc { keep_last, grace, .. } => {
            let keep = keep_last.map(|n| {
                let mut runs: Vec<RunRecord> = cache.runs();
                runs.sort_by(|a, b| b.id.cmp(&a.id));
                runs.iter().take(n).flat_map(|r| r.stages.iter().filter_map(|s| s.key.clone())).collect::<HashSet<String>>()
            });
            let (entries, bytes) = cache.gc(keep.as_ref())?;
            println!("removed {entries} entries, freed {}", human_bytes(bytes));
            // the Slurm executor's default work directory: jobs of earlier runs (a successful
            // job's is removed when it ends; a failed one's is kept for its log)
            let (jobs, jbytes, kept) = crate::executor::slurm::sweep_job_dirs(&cache.root().join("slurm"), std::time::Duration::from_secs(grace));
            if jobs > 0 {
                println!("removed {jobs} Slurm job directories, freed {}", human_bytes(jbytes));
            }
            for k in kept {
                eprintln!("warning: {k}");
            }
        }
        CacheCmd::Verify { .. } => {
            let r = cache.verify()?;
            println!("checked {} blobs: {} damaged", r.checked, r.bad_blobs.len());
            for e in &r.dropped {
                println!("dropped entry {} of stage {} (its files were damaged or missing)", e.key.short(), e.stage);
            }
            for (v, why) in &r.bad_views {
                println!("removed view {} ({why}); it is rebuilt from the blobs when next needed", &v[..12.min(v.len())]);
            }
            for j in &r.junk {
                println!("not a blob, left alone: {}", j.display());
            }
            if !r.is_clean() {
                return Ok(1);
            }
        }
    }
    Ok(0)
}

fn remote_url(r: &Remote) -> String {
    use crate::cache::remote::ArtifactStore;
    r.describe()
}

fn remote_entry_stage(r: &Remote, key: &crate::cache::CacheKey) -> Option<String> {
    use crate::cache::remote::ArtifactStore;
    r.get_entry(key).ok().flatten().map(|e| e.stage)
}

/// Local entries named by a key prefix, STAGE or PIPELINE/STAGE (its current output), or all.
fn pick_entries(cache: &Cache, what: Option<&str>, all: bool) -> Result<Vec<crate::cache::store::Entry>> {
    match (what, all) {
        (_, true) => Ok(cache.entries()),
        (Some(w), false) => Ok(vec![resolve_noting_others(cache, w)?]),
        (None, false) => bail!("name an entry (STAGE, PIPELINE/STAGE or a key prefix), or pass --all"),
    }
}

/// `cache export`: the artifact's files are copied into a private staging directory and
/// verified there, then installed into `dir` with `aggregate --out`'s rules (`outdir`): `dir`
/// new or empty (`--force`: the names in common replaced, never a directory; nothing else
/// touched), never a link, never inside the cache, `..` only through directories that exist;
/// a new `dir` appears in one rename, an existing one is written under a lock with rollback,
/// and every write goes through descriptors, so nothing lands outside `dir` and a kill or
/// a damaged blob leaves it as it was.
pub(crate) fn export(cache: &Cache, output: &str, dir: &std::path::Path, force: bool) -> Result<usize> {
    let target = crate::outdir::Target::new(dir, cache.root(), force, |_| false).for_command("cache export", "the cache");
    // first: inside the cache is the refusal to name, whatever else is wrong
    crate::outdir::refuse_inside(&target.out, cache.root(), "the cache")?;
    target.check()?;
    // the artifact's top-level names: its directories refused before any copying (--force
    // never replaces a directory), and what else --out holds said after
    let m = cache.manifest(output)?.ok_or_else(|| anyhow::anyhow!("entry {output}: manifest missing; run `pipeline cache verify`"))?;
    let mut top: std::collections::BTreeMap<String, bool> = std::collections::BTreeMap::new();
    for f in &m.files {
        let mut parts = std::path::Path::new(&f.path).components();
        if let Some(first) = parts.next() {
            *top.entry(first.as_os_str().to_string_lossy().to_string()).or_default() |= parts.next().is_some();
        }
    }
    if let Some(n) = top.keys().find(|n| crate::outdir::reserved(n)) {
        bail!(
            "cannot export {output} into {}: its top-level name {n:?} is one the export keeps for its own bookkeeping (`.aggregate-*`, `.replaced`, `.mode-probe`); copy the files from the entry's view (`pipeline cache show`) instead",
            target.out.display()
        );
    }
    let dirs: Vec<&String> = top.iter().filter(|(_, d)| **d).map(|(n, _)| n).collect();
    target.refuse_dirs(&dirs)?;
    let staging = target.stage()?;
    let n = cache.export_into(output, &m, &staging.path()).with_context(|| format!("exporting into {} (left as it was)", target.out.display()))?;
    target.install(staging)?;
    // --force into a directory with other names: they were left (the user's, or an earlier
    // export's); say so, since the directory is then not this artifact alone
    let others: Vec<String> = std::fs::read_dir(&target.out)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().to_string()).filter(|n| !top.contains_key(n) && !n.starts_with(crate::outdir::PREFIX)).collect())
        .unwrap_or_default();
    if !others.is_empty() {
        let mut shown: Vec<&String> = others.iter().take(5).collect();
        shown.sort();
        eprintln!(
            "note: {} also holds {} name(s) this export did not write, left as they were: {}{}",
            target.out.display(),
            others.len(),
            shown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
            if others.len() > 5 { ", ..." } else { "" }
        );
    }
    Ok(n)
}
