//! `template.yaml` and the code agree: the table the template creates is the one the
//! DynamoDB adapter reads and writes (keys, index, TTL attribute, redrive count), every
//! function builds a binary of the workspace (through `lambda/Makefile`), and every
//! environment variable a function's binary reads (`tally_lambda::env`) is set on it; the
//! API function accepts the ID tokens of the template's Cognito user pool.
//! Secrets reach a function only as ARNs, each readable by that function's role and by no
//! other, never as values. Every function's environment evaluates in either transport
//! (`common::template`, the evaluation `runtime_api_aws.rs` starts the binaries with).
//!
//! The checks are a function returning the problems found, so the last tests can show
//! that a broken template is caught, naming what is wrong.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use common::template::{
    Stack, assert_no_problems, get, keys_of, resource_at, resources, root, str_of, template,
};

use serde_norway::Value;
use tally_store::dynamodb::{GSI1, GSI1_PROJECTED, GSI1PK, GSI1SK, PK, SK, TTL};

fn makefile() -> String {
    std::fs::read_to_string(root().join("lambda/Makefile")).unwrap()
}

/// Every binary target of every workspace package, from `cargo metadata`.
fn workspace_bins() -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--offline",
            "--format-version",
            "1",
        ])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

/// (`AttributeName`, `second`) of each element of a sequence of attribute mappings, in
/// order; empty when `v` is not a sequence.
fn attribute_pairs<C: FromIterator<(String, String)>>(v: &Value, second: &str) -> C {
    let field = |a: &Value, k: &str| str_of(get(a, &[k])).unwrap_or("").to_owned();
    v.as_sequence()
        .into_iter()
        .flatten()
        .map(|a| (field(a, "AttributeName"), field(a, second)))
        .collect()
}

/// (attribute, key type) pairs of a `KeySchema`.
fn key_schema(v: &Value) -> Vec<(String, String)> {
    attribute_pairs(v, "KeyType")
}

/// The binary `lambda/Makefile`'s `build-<id>` target copies.
fn makefile_binary(makefile: &str, id: &str) -> Option<String> {
    let mut lines = makefile.lines();
    lines.find(|l| *l == format!("build-{id}:"))?;
    let body = lines.next()?;
    let arg = body.trim().strip_prefix("$(call copy_bootstrap,")?;
    Some(arg.strip_suffix(')')?.to_owned())
}

fn table_problems(t: &Value) -> Vec<String> {
    let mut p = Vec::new();
    let tables = resources(t, "AWS::DynamoDB::Table");
    let [(_, table)] = tables.as_slice() else {
        return vec![format!("want one DynamoDB table, found {}", tables.len())];
    };
    let props = get(table, &["Properties"]);
    let want_key = |h: &str, r: &str| {
        vec![
            (h.to_owned(), "HASH".to_owned()),
            (r.to_owned(), "RANGE".to_owned()),
        ]
    };
    if key_schema(get(props, &["KeySchema"])) != want_key(PK, SK) {
        p.push(format!("table key schema is not {PK} HASH / {SK} RANGE"));
    }
    let defined: BTreeSet<(String, String)> =
        attribute_pairs(get(props, &["AttributeDefinitions"]), "AttributeType");
    let want_defined: BTreeSet<(String, String)> = [PK, SK, GSI1PK, GSI1SK]
        .iter()
        .map(|a| ((*a).to_owned(), "S".to_owned()))
        .collect();
    if defined != want_defined {
        p.push(format!(
            "attribute definitions are {defined:?}, the adapter's keys are {want_defined:?}"
        ));
    }
    let gsis = get(props, &["GlobalSecondaryIndexes"])
        .as_sequence()
        .cloned()
        .unwrap_or_default();
    match gsis
        .iter()
        .find(|g| str_of(get(g, &["IndexName"])) == Some(GSI1))
    {
        None => p.push(format!("no global secondary index named {GSI1}")),
        Some(g) => {
            if key_schema(get(g, &["KeySchema"])) != want_key(GSI1PK, GSI1SK) {
                p.push(format!("index {GSI1} is not on {GSI1PK} / {GSI1SK}"));
            }
            // The projection is the `IndexProjection` parameter (ALL kept for stacks made
            // before it): what a new stack gets is its default, with the attribute list of
            // the `!If`'s other branch.
            let ty = get(g, &["Projection", "ProjectionType"]);
            let ty = match ty {
                Value::Tagged(r) if r.tag == "Ref" => str_of(&r.value)
                    .and_then(|param| str_of(get(t, &["Parameters", param, "Default"]))),
                other => str_of(other),
            };
            let attrs = get(g, &["Projection", "NonKeyAttributes"]);
            let attrs = match attrs {
                Value::Tagged(cond) if cond.tag == "If" => cond
                    .value
                    .as_sequence()
                    .and_then(|branches| branches.iter().find_map(Value::as_sequence)),
                other => other.as_sequence(),
            };
            let projected: BTreeSet<String> = attrs
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect();
            let want: BTreeSet<String> = GSI1_PROJECTED.iter().map(|a| (*a).to_owned()).collect();
            if ty != Some("INCLUDE") || projected != want {
                p.push(format!(
                    "index {GSI1} does not project INCLUDE {want:?} (GSI1_PROJECTED), what its queries read"
                ));
            }
        }
    }
    if gsis.len() != 1 {
        p.push(format!("want only the index {GSI1}, found {}", gsis.len()));
    }
    let ttl = get(props, &["TimeToLiveSpecification"]);
    if str_of(get(ttl, &["AttributeName"])) != Some(TTL)
        || get(ttl, &["Enabled"]).as_bool() != Some(true)
    {
        p.push(format!("TTL is not enabled on {TTL}"));
    }
    if get(
        props,
        &[
            "PointInTimeRecoverySpecification",
            "PointInTimeRecoveryEnabled",
        ],
    )
    .as_bool()
        != Some(true)
    {
        p.push("point-in-time recovery is off".into());
    }
    if str_of(get(props, &["BillingMode"])) != Some("PAY_PER_REQUEST") {
        p.push("the table is not on-demand (PAY_PER_REQUEST), as create_table makes it".into());
    }
    p
}

