//! `pipeline dag`: the graph as text, Graphviz DOT or Mermaid.

use super::DagFormat;
use crate::dag::Pipeline;

pub(super) fn render_dag(p: &Pipeline, format: DagFormat) -> String {
    let mut out = String::new();
    let edges: Vec<(String, String, String)> = p
        .order
        .iter()
        .flat_map(|&i| {
            let n = &p.stages[i];
            n.inputs.iter().filter_map(move |(input, src)| match src {
                crate::dag::InputSource::Stage { stage, .. } => Some((stage.clone(), n.name.clone(), input.clone())),
                _ => None,
            })
        })
        .collect();
    match format {
        DagFormat::Text => {
            for &i in &p.order {
                let n = &p.stages[i];
                let ins: Vec<String> = n.inputs.iter().map(|(k, v)| format!("{k} <- {}", v.describe())).collect();
                out.push_str(&format!("{} [{}]{}\n", n.name, n.kind.kind(), if ins.is_empty() { String::new() } else { format!("  ({})", ins.join(", ")) }));
            }
        }
        DagFormat::Dot => {
            // DOT string literals: backslash and double quote escaped.
            let q = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
            out.push_str(&format!("digraph {} {{\n  rankdir=LR;\n", q(&p.name)));
            for &i in &p.order {
                let n = &p.stages[i];
                let label = format!("{}\n({})", n.name, n.kind.kind());
                out.push_str(&format!("  {} [label={}, shape=box];\n", q(&n.name), q(&label).replace('\n', "\\n")));
            }
            for (a, b, l) in &edges {
                out.push_str(&format!("  {} -> {} [label={}];\n", q(a), q(b), q(l)));
            }
            out.push_str("}\n");
        }
        DagFormat::Mermaid => {
            out.push_str("flowchart LR\n");
            // Ids are names with other characters as `_`, plus the stage's position where two
            // names would meet (`a.b` and `a-b`).
            let clean = |s: &str| s.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
            let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
            for n in &p.stages {
                *seen.entry(clean(&n.name)).or_default() += 1;
            }
            let pos: std::collections::HashMap<&str, usize> = p.stages.iter().enumerate().map(|(i, n)| (n.name.as_str(), i)).collect();
            let id = |s: &str| {
                let c = clean(s);
                if seen.get(&c).copied().unwrap_or(0) > 1 || c != s && pos.keys().any(|k| *k == c) {
                    format!("{c}_{}", pos.get(s).copied().unwrap_or(0))
                } else {
                    c
                }
            };
            // Mermaid labels: quotes as entity codes.
            let esc = |s: &str| s.replace('"', "#quot;");
            for &i in &p.order {
                let n = &p.stages[i];
                out.push_str(&format!("  {}[\"{} ({})\"]\n", id(&n.name), esc(&n.name), n.kind.kind()));
            }
            for (a, b, l) in &edges {
                out.push_str(&format!("  {} -->|{}| {}\n", id(a), esc(l), id(b)));
            }
        }
    }
    out
}
