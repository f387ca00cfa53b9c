//! DynamoDB capacity measured on the wire: an SDK interceptor that prices every request by
//! DynamoDB's published unit rules.
//!
//! The write-cost benchmark must not depend on how the store builds its requests (that code
//! changes), so it measures from the outside: [`CapacityMeter`] is registered on the
//! DynamoDB client's config and sees every operation's modeled input and output. Before
//! serialization it downcasts the input (`PutItem`, `UpdateItem`, `DeleteItem`,
//! `TransactWriteItems`, `BatchWriteItem`, `GetItem`, `BatchGetItem`, `TransactGetItems`,
//! `Query`), asks for `ReturnConsumedCapacity = TOTAL` and prices the writes; after each
//! attempt it looks at the output (or the error) and prices the reads by what came back.
//! It keeps the emulator's own `ConsumedCapacity` figures beside the computed ones, but moto
//! 5.2.5 answers constants (1.0 per `PutItem`/`UpdateItem`/`DeleteItem`/`Query`, 0.5 per
//! `GetItem` whatever the size or consistency, nothing for transactions), so only the computed
//! figures mean anything there.
//!
//! # The rules ([item sizes], [read/write operations], [on-demand pricing])
//!
//! - Item size: the sum over attributes of the UTF-8 length of the name plus the value's
//!   size. String: UTF-8 length. Number: 1 byte per two significant digits (leading and
//!   trailing zeros trimmed) plus 1 byte, the formula AWS documents as approximate ([`number_size`]).
//!   Binary: raw length. Boolean and null: 1 byte. List and map: 3 bytes, plus 1 byte per
//!   element, plus the elements (a map element counts its key's length). Sets: the sum of
//!   their members.
//! - Writes: one unit per KB (1,024 bytes) of item, rounded up, minimum one; a
//!   transactional write costs twice that. A write whose condition fails still consumes its
//!   units.
//! - Reads: one unit per 4 KB, rounded up, minimum one per item read: ×1 strongly consistent,
//!   ×0.5 eventually consistent, ×2 transactional. A `Query` is priced on the summed size of
//!   the items it returns, rounded up once.
//!
//! # Approximations (all of the same direction as DynamoDB's own, or noted)
//!
//! - Writes are charged on the larger of the item's before and after images; only the
//!   request is visible here. A put is priced on the item it sends. An update is priced on
//!   its key plus, for each attribute its `SET`/`ADD` clauses write, the name and the largest
//!   expression value the clause uses (so `ADD v :d` counts the delta's size, not the stored
//!   sum's; attributes the item already has and the update does not touch are not seen). A
//!   delete is priced on its key. Items here are far under 1 KB, so each write rounds to one
//!   unit (two in a transaction) either way.
//! - A `ConditionCheck` in a transaction is counted as a transactional write of its key's
//!   size (2 units).
//! - A cancelled `TransactWriteItems` (a condition failed, or a conflict) is counted at the
//!   full price of every action in it, and shown separately as "cancelled": AWS does not
//!   publish what a cancelled transaction bills, so this is the upper bound.
//! - A written item that carries every key attribute of a global secondary index is counted
//!   once more for the index, at the item's full size: an upper bound since the index
//!   projects only the attributes its queries read (`IndexProjection`), and none of the
//!   items this benchmark writes is indexed, so it changes nothing here.
//! - A `Query` with a filter is priced on the items that pass it (the rest are not on the
//!   wire); the store's dashboard queries have no filter.
//! - Requests that fail before DynamoDB would have done the work (throttling, validation,
//!   5xx, transport) are counted as errors and priced at zero.
//!
//! [item sizes]: https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/CapacityUnitCalculations.html
//! [read/write operations]: https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/read-write-operations.html
//! [on-demand pricing]: https://aws.amazon.com/dynamodb/pricing/on-demand/

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use aws_sdk_dynamodb::config::interceptors::{
    BeforeSerializationInterceptorContextMut, FinalizerInterceptorContextRef,
};
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::{BoxError, ProvideErrorMetadata};
use aws_sdk_dynamodb::operation::batch_get_item::{BatchGetItemInput, BatchGetItemOutput};
use aws_sdk_dynamodb::operation::batch_write_item::{BatchWriteItemInput, BatchWriteItemOutput};
use aws_sdk_dynamodb::operation::delete_item::{
    DeleteItemError, DeleteItemInput, DeleteItemOutput,
};
use aws_sdk_dynamodb::operation::get_item::{GetItemInput, GetItemOutput};
use aws_sdk_dynamodb::operation::put_item::{PutItemError, PutItemInput, PutItemOutput};
use aws_sdk_dynamodb::operation::query::{QueryInput, QueryOutput};
use aws_sdk_dynamodb::operation::transact_get_items::{
    TransactGetItemsInput, TransactGetItemsOutput,
};
use aws_sdk_dynamodb::operation::transact_write_items::{
    TransactWriteItemsError, TransactWriteItemsInput, TransactWriteItemsOutput,
};
use aws_sdk_dynamodb::operation::update_item::{
    UpdateItemError, UpdateItemInput, UpdateItemOutput,
};
use aws_sdk_dynamodb::types::{AttributeValue, ConsumedCapacity, ReturnConsumedCapacity};
use aws_smithy_types::config_bag::{Storable, StoreReplace};

