//! Reading `template.yaml` in tests: walking its YAML (shared by the template–code agreement
//! test and the Lambda runtime test, so there is one reading of the template), and
//! evaluating the CloudFormation expressions a function's configuration is written in
//! (`!Ref`, `!GetAtt`, `!Sub`, `!If` and the condition functions), so a test can start a
//! binary with the environment a deployed stack would give it.
//!
//! The evaluator is strict: a reference to anything it was not told about, or a function it
//! does not evaluate, is an error naming it, so a template change the tests cannot follow
//! fails them instead of starting a function with a made-up value.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use serde_norway::Value;

/// Asserts that a template checker found no problems, listing them if it did.
pub fn assert_no_problems(problems: &[String]) {
    assert!(problems.is_empty(), "{problems:#?}");
}

/// The repository's root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `template.yaml`, parsed.
pub fn template() -> Value {
    let text = std::fs::read_to_string(root().join("template.yaml")).unwrap();
    serde_norway::from_str(&text).unwrap()
}

/// `v[key]` through YAML mappings; `Null` when absent.
pub fn get<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    static NULL: Value = Value::Null;
    path.iter().try_fold(v, |v, k| v.get(*k)).unwrap_or(&NULL)
}

/// The value at `path` (keys joined by `.`) under the template's `Resources`; `Null` when
/// absent.
pub fn resource_at<'a>(t: &'a Value, path: &str) -> &'a Value {
    let keys: Vec<&str> = std::iter::once("Resources")
        .chain(path.split('.'))
        .collect();
    get(t, &keys)
}

/// The string of a scalar string.
pub fn str_of(v: &Value) -> Option<&str> {
    v.as_str()
}

/// The string keys of a mapping; empty for anything else.
pub fn keys_of(v: &Value) -> BTreeSet<String> {
    v.as_mapping()
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The resources of type `ty`, as (logical id, resource).
pub fn resources<'a>(t: &'a Value, ty: &str) -> Vec<(String, &'a Value)> {
    get(t, &["Resources"])
        .as_mapping()
        .unwrap()
        .iter()
        .filter(|(_, r)| str_of(get(r, &["Type"])) == Some(ty))
        .map(|(k, r)| (k.as_str().unwrap().to_owned(), r))
        .collect()
}

/// What CloudFormation would make of the template's expressions in one stack: the
/// parameters' values, the pseudo parameters, and the physical values (`!Ref`, `!GetAtt`)
/// of the resources the caller created.
pub struct Stack<'t> {
    /// The template.
    pub template: &'t Value,
    /// Every parameter's value: its default unless overridden.
    pub parameters: BTreeMap<String, String>,
    /// `AWS::StackName`, `AWS::Region`, ...
    pub pseudo: BTreeMap<String, String>,
    /// What `!Ref <logical id>` gives, for the resources created.
    pub refs: BTreeMap<String, String>,
    /// What `!GetAtt <logical id>.<attribute>` gives, keyed `<logical id>.<attribute>`.
    pub attributes: BTreeMap<String, String>,
}

/// A scalar as CloudFormation passes it around: a string.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn json_str(v: &Json) -> Result<String, String> {
    match v {
        Json::String(s) => Ok(s.clone()),
        Json::Number(n) => Ok(n.to_string()),
        Json::Bool(b) => Ok(b.to_string()),
        other => Err(format!("{other} is not a scalar")),
    }
}

