# moto_server with fixes for Tally's DynamoDB tests (moto 5.2.5). Each patch below is applied
# to moto's own source text, and the script exits at start if that text changed (a moto
# upgrade must fail loudly, not run unpatched):
# 1. Every DynamoDB request runs under one lock, so each call is atomic with respect to the others,
#    as on DynamoDB. Stock moto runs requests on threads without isolation: a cancelled
#    TransactWriteItems restores a table snapshot taken before a concurrent writer's commit
#    (or in the middle of it), which loses or doubles that writer's updates.
# 2. TransactWriteItems snapshots each table once, not once per action (stock moto deep-copies
#    the whole table for every one of up to 100 actions, which makes a transaction cost
#    actions x table size: seconds on a table of a few thousand items).
# 3. TransactWriteItems saves only the items its actions name, not the whole table. Even once
#    per table (fix 2), the deep copy made every transaction (each org created, each batch
#    applied) cost the table's size, ~30,000 items in the 2,000-org billing fan-out.
#    Each action touches exactly one item, the one its key names, so saving those items (a
#    deep copy, or "absent") before the first action runs and putting them back on
#    cancellation leaves the table exactly as restoring the whole copy did. A table with a
#    stream, or an action whose key cannot be read, keeps the whole copy (stream records
#    must be rolled back too; Tally's table has no stream).
# 4. Query on the table reads the queried partition, not the whole table: stock moto sorts
#    every item of the table and keeps those of the partition (then sorts those again by sort
#    key, so the result is the same).
# 5. Query on a secondary index iterates the table's items unsorted: stock moto sorts the whole
#    table first and then sorts the matches again by (index keys, table keys), which is a total
#    order, so the first sort never changed a result. (It still reads every item: the index
#    has no storage of its own in moto. Tally queries its index once per billing run and per
#    user listing, never per org.)
# 6. SQS ReceiveMessage checks each message's retention against the queue's retention period
#    read as the attribute itself, not through GetQueueAttributes: stock moto builds the
#    queue's whole attribute dictionary twice per received message, and three of its entries
#    (the approximate message counts) walk every message in the queue, so a receive cost
#    messages received x queue length (the main cost left at 2,000 queued items).
# 7. SQS SendMessage reads the queue's content-based deduplication setting as the attribute
#    itself, for the same reason: stock moto builds the whole attribute dictionary (walking
#    every message three times) for each message sent.
#
# TALLY_MOTO_WHOLE_TABLE=1 applies only fixes 1 and 2 (the emulator as it was before 3-7), to
# measure the difference (bench/fanout.sh, bench/RESULTS.md).
#
# `moto_serial.py --self-test` runs the self-test below and exits; it also runs before every
# start, so the test command (scripts/test.sh) never serves through a broken patch.
import copy
import inspect
import os
import re
import sys
import textwrap
import threading

from moto import server
from moto.dynamodb import models as ddb
from moto.dynamodb.exceptions import TransactionCanceledException
from moto.dynamodb.models import table as ddb_table
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.moto_server import werkzeug_app
from moto.sqs import models as sqs

_lock = threading.Lock()
_call = werkzeug_app.DomainDispatcherApplication.__call__


def _serial(self, environ, start_response):
    # Only DynamoDB: SQS long polls sleep inside their request and must not hold the lock.
    if not environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
        return _call(self, environ, start_response)
    with _lock:
        return list(_call(self, environ, start_response))


werkzeug_app.DomainDispatcherApplication.__call__ = _serial


def _patched(func, module, replacements, helpers=None):
    """`func` compiled again from its source with each (old, new, count) replacement made;
    exits when `old` does not occur exactly `count` times (moto's source changed)."""
    src = textwrap.dedent(inspect.getsource(func))
    for old, new, count in replacements:
        # Any run of white space in `old` matches any other (line breaks and indentation are
        # moto's formatting); `new` is one line, so it keeps the indentation where it lands.
        pattern = re.compile(r"\s+".join(map(re.escape, old.split())))
        if len(pattern.findall(src)) != count:
            sys.exit(f"moto_serial: moto's {func.__qualname__} changed; update this patch")
        src = pattern.sub(lambda _: new, src)
    scope = dict(vars(module))
    scope.update(helpers or {})
    ns = {}
    exec(compile(src, module.__file__, "exec"), scope, ns)
    return ns[func.__name__]