/// One DynamoDB item (or key), as the SDK models it.
pub type Item = HashMap<String, AttributeValue>;

/// Bytes per write unit.
pub const WRITE_UNIT_BYTES: usize = 1_024;
/// Bytes per read unit.
pub const READ_UNIT_BYTES: usize = 4_096;

/// How a read is made, which sets its price per 4 KB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Eventually consistent: half a unit per 4 KB.
    Eventual,
    /// Strongly consistent: one unit per 4 KB.
    Strong,
    /// Part of `TransactGetItems`: two units per 4 KB.
    Transactional,
}

impl Consistency {
    fn of(consistent_read: Option<bool>) -> Self {
        if consistent_read == Some(true) {
            Consistency::Strong
        } else {
            Consistency::Eventual
        }
    }

    fn factor(self) -> f64 {
        match self {
            Consistency::Eventual => 0.5,
            Consistency::Strong => 1.0,
            Consistency::Transactional => 2.0,
        }
    }
}

/// Size of a number from its wire text: one byte per two significant digits plus one (the
/// formula AWS documents; leading and trailing zeros do not count, nor do sign, point or
/// exponent). Zero is one byte.
pub fn number_size(text: &str) -> usize {
    let mantissa = text
        .trim()
        .trim_start_matches(['-', '+'])
        .split(['e', 'E'])
        .next()
        .unwrap_or_default();
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let significant = digits.trim_start_matches('0').trim_end_matches('0').len();
    significant.div_ceil(2) + 1
}

/// Size of a value (without its attribute name).
pub fn value_size(v: &AttributeValue) -> usize {
    match v {
        AttributeValue::S(s) => s.len(),
        AttributeValue::N(n) => number_size(n),
        AttributeValue::B(b) => b.as_ref().len(),
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::Ss(ss) => ss.iter().map(String::len).sum(),
        AttributeValue::Ns(ns) => ns.iter().map(|n| number_size(n)).sum(),
        AttributeValue::Bs(bs) => bs.iter().map(|b| b.as_ref().len()).sum(),
        AttributeValue::L(l) => 3 + l.iter().map(|e| 1 + value_size(e)).sum::<usize>(),
        AttributeValue::M(m) => {
            3 + m
                .iter()
                .map(|(k, e)| 1 + k.len() + value_size(e))
                .sum::<usize>()
        }
        // A type newer than this SDK's model: price it at its smallest.
        _ => 1,
    }
}

/// Size of an item: every attribute's name plus its value.
pub fn item_size(item: &Item) -> usize {
    item.iter().map(|(k, v)| k.len() + value_size(v)).sum()
}

/// Write units for one item of `size` bytes.
pub fn write_units(size: usize, transactional: bool) -> f64 {
    let units = size.div_ceil(WRITE_UNIT_BYTES).max(1) as f64;
    if transactional { 2.0 * units } else { units }
}

/// Read units for `size` bytes read in one item (or one `Query` page).
pub fn read_units(size: usize, consistency: Consistency) -> f64 {
    size.div_ceil(READ_UNIT_BYTES).max(1) as f64 * consistency.factor()
}

/// The top-level attribute an update-expression path writes (`#v` resolved through the
/// expression attribute names; `a.b[0]` is `a`).
fn path_attribute(path: &str, names: Option<&HashMap<String, String>>) -> String {
    let head = path
        .trim()
        .split(['.', '['])
        .next()
        .unwrap_or_default()
        .trim();
    if head.starts_with('#') {
        names
            .and_then(|n| n.get(head))
            .cloned()
            .unwrap_or_else(|| head.to_owned())
    } else {
        head.to_owned()
    }
}

