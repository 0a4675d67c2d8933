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
use pipeline_crowd::report::{is_output_file, method_line, write_labels, write_posteriors, write_report, ReportExtra};
use pipeline_crowd::{parse_amt_batch, AmtOptions};

use crate::outdir::Target;
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
    /// AMT file: the question whose answer is the label (`Answer.<question>.label` or the
    /// key in `Answer.taskAnswers`), when a HIT asks more than one.
    #[arg(long)]
    pub question: Option<String>,
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
            question: None,
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
    let target = Target::new(&args.out, input, args.force, is_output_file);
    target.check()?;
    let dedupe = args.duplicates != "keep";
    // repeated answers of a worker on a task dropped, and how many of those disagreed
    let mut repeated: (usize, Option<usize>) = (0, None);
    // answers dropped for a label outside the classes (`--on-unknown-label drop`)
    let unknown_dropped;
    let t0 = std::time::Instant::now();
    let text = read_input(input, &name)?;
    let first = text.lines().next().unwrap_or("");
    let answers = if first.contains("WorkerId") && first.contains("HITId") {
        // the amt stage's defaults: the study's classes unless given, an unknown label fails
        let classes = given_classes.clone().unwrap_or_else(|| pipeline_crowd::EMOTIONS.iter().map(|s| s.to_string()).collect());
        let o = AmtOptions { classes: classes.clone(), on_unknown_label: on_unknown, statuses: args.statuses.clone(), dedupe, question: args.question.clone(), ..AmtOptions::default() };
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
                why.push(format!("{} repeated answer(s) of a worker on a task", r.duplicates));
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
        let unknown = &batch.report.unknown_labels;
        unknown_dropped = unknown.len();
        if let Some((src, row, label)) = unknown.first() {
            // as for a CSV: what was dropped is said, with the first one to look at
            eprintln!("{name}: {} answer(s) with a label outside the classes dropped (the first: {src} row {row}, {label:?})", unknown.len());
        }
        // with --duplicates keep nothing was compared: null, as for a crowd-kit CSV
        repeated = (batch.report.duplicates, dedupe.then_some(batch.report.duplicates_conflicting));
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
        unknown_dropped = dropped;
        if dropped > 0 {
            eprintln!("{name}: {dropped} answer(s) with a label outside --classes dropped");
        }
        let mut answers = answers;
        if dedupe {
            let (n, conflicting) = answers.drop_repeated_workers();
            repeated = (n, Some(conflicting));
        }
        answers
    };
    if let (n @ 1.., Some(conflicting)) = repeated {
        eprintln!(
            "{name}: {n} repeated answer(s) of a worker on a task dropped ({conflicting} of them a different label), the first kept (--duplicates keep counts them all)"
        );
    }
    let t1 = std::time::Instant::now();
    let r = run_method(&answers, method, &opts).with_context(|| format!("{name}: {method}"))?;
    let t2 = std::time::Instant::now();
    // Everything is written into a staging directory, then moved in (`outdir`): a failure
    // leaves `--out` as it was; a kill in the middle of the last moves is reported by the next
    // run (see `outdir`).
    let staging = target.stage()?;
    // what was read, beside what was fitted: the answer count alone does not say rows were dropped
    let md = match repeated {
        (0, _) if dedupe => String::new(),
        (n, c) if dedupe => format!(
            "\n## Input\n\n{n} repeated answer(s) of a worker on a task dropped{}, the first kept (`--duplicates first`): the models count one answer per worker and task.\n",
            c.map(|c| format!(" ({c} of them a different label)")).unwrap_or_default()
        ),
        _ => "\n## Input\n\nEvery row counted, repeated answers of a worker on a task included (`--duplicates keep`).\n".to_string(),
    };
    let input = serde_json::json!({
        "duplicates": if dedupe { "first" } else { "keep" },
        "repeated_dropped": repeated.0,
        "repeated_conflicting": repeated.1,
        "unknown_label_dropped": unknown_dropped,
    });
    let extra = ReportExtra { md, summary: [("input".to_string(), input)].into_iter().collect() };
    let out = &staging.path();
    // The report (worker table, peer agreement, plots) is written beside labels and
    // posteriors, not after them: on the scale case that hides most of its 0.25 s.
    let (files, report) = std::thread::scope(|s| {
        let report = s.spawn(|| write_report(out, &answers, &r, &p.method, p.spammer_min_answers, &extra));
        let files = (|| -> anyhow::Result<std::time::Instant> {
            write_labels(&out.join("labels.csv"), &answers, &r)?;
            write_posteriors(&out.join("posteriors.csv"), "task", &answers, &r)?;
            Ok(std::time::Instant::now())
        })();
        (files, report.join())
    });
    // a failed write (a full disk) names the staging directory, which is gone by the time
    // the user reads it: say what it was and that --out is untouched
    let staged = |e: anyhow::Error| e.context(format!("writing the results (staged for --out {}, now removed; --out is as it was)", args.out.display()));
    let t3 = files.map_err(staged)?;
    let rep = match report {
        Ok(rep) => rep.map_err(|e| staged(e.into()))?,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    for e in &rep.plot_errors {
        // the staging directory's path (/proc/self/fd/N) means nothing to the user
        let e = e.replace(&out.display().to_string(), &args.out.display().to_string());
        tracing::warn!("aggregate report: {e}");
    }
    target.install(staging)?;
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
    // the stage's rule too: its summary.json is read by augment, which refuses what this let by
    pipeline_classes::check_classes(&c).map_err(|e| anyhow::anyhow!("--classes {}: {e}", given.join(",")))?;
    Ok(c)
}

