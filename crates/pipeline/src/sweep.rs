//! Settings and sweeps: `--set KEY=VALUE` changes one key of a pipeline file, `--grid
//! KEY=V1,V2` and the file's `sweep:` section give a key several values, and every combination
//! of those values is one pipeline. Each combination is checked exactly as a file is (unknown
//! key, wrong type, cross-stage rules), before anything runs.

use std::fmt;
use std::path::Path;

use serde_yaml_ng::{Mapping, Value};

use crate::{parse, Error, Pipeline, Stage};

/// One key set to one value: `train.learning_rate=3e-5` (the value is YAML, so `[1, 2]` is a
/// list and `balanced` a string).
#[derive(Clone, Debug, PartialEq)]
pub struct Setting {
    pub key: String,
    pub value: Value,
}

/// One key with the values a sweep gives it, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Axis {
    pub key: String,
    pub values: Vec<Value>,
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, show_value(&self.value))
    }
}

/// A value as a user writes it on the command line (YAML flow style, one line).
pub fn show_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Sequence(items) => format!("[{}]", items.iter().map(show_value).collect::<Vec<_>>().join(", ")),
        // Learning rates read as 3e-5, not 0.00003.
        Value::Number(n) if n.is_f64() => match n.as_f64() {
            Some(x) if x != 0.0 && (x.abs() < 1e-3 || x.abs() >= 1e6) => format!("{x:e}"),
            Some(x) => format!("{x}"),
            None => n.to_string(),
        },
        other => serde_yaml_ng::to_string(other).map(|s| s.trim().to_string()).unwrap_or_default(),
    }
}

fn split_key_value<'a>(arg: &'a str, flag: &str) -> Result<(&'a str, &'a str), String> {
    let (key, value) = arg
        .split_once('=')
        .ok_or_else(|| format!("{flag} {arg}: expected KEY=VALUE with a dotted key, e.g. {flag} train.learning_rate=3e-5"))?;
    check_key(key.trim()).map_err(|e| format!("{flag} {arg}: {e}"))?;
    Ok((key.trim(), value.trim()))
}

/// A dotted key names a stage section (or `name`/`store`) and then keys inside it.
fn check_key(key: &str) -> Result<(), String> {
    let first = key.split('.').next().unwrap_or_default();
    if key.split('.').any(str::is_empty) {
        return Err(format!("`{key}` has an empty part; write keys as section.key (e.g. train.epochs)"));
    }
    if first == "sweep" {
        return Err("`sweep` itself cannot be set; set the keys it sweeps".into());
    }
    if Stage::parse(first).is_none() && first != "name" && first != "store" {
        return Err(format!(
            "`{first}` is not a stage or top-level key; expected one of name, store, {}",
            Stage::ALL.map(|s| s.name()).join(", ")
        ));
    }
    if (first == "name" || first == "store") && key != first {
        return Err(format!("`{first}` is a plain value and has no keys inside it"));
    }
    Ok(())
}

fn yaml_value(text: &str, what: &str) -> Result<Value, String> {
    serde_yaml_ng::from_str::<Value>(text).map_err(|e| format!("{what}: `{text}` is not a YAML value: {e}"))
}

impl Setting {
    /// Parses `KEY=VALUE` as given to `--set`.
    pub fn parse(arg: &str) -> Result<Setting, String> {
        let (key, value) = split_key_value(arg, "--set")?;
        Ok(Setting { key: key.into(), value: yaml_value(value, &format!("--set {arg}"))? })
    }

    /// Puts the value at the key in a pipeline document. A missing key inside an existing
    /// section is added; a missing stage section is an error (a setting changes a pipeline, it
    /// does not add stages to it).
    fn apply(&self, doc: &mut Value) -> Result<(), String> {
        let mut parts = self.key.split('.');
        let first = parts.next().unwrap_or_default();
        let Some(root) = doc.as_mapping_mut() else { return Err("the pipeline file is not a mapping".into()) };
        let rest: Vec<&str> = parts.collect();
        if rest.is_empty() {
            if Stage::parse(first).is_some() {
                return Err(format!("`{first}` is a whole section; set keys inside it (e.g. {first}.<key>=...)"));
            }
            root.insert(Value::from(first), self.value.clone());
            return Ok(());
        }
        let mut at = root
            .get_mut(first)
            .ok_or_else(|| format!("the pipeline has no `{first}` section; a setting changes keys of the stages it has"))?;
        for (i, part) in rest.iter().enumerate() {
            if at.is_null() {
                *at = Value::Mapping(Mapping::new());
            }
            let map = match at {
                Value::Mapping(map) => map,
                other => {
                    let here = [first].iter().chain(&rest[..i]).copied().collect::<Vec<_>>().join(".");
                    return Err(format!("`{here}` is {}, not a mapping with keys", show_value(other)));
                }
            };
            if i + 1 == rest.len() {
                map.insert(Value::from(*part), self.value.clone());
                return Ok(());
            }
            at = map.entry(Value::from(*part)).or_insert(Value::Mapping(Mapping::new()));
        }
        Ok(())
    }
}