fn function_problems(t: &Value, makefile: &str, bins: &BTreeSet<String>) -> Vec<String> {
    let mut p = Vec::new();
    let globals = keys_of(get(t, &["Globals", "Function", "Environment", "Variables"]));
    let mut used = BTreeSet::new();
    let functions = resources(t, "AWS::Serverless::Function");
    if functions.is_empty() {
        p.push("no functions".into());
    }
    for (id, f) in &functions {
        let Some(bin) = str_of(get(f, &["Metadata", "Binary"])) else {
            p.push(format!("{id}: no Metadata.Binary naming its binary"));
            continue;
        };
        used.insert(bin.to_owned());
        if !bins.contains(bin) {
            p.push(format!(
                "{id}: binary {bin} is not a [[bin]] of the workspace"
            ));
        }
        if str_of(get(f, &["Metadata", "BuildMethod"])) != Some("makefile")
            || str_of(get(f, &["Properties", "CodeUri"])) != Some("lambda/")
        {
            p.push(format!(
                "{id}: not built by lambda/Makefile (BuildMethod makefile, CodeUri lambda/)"
            ));
        }
        match makefile_binary(makefile, id) {
            Some(m) if m == bin => {}
            Some(m) => p.push(format!(
                "{id}: lambda/Makefile copies {m}, the template says {bin}"
            )),
            None => p.push(format!("{id}: lambda/Makefile has no build-{id} target")),
        }
        let Some((_, reads)) = tally_lambda::env::BINARIES.iter().find(|(b, _)| *b == bin) else {
            p.push(format!(
                "{id}: {bin} has no list in tally_lambda::env::BINARIES"
            ));
            continue;
        };
        let mut set = globals.clone();
        set.extend(keys_of(get(f, &["Properties", "Environment", "Variables"])));
        for var in *reads {
            if !set.contains(*var) {
                p.push(format!(
                    "{id}: {bin} reads {var}, which the template does not set"
                ));
            }
        }
    }
    for (bin, _) in tally_lambda::env::BINARIES {
        if !used.contains(*bin) {
            p.push(format!(
                "{bin} is built but no function in the template runs it"
            ));
        }
    }
    p
}

#[test]
fn the_table_is_the_one_the_adapter_uses() {
    assert_no_problems(&table_problems(&template()));
}

#[test]
fn every_function_runs_a_workspace_binary_with_the_environment_it_reads() {
    let bins = workspace_bins();
    for (bin, _) in tally_lambda::env::BINARIES {
        assert!(
            bins.contains(*bin),
            "cargo metadata lists no binary {bin}: {bins:?}"
        );
    }
    assert_no_problems(&function_problems(&template(), &makefile(), &bins));
}

#[test]
fn the_queue_and_event_sources_match_the_adapters() {
    let t = template();
    let queue = resource_at(&t, "EventsQueue.Properties");
    assert_eq!(
        get(queue, &["RedrivePolicy", "maxReceiveCount"]).as_u64(),
        Some(u64::from(tally_store::sqs::MAX_RECEIVE_COUNT)),
        "the redrive count differs from tally_store::sqs::MAX_RECEIVE_COUNT"
    );
    for (id, esm) in resources(&t, "AWS::Lambda::EventSourceMapping") {
        let types = get(esm, &["Properties", "FunctionResponseTypes"]);
        assert_eq!(
            types
                .as_sequence()
                .map(|s| s.iter().filter_map(Value::as_str).collect::<Vec<_>>()),
            Some(vec!["ReportBatchItemFailures"]),
            "{id}: the aggregator answers with batchItemFailures"
        );
    }
    let schedule = resource_at(
        &t,
        "BillingFunction.Properties.Events.Monthly.Properties.Schedule",
    );
    assert_eq!(schedule.as_str(), Some("cron(0 2 1 * ? *)"));
}

/// The names a CloudFormation expression refers to: `!Ref X`, `!GetAtt X.Attr`, and the
/// `${X}` of a `!Sub` (pseudo parameters `AWS::*` left out), anywhere inside `v`.
fn refs(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Tagged(t) => {
            match (t.tag.to_string().trim_start_matches('!'), &t.value) {
                ("Ref", Value::String(name)) if !name.starts_with("AWS::") => {
                    out.insert(name.clone());
                }
                ("GetAtt", Value::String(path)) => {
                    out.insert(path.split('.').next().unwrap_or("").to_owned());
                }
                ("Sub", Value::String(text)) => {
                    for piece in text.split("${").skip(1) {
                        let name = piece.split('}').next().unwrap_or("");
                        let name = name.split('.').next().unwrap_or("");
                        if !name.starts_with("AWS::") {
                            out.insert(name.to_owned());
                        }
                    }
                }
                _ => {}
            }
            refs(&t.value, out);
        }
        Value::Sequence(s) => s.iter().for_each(|v| refs(v, out)),
        Value::Mapping(m) => m.values().for_each(|v| refs(v, out)),
        _ => {}
    }
}