# Fix 3: what a transaction saves per table is either the whole table (a `Table`, as stock
# moto) or a list of (hash key, range key, the item's deep copy or None when absent).
def _remember(state, table, op):
    """Saves, in `state`, the item that action `op` names in `table` as it is now."""
    saved = state.get(table.name)
    if isinstance(saved, ddb.Table):
        return
    key = op.get("Item") if "Item" in op else op.get("Key")
    try:
        if table.stream_shard is not None:
            raise LookupError("the table has a stream")
        hash_value = DynamoType(key[table.hash_key_attr])
        range_value = None
        if table.range_key_attr is not None:
            range_value = DynamoType(key[table.range_key_attr])
    except Exception:
        # Whatever this action does to the table, the whole copy undoes it.
        state[table.name] = copy.deepcopy(table)
        return
    if range_value is None:
        current = table.items.get(hash_value)
    else:
        current = table.items.get(hash_value, {}).get(range_value)
    state.setdefault(table.name, []).append((hash_value, range_value, copy.deepcopy(current)))


def _restore(backend, table_name, saved):
    """Puts back what `_remember` saved for `table_name`: every named item as it was (every
    copy was taken before the first action ran, so a key named twice restores the same)."""
    if isinstance(saved, ddb.Table):
        backend.tables[table_name] = saved
        return
    table = backend.tables[table_name]
    for hash_value, range_value, previous in saved:
        if range_value is None:
            if previous is None:
                table.items.pop(hash_value, None)
            else:
                table.items[hash_value] = previous
        elif previous is None:
            partition = table.items.get(hash_value)
            if partition is not None:
                partition.pop(range_value, None)
                if not partition:
                    del table.items[hash_value]
        else:
            table.items[hash_value][range_value] = previous


# Fix 4: the partition's items straight from the table's dict (a `defaultdict`: `get` does
# not create an entry).
def _partition(table, hash_key):
    found = table.items.get(hash_key)
    if found is None:
        return []
    if table.range_key_attr is not None:
        return list(found.values())
    return [found]


# Fix 5.
def _unsorted_items(table):
    if table.range_key_attr is None:
        return list(table.items.values())
    return [item for partition in table.items.values() for item in partition.values()]


_STOCK_SEND = sqs.SQSBackend.send_message
_STOCK_RETENTION = sqs.SQSBackend.is_message_valid_based_on_retention_period
_STOCK_TRANSACT = ddb.DynamoDBBackend.transact_write_items
_STOCK_QUERY = ddb_table.Table.query

_SNAPSHOT_ONCE = (
    "if table_name and table_name in self.tables:",
    "if table_name and table_name in self.tables and table_name not in original_table_state:",
    1,
)
_SNAPSHOT_KEYED = (
    "original_table_state[table_name] = copy.deepcopy( self.tables[table_name] )",
    "_remember(original_table_state, self.tables[table_name], op)",
    1,
)
_ROLLBACK_KEYED = (
    "self.tables[table_name] = original_table_state[table_name]",
    "_restore(self, table_name, original_table_state[table_name])",
    2,
)
_QUERY_PARTITION = (
    "for item in self.all_items() if isinstance(item, Item) and item.hash_key == hash_key",
    "for item in _partition(self, hash_key) if isinstance(item, Item) and item.hash_key == hash_key",
    1,
)
_QUERY_INDEX_UNSORTED = (
    "for item in self.all_items():",
    "for item in _unsorted_items(self):",
    1,
)