impl Axis {
    /// Parses `KEY=V1,V2,...` as given to `--grid` (commas inside `[...]` or `{...}` do not
    /// split: `train.class_weights=[1, 2],[1, 4]` is two values).
    pub fn parse(arg: &str) -> Result<Axis, String> {
        let (key, values) = split_key_value(arg, "--grid")?;
        let what = format!("--grid {arg}");
        let pieces = split_top_level(values);
        if pieces.iter().any(|v| v.trim().is_empty()) {
            return Err(format!("{what}: `{key}` needs one or more values, separated by commas, none of them empty"));
        }
        let values = pieces.into_iter().map(|v| yaml_value(v.trim(), &what)).collect::<Result<Vec<_>, _>>()?;
        Axis::new(key, values).map_err(|e| format!("{what}: {e}"))
    }

    fn new(key: &str, values: Vec<Value>) -> Result<Axis, String> {
        if values.is_empty() {
            return Err(format!("`{key}` needs one or more values, separated by commas"));
        }
        for (i, v) in values.iter().enumerate() {
            if values[..i].contains(v) {
                return Err(format!("`{key}` lists {} twice", show_value(v)));
            }
        }
        Ok(Axis { key: key.into(), values })
    }
}

fn split_top_level(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0i32, 0, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '[' | '{' => depth += 1,
            ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// The file's `sweep:` section (a mapping of dotted keys to lists of values), checked.
pub(crate) fn sweep_section(v: Value) -> Result<Vec<Axis>, String> {
    let Value::Mapping(m) = v else { return Err("`sweep` must map dotted keys to lists of values, e.g. `train.learning_rate: [1e-5, 3e-5]`".into()) };
    let mut axes = Vec::new();
    for (k, v) in m {
        let Value::String(key) = k else { return Err(format!("sweep: key {} is not a dotted key", show_value(&k))) };
        check_key(&key).map_err(|e| format!("sweep.{key}: {e}"))?;
        let Value::Sequence(values) = v else { return Err(format!("sweep.{key}: expected a list of values, e.g. [1e-5, 3e-5]; got {}", show_value(&v))) };
        axes.push(Axis::new(&key, values).map_err(|e| format!("sweep.{e}"))?);
    }
    Ok(axes)
}

/// A pipeline file with its settings: the base pipeline, and every combination of the sweep's
/// values with the settings applied.
pub struct Sweep {
    /// The pipeline with `--set` applied, sweep keys at their file values.
    pub base: Pipeline,
    /// One entry per combination: the swept values (`--grid` replaces the file's axis of the same
    /// key; `--set` removes it) and the pipeline they make. Empty when nothing is swept.
    pub combinations: Vec<(Vec<Setting>, Pipeline)>,
    /// The swept keys, in order.
    pub axes: Vec<String>,
}

/// Reads a pipeline file and applies `settings` and the sweep (the file's `sweep:` section and
/// `grid`). Every combination is parsed and checked here; an error names the setting or swept
/// value that made it.
pub fn load_sweep(path: &Path, settings: &[Setting], grid: &[Axis]) -> Result<Sweep, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.to_path_buf(), source })?;
    let file = parse(path, &text)?;
    let parse_err = |message: String| Error::Parse { path: path.to_path_buf(), message };
    let mut doc: Value = serde_yaml_ng::from_str(&text).map_err(|e| parse_err(format!(" {e}")))?;
    if let Some(m) = doc.as_mapping_mut() {
        m.remove("sweep");
    }
    let mut axes: Vec<Axis> = file.sweep.clone();
    for g in grid {
        match axes.iter_mut().find(|a| a.key == g.key) {
            Some(a) => *a = g.clone(),
            None => axes.push(g.clone()),
        }
    }
    axes.retain(|a| !settings.iter().any(|s| s.key == a.key));
    let base = if settings.is_empty() { Pipeline { sweep: Vec::new(), ..file } } else { with_settings(path, &doc, settings, &[])? };
    let mut combinations = Vec::new();
    if !axes.is_empty() {
        for values in product(&axes) {
            let swept: Vec<Setting> = axes.iter().zip(values).map(|(a, v)| Setting { key: a.key.clone(), value: v.clone() }).collect();
            let p = with_settings(path, &doc, settings, &swept)?;
            combinations.push((swept, p));
        }
    }
    Ok(Sweep { base, combinations, axes: axes.into_iter().map(|a| a.key).collect() })
}

