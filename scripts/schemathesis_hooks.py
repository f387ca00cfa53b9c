"""Loaded into schemathesis by scripts/openapi_check.py (SCHEMATHESIS_HOOKS); changes no check.

On CPython 3.11 (seen on 3.11.7), `ast.parse` called deep in a Hypothesis draw can raise
`SystemError: AST constructor recursion depth mismatch`. Hypothesis parses source files that
way only to spell a lambda in a strategy's repr, and schemathesis then reports the operation
as a Runtime Error instead of testing it. A repr without the lambda's body is harmless.
"""

from hypothesis.internal import lambda_sources

_describe = lambda_sources._lambda_description


def _lambda_description(f):
    try:
        return _describe(f)
    except SystemError:
        return "lambda: <unknown>"


lambda_sources._lambda_description = _lambda_description