_transact_once = _patched(_STOCK_TRANSACT, ddb, [_SNAPSHOT_ONCE])
_transact_keyed = _patched(
    _STOCK_TRANSACT,
    ddb,
    [_SNAPSHOT_KEYED, _ROLLBACK_KEYED],
    # Looked up at each call, so the self-test can plant a faulty restore.
    {"_remember": _remember, "_restore": lambda *args: _restore(*args)},
)
_query_keyed = _patched(
    _STOCK_QUERY,
    ddb_table,
    [_QUERY_PARTITION, _QUERY_INDEX_UNSORTED],
    {"_partition": _partition, "_unsorted_items": _unsorted_items},
)

# Fix 6: `get_queue_attributes(name, ["MessageRetentionPeriod"])[...]` is, through
# `Queue.attributes`, `getattr(queue, "message_retention_period")`.
_retention_direct = _patched(
    _STOCK_RETENTION,
    sqs,
    [
        (
            """self.get_queue_attributes( queue_name, ["MessageRetentionPeriod"] )["MessageRetentionPeriod"]""",
            "self.get_queue(queue_name).message_retention_period",
            1,
        )
    ],
)



# Fix 7: `Queue.attributes` holds `ContentBasedDeduplication` only for a FIFO queue, as the
# attribute's value with a bool written "true"/"false".
def _content_dedup(queue):
    if not queue.fifo_queue:
        return None
    value = queue.content_based_deduplication
    return str(value).lower() if isinstance(value, bool) else value


_send_direct = _patched(
    _STOCK_SEND,
    sqs,
    [
        (
            """queue.attributes.get("ContentBasedDeduplication")""",
            "_content_dedup(queue)",
            1,
        )
    ],
    {"_content_dedup": _content_dedup},
)


def _install(keyed):
    ddb.DynamoDBBackend.transact_write_items = _transact_keyed if keyed else _transact_once
    ddb_table.Table.query = _query_keyed if keyed else _STOCK_QUERY
    sqs.SQSBackend.is_message_valid_based_on_retention_period = (
        _retention_direct if keyed else _STOCK_RETENTION
    )
    sqs.SQSBackend.send_message = _send_direct if keyed else _STOCK_SEND


# The self-test: on an in-process backend (no server), a cancelled transaction must leave the
# table exactly as it was (an updated item, a deleted one, one it created, one in a partition
# it created), a committed one must apply, and queries must answer as stock moto's. It also
# plants a restore that forgets the created item and checks that the comparison sees it.
def _state(table):
    return sorted(repr(item.to_json()) for item in _unsorted_items(table))