impl<'t> Stack<'t> {
    /// The stack `name` of `template` in `region` and `account`, with every parameter at
    /// its default except `overrides`; no resources yet. An override of a parameter the
    /// template does not declare is an error.
    pub fn new(
        template: &'t Value,
        name: &str,
        region: &str,
        account: &str,
        overrides: &[(&str, &str)],
    ) -> Result<Self, String> {
        let mut parameters = BTreeMap::new();
        let declared = get(template, &["Parameters"]).as_mapping().unwrap();
        for (k, p) in declared {
            let k = k.as_str().unwrap();
            if let Some(d) = scalar(get(p, &["Default"])) {
                parameters.insert(k.to_owned(), d);
            }
        }
        for (k, v) in overrides {
            if !declared.contains_key(*k) {
                return Err(format!("the template has no parameter {k}"));
            }
            parameters.insert((*k).to_owned(), (*v).to_owned());
        }
        let pseudo = [
            ("AWS::StackName", name),
            ("AWS::Region", region),
            ("AWS::AccountId", account),
            ("AWS::Partition", "aws"),
            ("AWS::URLSuffix", "amazonaws.com"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        Ok(Stack {
            template,
            parameters,
            pseudo,
            refs: BTreeMap::new(),
            attributes: BTreeMap::new(),
        })
    }

    /// Whether the template's condition `name` holds.
    pub fn condition(&self, name: &str) -> Result<bool, String> {
        let c = get(self.template, &["Conditions", name]);
        if c.is_null() {
            return Err(format!("no condition {name}"));
        }
        self.boolean(c)
    }

    /// Whether a resource with a `Condition` exists in this stack.
    pub fn exists(&self, resource: &Value) -> Result<bool, String> {
        match str_of(get(resource, &["Condition"])) {
            None => Ok(true),
            Some(c) => self.condition(c),
        }
    }

    fn boolean(&self, v: &Value) -> Result<bool, String> {
        match self.eval(v)? {
            Some(Json::Bool(b)) => Ok(b),
            other => Err(format!("{v:?} is not a condition (gave {other:?})")),
        }
    }

    fn string(&self, v: &Value) -> Result<String, String> {
        match self.eval(v)? {
            Some(j) => json_str(&j),
            None => Err(format!("{v:?} is AWS::NoValue where a value is needed")),
        }
    }

    fn reference(&self, name: &str) -> Result<Option<String>, String> {
        if name == "AWS::NoValue" {
            return Ok(None);
        }
        self.pseudo
            .get(name)
            .or_else(|| self.parameters.get(name))
            .or_else(|| self.refs.get(name))
            .cloned()
            .map(Some)
            .ok_or_else(|| {
                format!("!Ref {name}: neither a parameter nor a resource this stack created")
            })
    }

    fn attribute(&self, path: &str) -> Result<String, String> {
        self.attributes.get(path).cloned().ok_or_else(|| {
            format!("!GetAtt {path}: not an attribute of a resource this stack created")
        })
    }

    fn sub(&self, text: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(at) = rest.find("${") {
            out.push_str(&rest[..at]);
            let after = &rest[at + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| format!("!Sub {text:?}: unclosed ${{"))?;
            let name = &after[..end];
            if let Some(literal) = name.strip_prefix('!') {
                out.push_str("${");
                out.push_str(literal);
                out.push('}');
            } else if let Some(v) = vars.get(name) {
                out.push_str(v);
            } else if name.contains('.') && !name.starts_with("AWS::") {
                out.push_str(&self.attribute(name)?);
            } else {
                let v = self
                    .reference(name)?
                    .ok_or_else(|| format!("!Sub {text:?}: ${{{name}}} is AWS::NoValue"))?;
                out.push_str(&v);
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// Evaluates `v` as CloudFormation would in this stack: `None` for `AWS::NoValue`
    /// (dropped from sequences and mappings); conditions evaluate to booleans.
    pub fn eval(&self, v: &Value) -> Result<Option<Json>, String> {
        Ok(Some(match v {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(*b),
            Value::Number(n) => serde_json::to_value(n).map_err(|e| e.to_string())?,
            Value::String(s) => Json::String(s.clone()),
            Value::Sequence(items) => {
                let mut out = Vec::new();
                for item in items {
                    if let Some(j) = self.eval(item)? {
                        out.push(j);
                    }
                }
                Json::Array(out)
            }
            Value::Mapping(m) => {
                // The long form of a function: `{"Fn::If": [...]}`, `{"Ref": "X"}`.
                if m.len() == 1
                    && let Some((k, arg)) = m.iter().next()
                    && let Some(k) = k.as_str()
                    && (k == "Ref" || k == "Condition" || k.starts_with("Fn::"))
                {
                    return self.function(k.trim_start_matches("Fn::"), arg);
                }
                let mut out = serde_json::Map::new();
                for (k, item) in m {
                    let k = scalar(k).ok_or_else(|| format!("mapping key {k:?}"))?;
                    if let Some(j) = self.eval(item)? {
                        out.insert(k, j);
                    }
                }
                Json::Object(out)
            }
            Value::Tagged(t) => {
                let tag = t.tag.to_string();
                return self.function(tag.trim_start_matches('!'), &t.value);
            }
        }))
    }

    fn function(&self, name: &str, arg: &Value) -> Result<Option<Json>, String> {
        let args = || {
            arg.as_sequence()
                .ok_or_else(|| format!("!{name} takes a list, got {arg:?}"))
        };
        Ok(Some(match name {
            "Ref" => {
                let target = str_of(arg).ok_or_else(|| format!("!Ref {arg:?}"))?;
                return Ok(self.reference(target)?.map(Json::String));
            }
            "GetAtt" => {
                let path = match arg {
                    Value::String(s) => s.clone(),
                    Value::Sequence(s) => s
                        .iter()
                        .map(|p| self.string(p))
                        .collect::<Result<Vec<_>, _>>()?
                        .join("."),
                    other => return Err(format!("!GetAtt {other:?}")),
                };
                Json::String(self.attribute(&path)?)
            }
            "Sub" => match arg {
                Value::String(text) => Json::String(self.sub(text, &BTreeMap::new())?),
                Value::Sequence(s) if s.len() == 2 => {
                    let text = str_of(&s[0]).ok_or_else(|| format!("!Sub {arg:?}"))?;
                    let mut vars = BTreeMap::new();
                    for (k, v) in s[1].as_mapping().into_iter().flatten() {
                        vars.insert(scalar(k).unwrap_or_default(), self.string(v)?);
                    }
                    Json::String(self.sub(text, &vars)?)
                }
                other => return Err(format!("!Sub {other:?}")),
            },
            "If" => {
                let a = args()?;
                let [cond, then, otherwise] = a.as_slice() else {
                    return Err(format!("!If takes three arguments: {a:?}"));
                };
                let cond = str_of(cond).ok_or_else(|| format!("!If condition {cond:?}"))?;
                return if self.condition(cond)? {
                    self.eval(then)
                } else {
                    self.eval(otherwise)
                };
            }
            "Condition" => {
                let c = str_of(arg).ok_or_else(|| format!("Condition {arg:?}"))?;
                Json::Bool(self.condition(c)?)
            }
            "Equals" => {
                let a = args()?;
                let [x, y] = a.as_slice() else {
                    return Err(format!("!Equals takes two arguments: {a:?}"));
                };
                Json::Bool(self.string(x)? == self.string(y)?)
            }
            "Not" => {
                let a = args()?;
                let [x] = a.as_slice() else {
                    return Err(format!("!Not takes one argument: {a:?}"));
                };
                Json::Bool(!self.boolean(x)?)
            }
            "And" | "Or" => {
                let values = args()?
                    .iter()
                    .map(|x| self.boolean(x))
                    .collect::<Result<Vec<_>, _>>()?;
                Json::Bool(if name == "And" {
                    values.iter().all(|b| *b)
                } else {
                    values.iter().any(|b| *b)
                })
            }
            "Select" => {
                let a = args()?;
                let [index, list] = a.as_slice() else {
                    return Err(format!("!Select takes two arguments: {a:?}"));
                };
                let index: usize = self
                    .string(index)?
                    .parse()
                    .map_err(|e| format!("!Select index: {e}"))?;
                match self.eval(list)? {
                    Some(Json::Array(items)) => items
                        .get(index)
                        .cloned()
                        .ok_or_else(|| format!("!Select {index} of {items:?}"))?,
                    other => return Err(format!("!Select from {other:?}")),
                }
            }
            "Split" => {
                let a = args()?;
                let [delimiter, text] = a.as_slice() else {
                    return Err(format!("!Split takes two arguments: {a:?}"));
                };
                let delimiter = self.string(delimiter)?;
                Json::Array(
                    self.string(text)?
                        .split(delimiter.as_str())
                        .map(|s| Json::String(s.to_owned()))
                        .collect(),
                )
            }
            "Join" => {
                let a = args()?;
                let [delimiter, list] = a.as_slice() else {
                    return Err(format!("!Join takes two arguments: {a:?}"));
                };
                let delimiter = self.string(delimiter)?;
                match self.eval(list)? {
                    Some(Json::Array(items)) => Json::String(
                        items
                            .iter()
                            .map(json_str)
                            .collect::<Result<Vec<_>, _>>()?
                            .join(&delimiter),
                    ),
                    other => return Err(format!("!Join of {other:?}")),
                }
            }
            other => return Err(format!("!{other} is not evaluated by the tests")),
        }))
    }

    /// A function's property `key`, or the `Globals` one when it sets none; `None` when
    /// neither does.
    pub fn function_property(&self, function: &str, key: &str) -> Result<Option<Json>, String> {
        let own = get(self.template, &["Resources", function, "Properties", key]);
        let v = if own.is_null() {
            get(self.template, &["Globals", "Function", key])
        } else {
            own
        };
        if v.is_null() {
            return Ok(None);
        }
        self.eval(v)
    }

    /// The environment variables the function `id` gets in this stack: `Globals`' and its
    /// own (its own win), each evaluated, those that evaluate to `AWS::NoValue` left out.
    pub fn function_environment(&self, id: &str) -> Result<BTreeMap<String, String>, String> {
        let f = get(self.template, &["Resources", id]);
        if str_of(get(f, &["Type"])) != Some("AWS::Serverless::Function") {
            return Err(format!("{id} is not a function of the template"));
        }
        let mut env = BTreeMap::new();
        for vars in [
            get(
                self.template,
                &["Globals", "Function", "Environment", "Variables"],
            ),
            get(f, &["Properties", "Environment", "Variables"]),
        ] {
            for (k, v) in vars.as_mapping().into_iter().flatten() {
                let k = k.as_str().unwrap().to_owned();
                match self.eval(v).map_err(|e| format!("{id}: {k}: {e}"))? {
                    Some(v) => {
                        env.insert(
                            k.clone(),
                            json_str(&v).map_err(|e| format!("{id}: {k}: {e}"))?,
                        );
                    }
                    None => {
                        env.remove(&k);
                    }
                }
            }
        }
        Ok(env)
    }
}
