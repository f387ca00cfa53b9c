# moto_server with two fixes for Tally's DynamoDB tests (moto 5.2.5):
# 1. Every DynamoDB request runs under one lock, so each call is atomic with respect to the others,
#    as on DynamoDB. Stock moto runs requests on threads without isolation: a cancelled
#    TransactWriteItems restores a table snapshot taken before a concurrent writer's commit
#    (or in the middle of it), which loses or doubles that writer's updates.
# 2. TransactWriteItems snapshots each table once, not once per action (stock moto deep-copies
#    the whole table for every one of up to 100 actions, which makes a transaction cost
#    actions x table size: seconds on a table of a few thousand items).
import inspect
import sys
import textwrap
import threading

from moto import server
from moto.dynamodb import models as ddb
from moto.moto_server import werkzeug_app

_lock = threading.Lock()
_call = werkzeug_app.DomainDispatcherApplication.__call__


def _serial(self, environ, start_response):
    # Only DynamoDB: SQS long polls sleep inside their request and must not hold the lock.
    if not environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
        return _call(self, environ, start_response)
    with _lock:
        return list(_call(self, environ, start_response))


werkzeug_app.DomainDispatcherApplication.__call__ = _serial

_src = textwrap.dedent(inspect.getsource(ddb.DynamoDBBackend.transact_write_items))
_old = "if table_name and table_name in self.tables:"
_new = "if table_name and table_name in self.tables and table_name not in original_table_state:"
if _src.count(_old) != 1:
    sys.exit("moto_serial: moto's transact_write_items changed; update this patch")
_ns = {}
exec(compile(_src.replace(_old, _new), ddb.__file__, "exec"), vars(ddb), _ns)
ddb.DynamoDBBackend.transact_write_items = _ns["transact_write_items"]

server.main(sys.argv[1:])