def _scenario():
    """A table, its state before, the transaction's outcome and its state after: a
    transaction that updates, deletes and creates items and fails its last condition."""
    backend = ddb.DynamoDBBackend("us-east-1", "123456789012")
    s = {"AttributeType": "S"}
    table = backend.create_table(
        "t",
        schema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        throughput=None,
        attr=[dict(s, AttributeName=n) for n in ("pk", "sk", "g")],
        global_indexes=[
            {
                "IndexName": "gsi",
                "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
        indexes=None,
        streams=None,
        billing_mode="PAY_PER_REQUEST",
        sse_specification=None,
        tags=[],
        deletion_protection_enabled=False,
        warm_throughput=None,
    )
    for pk, sk, v in [("a", "1", "x"), ("a", "2", "y"), ("b", "1", "z"), ("c", "1", "w")]:
        backend.put_item("t", {"pk": {"S": pk}, "sk": {"S": sk}, "v": {"S": v}, "g": {"S": "G"}})
    before = _state(table)
    key = lambda pk, sk: {"pk": {"S": pk}, "sk": {"S": sk}}  # noqa: E731
    actions = [
        {"Update": {"TableName": "t", "Key": key("a", "1"), "UpdateExpression": "SET v = :n",
                    "ExpressionAttributeValues": {":n": {"S": "changed"}}}},
        {"Delete": {"TableName": "t", "Key": key("a", "2")}},
        {"Put": {"TableName": "t", "Item": {"pk": {"S": "a"}, "sk": {"S": "3"}, "v": {"S": "new"}}}},
        {"Put": {"TableName": "t", "Item": {"pk": {"S": "new"}, "sk": {"S": "1"}, "g": {"S": "G"}}}},
        {"Update": {"TableName": "t", "Key": key("new", "2"), "UpdateExpression": "SET v = :n",
                    "ExpressionAttributeValues": {":n": {"S": "made"}}}},
        {"ConditionCheck": {"TableName": "t", "Key": key("b", "1"),
                            "ConditionExpression": "attribute_not_exists(pk)"}},
    ]
    try:
        backend.transact_write_items(actions)
        outcome = "committed"
    except TransactionCanceledException as e:
        outcome = e.description
    return backend, table, before, outcome, actions


def _query(backend, index=None, pk="a"):
    names = {"#k": "g" if index else "pk"}
    items, _, _ = backend.query(
        "t", {"S": pk}, None, [], None, None, True, None, index_name=index,
        consistent_read=False, expr_names=names, expr_values={":v": {"S": pk}},
        hash_key_conditions=[(names["#k"], {"S": pk})],
    )
    return [repr(i.to_json()) for i in items]


def _self_test():
    global _restore
    _install(keyed=False)
    _, _, _, stock_outcome, _ = _scenario()
    _install(keyed=True)
    backend, table, before, outcome, actions = _scenario()
    assert "ConditionalCheckFailed" in outcome, outcome
    assert outcome == stock_outcome, (outcome, stock_outcome)
    assert _state(table) == before, "a cancelled transaction left changes behind"
    assert table.items.get(DynamoType({"S": "new"})) is None, "a partition it made is left"

    # Without the failing check, the same transaction commits every action.
    backend.transact_write_items(actions[:-1])
    after = _state(table)
    # Four items, one deleted, three made.
    assert len(after) == len(before) + 2 and not any("'y'" in i for i in after), after
    assert any("changed" in i for i in after) and any("made" in i for i in after), after

    # Queries answer as stock moto's (the table and the index, all partitions).
    answers = {}
    for keyed in (False, True):
        _install(keyed)
        answers[keyed] = [_query(backend, None, pk) for pk in ("a", "b", "new", "none")] + [
            _query(backend, "gsi", "G"),
            _query(backend, "gsi", "none"),
        ]
    assert answers[True] == answers[False], answers
    assert answers[True][0] and answers[True][4], answers

    # The retention check answers as stock moto's, for a fresh message and an expired one.
    queues = sqs.SQSBackend("us-east-1", "123456789012")
    queues.create_queue("q", MessageRetentionPeriod="60")
    fresh = queues.send_message("q", "body")
    old = queues.send_message("q", "body")
    old.sent_timestamp -= 61_000
    for message, valid in ((fresh, True), (old, False)):
        assert _STOCK_RETENTION(queues, "q", message) is valid
        assert _retention_direct(queues, "q", message) is valid

    # Content-based deduplication is read as stock moto reads it, on and off, FIFO or not.
    for name, attrs in (
        ("s", {}),
        ("f.fifo", {"FifoQueue": "true"}),
        ("d.fifo", {"FifoQueue": "true", "ContentBasedDeduplication": "true"}),
    ):
        queue = queues.create_queue(name, **attrs)
        assert _content_dedup(queue) == queue.attributes.get("ContentBasedDeduplication")
    sent = queues.send_message("d.fifo", "same body", group_id="g")
    assert sent.deduplication_id, "content-based deduplication was not applied"

    # A planted fault: a restore that skips items the transaction created must be caught.
    real = _restore

    def forgetful(backend, table_name, saved):
        real(backend, table_name, [s for s in saved if s[2] is not None])

    _restore = forgetful
    try:
        _, table, before, _, _ = _scenario()
        assert _state(table) != before, "the self-test cannot see a partial restore"
    finally:
        _restore = real


_self_test()
_install(keyed=os.environ.get("TALLY_MOTO_WHOLE_TABLE") != "1")

if __name__ == "__main__":
    if sys.argv[1:] == ["--self-test"]:
        print("moto_serial: self-test passed")
        sys.exit(0)
    server.main(sys.argv[1:])