/// Splits at commas outside parentheses.
fn top_level_commas(s: &str) -> Vec<&str> {
    let (mut depth, mut from, mut out) = (0i32, 0usize, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[from..]);
    out
}

/// The largest `:value` placeholder an expression fragment uses (0 if none).
fn largest_value(fragment: &str, values: Option<&HashMap<String, AttributeValue>>) -> usize {
    let mut best = 0;
    let mut rest = fragment;
    while let Some(at) = rest.find(':') {
        let tail = &rest[at..];
        let end = tail[1..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(tail.len(), |e| e + 1);
        let placeholder = &tail[..end];
        if let Some(v) = values.and_then(|v| v.get(placeholder)) {
            best = best.max(value_size(v));
        }
        rest = &tail[end.max(1)..];
    }
    best
}

/// Estimated size of the item an `UpdateItem` leaves: its key plus, per attribute a `SET`
/// or `ADD` clause writes, the attribute's name and the largest value the clause uses (see
/// the [module doc](self) for what this misses).
pub fn update_after_size(
    key: &Item,
    update_expression: &str,
    names: Option<&HashMap<String, String>>,
    values: Option<&HashMap<String, AttributeValue>>,
) -> usize {
    let mut clauses: Vec<(String, Vec<&str>)> = Vec::new();
    for token in update_expression.split_whitespace() {
        let upper = token.to_ascii_uppercase();
        if matches!(upper.as_str(), "SET" | "ADD" | "REMOVE" | "DELETE") {
            clauses.push((upper, Vec::new()));
        } else if let Some((_, body)) = clauses.last_mut() {
            body.push(token);
        }
    }
    let mut written: BTreeMap<String, usize> = BTreeMap::new();
    for (keyword, body) in &clauses {
        let body = body.join(" ");
        for action in top_level_commas(&body) {
            let (path, rhs) = match keyword.as_str() {
                "SET" => match action.split_once('=') {
                    Some(pair) => pair,
                    None => continue,
                },
                "ADD" => match action.trim().split_once(char::is_whitespace) {
                    Some(pair) => pair,
                    None => continue,
                },
                _ => continue,
            };
            let name = path_attribute(path, names);
            if key.contains_key(&name) {
                continue;
            }
            let size = largest_value(rhs, values);
            let slot = written.entry(name).or_default();
            *slot = (*slot).max(size);
        }
    }
    item_size(key)
        + written
            .iter()
            .map(|(name, size)| name.len() + size)
            .sum::<usize>()
}

/// A coarse label for an item, from its partition key: the key's upper-case `#`-separated
/// segments (`ORG#org_1#LEDGER#07` is `ORG#LEDGER`), so ids and dates fold away. Labels only
/// group the report; nothing is priced by them.
pub fn item_class(item: &Item, partition_key: &str) -> String {
    let Some(AttributeValue::S(pk)) = item.get(partition_key) else {
        return "?".to_owned();
    };
    let parts: Vec<&str> = pk
        .split('#')
        .filter(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_uppercase()))
        .collect();
    if parts.is_empty() {
        "?".to_owned()
    } else {
        parts.join("#")
    }
}

/// What one kind of written item cost.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ClassTotals {
    /// Items written (counting every attempt that was billed).
    pub items: u64,
    /// Write units.
    pub wcu: f64,
    /// The part of [`ClassTotals::wcu`] spent in cancelled transactions and failed
    /// conditional writes.
    pub failed_wcu: f64,
}

/// Everything the meter counted since it was last [taken](CapacityMeter::take).
#[derive(Debug, Clone, Default)]
pub struct Totals {
    /// Computed write units, cancelled transactions included.
    pub wcu: f64,
    /// The part of [`Totals::wcu`] spent by cancelled transactions and failed conditions.
    pub wcu_failed: f64,
    /// Computed read units.
    pub rcu: f64,
    /// Attempts sent, per operation name.
    pub requests: BTreeMap<&'static str, u64>,
    /// Attempts that failed in a way that bills nothing (throttling, 5xx, validation,
    /// transport), per operation name.
    pub errors: BTreeMap<&'static str, u64>,
    /// Failed conditional single-item writes (billed).
    pub failed_conditions: u64,
    /// Cancelled `TransactWriteItems` (counted at full price; see the [module doc](self)).
    pub cancelled_transactions: u64,
    /// The part of [`Totals::wcu_failed`] spent by cancelled transactions: what the figure
    /// drops by if DynamoDB bills them nothing.
    pub wcu_cancelled_tx: f64,
    /// Why transactions were cancelled: `"<reason code> on <action kind>"` → actions.
    pub cancel_reasons: BTreeMap<String, u64>,
    /// Writes per item kind: key `"<how> <class>"`, e.g. `"TxPut ORG#LEDGER"`.
    pub by_class: BTreeMap<String, ClassTotals>,
    /// What the emulator said it consumed (`ConsumedCapacity.CapacityUnits`), per operation.
    pub reported: BTreeMap<&'static str, f64>,
}