/// Every combination of the axes' values, the first axis changing slowest.
fn product(axes: &[Axis]) -> Vec<Vec<&Value>> {
    axes.iter().fold(vec![Vec::new()], |acc, axis| {
        acc.into_iter().flat_map(|prefix| axis.values.iter().map(move |v| [prefix.clone(), vec![v]].concat())).collect()
    })
}

/// Applies the settings, then the swept values (at least one of either), and parses the result
/// once. When that fails, the document is rebuilt one setting at a time to name the first one
/// that breaks the pipeline.
fn with_settings(path: &Path, doc: &Value, settings: &[Setting], swept: &[Setting]) -> Result<Pipeline, Error> {
    let all: Vec<(&Setting, &str)> = settings.iter().map(|s| (s, "--set")).chain(swept.iter().map(|s| (s, "sweep"))).collect();
    let build = |upto: usize| -> Result<Pipeline, (usize, String)> {
        let mut doc = doc.clone();
        for (i, (s, _)) in all[..upto].iter().enumerate() {
            s.apply(&mut doc).map_err(|m| (i, m))?;
        }
        let text = serde_yaml_ng::to_string(&doc).map_err(|e| (upto.saturating_sub(1), e.to_string()))?;
        parse(path, &text).map_err(|e| (upto.saturating_sub(1), located_message(e)))
    };
    let failure = match build(all.len()) {
        Ok(p) => return Ok(p),
        // An error in applying names its setting already; a parse error needs the search.
        Err(f) => (1..=all.len()).find_map(|n| build(n).err()).unwrap_or(f),
    };
    let (i, message) = failure;
    let applied: String = all[..i].iter().map(|(s, flag)| format!("{flag} {s}, ")).collect();
    let (s, flag) = all.get(i).copied().ok_or_else(|| Error::Parse { path: path.to_path_buf(), message: format!(" {message}") })?;
    Err(Error::Parse { path: path.to_path_buf(), message: format!(" with {applied}{flag} {s}: {message}") })
}

