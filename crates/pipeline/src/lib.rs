//! Pipeline files (YAML): a name, an optional store, and one section per stage in the fixed
//! order download → tokenize → train → evaluate → export. Every struct a user writes denies
//! unknown fields; errors name the file, the line and the valid keys.

mod params;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, MapAccess, Visitor};
use serde::Deserialize;

pub use params::*;

/// The stages, in pipeline order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    Download,
    Tokenize,
    Train,
    Evaluate,
    Export,
}

impl Stage {
    pub const ALL: [Stage; 5] = [Stage::Download, Stage::Tokenize, Stage::Train, Stage::Evaluate, Stage::Export];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Download => "download",
            Stage::Tokenize => "tokenize",
            Stage::Train => "train",
            Stage::Evaluate => "evaluate",
            Stage::Export => "export",
        }
    }

    /// The binary that runs this stage.
    pub fn binary(self) -> &'static str {
        match self {
            Stage::Download => "ft-download",
            Stage::Tokenize => "ft-tokenize",
            Stage::Train => "ft-train",
            Stage::Evaluate => "ft-evaluate",
            Stage::Export => "ft-export",
        }
    }

    /// The cargo package that holds the binary.
    pub fn package(self) -> &'static str {
        self.name()
    }

    pub fn parse(s: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|st| st.name() == s)
    }

    /// The upstream stages whose artifacts this stage reads.
    pub fn inputs(self) -> &'static [Stage] {
        match self {
            Stage::Download => &[],
            Stage::Tokenize => &[Stage::Download],
            Stage::Train => &[Stage::Download, Stage::Tokenize],
            Stage::Evaluate => &[Stage::Tokenize, Stage::Train],
            Stage::Export => &[Stage::Download, Stage::Tokenize, Stage::Train],
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A stage section: the typed parameters (validated) and their JSON form (passed to the binary).
#[derive(Clone, Debug)]
pub struct Section {
    pub stage: Stage,
    pub params: serde_json::Value,
}

/// A parsed pipeline.
#[derive(Clone, Debug)]
pub struct Pipeline {
    pub name: String,
    /// The artifact store, relative to the current directory when not absolute.
    pub store: PathBuf,
    pub stages: Vec<Section>,
}

impl Pipeline {
    pub fn section(&self, stage: Stage) -> Option<&Section> {
        self.stages.iter().find(|s| s.stage == stage)
    }
}

/// A pipeline or parameter file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: cannot read: {source} (check the path)")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{message}")]
    Parse { path: PathBuf, message: String },
}

const TOP_KEYS: &[&str] = &["name", "store", "download", "tokenize", "train", "evaluate", "export"];

/// Parses one stage's parameters (typed, defaults applied) into canonical JSON.
fn typed_section<'de, A: MapAccess<'de>>(stage: Stage, map: &mut A) -> Result<serde_json::Value, A::Error> {
    fn go<'de, A: MapAccess<'de>, T: serde::de::DeserializeOwned + serde::Serialize>(
        map: &mut A,
    ) -> Result<serde_json::Value, A::Error> {
        let v: T = map.next_value()?;
        serde_json::to_value(&v).map_err(de::Error::custom)
    }
    match stage {
        Stage::Download => go::<A, DownloadParams>(map),
        Stage::Tokenize => go::<A, TokenizeParams>(map),
        Stage::Train => go::<A, TrainParams>(map),
        Stage::Evaluate => go::<A, EvaluateParams>(map),
        Stage::Export => go::<A, ExportParams>(map),
    }
}

struct PipelineVisitor;

impl<'de> Visitor<'de> for PipelineVisitor {
    type Value = Pipeline;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a pipeline mapping with `name` and stage sections")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Pipeline, A::Error> {
        let mut name: Option<String> = None;
        let mut store: Option<PathBuf> = None;
        let mut stages: Vec<Section> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "name" => {
                    if name.is_some() {
                        return Err(de::Error::duplicate_field("name"));
                    }
                    name = Some(map.next_value()?);
                }
                "store" => {
                    if store.is_some() {
                        return Err(de::Error::duplicate_field("store"));
                    }
                    store = Some(map.next_value()?);
                }
                other => {
                    let Some(stage) = Stage::parse(other) else {
                        return Err(de::Error::custom(format!(
                            "unknown stage or key `{other}`, expected one of {}",
                            TOP_KEYS.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
                        )));
                    };
                    if let Some(last) = stages.last() {
                        if last.stage == stage {
                            return Err(de::Error::custom(format!("duplicate stage `{stage}`")));
                        }
                        if stages.iter().any(|s| s.stage == stage) {
                            return Err(de::Error::custom(format!("duplicate stage `{stage}`")));
                        }
                        if last.stage > stage {
                            return Err(de::Error::custom(format!(
                                "stage `{stage}` comes after `{}`; stages run in the order {} — move `{stage}` up",
                                last.stage,
                                Stage::ALL.map(|s| s.name()).join(" → ")
                            )));
                        }
                    }
                    let params = typed_section(stage, &mut map)?;
                    stages.push(Section { stage, params });
                }
            }
        }
        let name = name.ok_or_else(|| de::Error::missing_field("name"))?;
        if stages.is_empty() {
            return Err(de::Error::custom("a pipeline needs at least one stage section"));
        }
        Ok(Pipeline { name, store: store.unwrap_or_else(|| PathBuf::from("data")), stages })
    }
}

impl<'de> Deserialize<'de> for Pipeline {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Pipeline, D::Error> {
        d.deserialize_map(PipelineVisitor)
    }
}

/// Formats a YAML error as `LINE:COLUMN: message` (the path is prepended by the caller).
fn yaml_message(e: &serde_yaml_ng::Error) -> String {
    let text = e.to_string();
    match e.location() {
        // serde_yaml_ng appends " at line L column C" to messages; keep one location, in front.
        Some(loc) => {
            let msg = text.split(" at line ").next().unwrap_or(&text).to_string();
            format!("{}:{}: {msg}", loc.line(), loc.column())
        }
        None => format!(" {text}"),
    }
}

/// The line of the last top-level `key:` in a YAML text (1-based).
fn top_level_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with(':')))
        .map(|(i, _)| i + 1)
        .last()
}

/// Parses a pipeline from text; `path` is only used in messages.
pub fn parse(path: &Path, text: &str) -> Result<Pipeline, Error> {
    serde_yaml_ng::from_str::<Pipeline>(text).map_err(|e| {
        let mut message = yaml_message(&e);
        // Errors raised about whole stage sections (order, duplicates, unknown stages) carry the
        // mapping's start; point at the offending top-level key instead.
        if message.starts_with("1:1: ") {
            let body = &message[5..];
            let key = body.split('`').nth(1).unwrap_or_default();
            if let Some(line) = top_level_line(text, key) {
                message = format!("{line}:1: {body}");
            }
        }
        Error::Parse { path: path.to_path_buf(), message }
    })
}

/// Reads and parses a pipeline file.
pub fn load(path: &Path) -> Result<Pipeline, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.to_path_buf(), source })?;
    parse(path, &text)
}

/// Reads one stage's parameter file (YAML or JSON) into its typed form.
pub fn load_params<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.to_path_buf(), source })?;
    serde_yaml_ng::from_str::<T>(&text).map_err(|e| Error::Parse { path: path.to_path_buf(), message: yaml_message(&e) })
}