impl Totals {
    /// All attempts sent.
    pub fn request_count(&self) -> u64 {
        self.requests.values().sum()
    }

    /// The emulator's figure summed over operations.
    pub fn reported_total(&self) -> f64 {
        self.reported.values().sum()
    }
}

/// One write priced from the request.
#[derive(Debug, Clone)]
struct PlannedWrite {
    class: String,
    units: f64,
}

/// How the reads of an operation are priced once its output is in.
#[derive(Debug, Clone)]
enum ReadPlan {
    None,
    Get(Consistency),
    Query(Consistency),
    /// Consistency per table.
    BatchGet(HashMap<String, Consistency>),
    TransactGet,
}

/// What [`CapacityMeter`] learnt from an operation's input, kept in the operation's config
/// bag until its attempts complete.
#[derive(Debug, Clone)]
struct Planned {
    op: &'static str,
    writes: Vec<PlannedWrite>,
    read: ReadPlan,
    /// `BatchWriteItem`: the per-table request count, to subtract unprocessed items.
    batch_write_units: HashMap<String, f64>,
    /// `TransactWriteItems`: each action's kind, in request order (cancellation reasons come
    /// in that order).
    tx_classes: Vec<String>,
}

impl Storable for Planned {
    type Storer = StoreReplace<Self>;
}

/// The SDK interceptor that prices every DynamoDB request (see the [module doc](self)).
/// Cheap to clone: clones share the totals.
#[derive(Debug, Clone)]
pub struct CapacityMeter {
    totals: Arc<Mutex<Totals>>,
    partition_key: Arc<str>,
    /// Key attributes of each global secondary index (an item carrying all of one index's
    /// keys is written to that index too).
    indexes: Arc<[Vec<String>]>,
}

impl CapacityMeter {
    /// A meter for tables whose partition key is `partition_key` (used for labels) and
    /// whose global secondary indexes are keyed by `indexes` (each one's key attributes).
    pub fn new(partition_key: &str, indexes: Vec<Vec<String>>) -> Self {
        CapacityMeter {
            totals: Arc::new(Mutex::new(Totals::default())),
            partition_key: Arc::from(partition_key),
            indexes: Arc::from(indexes),
        }
    }

