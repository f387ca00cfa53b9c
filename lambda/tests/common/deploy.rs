//! `template.yaml` "deployed" on the emulator for the Lambda runtime test: the stack's
//! table, queues, streams, generated secrets and Cognito user pool and client created there (those whose condition holds
//! for the parameters given), and each function's binary started as Lambda starts it, with
//! the environment the template gives the function in that stack ([`Stack`]), plus what
//! Lambda adds itself: the role's credentials, the region, and here the emulator's endpoint
//! (`AWS_ENDPOINT_URL`, which the SDK reads).

use std::collections::BTreeMap;
use std::time::Duration;

use aws_config::SdkConfig;
use serde_json::Value as Json;
use serde_norway::Value;
use tally_tests::aws;
use tally_tests::conformance::fixtures::random_hex;

use super::runtime_api::Function;
use super::template::{Stack, get, str_of};

/// The stack's region.
pub const REGION: &str = "us-east-1";
/// The emulator's account (moto's default).
pub const ACCOUNT: &str = "123456789012";

/// The test-build binary a function's `Metadata.Binary` names.
pub fn binary_path(binary: &str) -> &'static str {
    match binary {
        "tally-ingest-lambda" => env!("CARGO_BIN_EXE_tally-ingest-lambda"),
        "tally-api-lambda" => env!("CARGO_BIN_EXE_tally-api-lambda"),
        "tally-aggregator-lambda" => env!("CARGO_BIN_EXE_tally-aggregator-lambda"),
        "tally-billing-lambda" => env!("CARGO_BIN_EXE_tally-billing-lambda"),
        "tally-stripe-webhook-lambda" => env!("CARGO_BIN_EXE_tally-stripe-webhook-lambda"),
        other => panic!("no test-build binary {other}: add it to binary_path"),
    }
}

/// One stack of the template on the emulator.
pub struct Deployed<'t> {
    /// The template's expressions, evaluated in this stack.
    pub stack: Stack<'t>,
    /// The SDK configuration for the emulator.
    pub sdk: SdkConfig,
    /// The values of the generated secrets, by logical id (an operator reads them from the
    /// stack's outputs).
    pub secret_values: BTreeMap<String, String>,
}

/// `length` random characters without punctuation, as `GenerateSecretString` with
/// `ExcludePunctuation` makes them.
fn generated(length: usize) -> String {
    let mut s = String::new();
    while s.len() < length {
        s.push_str(&random_hex());
    }
    s.truncate(length);
    s
}

/// Records a resource created under the name `physical`: `!GetAtt <id>.Arn` gives `arn`,
/// `!Ref <id>` the name.
fn created(stack: &mut Stack<'_>, id: &str, arn: String, physical: String) {
    stack.attributes.insert(format!("{id}.Arn"), arn);
    stack.refs.insert(id.to_owned(), physical);
}