/// Largest input `aggregate` reads, file or pipe (1 GiB: the 1M-item scale case is 40 MB and
/// takes 255 MB to aggregate; a gigabyte takes several).
pub const MAX_INPUT_BYTES: u64 = 1 << 30;

/// The input's text. A device (`/dev/zero`, a terminal) or a socket is refused before it is
/// read: its reading may never end (`/dev/zero` grew until memory ran out); files, symlinks
/// to them and pipes are read up to [`MAX_INPUT_BYTES`]. Invalid UTF-8 is reported with its
/// line.
fn read_input(input: &Path, name: &str) -> anyhow::Result<String> {
    use std::io::Read;
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
    // Found by a hostile pass: a pipe (or FIFO) fed from /dev/zero filled the memory at
    // 700 MB/s; a file or a pipe is read up to MAX_INPUT_BYTES and refused past it.
    let mut bytes = Vec::new();
    let f = std::fs::File::open(input).with_context(|| format!("reading {name}"))?;
    if let Ok(m) = f.metadata() {
        if m.is_file() && m.len() > MAX_INPUT_BYTES {
            bail!("reading {name}: {} bytes; at most {MAX_INPUT_BYTES} (about 25 million answers) are read", m.len());
        }
    }
    f.take(MAX_INPUT_BYTES + 1).read_to_end(&mut bytes).with_context(|| format!("reading {name}"))?;
    if bytes.len() as u64 > MAX_INPUT_BYTES {
        bail!("reading {name}: more than {MAX_INPUT_BYTES} bytes (about 25 million answers) are not read");
    }
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        anyhow::anyhow!("reading {name}: line {line}: invalid UTF-8 (byte offset {at})")
    })
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

    /// An AMT file's repeated answers: dropped with the first kept, and the ones that
    /// disagree with it counted, as for a crowd-kit CSV.
    #[test]
    fn amt_repeats_counted_with_their_conflicts() {
        let tmp = tempfile::tempdir().unwrap();
        let b = tmp.path().join("batch.csv");
        let head = "\"HITId\",\"WorkerId\",\"AssignmentStatus\",\"Input.image_url\",\"Answer.category.label\"\n";
        let rows = ["H1,W1,Submitted,u/a.jpg,happy", "H1,W2,Submitted,u/a.jpg,happy", "H1,W1,Submitted,u/a.jpg,sad",
            "H1,W1,Submitted,u/a.jpg,happy", "H2,W1,Submitted,u/b.jpg,sad", "H2,W2,Submitted,u/b.jpg,sad"];
        std::fs::write(&b, format!("{head}{}\n", rows.join("\n"))).unwrap();
        let out = tmp.path().join("o");
        aggregate_file(&AggregateArgs { method: "majority-vote".into(), ..AggregateArgs::new(&b, &out) }).unwrap();
        let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
        assert_eq!((s["input"]["repeated_dropped"].as_u64(), s["input"]["repeated_conflicting"].as_u64()), (Some(2), Some(1)));
        let md = std::fs::read_to_string(out.join("report.md")).unwrap();
        assert!(md.contains("2 repeated answer(s) of a worker on a task dropped (1 of them a different label)"), "{md}");
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
        // the dropped answer is counted in summary.json, for an AMT file as for a CSV
        let dropped = |dir: &str| {
            let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tmp.path().join(dir).join("summary.json")).unwrap()).unwrap();
            s["input"]["unknown_label_dropped"].as_u64()
        };
        assert_eq!(dropped("o"), Some(1));
        // crowd-kit CSV with --classes: the same rule
        let ck = tmp.path().join("ck.csv");
        std::fs::write(&ck, "worker,task,label\n1,a,x\n2,a,z\n").unwrap();
        let args = AggregateArgs { classes: Some(vec!["x".into(), "y".into()]), ..AggregateArgs::new(&ck, &tmp.path().join("o2")) };
        let e = aggregate_file(&args).unwrap_err().to_string();
        assert!(e.contains("row 3") && e.contains("\"z\""), "{e}");
        let args = AggregateArgs { classes: Some(vec!["x".into(), "y".into()]), on_unknown_label: "drop".into(), ..AggregateArgs::new(&ck, &tmp.path().join("o3")) };
        aggregate_file(&args).unwrap();
        assert_eq!(dropped("o3"), Some(1));
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
