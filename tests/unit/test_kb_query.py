"""The knowledge base's query language: what parses, what SQL it becomes, and the errors it gives."""

from __future__ import annotations

import pytest

from cdl.kb.query import TRIALS, QueryError, compile_query


def sql_text(query: str) -> tuple[str, list]:
    condition, params = compile_query(query, TRIALS)
    return condition.as_string(None), params


def test_paper_query_is_three_parameterised_comparisons():
    text, params = sql_text("epochs > 10 && optimizer = Adam && accuracy > 0.9")
    assert text.count(" AND ") == 2
    assert "Adam" not in text and "epochs" not in text  # names and values travel as parameters
    assert ["epochs"] in params and "Adam" in params and 0.9 in params and 10.0 in params


def test_columns_prefixes_quotes_and_or():
    text, params = sql_text("(state = completed || state = 'active') and hp.lr <= 1e-3 and metric.loss < .5")
    assert '"state"' in text and " OR " in text
    assert ["lr"] in params and ["best_metrics", "loss"] in params and 1e-3 in params and 0.5 in params


def test_injection_stays_a_value():
    text, params = sql_text("optimizer = \"Adam'; DROP TABLE trials; --\"")
    assert "DROP" not in text
    assert "Adam'; DROP TABLE trials; --" in params


def test_empty_query_matches_everything():
    assert sql_text("  ")[0] == "TRUE"


@pytest.mark.parametrize(("query", "says"), [
    ("epochs >", "ends too early"),
    ("epochs 10", "expected one of = != > >= < <= ~ after 'epochs'"),
    ("epochs > 10 &&", "ends too early"),
    ("(epochs > 10", "ends too early"),
    ("epochs > 10 optimizer = Adam", "unexpected 'optimizer' at character 13; expected && or ||"),
    ("> 3", "expected a field name at character 1"),
    ("epochs > 10 ; drop", "unexpected ';"),
])
def test_errors_say_where_and_what(query, says):
    with pytest.raises(QueryError) as err:
        compile_query(query, TRIALS)
    assert says in str(err.value)