/// Creates, on the emulator, a stack of `template` with `overrides` for its parameters.
pub async fn deploy<'t>(template: &'t Value, overrides: &[(&str, &str)]) -> Deployed<'t> {
    let name = aws::fresh_name("tally-rt");
    let mut stack = Stack::new(template, &name, REGION, ACCOUNT, overrides).unwrap();
    let sdk = aws::sdk_config().await;
    let mut secret_values = BTreeMap::new();
    let resources: Vec<(String, Value)> = get(template, &["Resources"])
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().to_owned(), v.clone()))
        .collect();
    for (id, resource) in &resources {
        if !stack.exists(resource).unwrap() {
            continue;
        }
        let physical = format!("{name}-{id}");
        let props = get(resource, &["Properties"]);
        match str_of(get(resource, &["Type"])).unwrap_or("") {
            "AWS::DynamoDB::Table" => {
                let client = aws_sdk_dynamodb::Client::new(&sdk);
                tally_store::dynamodb::create_table(&client, &physical)
                    .await
                    .unwrap();
                let arn = format!("arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{physical}");
                created(&mut stack, id, arn, physical);
            }
            "AWS::SQS::Queue" => {
                let client = aws_sdk_sqs::Client::new(&sdk);
                let url = client
                    .create_queue()
                    .queue_name(&physical)
                    .send()
                    .await
                    .unwrap()
                    .queue_url
                    .unwrap();
                let arn = client
                    .get_queue_attributes()
                    .queue_url(&url)
                    .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                    .send()
                    .await
                    .unwrap()
                    .attributes
                    .unwrap()
                    .remove(&aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                    .unwrap();
                stack.attributes.insert(format!("{id}.Arn"), arn);
                stack
                    .attributes
                    .insert(format!("{id}.QueueName"), physical.clone());
                stack.refs.insert(id.clone(), url);
            }
            "AWS::Kinesis::Stream" => {
                let client = aws_sdk_kinesis::Client::new(&sdk);
                let shards = match stack.eval(get(props, &["ShardCount"])).unwrap() {
                    Some(Json::String(s)) => s.parse().unwrap(),
                    Some(Json::Number(n)) => u32::try_from(n.as_u64().unwrap()).unwrap(),
                    other => panic!("{id}: ShardCount {other:?}"),
                };
                tally_store::kinesis::create_stream(&client, &physical, shards)
                    .await
                    .unwrap();
                let arn = format!("arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/{physical}");
                created(&mut stack, id, arn, physical);
            }
            "AWS::SecretsManager::Secret" => {
                let generate = get(props, &["GenerateSecretString"]);
                let value = if generate.is_null() {
                    match stack.eval(get(props, &["SecretString"])).unwrap() {
                        Some(Json::String(s)) => s,
                        other => panic!("{id}: neither generated nor a SecretString: {other:?}"),
                    }
                } else {
                    assert_eq!(
                        get(generate, &["ExcludePunctuation"]).as_bool(),
                        Some(true),
                        "{id}: only punctuation-free generated secrets are made here"
                    );
                    let length = get(generate, &["PasswordLength"]).as_u64().unwrap_or(32);
                    generated(usize::try_from(length).unwrap())
                };
                let arn = aws_sdk_secretsmanager::Client::new(&sdk)
                    .create_secret()
                    .name(&physical)
                    .secret_string(&value)
                    .send()
                    .await
                    .unwrap()
                    .arn
                    .unwrap();
                secret_values.insert(id.clone(), value);
                stack.refs.insert(id.clone(), arn);
            }
            "AWS::Cognito::UserPool" => {
                let endpoint = tally_tests::aws::endpoint();
                let pool = tally_tests::cognito::create_user_pool(&endpoint, &physical).await;
                stack.attributes.insert(
                    format!("{id}.Arn"),
                    format!("arn:aws:cognito-idp:{REGION}:{ACCOUNT}:userpool/{pool}"),
                );
                stack.refs.insert(id.clone(), pool);
            }
            "AWS::Cognito::UserPoolClient" => {
                let pool = match stack.eval(get(props, &["UserPoolId"])).unwrap() {
                    Some(Json::String(s)) => s,
                    other => panic!("{id}: UserPoolId {other:?}"),
                };
                let endpoint = tally_tests::aws::endpoint();
                let client = tally_tests::cognito::create_client(&endpoint, &pool, &physical).await;
                stack.refs.insert(id.clone(), client);
            }
            // Functions, roles, APIs, alarms, logs: Lambda and the test play their part.
            _ => {}
        }
    }
    Deployed {
        stack,
        sdk,
        secret_values,
    }
}

impl Deployed<'_> {
    /// The physical value (`!Ref`) of a resource this stack created.
    pub fn physical(&self, id: &str) -> &str {
        self.stack
            .refs
            .get(id)
            .unwrap_or_else(|| panic!("the stack has no resource {id}"))
    }

    /// The environment the template gives the function `id` in this stack.
    pub fn environment(&self, id: &str) -> BTreeMap<String, String> {
        self.stack.function_environment(id).unwrap()
    }

    /// Starts the function `id` as Lambda does: its binary, its name, memory and timeout,
    /// and the template's environment for it.
    pub async fn start(&self, id: &str) -> Function {
        self.start_with(id, self.environment(id)).await
    }

    /// [`start`](Self::start) with `environment` in place of the template's (a test that
    /// plants a fault).
    pub async fn start_with(&self, id: &str, environment: BTreeMap<String, String>) -> Function {
        let binary = str_of(get(
            self.stack.template,
            &["Resources", id, "Metadata", "Binary"],
        ))
        .unwrap_or_else(|| panic!("{id}: no Metadata.Binary"));
        let property = |key: &str| {
            self.stack
                .function_property(id, key)
                .unwrap()
                .unwrap_or_else(|| panic!("{id}: no {key}"))
        };
        let name = property("FunctionName").as_str().unwrap().to_owned();
        let number = |v: Json| match v {
            Json::Number(n) => n.as_u64().unwrap(),
            Json::String(s) => s.parse().unwrap(),
            other => panic!("{id}: not a number: {other}"),
        };
        let memory = number(property("MemorySize"));
        let timeout = Duration::from_secs(number(property("Timeout")));
        // The role's credentials, as Lambda passes them, and the emulator.
        let mut all = environment;
        let credential = |var: &str| std::env::var(var).unwrap_or_else(|_| "test".into());
        for var in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
            all.insert(var.into(), credential(var));
        }
        all.insert("AWS_SESSION_TOKEN".into(), "test".into());
        all.insert("AWS_ENDPOINT_URL".into(), aws::endpoint());
        Function::start(
            binary_path(binary),
            &name,
            memory,
            timeout,
            REGION,
            ACCOUNT,
            &all,
        )
        .await
    }
}
