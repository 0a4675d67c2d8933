//! `pipeline schema`: a JSON Schema of pipeline files built from the stage kinds' params.

use serde_json::{json, Value};

use crate::stages;

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("unknown stage kind `{kind}`; known: {known}")]
    UnknownKind { kind: String, known: String },
    #[error("schema: {0}")]
    Json(#[from] serde_json::Error),
}

pub fn schema(kind: Option<&str>) -> Result<Value, SchemaError> {
    let kinds = stages::registry();
    if let Some(k) = kind {
        let s = kinds
            .iter()
            .find(|s| s.kind() == k)
            .ok_or_else(|| SchemaError::UnknownKind { kind: k.to_string(), known: kinds.iter().map(|s| s.kind()).collect::<Vec<_>>().join(", ") })?;
        return Ok(s.params_schema());
    }
    let variants: Vec<Value> = kinds
        .iter()
        .map(|s| {
            let inputs: serde_json::Map<String, Value> = s
                .inputs()
                .iter()
                .map(|d| (d.name.to_string(), json!({"type": "string", "description": d.doc})))
                .collect();
            let required: Vec<&str> = s.inputs().iter().filter(|d| d.required).map(|d| d.name).collect();
            json!({
                "description": s.description(),
                "type": "object",
                "required": ["kind"],
                "additionalProperties": false,
                "properties": {
                    "kind": {"const": s.kind()},
                    "description": {"type": "string"},
                    "params": s.params_schema(),
                    "executor": serde_json::to_value(schemars::schema_for!(crate::executor::ExecutorConfig)).unwrap_or(Value::Null),
                    "inputs": {
                        "type": "object",
                        "description": "input name -> a stage name, `stage/path`, or a file, directory or glob relative to the pipeline file",
                        "properties": inputs,
                        "required": required,
                        "additionalProperties": s.open_inputs(),
                    }
                }
            })
        })
        .collect();
    Ok(json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "pipeline file",
        "type": "object",
        "required": ["name", "stages"],
        "additionalProperties": false,
        "properties": {
            "name": {"type": "string"},
            "description": {"type": "string"},
            "stages": {"type": "object", "additionalProperties": {"oneOf": variants}},
            "promote": serde_json::to_value(schemars::schema_for!(crate::spec::Promote))?,
            "executor": serde_json::to_value(schemars::schema_for!(crate::executor::ExecutorConfig))?,
            "remote": {"type": "string", "description": "a shared remote cache: s3://bucket/prefix, file:///path or a directory"},
        }
    }))
}