/// Every IAM statement (a mapping with `Action`) anywhere inside `v`, through `!If`s.
fn statements<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Mapping(m) if m.contains_key("Action") && m.contains_key("Effect") => out.push(v),
        Value::Mapping(m) => m.values().for_each(|v| statements(v, out)),
        Value::Sequence(s) => s.iter().for_each(|v| statements(v, out)),
        Value::Tagged(t) => statements(&t.value, out),
        _ => {}
    }
}

/// The strings of a scalar or a sequence (an `Action` or a literal `Resource`).
fn strings(v: &Value) -> Vec<&str> {
    match v {
        Value::String(s) => vec![s.as_str()],
        Value::Sequence(s) => s.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// Secrets reach a function as the ARNs of its `*_SECRET_ARN` variables, which name a
/// secret of the template (or the Stripe secret's parameter); its role may call
/// `secretsmanager:GetSecretValue` on exactly those secrets; no variable holds a secret
/// value (a literal, or a `{{resolve:secretsmanager:...}}` resolved at deploy).
fn secret_problems(t: &Value) -> Vec<String> {
    let mut p = Vec::new();
    let whole = serde_norway::to_string(get(t, &["Resources"])).unwrap();
    if whole.contains("{{resolve:secretsmanager:") {
        p.push("a resource resolves a Secrets Manager value at deploy ({{resolve:secretsmanager:...}})".into());
    }
    let secrets: BTreeSet<String> = resources(t, "AWS::SecretsManager::Secret")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let parameters = keys_of(get(t, &["Parameters"]));
    for (id, f) in resources(t, "AWS::Serverless::Function") {
        let vars = get(f, &["Properties", "Environment", "Variables"]);
        let mut wanted = BTreeSet::new();
        for name in keys_of(vars) {
            if !name.contains("SECRET") || name == "TALLY_SECRETS_REFRESH_SECONDS" {
                continue;
            }
            if !name.ends_with("_SECRET_ARN") {
                p.push(format!(
                    "{id}: {name} carries a secret's value; functions get only *_SECRET_ARN"
                ));
                continue;
            }
            let mut named = BTreeSet::new();
            refs(get(vars, &[name.as_str()]), &mut named);
            let targets: BTreeSet<String> = named
                .into_iter()
                .filter(|n| secrets.contains(n) || parameters.contains(n) && n.contains("Secret"))
                .collect();
            if targets.is_empty() {
                p.push(format!(
                    "{id}: {name} does not name a secret of the template or a secret parameter"
                ));
            }
            wanted.extend(targets);
        }
        let role = str_of(match get(f, &["Properties", "Role"]) {
            Value::Tagged(t) => &t.value,
            other => other,
        })
        .and_then(|r| r.strip_suffix(".Arn"))
        .unwrap_or("");
        let mut stmts = Vec::new();
        statements(
            resource_at(t, &format!("{role}.Properties.Policies")),
            &mut stmts,
        );
        let mut granted = BTreeSet::new();
        for s in stmts {
            let actions = strings(get(s, &["Action"]));
            let reads_secrets = actions
                .iter()
                .any(|a| a.starts_with("secretsmanager:") || *a == "*");
            if !reads_secrets {
                continue;
            }
            if actions
                .iter()
                .any(|a| *a != "secretsmanager:GetSecretValue")
            {
                p.push(format!(
                    "{id}: {role} allows {actions:?}; a function only reads its secrets (secretsmanager:GetSecretValue)"
                ));
            }
            let resource = get(s, &["Resource"]);
            if strings(resource).iter().any(|r| r.contains('*')) {
                p.push(format!(
                    "{id}: {role} may read secrets it does not use (Resource *)"
                ));
            }
            refs(resource, &mut granted);
        }
        for missing in wanted.difference(&granted) {
            p.push(format!(
                "{id}: {role} may not read {missing}, which the function reads"
            ));
        }
        for extra in granted.difference(&wanted) {
            p.push(format!(
                "{id}: {role} may read {extra}, which the function does not use"
            ));
        }
    }
    p
}

#[test]
fn secrets_reach_functions_as_arns_their_roles_alone_may_read() {
    let t = template();
    assert_no_problems(&secret_problems(&t));
    // And each variable the code reads a secret from is an ARN variable.
    for (bin, vars) in tally_lambda::env::BINARIES {
        for var in *vars {
            assert!(
                !var.contains("_SECRET") || var.ends_with("_SECRET_ARN") || var.contains("REFRESH"),
                "{bin} reads a secret's value from {var}"
            );
        }
    }
}

/// Asserts that each of `wanted` is part of some problem in `p`: the checker caught the
/// fault the test planted.
fn assert_caught(p: &[String], wanted: &[&str]) {
    for w in wanted {
        assert!(p.iter().any(|m| m.contains(w)), "{w:?} not caught: {p:#?}");
    }
}

#[test]
fn a_secret_passed_by_value_or_read_without_its_own_grant_is_caught() {
    let mut t = template();
    // The old way: the value resolved at deploy into the environment.
    t["Resources"]["ApiFunction"]["Properties"]["Environment"]["Variables"]["TALLY_JWT_SECRET"] =
        "{{resolve:secretsmanager:JwtSecret:SecretString}}".into();
    let p = secret_problems(&t);
    assert_caught(&p, &["resolves a Secrets Manager value at deploy"]);
    assert!(
        p.iter().any(|m| m == "ApiFunction: TALLY_JWT_SECRET carries a secret's value; functions get only *_SECRET_ARN"),
        "{p:#?}"
    );
    // The billing role reading every secret of the account.
    let mut t = template();
    let billing =
        t["Resources"]["BillingRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
            .as_sequence_mut()
            .unwrap();
    billing.push(
        serde_norway::from_str("{Effect: Allow, Action: 'secretsmanager:*', Resource: '*'}")
            .unwrap(),
    );
    let p = secret_problems(&t);
    assert_caught(
        &p,
        &[
            "BillingRole may read secrets it does not use (Resource *)",
            "BillingRole allows",
        ],
    );
    // The API role without its grant; the webhook role with the JWT secret's.
    let mut t = template();
    let api = t["Resources"]["ApiRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
        .as_sequence_mut()
        .unwrap();
    let grant = api.pop().unwrap();
    assert_eq!(
        grant["Action"].as_str(),
        Some("secretsmanager:GetSecretValue")
    );
    t["Resources"]["StripeWebhookRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
        .as_sequence_mut()
        .unwrap()
        .push(grant);
    let p = secret_problems(&t);
    assert!(
        p.contains(
            &"ApiFunction: ApiRole may not read JwtSecret, which the function reads".to_owned()
        ),
        "{p:#?}"
    );
    assert!(
        p.contains(&"StripeWebhookFunction: StripeWebhookRole may read JwtSecret, which the function does not use".to_owned()),
        "{p:#?}"
    );
    // An ARN variable naming nothing the template knows.
    let mut t = template();
    t["Resources"]["ApiFunction"]["Properties"]["Environment"]["Variables"]["TALLY_JWT_SECRET_ARN"] =
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:x".into();
    let p = secret_problems(&t);
    assert_caught(&p, &["TALLY_JWT_SECRET_ARN does not name a secret"]);
}

/// The Stripe webhook function serves the route its router has.
#[test]
fn the_stripe_webhook_route_matches_the_router() {
    let t = template();
    let hook = resource_at(
        &t,
        "StripeWebhookFunction.Properties.Events.StripeWebhook.Properties",
    );
    assert_eq!(
        str_of(get(hook, &["Path"])),
        Some(tally_billing::webhook::WEBHOOK_PATH)
    );
    assert_eq!(str_of(get(hook, &["Method"])), Some("POST"));
    let binary = resource_at(&t, "StripeWebhookFunction.Metadata.Binary");
    assert_eq!(str_of(binary), Some("tally-stripe-webhook-lambda"));
}

#[test]
fn a_template_that_drifts_from_the_code_is_caught() {
    let bins = workspace_bins();
    let mut t = template();
    // Drop the table name every function reads from Globals.
    let vars = t["Globals"]["Function"]["Environment"]["Variables"]
        .as_mapping_mut()
        .unwrap();
    vars.remove("TALLY_TABLE");
    let p = function_problems(&t, &makefile(), &bins);
    assert!(
        p.iter().any(|m| m == "IngestFunction: tally-ingest-lambda reads TALLY_TABLE, which the template does not set"),
        "{p:#?}"
    );
    // Rename the TTL attribute and the index.
    let mut t = template();
    t["Resources"]["Table"]["Properties"]["TimeToLiveSpecification"]["AttributeName"] =
        "expires".into();
    t["Resources"]["Table"]["Properties"]["GlobalSecondaryIndexes"][0]["IndexName"] =
        "byOrg".into();
    let p = table_problems(&t);
    assert!(
        p.contains(&format!("TTL is not enabled on {TTL}")),
        "{p:#?}"
    );
    assert!(
        p.contains(&format!("no global secondary index named {GSI1}")),
        "{p:#?}"
    );
    // Project less than the membership query reads, or everything again.
    let mut less = template();
    less["Resources"]["Table"]["Properties"]["GlobalSecondaryIndexes"][0]["Projection"]["NonKeyAttributes"] =
        serde_norway::from_str("[user_id, created_at]").unwrap();
    let mut all = template();
    all["Parameters"]["IndexProjection"]["Default"] = "ALL".into();
    for t in [less, all] {
        let p = table_problems(&t);
        assert!(
            p.iter()
                .any(|m| m.starts_with(&format!("index {GSI1} does not project INCLUDE"))),
            "{p:#?}"
        );
    }
    // Name a binary that does not exist, and one the Makefile does not copy.
    let mut t = template();
    t["Resources"]["BillingFunction"]["Metadata"]["Binary"] = "tally-invoice-lambda".into();
    let p = function_problems(&t, &makefile(), &bins);
    assert_caught(
        &p,
        &[
            "tally-invoice-lambda is not a [[bin]]",
            "lambda/Makefile copies tally-billing-lambda",
        ],
    );
    assert!(
        p.iter()
            .any(|m| m == "tally-billing-lambda is built but no function in the template runs it"),
        "{p:#?}"
    );
}

/// A scalar of a rule, as CloudFormation compares it (a string): a literal, or a `!Ref`
/// to one of `params`. `None` for anything else.
fn rule_scalar(v: &Value, params: &[(&str, &str)]) -> Option<String> {
    match v {
        Value::Tagged(t) if t.tag == "Ref" => {
            let name = t.value.as_str()?;
            params
                .iter()
                .find(|(p, _)| *p == name)
                .map(|(_, v)| (*v).to_owned())
        }
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Evaluates a rule condition or assertion made of `!And`, `!Or`, `!Not`, `!Equals` and
/// `!Contains` over the parameter values `params`; panics on anything else, so a rule
/// this cannot read fails the test rather than passing it.
fn rule_holds(v: &Value, params: &[(&str, &str)]) -> bool {
    let Value::Tagged(t) = v else {
        panic!("not a rule function: {v:?}");
    };
    let args = t.value.as_sequence().cloned().unwrap_or_default();
    let tag = t.tag.to_string();
    match tag.trim_start_matches('!') {
        "And" => args.iter().all(|a| rule_holds(a, params)),
        "Or" => args.iter().any(|a| rule_holds(a, params)),
        "Not" => !rule_holds(&args[0], params),
        "Equals" => rule_scalar(&args[0], params) == rule_scalar(&args[1], params),
        "Contains" => {
            let needle = rule_scalar(&args[1], params);
            args[0]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|x| rule_scalar(x, params) == needle)
        }
        other => panic!("rule function {other} is not evaluated here"),
    }
}

/// Whether the template's rules accept these parameter values, as CloudFormation would
/// before creating anything.
fn rules_accept(t: &Value, params: &[(&str, &str)]) -> bool {
    get(t, &["Rules"])
        .as_mapping()
        .unwrap()
        .values()
        .all(|rule| {
            let applies = match get(rule, &["RuleCondition"]) {
                Value::Null => true,
                c => rule_holds(c, params),
            };
            !applies
                || get(rule, &["Assertions"])
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .all(|a| rule_holds(get(a, &["Assert"]), params))
        })
}

/// SQS refuses a batch of more than 10 records without a batching window of a second or
/// more, so the template refuses that combination before deploying; Kinesis takes it.
#[test]
fn the_rules_refuse_what_sqs_would_refuse_and_nothing_else() {
    let t = template();
    let with = |transport, window, batch| {
        rules_accept(
            &t,
            &[
                ("Transport", transport),
                ("AggregatorBatchingWindowSeconds", window),
                ("AggregatorBatchSize", batch),
            ],
        )
    };
    assert!(!with("sqs", "0", "11"), "SQS, no window, 11 records");
    assert!(
        !with("sqs", "0", "1000"),
        "SQS, no window, the default batch"
    );
    assert!(with("sqs", "0", "10"));
    assert!(with("sqs", "1", "1000"), "the defaults");
    assert!(with("kinesis", "0", "100"), "Kinesis needs no window");
    // A rule that forgot the transport would refuse Kinesis too; one that forgot the
    // window would refuse the defaults: both are caught.
    for (condition, transport, window) in [
        (
            "!Equals [!Ref AggregatorBatchingWindowSeconds, 0]",
            "kinesis",
            "0",
        ),
        ("!Equals [!Ref Transport, sqs]", "sqs", "1"),
    ] {
        let mut wrong = template();
        wrong["Rules"]["SqsBatchNeedsAWindow"]["RuleCondition"] =
            serde_norway::from_str(condition).unwrap();
        let params = [
            ("Transport", transport),
            ("AggregatorBatchingWindowSeconds", window),
            ("AggregatorBatchSize", "100"),
        ];
        assert!(!rules_accept(&wrong, &params), "{condition} not caught");
    }
}

/// Each function's environment (by logical id) as a stack of `transport` would give it (the evaluation the
/// Lambda runtime test starts the binaries with, `common::template::Stack`), every resource
/// of the stack standing for itself as `ref:<id>`.
fn evaluated_environments(
    t: &Value,
    transport: &str,
) -> Result<BTreeMap<String, BTreeMap<String, String>>, String> {
    let mut stack = Stack::new(
        t,
        "tally",
        "us-east-1",
        "123456789012",
        &[("Transport", transport)],
    )?;
    for (id, r) in get(t, &["Resources"]).as_mapping().unwrap() {
        let id = id.as_str().unwrap();
        if stack.exists(r)? {
            stack.refs.insert(id.to_owned(), format!("ref:{id}"));
            stack
                .attributes
                .insert(format!("{id}.Arn"), format!("arn:{id}"));
        }
    }
    resources(t, "AWS::Serverless::Function")
        .into_iter()
        .map(|(id, _)| Ok((id.clone(), stack.function_environment(&id)?)))
        .collect()
}

/// In either transport every function's environment evaluates, and ingest and the
/// aggregator get the transport's variables and not the other's; an environment naming
/// something the stack does not have is an error naming it, not a made-up value.
#[test]
fn every_function_environment_evaluates_in_either_transport() {
    let t = template();
    for (transport, present, absent) in [
        (
            "sqs",
            ("TALLY_QUEUE_URL", "ref:EventsQueue"),
            "TALLY_STREAM",
        ),
        (
            "kinesis",
            ("TALLY_STREAM", "ref:EventsStream"),
            "TALLY_QUEUE_URL",
        ),
    ] {
        let envs = evaluated_environments(&t, transport).unwrap();
        let ingest = &envs["IngestFunction"];
        assert_eq!(ingest.get(present.0).map(String::as_str), Some(present.1));
        assert!(!ingest.contains_key(absent), "{transport}: {ingest:?}");
        for id in ["IngestFunction", "AggregatorFunction"] {
            assert_eq!(envs[id]["TALLY_TRANSPORT"], transport);
        }
        for env in envs.values() {
            assert_eq!(env["TALLY_TABLE"], "ref:Table");
        }
    }
    let mut wrong = template();
    wrong["Resources"]["IngestFunction"]["Properties"]["Environment"]["Variables"]["TALLY_QUEUE_URL"] =
        serde_norway::from_str("!Ref EventQueue").unwrap();
    let e = evaluated_environments(&wrong, "sqs").unwrap_err();
    assert!(
        e.contains("TALLY_QUEUE_URL") && e.contains("!Ref EventQueue"),
        "{e}"
    );
}

/// What is wrong with the billing fan-out's wiring in `t`: the queue the billing function
/// enqueues to (`TALLY_BILLING_QUEUE_URL`) must be the one its mapping reads, at most 10
/// items a batch with `MaximumConcurrency` a parameter, its visibility timeout at least six
/// times the function's; each schedule's input must be an event the binary takes for that
/// job (`tally_lambda::fanout::BillingEvent::classify`), switched by `State`, never
/// `Enabled`; the role must reach the queue; the unbilled-orgs alarm must watch the gauge
/// the catch-up sets.
fn billing_queue_problems(t: &Value) -> Vec<String> {
    use tally_lambda::fanout::BillingEvent;
    let mut out = Vec::new();
    let names = |v: &Value| {
        let mut s = BTreeSet::new();
        refs(v, &mut s);
        s
    };
    let function = resource_at(t, "BillingFunction.Properties");
    let queue_env = get(
        function,
        &[
            "Environment",
            "Variables",
            tally_lambda::env::BILLING_QUEUE_URL,
        ],
    );
    let Some((id, mapping)) = resources(t, "AWS::Lambda::EventSourceMapping")
        .into_iter()
        .find(|(_, m)| names(get(m, &["Properties", "FunctionName"])).contains("BillingFunction"))
    else {
        return vec!["no event-source mapping invokes BillingFunction".into()];
    };
    let source = names(get(mapping, &["Properties", "EventSourceArn"]));
    let queue = names(queue_env);
    if queue.is_empty() || source != queue {
        out.push(format!(
            "{id} reads {source:?} but the billing function enqueues to {queue:?}"
        ));
    }
    if get(mapping, &["Properties", "BatchSize"])
        .as_u64()
        .is_none_or(|n| n > 10)
    {
        out.push(format!(
            "{id}: BatchSize must be 1 to 10 (the consumer's budget is per item)"
        ));
    }
    if names(get(
        mapping,
        &["Properties", "ScalingConfig", "MaximumConcurrency"],
    )) != BTreeSet::from(["BillingMaxConcurrency".to_owned()])
    {
        out.push(format!(
            "{id}: MaximumConcurrency must be the BillingMaxConcurrency parameter"
        ));
    }
    for q in &queue {
        let visibility = resource_at(t, &format!("{q}.Properties.VisibilityTimeout")).as_u64();
        let timeout = get(function, &["Timeout"]).as_u64().unwrap_or(3);
        if visibility.is_none_or(|v| v < 6 * timeout) {
            out.push(format!("{q}: VisibilityTimeout {visibility:?} is under six times the billing function's {timeout} s"));
        }
        let role = serde_norway::to_string(resource_at(t, "BillingRole")).unwrap();
        if !role.contains("sqs:SendMessage") || !role.contains(q.as_str()) {
            out.push(format!("BillingRole may not send to {q}"));
        }
    }
    for (name, want) in [
        ("Monthly", "schedule"),
        ("CatchUp", "catch-up"),
        ("Alerts", "alerts"),
    ] {
        let event = get(function, &["Events", name, "Properties"]);
        if event.is_null() {
            out.push(format!("BillingFunction has no {name} schedule"));
            continue;
        }
        if !get(event, &["Enabled"]).is_null() || get(event, &["State"]).is_null() {
            out.push(format!("{name}: switch a schedule with State, not Enabled"));
        }
        let payload: serde_json::Value = match str_of(get(event, &["Input"])) {
            // No input: EventBridge sends its scheduled event.
            None => serde_json::json!({"source": "aws.events", "detail-type": "Scheduled Event"}),
            Some(text) => serde_json::from_str(text).unwrap_or(serde_json::Value::Null),
        };
        let got = match BillingEvent::classify(payload) {
            Ok(BillingEvent::Schedule) => "schedule",
            Ok(BillingEvent::CatchUp) => "catch-up",
            Ok(BillingEvent::Alerts) => "alerts",
            Ok(BillingEvent::Queue(_)) => "queue",
            Err(_) => "refused",
        };
        if got != want {
            out.push(format!("{name}: its input is taken as {got}, not {want}"));
        }
    }
    let metric = str_of(resource_at(t, "UnbilledOrgsAlarm.Properties.MetricName"));
    if metric != Some(tally_billing::fanout::UNBILLED_GAUGE) {
        out.push(format!(
            "UnbilledOrgsAlarm watches {metric:?}, not {}",
            tally_billing::fanout::UNBILLED_GAUGE
        ));
    }
    out
}

#[test]
fn the_billing_queue_is_wired_to_the_billing_function() {
    assert_eq!(billing_queue_problems(&template()), Vec::<String>::new());
}

#[test]
fn a_miswired_billing_queue_is_caught() {
    let t = template();
    let edit = |path: &[&str], v: Value| {
        let mut t = t.clone();
        let mut at = t.get_mut("Resources").unwrap();
        for k in &path[..path.len() - 1] {
            at = at.get_mut(*k).unwrap();
        }
        at.as_mapping_mut()
            .unwrap()
            .insert(Value::from(path[path.len() - 1]), v);
        t
    };
    let input = [
        "BillingFunction",
        "Properties",
        "Events",
        "CatchUp",
        "Properties",
        "Input",
    ];
    let bad = edit(&input, Value::from("{\"job\": \"catchup\"}"));
    let p = billing_queue_problems(&bad);
    assert!(
        p.iter()
            .any(|p| p.contains("CatchUp: its input is taken as refused")),
        "{p:?}"
    );
    let state = [
        "BillingFunction",
        "Properties",
        "Events",
        "Monthly",
        "Properties",
        "Enabled",
    ];
    let p = billing_queue_problems(&edit(&state, Value::from(true)));
    assert!(
        p.iter()
            .any(|p| p.contains("Monthly: switch a schedule with State")),
        "{p:?}"
    );
    let batch = ["BillingQueueSource", "Properties", "BatchSize"];
    let p = billing_queue_problems(&edit(&batch, Value::from(100)));
    assert!(p.iter().any(|p| p.contains("BatchSize")), "{p:?}");
    let vis = ["BillingQueue", "Properties", "VisibilityTimeout"];
    let p = billing_queue_problems(&edit(&vis, Value::from(60)));
    assert!(p.iter().any(|p| p.contains("VisibilityTimeout")), "{p:?}");
    let metric = ["UnbilledOrgsAlarm", "Properties", "MetricName"];
    let p = billing_queue_problems(&edit(&metric, Value::from("tally_billing_unbilled")));
    assert!(p.iter().any(|p| p.contains("UnbilledOrgsAlarm")), "{p:?}");
}

/// What is wrong with sign-in in `t`: the API function must accept the ID tokens of the
/// template's user pool (`TALLY_OIDC_ISSUER` the issuer Cognito writes for it,
/// `TALLY_OIDC_AUDIENCE` its client, a client of that pool), and the pool must offer MFA
/// by authenticator app.
fn user_pool_problems(t: &Value) -> Vec<String> {
    let mut p = Vec::new();
    let envs = match evaluated_environments(t, "sqs") {
        Ok(e) => e,
        Err(e) => return vec![e],
    };
    let api = &envs["ApiFunction"];
    let want = [
        (
            tally_lambda::env::OIDC_ISSUER,
            "https://cognito-idp.us-east-1.amazonaws.com/ref:UserPool",
        ),
        (tally_lambda::env::OIDC_AUDIENCE, "ref:UserPoolClient"),
    ];
    for (var, value) in want {
        if api.get(var).map(String::as_str) != Some(value) {
            p.push(format!(
                "ApiFunction: {var} is {:?}, not {value:?}",
                api.get(var)
            ));
        }
    }
    let pool = get(t, &["Resources", "UserPool"]);
    if str_of(get(pool, &["Type"])) != Some("AWS::Cognito::UserPool") {
        p.push("UserPool is not an AWS::Cognito::UserPool".into());
    }
    if str_of(get(pool, &["Properties", "MfaConfiguration"])) != Some("OPTIONAL") {
        p.push("UserPool: MfaConfiguration is not OPTIONAL".into());
    }
    let mfas = get(pool, &["Properties", "EnabledMfas"]);
    if !mfas
        .as_sequence()
        .is_some_and(|s| s.iter().any(|m| str_of(m) == Some("SOFTWARE_TOKEN_MFA")))
    {
        p.push("UserPool: EnabledMfas lacks SOFTWARE_TOKEN_MFA".into());
    }
    let client = get(t, &["Resources", "UserPoolClient"]);
    if str_of(get(client, &["Type"])) != Some("AWS::Cognito::UserPoolClient") {
        p.push("UserPoolClient is not an AWS::Cognito::UserPoolClient".into());
    }
    let mut pool_ref = BTreeSet::new();
    refs(get(client, &["Properties", "UserPoolId"]), &mut pool_ref);
    if pool_ref != BTreeSet::from(["UserPool".to_owned()]) {
        p.push(format!(
            "UserPoolClient: UserPoolId refers to {pool_ref:?}, not UserPool"
        ));
    }
    let reads = get(client, &["Properties", "ReadAttributes"]);
    for attribute in ["email", "email_verified"] {
        if !reads
            .as_sequence()
            .is_some_and(|s| s.iter().any(|a| str_of(a) == Some(attribute)))
        {
            p.push(format!("UserPoolClient: ID tokens would lack {attribute}"));
        }
    }
    p.extend(code_flow_problems(t, client));
    p
}

/// What is wrong with the dashboard's "Sign in with …" in `t`: the API function must name
/// the user-pool client (`TALLY_OIDC_CLIENT_ID`) and the callback parameter
/// (`TALLY_OIDC_REDIRECT_URL`); the client must allow the code flow with the `openid` and
/// `email` scopes and send people back to that same parameter only; and the pool must have
/// a hosted-UI domain.
fn code_flow_problems(t: &Value, client: &Value) -> Vec<String> {
    let mut p = Vec::new();
    let vars = get(
        t,
        &[
            "Resources",
            "ApiFunction",
            "Properties",
            "Environment",
            "Variables",
        ],
    );
    let refs_of = |v: &Value| {
        let mut out = BTreeSet::new();
        refs(v, &mut out);
        out
    };
    let want = |name: &str| BTreeSet::from([name.to_owned()]);
    for (var, target) in [
        (tally_lambda::env::OIDC_CLIENT_ID, "UserPoolClient"),
        (tally_lambda::env::OIDC_REDIRECT_URL, "DashboardCallbackUrl"),
    ] {
        if refs_of(get(vars, &[var])) != want(target) {
            p.push(format!("ApiFunction: {var} does not refer to {target}"));
        }
    }
    let props = get(client, &["Properties"]);
    if get(props, &["AllowedOAuthFlowsUserPoolClient"]).as_bool() != Some(true) {
        p.push("UserPoolClient: AllowedOAuthFlowsUserPoolClient is not true".into());
    }
    let has = |key: &str, value: &str| {
        get(props, &[key])
            .as_sequence()
            .is_some_and(|s| s.iter().any(|v| str_of(v) == Some(value)))
    };
    for (key, value) in [
        ("AllowedOAuthFlows", "code"),
        ("AllowedOAuthScopes", "openid"),
        ("AllowedOAuthScopes", "email"),
    ] {
        if !has(key, value) {
            p.push(format!("UserPoolClient: {key} lacks {value}"));
        }
    }
    if refs_of(get(props, &["CallbackURLs"])) != want("DashboardCallbackUrl") {
        p.push("UserPoolClient: CallbackURLs is not DashboardCallbackUrl alone".into());
    }
    let domain = get(t, &["Resources", "UserPoolDomain"]);
    if str_of(get(domain, &["Type"])) != Some("AWS::Cognito::UserPoolDomain")
        || refs_of(get(domain, &["Properties", "UserPoolId"])) != want("UserPool")
    {
        p.push("UserPoolDomain: no hosted-UI domain of UserPool".into());
    }
    p
}

#[test]
fn a_miswired_code_flow_is_caught() {
    let mut wrong = template();
    let client = &mut wrong["Resources"]["UserPoolClient"]["Properties"];
    client["AllowedOAuthFlows"] = serde_norway::from_str("[implicit]").unwrap();
    client["CallbackURLs"] = serde_norway::from_str("[https://elsewhere.example/cb]").unwrap();
    wrong["Resources"]["ApiFunction"]["Properties"]["Environment"]["Variables"]["TALLY_OIDC_CLIENT_ID"] =
        "some-other-client".into();
    wrong["Resources"]
        .as_mapping_mut()
        .unwrap()
        .remove("UserPoolDomain");
    let p = user_pool_problems(&wrong).join("\n");
    for expected in [
        "AllowedOAuthFlows lacks code",
        "CallbackURLs",
        "TALLY_OIDC_CLIENT_ID",
        "UserPoolDomain",
    ] {
        assert!(p.contains(expected), "{expected} not caught: {p}");
    }
}

#[test]
fn a_miswired_user_pool_is_caught() {
    let mut wrong = template();
    let vars = &mut wrong["Resources"]["ApiFunction"]["Properties"]["Environment"]["Variables"];
    vars["TALLY_OIDC_ISSUER"] =
        serde_norway::from_str("!Sub https://cognito-idp.${AWS::Region}.amazonaws.com/x").unwrap();
    wrong["Resources"]["UserPool"]["Properties"]["MfaConfiguration"] = "OFF".into();
    wrong["Resources"]["UserPoolClient"]["Properties"]["ReadAttributes"] =
        serde_norway::from_str("[email]").unwrap();
    let p = user_pool_problems(&wrong).join("\n");
    for expected in ["TALLY_OIDC_ISSUER", "MfaConfiguration", "email_verified"] {
        assert!(p.contains(expected), "{expected} not caught: {p}");
    }
    // Without the audience the function's environment misses a variable its binary reads.
    let mut unset = template();
    unset["Resources"]["ApiFunction"]["Properties"]["Environment"]["Variables"]
        .as_mapping_mut()
        .unwrap()
        .remove("TALLY_OIDC_AUDIENCE");
    let p = function_problems(&unset, &makefile(), &workspace_bins()).join("\n");
    assert!(p.contains("reads TALLY_OIDC_AUDIENCE"), "{p}");
}

#[test]
fn the_api_accepts_the_user_pools_id_tokens() {
    assert_no_problems(&user_pool_problems(&template()));
}