/// A parse error of a document rebuilt from settings: its line and column point into text the
/// user never wrote, so only the message stays.
fn located_message(e: Error) -> String {
    match e {
        Error::Parse { message, .. } => {
            let m = message.trim_start();
            let mut parts = m.splitn(3, ':');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(l), Some(c), Some(rest)) if l.parse::<usize>().is_ok() && c.parse::<usize>().is_ok() => rest.trim().to_string(),
                _ => m.to_string(),
            }
        }
        Error::Read { source, .. } => source.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The parser tests' one-file pipeline, with a learning rate and a split it will have.
    fn base_text() -> String {
        crate::tests::ONE_FILE.replace("epochs: 1", "epochs: 1\n  learning_rate: 1.0e-4").replace("split: test", "split: validation")
    }

    fn file(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("p.yaml");
        std::fs::write(&p, text).unwrap();
        (d, p)
    }

    fn param(p: &Pipeline, stage: Stage, key: &str) -> serde_json::Value {
        p.section(stage).unwrap().params[key].clone()
    }

    #[test]
    fn a_setting_changes_one_key_and_is_checked_as_the_file_is() {
        let (_d, path) = file(&base_text());
        let s = load_sweep(&path, &[Setting::parse("train.learning_rate=3e-5").unwrap(), Setting::parse("tokenize.max_length=128").unwrap()], &[]).unwrap();
        assert_eq!(param(&s.base, Stage::Train, "learning_rate"), serde_json::json!(3e-5));
        assert_eq!(param(&s.base, Stage::Tokenize, "max_length"), serde_json::json!(128));
        assert!(s.combinations.is_empty());
        // A key inside a section that the file leaves at its default is added.
        let s = load_sweep(&path, &[Setting::parse("train.class_weights=balanced").unwrap()], &[]).unwrap();
        assert_eq!(param(&s.base, Stage::Train, "class_weights"), serde_json::json!("balanced"));
        let e = |arg: &str| load_sweep(&path, &[Setting::parse(arg).unwrap()], &[]).err().unwrap().to_string();
        let unknown = e("train.learnin_rate=3e-5");
        assert!(unknown.contains("with --set train.learnin_rate=3e-5: train: unknown field `learnin_rate`") && unknown.contains("did you mean `learning_rate`?"), "{unknown}");
        let typed = e("train.epochs=many");
        assert!(typed.contains("--set train.epochs=many") && typed.contains("invalid type: string \"many\""), "{typed}");
        // Cross-stage rules hold for settings too.
        let cross = e("evaluate.split=test");
        assert!(cross.contains("--set evaluate.split=test: evaluate.split `test` will not exist"), "{cross}");
        assert!(e("export.dtype=bf16").contains("the pipeline has no `export` section"));
        assert!(e("train.learning_rate.x=1").contains("`train.learning_rate` is 1e-4, not a mapping"), "{}", e("train.learning_rate.x=1"));
        for (arg, needle) in [
            ("train", "expected KEY=VALUE"),
            ("trian.epochs=2", "`trian` is not a stage"),
            ("train..epochs=2", "empty part"),
            ("name.x=1", "plain value"),
        ] {
            assert!(Setting::parse(arg).unwrap_err().contains(needle), "{arg}: {}", Setting::parse(arg).unwrap_err());
        }
        assert!(e("train=1").contains("is a whole section"));
    }

    #[test]
    fn a_grid_and_a_sweep_section_make_every_combination() {
        let text = format!("{}sweep:\n  train.learning_rate: [1.0e-5, 2.0e-5]\n  train.epochs: [1, 2, 3]\n", base_text());
        let (_d, path) = file(&text);
        let s = load_sweep(&path, &[], &[]).unwrap();
        assert_eq!(s.axes, ["train.learning_rate", "train.epochs"]);
        assert_eq!(s.combinations.len(), 6);
        let shown: Vec<String> = s.combinations.iter().map(|(v, _)| v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(" ")).collect();
        assert_eq!(shown[0], "train.learning_rate=1e-5 train.epochs=1");
        assert_eq!(shown[5], "train.learning_rate=2e-5 train.epochs=3");
        assert_eq!(param(&s.combinations[4].1, Stage::Train, "epochs"), serde_json::json!(2.0));
        // The base pipeline keeps the file's values; the file's `sweep` does not reach stages.
        assert_eq!(param(&s.base, Stage::Train, "learning_rate"), serde_json::json!(1e-4));
        // --grid replaces the file's axis for its key and adds new ones; --set fixes a key.
        let s = load_sweep(&path, &[Setting::parse("train.epochs=4").unwrap()], &[Axis::parse("train.learning_rate=1e-5,2e-5,5e-5").unwrap(), Axis::parse("tokenize.max_length=32,64").unwrap()]).unwrap();
        assert_eq!(s.axes, ["train.learning_rate", "tokenize.max_length"]);
        assert_eq!(s.combinations.len(), 6);
        assert!(s.combinations.iter().all(|(_, p)| param(p, Stage::Train, "epochs") == serde_json::json!(4.0)));
        // A bad value anywhere in the grid fails before anything runs, naming it.
        let e = load_sweep(&path, &[], &[Axis::parse("train.batch_size=8,0").unwrap()]).err().unwrap().to_string();
        assert!(e.contains("sweep train.batch_size=0"), "{e}");
        // Lists inside a grid keep their commas.
        let a = Axis::parse("train.class_weights=[1, 2],[1, 4]").unwrap();
        assert_eq!(a.values.len(), 2);
        assert!(Axis::parse("train.epochs=1,1").unwrap_err().contains("lists 1 twice"));
        assert!(Axis::parse("train.epochs=1,").unwrap_err().contains("one or more values"));
        for (section, needle) in [("sweep: [1, 2]\n", "must map dotted keys"), ("sweep:\n  train.epochs: 3\n", "expected a list of values"), ("sweep:\n  trian.epochs: [1]\n", "`trian` is not a stage")] {
            let (_d, path) = file(&format!("{}{section}", base_text()));
            let e = load_sweep(&path, &[], &[]).err().unwrap().to_string();
            assert!(e.contains(needle), "{section}: {e}");
        }
    }
}