    /// The totals so far, resetting them to zero.
    pub fn take(&self) -> Totals {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Totals> {
        // A panic while holding the lock leaves plain numbers behind; they are still usable.
        self.totals.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A priced write of the whole of `item` (a put's item, or a delete's key: what it names
    /// is what it sizes), as [`Self::write`]; a request without one is sized as empty.
    fn write_whole(&self, out: &mut Vec<PlannedWrite>, how: &str, item: Option<&Item>, tx: bool) {
        let empty = Item::new();
        let item = item.unwrap_or(&empty);
        self.write(out, how, item, item_size(item), tx);
    }

    /// A priced write of `item` (`size` bytes), plus its index copies.
    fn write(&self, out: &mut Vec<PlannedWrite>, how: &str, item: &Item, size: usize, tx: bool) {
        let class = format!("{how} {}", item_class(item, &self.partition_key));
        let indexed = self
            .indexes
            .iter()
            .filter(|keys| !keys.is_empty() && keys.iter().all(|k| item.contains_key(k)))
            .count();
        out.push(PlannedWrite {
            class: class.clone(),
            units: write_units(size, tx),
        });
        for _ in 0..indexed {
            out.push(PlannedWrite {
                class: format!("{class} (index)"),
                units: write_units(size, tx),
            });
        }
    }

    /// Prices an operation's input and asks DynamoDB to report its consumed capacity.
    fn plan(&self, context: &mut BeforeSerializationInterceptorContextMut<'_>) -> Planned {
        let input = context.input_mut();
        let mut writes = Vec::new();
        let total = Some(ReturnConsumedCapacity::Total);
        let mut batch_write_units = HashMap::new();
        let mut tx_classes = Vec::new();
        let (op, read) = if let Some(i) = input.downcast_mut::<PutItemInput>() {
            i.return_consumed_capacity = total;
            self.write_whole(&mut writes, "Put", i.item.as_ref(), false);
            ("PutItem", ReadPlan::None)
        } else if let Some(i) = input.downcast_mut::<UpdateItemInput>() {
            i.return_consumed_capacity = total;
            let key = i.key.clone().unwrap_or_default();
            let size = update_after_size(
                &key,
                i.update_expression.as_deref().unwrap_or_default(),
                i.expression_attribute_names.as_ref(),
                i.expression_attribute_values.as_ref(),
            );
            self.write(&mut writes, "Update", &key, size, false);
            ("UpdateItem", ReadPlan::None)
        } else if let Some(i) = input.downcast_mut::<DeleteItemInput>() {
            i.return_consumed_capacity = total;
            self.write_whole(&mut writes, "Delete", i.key.as_ref(), false);
            ("DeleteItem", ReadPlan::None)
        } else if let Some(i) = input.downcast_mut::<TransactWriteItemsInput>() {
            i.return_consumed_capacity = total;
            for action in i.transact_items.iter().flatten() {
                if let Some(p) = &action.put {
                    self.write(&mut writes, "TxPut", &p.item, item_size(&p.item), true);
                } else if let Some(u) = &action.update {
                    let size = update_after_size(
                        &u.key,
                        &u.update_expression,
                        u.expression_attribute_names.as_ref(),
                        u.expression_attribute_values.as_ref(),
                    );
                    self.write(&mut writes, "TxUpdate", &u.key, size, true);
                } else if let Some(d) = &action.delete {
                    self.write(&mut writes, "TxDelete", &d.key, item_size(&d.key), true);
                } else if let Some(c) = &action.condition_check {
                    self.write(&mut writes, "TxCheck", &c.key, item_size(&c.key), true);
                }
            }
            tx_classes = i
                .transact_items
                .iter()
                .flatten()
                .map(|a| {
                    let (how, key) = if let Some(p) = &a.put {
                        ("TxPut", &p.item)
                    } else if let Some(u) = &a.update {
                        ("TxUpdate", &u.key)
                    } else if let Some(d) = &a.delete {
                        ("TxDelete", &d.key)
                    } else if let Some(c) = &a.condition_check {
                        ("TxCheck", &c.key)
                    } else {
                        return "?".to_owned();
                    };
                    format!("{how} {}", item_class(key, &self.partition_key))
                })
                .collect();
            ("TransactWriteItems", ReadPlan::None)
        } else if let Some(i) = input.downcast_mut::<BatchWriteItemInput>() {
            i.return_consumed_capacity = total;
            for (table, requests) in i.request_items.iter().flatten() {
                let before = writes.len();
                for r in requests {
                    if let Some(p) = &r.put_request {
                        self.write(&mut writes, "BatchPut", &p.item, item_size(&p.item), false);
                    } else if let Some(d) = &r.delete_request {
                        self.write(&mut writes, "BatchDelete", &d.key, item_size(&d.key), false);
                    }
                }
                let units: f64 = writes[before..].iter().map(|w| w.units).sum();
                batch_write_units.insert(table.clone(), units / requests.len().max(1) as f64);
            }
            ("BatchWriteItem", ReadPlan::None)
        } else if let Some(i) = input.downcast_mut::<GetItemInput>() {
            i.return_consumed_capacity = total;
            ("GetItem", ReadPlan::Get(Consistency::of(i.consistent_read)))
        } else if let Some(i) = input.downcast_mut::<QueryInput>() {
            i.return_consumed_capacity = total;
            ("Query", ReadPlan::Query(Consistency::of(i.consistent_read)))
        } else if let Some(i) = input.downcast_mut::<BatchGetItemInput>() {
            i.return_consumed_capacity = total;
            let per_table = i
                .request_items
                .iter()
                .flatten()
                .map(|(t, k)| (t.clone(), Consistency::of(k.consistent_read)))
                .collect();
            ("BatchGetItem", ReadPlan::BatchGet(per_table))
        } else if let Some(i) = input.downcast_mut::<TransactGetItemsInput>() {
            i.return_consumed_capacity = total;
            ("TransactGetItems", ReadPlan::TransactGet)
        } else {
            // Control-plane calls (CreateTable, DescribeTable, TTL) are not priced.
            ("other", ReadPlan::None)
        };
        Planned {
            op,
            writes,
            read,
            batch_write_units,
            tx_classes,
        }
    }
}

fn reported_one(c: Option<&ConsumedCapacity>) -> f64 {
    c.and_then(|c| c.capacity_units).unwrap_or(0.0)
}

fn reported_many(c: Option<&Vec<ConsumedCapacity>>) -> f64 {
    c.into_iter()
        .flatten()
        .filter_map(|c| c.capacity_units)
        .sum()
}

/// Read units and the emulator's figure from a successful output.
fn price_output(planned: &Planned, ctx: &FinalizerInterceptorContextRef<'_>) -> (f64, f64) {
    let Some(Ok(out)) = ctx.output_or_error() else {
        return (0.0, 0.0);
    };
    match &planned.read {
        ReadPlan::Get(c) => out.downcast_ref::<GetItemOutput>().map_or((0.0, 0.0), |o| {
            let size = o.item.as_ref().map_or(0, item_size);
            (
                read_units(size, *c),
                reported_one(o.consumed_capacity.as_ref()),
            )
        }),
        ReadPlan::Query(c) => out.downcast_ref::<QueryOutput>().map_or((0.0, 0.0), |o| {
            let size: usize = o.items.iter().flatten().map(item_size).sum();
            (
                read_units(size, *c),
                reported_one(o.consumed_capacity.as_ref()),
            )
        }),
        ReadPlan::BatchGet(per_table) => {
            out.downcast_ref::<BatchGetItemOutput>()
                .map_or((0.0, 0.0), |o| {
                    let units = o
                        .responses
                        .iter()
                        .flatten()
                        .map(|(table, items)| {
                            let c = per_table
                                .get(table)
                                .copied()
                                .unwrap_or(Consistency::Eventual);
                            items
                                .iter()
                                .map(|i| read_units(item_size(i), c))
                                .sum::<f64>()
                        })
                        .sum();
                    (units, reported_many(o.consumed_capacity.as_ref()))
                })
        }
        ReadPlan::TransactGet => {
            out.downcast_ref::<TransactGetItemsOutput>()
                .map_or((0.0, 0.0), |o| {
                    let units = o
                        .responses
                        .iter()
                        .flatten()
                        .map(|r| {
                            read_units(
                                r.item.as_ref().map_or(0, item_size),
                                Consistency::Transactional,
                            )
                        })
                        .sum();
                    (units, reported_many(o.consumed_capacity.as_ref()))
                })
        }
        ReadPlan::None => {
            let reported = if let Some(o) = out.downcast_ref::<PutItemOutput>() {
                reported_one(o.consumed_capacity.as_ref())
            } else if let Some(o) = out.downcast_ref::<UpdateItemOutput>() {
                reported_one(o.consumed_capacity.as_ref())
            } else if let Some(o) = out.downcast_ref::<DeleteItemOutput>() {
                reported_one(o.consumed_capacity.as_ref())
            } else if let Some(o) = out.downcast_ref::<TransactWriteItemsOutput>() {
                reported_many(o.consumed_capacity.as_ref())
            } else if let Some(o) = out.downcast_ref::<BatchWriteItemOutput>() {
                reported_many(o.consumed_capacity.as_ref())
            } else {
                0.0
            };
            (0.0, reported)
        }
    }
}

/// A failed attempt that DynamoDB bills.
enum BilledFailure {
    /// A single-item write whose condition did not hold.
    Condition,
    /// A cancelled transaction, with each action's reason code (`"None"` for the fine ones).
    Cancelled(Vec<String>),
}

/// Whether a failed attempt is one DynamoDB bills (a condition that did not hold, or a
/// cancelled transaction).
fn billed_failure(ctx: &FinalizerInterceptorContextRef<'_>) -> Option<BilledFailure> {
    let Some(Err(e)) = ctx.output_or_error() else {
        return None;
    };
    let op = e.as_operation_error()?;
    if let Some(e) = op.downcast_ref::<TransactWriteItemsError>() {
        return match e {
            TransactWriteItemsError::TransactionCanceledException(c) => {
                Some(BilledFailure::Cancelled(
                    c.cancellation_reasons()
                        .iter()
                        .map(|r| r.code().unwrap_or("None").to_owned())
                        .collect(),
                ))
            }
            _ => None,
        };
    }
    let code = if let Some(e) = op.downcast_ref::<PutItemError>() {
        e.code()
    } else if let Some(e) = op.downcast_ref::<UpdateItemError>() {
        e.code()
    } else if let Some(e) = op.downcast_ref::<DeleteItemError>() {
        e.code()
    } else {
        None
    };
    (code == Some("ConditionalCheckFailedException")).then_some(BilledFailure::Condition)
}

impl Intercept for CapacityMeter {
    fn name(&self) -> &'static str {
        "tally-bench CapacityMeter"
    }

    fn modify_before_serialization(
        &self,
        context: &mut BeforeSerializationInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let planned = self.plan(context);
        cfg.interceptor_state().store_put(planned);
        Ok(())
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(planned) = cfg.load::<Planned>().cloned() else {
            return Ok(());
        };
        if planned.op == "other" {
            return Ok(());
        }
        let ctx = context;
        let mut t = self.lock();
        *t.requests.entry(planned.op).or_default() += 1;
        let ok = matches!(ctx.output_or_error(), Some(Ok(_)));
        let failure = if ok { None } else { billed_failure(ctx) };
        let failed_condition = failure.is_some();
        if !ok && !failed_condition {
            *t.errors.entry(planned.op).or_default() += 1;
            return Ok(());
        }
        let mut writes = planned.writes.clone();
        if ok
            && let Some(Ok(out)) = ctx.output_or_error()
            && let Some(o) = out.downcast_ref::<BatchWriteItemOutput>()
        {
            // Unprocessed requests were not written (and come back in a later call).
            let unprocessed: f64 = o
                .unprocessed_items
                .iter()
                .flatten()
                .map(|(table, reqs)| {
                    planned.batch_write_units.get(table).copied().unwrap_or(1.0) * reqs.len() as f64
                })
                .sum();
            if unprocessed > 0.0 {
                writes.push(PlannedWrite {
                    class: "BatchWrite unprocessed".to_owned(),
                    units: -unprocessed,
                });
            }
        }
        let wcu: f64 = writes.iter().map(|w| w.units).sum();
        t.wcu += wcu;
        match &failure {
            Some(BilledFailure::Condition) => {
                t.wcu_failed += wcu;
                t.failed_conditions += 1;
            }
            Some(BilledFailure::Cancelled(codes)) => {
                t.wcu_failed += wcu;
                t.wcu_cancelled_tx += wcu;
                t.cancelled_transactions += 1;
                for (code, class) in codes.iter().zip(&planned.tx_classes) {
                    if code != "None" {
                        *t.cancel_reasons
                            .entry(format!("{code} on {class}"))
                            .or_default() += 1;
                    }
                }
            }
            None => {}
        }
        for w in &writes {
            let c = t.by_class.entry(w.class.clone()).or_default();
            c.items += 1;
            c.wcu += w.units;
            if failed_condition {
                c.failed_wcu += w.units;
            }
        }
        if ok {
            let (rcu, reported) = price_output(&planned, ctx);
            t.rcu += rcu;
            *t.reported.entry(planned.op).or_default() += reported;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn s(v: &str) -> AttributeValue {
        AttributeValue::S(v.to_owned())
    }
    fn n(v: &str) -> AttributeValue {
        AttributeValue::N(v.to_owned())
    }
    fn item(pairs: &[(&str, AttributeValue)]) -> Item {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    /// AWS: a string is its UTF-8 bytes; the name counts too.
    #[test]
    fn strings_count_utf8_bytes_and_names() {
        assert_eq!(item_size(&item(&[("pk", s("ORG#a"))])), 2 + 5);
        // "é" is two bytes in UTF-8.
        assert_eq!(item_size(&item(&[("n", s("é"))])), 1 + 2);
    }

    /// AWS: numbers are (1 byte per two significant digits) + 1, leading and trailing zeros
    /// trimmed.
    #[test]
    fn numbers_follow_the_documented_formula() {
        assert_eq!(number_size("1"), 2);
        assert_eq!(number_size("12"), 2);
        assert_eq!(number_size("123"), 3);
        assert_eq!(number_size("1000000"), 2, "trailing zeros are trimmed");
        assert_eq!(number_size("0.0015"), 2, "leading zeros are trimmed");
        assert_eq!(number_size("-12.5"), 3, "sign and point are not digits");
        assert_eq!(number_size("1.5E+3"), 2, "the exponent is not a digit");
        assert_eq!(number_size("0"), 1);
        // 38 significant digits, the most DynamoDB keeps: 19 + 1.
        assert_eq!(number_size("12345678901234567890123456789012345678"), 20);
    }

    /// AWS: binary is its raw length; boolean and null are 1 byte; lists and maps cost 3
    /// bytes plus 1 per element plus the elements.
    #[test]
    fn binary_bool_null_list_map_and_sets() {
        use aws_sdk_dynamodb::primitives::Blob;
        assert_eq!(value_size(&AttributeValue::B(Blob::new(vec![0u8; 10]))), 10);
        assert_eq!(value_size(&AttributeValue::Bool(true)), 1);
        assert_eq!(value_size(&AttributeValue::Null(true)), 1);
        assert_eq!(value_size(&AttributeValue::L(vec![])), 3, "empty list");
        assert_eq!(
            value_size(&AttributeValue::L(vec![s("ab"), n("7")])),
            3 + (1 + 2) + (1 + 2)
        );
        assert_eq!(
            value_size(&AttributeValue::M(item(&[("k", s("abc"))]))),
            3 + 1 + 1 + 3
        );
        assert_eq!(
            value_size(&AttributeValue::Ss(vec!["a".into(), "bcd".into()])),
            4
        );
        assert_eq!(
            value_size(&AttributeValue::Ns(vec!["1".into(), "123".into()])),
            2 + 3
        );
    }

    /// AWS's examples: a 3,500-byte item reads as 4 KB; an 8 KB item costs 2 units strongly
    /// consistent, 1 eventually consistent, 4 transactional; a 10 KB item rounds to 12 KB; a
    /// 1.5 KB write is 2 units (4 transactional); an empty read still costs one unit.
    #[test]
    fn units_match_the_published_examples() {
        assert_eq!(read_units(3_500, Consistency::Strong), 1.0);
        assert_eq!(read_units(8 * 1024, Consistency::Strong), 2.0);
        assert_eq!(read_units(8 * 1024, Consistency::Eventual), 1.0);
        assert_eq!(read_units(8 * 1024, Consistency::Transactional), 4.0);
        assert_eq!(read_units(10 * 1024, Consistency::Strong), 3.0);
        assert_eq!(read_units(0, Consistency::Eventual), 0.5);
        assert_eq!(write_units(1_536, false), 2.0);
        assert_eq!(write_units(1_536, true), 4.0);
        assert_eq!(write_units(1_024, false), 1.0);
        assert_eq!(write_units(1_025, false), 2.0);
        assert_eq!(write_units(10, true), 2.0);
        // BatchGetItem of 1.5 KB and 6.5 KB items: priced 4 KB + 8 KB = 3 units, not 2.
        let batch = read_units(1_536, Consistency::Strong) + read_units(6_656, Consistency::Strong);
        assert_eq!(batch, 3.0);
    }

    #[test]
    fn updates_count_key_and_written_attributes() {
        let key = item(&[("pk", s("ORG#a#CTR#2026-11")), ("sk", s("ALL#m#hour#1"))]);
        let values: HashMap<String, AttributeValue> = [
            (":d".to_owned(), n("12.5")),
            (":at".to_owned(), n("1700000000123456789")),
        ]
        .into_iter()
        .collect();
        let names: HashMap<String, String> = [("#v".to_owned(), "v".to_owned())].into();
        let base = item_size(&key);
        assert_eq!(
            update_after_size(&key, "ADD #v :d", Some(&names), Some(&values)),
            base + 1 + 3
        );
        assert_eq!(
            update_after_size(&key, "SET v = :d, at = :at", None, Some(&values)),
            base + (1 + 3) + (2 + 11)
        );
        // A function with a comma inside it is one action; the larger operand counts.
        assert_eq!(
            update_after_size(
                &key,
                "set #v = if_not_exists(#v, :d) + :at REMOVE old",
                Some(&names),
                Some(&values)
            ),
            base + 1 + 11
        );
    }

    #[test]
    fn classes_keep_only_upper_case_segments() {
        let it = item(&[("pk", s("ORG#org_1#LEDGER#07"))]);
        assert_eq!(item_class(&it, "pk"), "ORG#LEDGER");
        assert_eq!(item_class(&item(&[("x", s("a"))]), "pk"), "?");
    }
}
