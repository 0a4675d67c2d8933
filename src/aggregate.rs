//! `pipeline aggregate FILE --method M --out DIR`: aggregation on its own, for comparing
//! with other tools. Input: crowd-kit style CSV (`worker,task,label`) or an AMT
//! batch-results file (detected by its `WorkerId` and `HITId` columns). Output:
//! `labels.csv` (`task,label`) and `posteriors.csv` (`task,<class>...`).

use std::path::Path;

use anyhow::Context;
use pipeline_crowd::aggregate::{aggregate as run_method, EmOptions, Method};
use pipeline_crowd::{parse_amt_batch, parse_crowdkit_csv, AmtOptions};

pub fn aggregate(input: &Path, method: &str, out_dir: &Path) -> anyhow::Result<()> {
    let method: Method = method.parse()?;
    let text = std::fs::read_to_string(input).with_context(|| format!("reading {}", input.display()))?;
    let name = input.display().to_string();
    let first = text.lines().next().unwrap_or("");
    let answers = if first.contains("WorkerId") && first.contains("HITId") {
        let batch = parse_amt_batch(&text, &name, &AmtOptions::default())?;
        // the study's class order when every label is an emotion, else sorted labels
        let seen = batch.classes(&AmtOptions::default());
        let classes: Vec<String> = if seen.iter().all(|c| pipeline_crowd::EMOTIONS.contains(&c.as_str())) {
            pipeline_crowd::EMOTIONS.iter().map(|s| s.to_string()).collect()
        } else {
            seen
        };
        batch.to_answers(&classes)?
    } else {
        parse_crowdkit_csv(&text, &name)?
    };
    let r = run_method(&answers, method, &EmOptions::default())?;
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let lp = out_dir.join("labels.csv");
    let mut w = csv::Writer::from_path(&lp).with_context(|| format!("writing {}", lp.display()))?;
    w.write_record(["task", "label"])?;
    for (i, t) in answers.items.iter().enumerate() {
        w.write_record([t.as_str(), answers.classes[r.labels[i]].as_str()])?;
    }
    w.flush()?;
    let pp = out_dir.join("posteriors.csv");
    let mut w = csv::Writer::from_path(&pp).with_context(|| format!("writing {}", pp.display()))?;
    let mut h = vec!["task".to_string()];
    h.extend(answers.classes.iter().cloned());
    w.write_record(&h)?;
    for (i, t) in answers.items.iter().enumerate() {
        let mut row = vec![t.clone()];
        row.extend(r.posterior(i).iter().map(|x| format!("{x:.6}")));
        w.write_record(&row)?;
    }
    w.flush()?;
    Ok(())
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
}
